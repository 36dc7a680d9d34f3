#!/usr/bin/env bash
# scripts/test.sh - every check and test of edgeaudit, as CI runs it (.ci/run calls it).
#
#   1. Installs the test peers on a Debian machine, as root (or through sudo):
#      rsyslog + rsyslog-gnutls + rsyslog-relp, openssl, util-linux's logger,
#      ca-certificates, curl, strace (the fsync-ordering proofs), mosquitto (the uplink's
#      real broker), postgresql (the receiver's PostgreSQL store, run as a throwaway
#      cluster by internal/testpg), swtpm + swtpm-tools + tpm2-tools (the TPM-bound keys),
#      chrony + faketime (NTP time-sync evidence against a real, and a skewed, server),
#      and for the packaging tests (integration/build_test.go, package_test.go) systemd
#      (systemd-analyze verify), systemd-container (systemd-nspawn), debootstrap (the
#      container's root, built once per machine into $EDGEAUDIT_PKGCACHE/nspawn-root),
#      lintian and rpm (to read the .rpm), with apt-get; syslog-ng's loggen by
#      unpacking the syslog-ng-core package into a cache folder, because syslog-ng-core and rsyslog cannot both be installed. No service is
#      started. Whatever is already there is kept, so a second run installs nothing.
#   2. gofmt, go vet, staticcheck (from the Go module proxy; skipped with a note if it
#      cannot be fetched).
#   3. go test -race -count=1 ./... (the integration tests run the real peers), then
#      every package but integration once more under GODEBUG=fips140=only (Go refuses
#      any algorithm off the FIPS 140-3 approved list; integration's
#      TestFIPSOnlyWholeFlow covers the processes), then every benchmark once under
#      -race with a tiny -benchtime.
#
# Every step runs even if an earlier check failed; the exit status is 1 if any failed.
#
# Env:
#   EDGEAUDIT_PKGCACHE  where loggen, staticcheck and the nspawn root are kept (default /var/cache/edgeaudit-test,
#                       or ~/.cache/edgeaudit-test for a user who can't install)
#   GO_TEST_TIMEOUT     go test -timeout (default 20m: on a fresh machine the integration
#                       package also compiles the release build cold, about 6 minutes)
#   GO_TEST_FLAGS       extra go test flags, e.g. "-run TestLogger -v"
#   SKIP_INSTALL=1      use the peers as they are (tests skip what is missing unless CI=true)
set -euo pipefail

cd "$(dirname "$0")/.."

STATICCHECK_VERSION=v0.8.2 # honnef.co/go/tools; 2026.2.2, knows Go 1.26
GO_TEST_TIMEOUT=${GO_TEST_TIMEOUT:-20m}
PEER_PKGS=(rsyslog rsyslog-gnutls rsyslog-relp openssl bsdutils util-linux ca-certificates curl strace mosquitto postgresql swtpm swtpm-tools tpm2-tools chrony faketime)
# The packaging tests: systemd-analyze, systemd-nspawn, the nspawn root, lintian on the .deb.
PACKAGING_PKGS=(systemd systemd-container debootstrap lintian rpm git gzip)

# rsyslogd lives in /usr/sbin, which a non-login PATH may lack.
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"

start=$SECONDS
failed=()
step() { printf '\n==> %s  (+%ds)\n' "$*" "$((SECONDS - start))"; }
note() { printf '    %s\n' "$*"; }

# ------------------------------------------------------------------------------ peers
# Installs need root: directly, or through sudo; without either they are skipped.
SUDO=()
can_install=1
if [ "$(id -u)" != 0 ]; then
  if command -v sudo >/dev/null 2>&1; then SUDO=(sudo); else can_install=0; fi
fi
if [ "$can_install" = 1 ]; then
  PKGCACHE=${EDGEAUDIT_PKGCACHE:-/var/cache/edgeaudit-test}
else
  PKGCACHE=${EDGEAUDIT_PKGCACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/edgeaudit-test}
fi
# The integration tests keep the nspawn root here too.
export EDGEAUDIT_PKGCACHE=$PKGCACHE
apt_updated=0
apt_update_once() {
  if [ "$apt_updated" = 0 ]; then
    note "apt-get update"
    "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    apt_updated=1
  fi
}
apt_install() {
  apt_update_once
  "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@"
}

installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'; }

