#!/usr/bin/env bash
# scripts/build.sh - release binaries and packages of edgeaudit, reproducibly.
#
#   scripts/build.sh                 binaries for linux/amd64, linux/arm64, windows/amd64,
#                                    and a .deb and an .rpm for each Linux one, in build/
#   scripts/build.sh linux/amd64     only these targets
#
# Reproducible: the same commit gives byte-identical binaries and packages
# (integration/build_test.go checks it). Every timestamp is SOURCE_DATE_EPOCH, which
# defaults to the last commit's time; paths are trimmed (-trimpath); the VCS stamp comes
# from the commit (-buildvcs=true); no cgo. The binaries are built with Go's FIPS 140-3
# module (GOFIPS140=v1.0.0), so FIPS mode (GODEBUG fips140=on) is their default.
#
# Env:
#   VERSION            package version (default: packaging/VERSION)
#   OUT                output folder (default build/)
#   SOURCE_DATE_EPOCH  build time (default: git log -1 --format=%ct)
#   GOFIPS140          FIPS module (default v1.0.0; "off" for none)
#   PACKAGES=0         binaries only
#   NFPM               the nfpm command (default: go run github.com/goreleaser/nfpm/v2/cmd/nfpm@v2.45.2)
set -euo pipefail

cd "$(dirname "$0")/.."
root=$(pwd)

VERSION=${VERSION:-$(cat packaging/VERSION)}
OUT=${OUT:-build}
GOFIPS140=${GOFIPS140:-v1.0.0}
PACKAGES=${PACKAGES:-1}
NFPM_VERSION=v2.45.2 # newer releases cannot be fetched here (docs/operations.md)
if [ -z "${SOURCE_DATE_EPOCH:-}" ]; then
  SOURCE_DATE_EPOCH=$(git log -1 --format=%ct)
fi
export SOURCE_DATE_EPOCH
COMMIT=$(git rev-parse HEAD)
DATE=$(date -u -d "@$SOURCE_DATE_EPOCH" +%Y-%m-%dT%H:%M:%SZ)
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then targets=(linux/amd64 linux/arm64 windows/amd64); fi

mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
start=$SECONDS

ldflags="-s -w -X main.version=$VERSION -X main.commit=$COMMIT -X main.date=$DATE"
build_bin() { # GOOS GOARCH OUTFILE
  local fips=$GOFIPS140
  [ "$fips" = off ] && fips=
  # GOFLAGS may carry -buildvcs=false (it does on the project's machines); the
  # command-line flag wins.
  env CGO_ENABLED=0 GOOS="$1" GOARCH="$2" GOFIPS140="$fips" \
    go build -trimpath -buildvcs=true -ldflags "$ldflags" -o "$3" ./cmd/edgeaudit
}

rpmarch() { case $1 in amd64) echo x86_64 ;; arm64) echo aarch64 ;; *) echo "$1" ;; esac; }

# The man page and changelog for the packages, with fixed timestamps and no gzip name.
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
if [ "$PACKAGES" = 1 ]; then
  gzip -9n <packaging/edgeaudit.8 >"$stage/edgeaudit.8.gz"
  {
    if ! grep -q "^- semver: $VERSION\$" packaging/changelog.yml; then
      printf -- '- semver: %s\n  date: %s\n  packager: edgeaudit maintainers <maintainers@edgeaudit.invalid>\n  deb: {distributions: [stable], urgency: medium}\n  changes:\n    - commit: %s\n      note: \"Build of commit %s.\"\n' \
        "$VERSION" "$DATE" "$COMMIT" "${COMMIT:0:12}"
    fi
    grep -v '^#' packaging/changelog.yml
  } >"$stage/changelog.yml"
  mkdir "$stage/packaging"
  cp -p packaging/* "$stage/packaging/" 2>/dev/null || true
  cp -rp packaging/scripts "$stage/packaging/"
  NFPM=${NFPM:-go run github.com/goreleaser/nfpm/v2/cmd/nfpm@$NFPM_VERSION}
fi

for t in "${targets[@]}"; do
  goos=${t%/*} goarch=${t#*/}
  ext=
  [ "$goos" = windows ] && ext=.exe
  bin=$OUT/edgeaudit_${goos}_${goarch}$ext
  build_bin "$goos" "$goarch" "$bin"
  echo "$bin"
  if [ "$PACKAGES" = 1 ] && [ "$goos" = linux ]; then
    cp "$bin" "$stage/edgeaudit"
    for packager in deb rpm; do
      # shellcheck disable=SC2086
      if ! (cd "$stage" && VERSION=$VERSION ARCH=$goarch $NFPM pkg --packager "$packager" \
        --config packaging/nfpm.yaml --target "$OUT/" >"$stage/nfpm.log" 2>&1); then
        cat "$stage/nfpm.log" >&2
        exit 1
      fi
    done
    rm "$stage/edgeaudit"
    ls "$OUT/edgeaudit_${VERSION}-1_${goarch}.deb"
    ls "$OUT"/edgeaudit-"${VERSION}"-1."$(rpmarch "$goarch")".rpm
  fi
done
echo "built in $((SECONDS - start))s (SOURCE_DATE_EPOCH=$SOURCE_DATE_EPOCH, commit ${COMMIT:0:12}, GOFIPS140=$GOFIPS140)" >&2
