#!/usr/bin/env bash
# bench/clinical.sh - the acknowledging collectors' figures of issue 11, interleaved:
#   hl7_16     HL7 MLLP, 16 senders, each waiting for its CA (after the fsync'd commit)
#   fhir_16    FHIR, 16 keep-alive clients, one AuditEvent per POST, each waiting for 201
#   hl7_flood  HL7 ACK latency of a 100 msgs/s sender while 4 syslog TCP connections flood
# Each is a Go benchmark in bench/clinical (the daemon in-process, real sockets on
# 127.0.0.1, the default spool: encrypted, fsync'd). With BASE=<rev> the same benchmarks
# of that commit (built in a temporary worktree) alternate with this tree's, round by
# round, so that both see the same machine (this tree's benchmark files are copied over
# the other commit's). Before each case the page cache is flushed
# (`sync`) and the script waits, up to IDLE_WAIT s, for the machine to be less than
# IDLE_BUSY % busy.
#
# Usage:  bench/clinical.sh            RUNS=3 (rounds), about 40 s per case and round
# Env:    RUNS=3  BASE=<git rev>  CASES="hl7_16 fhir_16 hl7_flood"  IDLE_WAIT=60  IDLE_BUSY=15
# Prints: one line per case and round: `case build round figure=value ...`, then one
#         line per case and build with the medians.
set -euo pipefail

RUNS=${RUNS:-3}
CASES=${CASES:-hl7_16 fhir_16 hl7_flood}
IDLE_WAIT=${IDLE_WAIT:-60}
IDLE_BUSY=${IDLE_BUSY:-15}
ROOT=$(git -C "$(dirname "$0")" rev-parse --show-toplevel)
WORK=$(mktemp -d /tmp/edgeaudit-clinical.XXXXXX)
cleanup() {
	[ -n "${BASE:-}" ] && git -C "$ROOT" worktree remove --force "$WORK/base" 2>/dev/null
	rm -rf "$WORK"
}
trap cleanup EXIT

builds=(head)
(cd "$ROOT" && go test -c -o "$WORK/head.test" ./bench/clinical)
if [ -n "${BASE:-}" ]; then
	git -C "$ROOT" worktree add --detach "$WORK/base" "$BASE" >/dev/null 2>&1
	# The same benchmarks on both: this tree's, over the other commit's code.
	cp "$ROOT"/bench/clinical/*_test.go "$WORK/base/bench/clinical/"
	(cd "$WORK/base" && go test -c -o "$WORK/base.test" ./bench/clinical)
	builds=(base head)
fi

# busy: percent of the last second the CPUs were not idle (from /proc/stat).
busy() {
	local a b
	read -r _ a1 a2 a3 a4 a5 a6 a7 _ < /proc/stat
	sleep 1
	read -r _ b1 b2 b3 b4 b5 b6 b7 _ < /proc/stat
	a=$((b1 + b2 + b3 + b5 + b6 + b7 - a1 - a2 - a3 - a5 - a6 - a7))
	b=$((a + b4 - a4))
	echo $((100 * a / (b > 0 ? b : 1)))
}
settle() {
	sync
	local waited=0 pct
	pct=$(busy)
	while [ "$pct" -ge "$IDLE_BUSY" ] && [ "$waited" -lt "$IDLE_WAIT" ]; do
		waited=$((waited + 1))
		pct=$(busy)
	done
	echo "$pct"
}

bench_of() {
	case $1 in
	hl7_16) echo "-test.bench=HL7MLLP/conns=16\$ -test.benchtime=20000x" ;;
	fhir_16) echo "-test.bench=FHIRSingle/clients=16\$ -test.benchtime=20000x" ;;
	hl7_flood) echo "-test.bench=HL7AckUnderSyslogFlood\$ -test.benchtime=300x" ;;
	*) echo "clinical.sh: unknown case $1" >&2; exit 2 ;;
	esac
}

# figures turns a benchmark line ("Benchmark... N  x ns/op  v unit  v unit") into
# "unit=v unit=v".
figures() { awk '/^Benchmark/ { for (i = 5; i < NF; i += 2) printf "%s=%s ", $(i + 1), $i; print "" }'; }

: > "$WORK/lines"
for round in $(seq 1 "$RUNS"); do
	for c in $CASES; do
		for b in "${builds[@]}"; do
			pct=$(settle)
			# shellcheck disable=SC2046 # the flags are words
			line=$(cd "$WORK" && "./$b.test" -test.run '^$' $(bench_of "$c") 2>&1 | figures)
			[ -n "$line" ] || { echo "clinical.sh: $c on $b printed no result" >&2; exit 1; }
			echo "$c $b $round ${line}busy_before=$pct load=$(cut -d' ' -f1 /proc/loadavg)" | tee -a "$WORK/lines"
		done
	done
done

# Medians per case and build, of every figure.
for c in $CASES; do
	for b in "${builds[@]}"; do
		awk -v c="$c" -v b="$b" '
			$1 == c && $2 == b { for (i = 4; i <= NF; i++) { split($i, kv, "="); v[kv[1]] = v[kv[1]] " " kv[2] } }
			END {
				printf "%s %s median", c, b
				for (k in v) {
					n = split(substr(v[k], 2), xs, " ")
					for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (xs[j] + 0 < xs[i] + 0) { t = xs[i]; xs[i] = xs[j]; xs[j] = t }
					printf " %s=%s", k, (n % 2 ? xs[(n + 1) / 2] : (xs[n / 2] + xs[n / 2 + 1]) / 2)
				}
				print ""
			}' "$WORK/lines"
	done
done