install_peers() {
  local missing=() p
  for p in "${PEER_PKGS[@]}" "${PACKAGING_PKGS[@]}"; do installed "$p" || missing+=("$p"); done
  if [ ${#missing[@]} -eq 0 ]; then
    note "already installed: ${PEER_PKGS[*]} ${PACKAGING_PKGS[*]}"
  else
    note "installing: ${missing[*]}"
    # Debian's policy-rc.d (where present) keeps rsyslog's service from starting; the
    # tests run their own rsyslogd with its own config.
    apt_install "${missing[@]}"
  fi
}

# loggen comes from syslog-ng-core, unpacked (dpkg -x: no maintainer scripts, no
# service) into $PKGCACHE, with its shared-library dependencies installed by apt-get. A
# wrapper at $PKGCACHE/bin/loggen sets SYSLOGNG_PREFIX (where loggen finds its plugins)
# and LD_LIBRARY_PATH (syslog-ng's private libraries) for loggen alone, rather than for
# everything the tests start.
setup_loggen() {
  if command -v loggen >/dev/null 2>&1; then
    LOGGEN=$(command -v loggen)
    note "loggen on PATH: $LOGGEN"
    return
  fi
  local dir=$PKGCACHE/syslog-ng-core root=$PKGCACHE/syslog-ng-core/root wrapper=$PKGCACHE/bin/loggen
  if [ ! -x "$root/usr/bin/loggen" ]; then
    note "unpacking syslog-ng-core into $dir"
    "${SUDO[@]}" rm -rf "$dir"
    "${SUDO[@]}" mkdir -p "$dir"
    apt_update_once
    (cd "$dir" && "${SUDO[@]}" apt-get download -qq -o APT::Sandbox::User=root syslog-ng-core)
    "${SUDO[@]}" dpkg -x "$dir"/syslog-ng-core_*.deb "$root"
  fi
  if LD_LIBRARY_PATH=$root/usr/lib/syslog-ng ldd "$root/usr/bin/loggen" | grep -q 'not found'; then
    local deps
    deps=$(apt-cache depends --no-recommends --no-suggests --no-conflicts --no-breaks \
             --no-replaces --no-enhances syslog-ng-core |
           awk '$1 ~ /Depends:/ && $2 ~ /^(lib|zlib)/ {print $2}' | sort -u)
    note "installing loggen's libraries: ${deps//$'\n'/ }"
    # shellcheck disable=SC2086
    apt_install $deps
  fi
  "${SUDO[@]}" mkdir -p "$(dirname "$wrapper")"
  "${SUDO[@]}" tee "$wrapper" >/dev/null <<WRAPPER
#!/bin/sh
# loggen of syslog-ng-core, unpacked by scripts/test.sh, with the env it needs.
SYSLOGNG_PREFIX=$root/usr
LD_LIBRARY_PATH=$root/usr/lib/syslog-ng\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}
export SYSLOGNG_PREFIX LD_LIBRARY_PATH
exec $root/usr/bin/loggen "\$@"
WRAPPER
  "${SUDO[@]}" chmod 0755 "$wrapper"
  LOGGEN=$wrapper
  export SYSLOGNG_PREFIX=$root/usr
  note "loggen: $LOGGEN"
}

if [ "${SKIP_INSTALL:-}" = 1 ] || [ "$can_install" = 0 ]; then
  step "test peers: not installing (SKIP_INSTALL=1, or neither root nor sudo); using what is there"
  if command -v loggen >/dev/null 2>&1; then LOGGEN=$(command -v loggen); fi
  if [ -x "$PKGCACHE/bin/loggen" ]; then LOGGEN=$PKGCACHE/bin/loggen; fi
else
  step "test peers"
  install_peers
  setup_loggen
fi
if [ -n "${LOGGEN:-}" ]; then
  export LOGGEN
  "$LOGGEN" --help >/dev/null 2>&1 || { echo "loggen at $LOGGEN does not run" >&2; failed+=(loggen); }
fi
for b in logger rsyslogd openssl; do
  if p=$(command -v "$b"); then note "$b: $p"; else note "$b: MISSING"; fi
done
if p=$(command -v rsyslogd); then note "$("$p" -v | head -1)"; fi

# ------------------------------------------------------------------------------ Go
step "go version"
go version

step "go mod download"
go mod download

step "gofmt -l"
unformatted=$(gofmt -l .)
if [ -n "$unformatted" ]; then
  echo "not gofmt'ed (run gofmt -w):"
  echo "$unformatted"
  failed+=(gofmt)
fi

step "go vet ./..."
go vet ./... || failed+=(vet)

step "staticcheck $STATICCHECK_VERSION"
staticcheck=$PKGCACHE/bin/staticcheck-$STATICCHECK_VERSION-$(go env GOVERSION)
if [ ! -x "$staticcheck" ]; then
  tmpbin=$(mktemp -d)
  if GOBIN=$tmpbin go install "honnef.co/go/tools/cmd/staticcheck@$STATICCHECK_VERSION"; then
    "${SUDO[@]}" mkdir -p "$PKGCACHE/bin"
    "${SUDO[@]}" install -m 0755 "$tmpbin/staticcheck" "$staticcheck"
  else
    note "SKIPPED: staticcheck $STATICCHECK_VERSION could not be fetched from the Go module proxy"
  fi
  rm -rf "$tmpbin"
fi
if [ -x "$staticcheck" ]; then
  "$staticcheck" ./... || failed+=(staticcheck)
fi

step "go test -race -count=1 -timeout $GO_TEST_TIMEOUT ./..."
# The tests read the shared corpus at ../shared/corpus relative to this repository.
if [ ! -d ../shared/corpus ]; then note "note: ../shared/corpus not found; corpus tests skip (fail under CI=true)"; fi
# shellcheck disable=SC2086
go test -race -count=1 -timeout "$GO_TEST_TIMEOUT" ${GO_TEST_FLAGS:-} ./... || failed+=(test)

step "go test under GODEBUG=fips140=only (every package but integration)"
# shellcheck disable=SC2046
GODEBUG=fips140=only go test -count=1 -timeout "$GO_TEST_TIMEOUT" $(go list ./... | grep -v /integration) >/tmp/edgeaudit-fips-only.txt 2>&1 || { grep -v '^ok' /tmp/edgeaudit-fips-only.txt | tail -40; failed+=(fips-only); }

step "benchmarks once under -race (-benchtime 5x): they must run, not be fast"
# shellcheck disable=SC2086
go test -race -count=1 -run '^$' -bench . -benchtime 5x -timeout "$GO_TEST_TIMEOUT" ./... >/tmp/edgeaudit-bench-race.txt 2>&1 || { tail -40 /tmp/edgeaudit-bench-race.txt; failed+=(bench-race); }
grep -E '^(ok|FAIL|---)' /tmp/edgeaudit-bench-race.txt || true

step "done in $((SECONDS - start))s"
if [ ${#failed[@]} -gt 0 ]; then
  echo "FAILED: ${failed[*]}"
  exit 1
fi
echo "all checks passed"
