#!/bin/sh
# run.sh: every figure of issue 11's central part, one line each, run one after the
# other (each step at most about 3 minutes with the defaults):
#  1. receiver verification per core: events per CPU second at GOMAXPROCS=1
#     (BenchmarkVerifyOnly, BenchmarkHandle/mem), 3 runs;
#  2. the PostgreSQL store, fsync on, on the same machine: BenchmarkAppend/copy and
#     BenchmarkHandlePG, batches of 1000 events, 3 runs each, with client and server
#     CPU per batch;
#  3. end to end (e2e.sh) at E2E_RATE (default 20000 msg/s) for E2E_SECONDS (20).
set -eu
cd "$(dirname "$0")/../.."
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
go test -c -o "$tmp/receiver.test" ./receiver
go test -c -o "$tmp/pgstore.test" ./receiver/pgstore
load() { cut -d' ' -f1-3 /proc/loadavg; }

echo "== 1. verification per core (-cpu 1), load $(load)"
(cd receiver && "$tmp/receiver.test" -test.run '^$' -test.bench 'VerifyOnly|Handle/mem' -test.benchtime 2s -test.count 3 -test.cpu 1) |
	awk '/^Benchmark/ { for (i = 1; i < NF; i++) if ($(i+1) == "events/cpu-s") printf "%s %s events/cpu-s\n", $1, $i }'

echo "== 2. PostgreSQL store, fsync on, load $(load)"
(cd receiver/pgstore && "$tmp/pgstore.test" -test.run '^$' -test.bench 'Append/copy' -test.benchtime 128x -test.count 3) |
	awk '/^Benchmark/ { printf "%s", $1; for (i = 3; i < NF; i += 2) printf " %s %s", $i, $(i+1); print "" }'
(cd receiver && "$tmp/receiver.test" -test.run '^$' -test.bench 'HandlePG$' -test.benchtime 128x -test.count 3) |
	awk '/^Benchmark/ { printf "%s", $1; for (i = 3; i < NF; i += 2) printf " %s %s", $i, $(i+1); print "" }'
echo "   load $(load)"

echo "== 3. end to end"
E2E_RATE=${E2E_RATE:-20000} E2E_SECONDS=${E2E_SECONDS:-20} sh bench/central/e2e.sh
