//go:build race

package integration

// raceEnabled is true when the tests run under -race; TestMain then builds the daemon
// with -race too, so that a data race under real traffic fails the daemon's exit status.
const raceEnabled = true
