#!/usr/bin/env bash
# bench/syslog/run.sh - the syslog targets of issue 11, each a ratio measured in one
# interleaved run of bench/loggen.sh (which drives bench/anchors.sh, so every
# daemon gets the identical loggen or relpload load on 127.0.0.1, rounds alternate the
# cases, and the page cache is flushed with `sync` before each case):
#
#   tcp   edgeaudit over TCP, one loggen connection (committed = fsync'd bbolt commit,
#         batches signed and hash-chained) next to rsyslog omfile without sync, rsyslog
#         omfile sync="on", syslog-ng file() fsync(yes); the same edgeaudit with 8 loggen
#         connections (--active-connections=8), and over TLS (loggen -U)
#   udp   edgeaudit over UDP at UDP_RATE msg/s, paced evenly (relpload -D; UDP_LOAD=loggen
#         for loggen -D -r, which bursts at its start): sent vs received, and the kernel
#         drops the daemon counted (SO_RXQ_OVFL; edgeaudit_input_lost_total); rsyslog
#         imudp with a 4 MiB buffer on the same load
#   relp  edgeaudit's syslog.relp next to rsyslog imrelp -> omfile sync="on", both loaded by
#         bench/syslog/relpload (window RELP_WINDOW, omrelp's default 128)
#
# Prints one `figure` line per case (median rate, CPU %, µs of daemon CPU per written
# event, peak RSS, the runs, sent-written, the 1-min load average before each run) and
# one per ratio with its bar; the raw per-run lines go to $OUT (default a temp file,
# named at the end).
#
# Usage:  bench/syslog/run.sh [tcp] [udp] [relp]     (default: all three)
# Env:    RUNS=3 DUR=8 (about 7 min in all: tcp 18 cases, udp 6, relp 6)
#         UDP_RATE=100000  RELP_WINDOW=128  IDLE_WAIT=3 (see bench/loggen.sh)
#         PORT=25514 ADMIN_PORT=29780 (not loggen.sh's defaults, so that a run of it by
#         someone else on the machine does not collide)
set -euo pipefail

ROOT=$(git -C "$(dirname "$0")" rev-parse --show-toplevel)
export RUNS=${RUNS:-3} DUR=${DUR:-8} IDLE_WAIT=${IDLE_WAIT:-3}
export PORT=${PORT:-25514} ADMIN_PORT=${ADMIN_PORT:-29780}
export UDP_RATE=${UDP_RATE:-100000} RELP_WINDOW=${RELP_WINDOW:-128}
GROUPS_=${*:-tcp udp relp}
OUT=${OUT:-$(mktemp /tmp/edgeaudit-syslog-bench.XXXXXX)}
: > "$OUT"

BIN=$(mktemp -d /tmp/edgeaudit-syslog-bin.XXXXXX)
trap 'rm -rf "$BIN"' EXIT
(cd "$ROOT" && go build -o "$BIN/edgeaudit" ./cmd/edgeaudit)
export BIN=$BIN/edgeaudit

# group NAME CASES RATIOS: one interleaved loggen.sh run; prints its figure lines
group() {
  local name=$1 raw
  raw=$(mktemp)
  echo "# $name: CASES=\"$2\"  load before: $(cat /proc/loadavg)" >&2
  CASES=$2 RATIOS=$3 OUT=$raw bash "$ROOT/bench/loggen.sh" > /dev/null
  cat "$raw" >> "$OUT"
  grep '^figure' "$raw" | sed "s/^figure /figure group=$name /"
  rm -f "$raw"
}

for g in $GROUPS_; do
  case $g in
    tcp)
      group tcp "custom rsyslog-tcp rsyslog-tcp-fsync syslogng-tcp-fsync custom-c8 custom-tls" \
        "custom/rsyslog-tcp>=0.6 custom/rsyslog-tcp-fsync>=4 custom/syslogng-tcp-fsync>=2 custom-c8/custom>=1.5 custom-tls/custom>=0.8" ;;
    udp)
      echo "figure group=udp sysctl net.core.rmem_max=$(cat /proc/sys/net/core/rmem_max) net.core.rmem_default=$(cat /proc/sys/net/core/rmem_default) udp_read_buffer=default(4194304; the kernel caps SO_RCVBUF at rmem_max without CAP_NET_ADMIN, and SO_RCVBUFFORCE is tried first)"
      group udp "custom-udp rsyslog-udp-4m" "" ;;
    relp)
      group relp "custom-relp rsyslog-relp-fsync" "custom-relp/rsyslog-relp-fsync>=2" ;;
    *) echo "run.sh: unknown group $g (tcp, udp, relp)" >&2; exit 2 ;;
  esac
done
echo "# raw lines: $OUT" >&2
