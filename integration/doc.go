// Package integration holds the end-to-end tests of edgeaudit: they build the real
// binary, run it as a process on free 127.0.0.1 ports, and drive it with the real peers a
// site runs (util-linux logger, rsyslog with GnuTLS, syslog-ng's loggen, openssl), then
// check the result with the binary's own export and verify commands.
//
// The tests find their peers on PATH (loggen also through $LOGGEN). A missing peer skips
// the test with the reason, except under CI=true, where it fails. scripts/test.sh
// installs every peer on a fresh Debian machine.
//
// The package has no code of its own; everything is in its _test.go files.
package integration
