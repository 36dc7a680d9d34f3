#!/bin/sh
# e2e.sh: end-to-end latency, syslog in to receipt back, on real processes: the daemon
# binary, mosquitto (TLS, client certificates, ACL) and `edgeaudit receive` (folder
# store, or E2E_STORE=postgres://... ). One line per figure. Bounded: E2E_SECONDS of
# load (default 30) plus at most 90 s to drain, under a 4-minute test timeout.
#   E2E_RATE=80000 E2E_SECONDS=30 bench/central/e2e.sh
set -eu
cd "$(dirname "$0")/../.."
bin=$(mktemp -d)/edgeaudit
trap 'rm -rf "$(dirname "$bin")"' EXIT
go build -o "$bin" ./cmd/edgeaudit
echo "load before: $(cat /proc/loadavg)"
E2E_WINDOW=${E2E_WINDOW:-} E2E_BIN=$bin E2E_RATE=${E2E_RATE:-80000} E2E_SECONDS=${E2E_SECONDS:-30} \
	go test -count=1 -timeout 240s -run '^TestEndToEnd$' -v ./bench/central | grep -E '^e2e|FAIL|--- '
echo "load after: $(cat /proc/loadavg)"
