#!/usr/bin/env bash
# bench/loggen.sh - sustained *committed* events/s of edgeaudit under syslog-ng's `loggen`
# TCP load, measured next to rsyslog (imtcp -> omfile, with and without sync="on") on the
# same machine in the same run, plus edgeaudit's peak RSS.
#
# It drives ../shared/bench/anchors.sh (the script behind notes/peer-baselines.md) with
# its `custom` case for edgeaudit, so all three daemons get the identical load:
#   loggen -i -S -P -r 100000000 -s 256 -I $DUR 127.0.0.1 $PORT
# (one TCP connection, RFC 5424 with octet-counting framing, 256-byte messages, no rate
# limit). The cases run interleaved: round 1 = edgeaudit, rsyslog sync, rsyslog no-sync,
# round 2 = the same, ... and the page cache is flushed (`sync`) before every case, so
# one case's writeback does not land in the next one's fsyncs.
#
# edgeaudit's "written" is the number of syslog events committed (fsync'd to bbolt):
# edgeaudit_spool_events_committed_total minus the one self-audit event (audit.start) the
# daemon records before it listens; it is cross-checked against
# edgeaudit_syslog_received_total{transport="tcp"} (all received events committed) and
# against loggen's count (nothing lost).
#
# rate = written / (start of load -> last progress), as anchors.sh defines it. Progress
# for edgeaudit is a line appended to $ANCHOR_DIR/progress each time the committed
# counter changes (polled from /healthz every 0.1 s by a bash loop over /dev/tcp), because
# bbolt grows its file in 16 MiB steps and the file size alone would end the measurement
# up to one step early.
#
# Usage:  bench/loggen.sh                 (RUNS=3 DUR=10: 3 rounds x 3 cases x ~22 s = ~3.5 min)
# Env:    RUNS=3  DUR=10 (s of load per case)  PORT=15514  ADMIN_PORT=19780
#         ANCHORS=path/to/anchors.sh (default: ../shared/bench/anchors.sh beside the repo)
#         IDLE_WAIT=60 (s at most to wait, before each case, until the machine is less
#         than IDLE_BUSY=15 % busy over 1 s; it has 2 cores, and other work on it skews
#         the comparison; 0 disables; the busy % seen is printed as busy_before=)
#         CASES="custom rsyslog-tcp-fsync rsyslog-tcp" (one round, in this order)
#         OUT=FILE also writes the raw anchors.sh lines and the summary to FILE
#         PROFILE=1 afterwards runs the in-process Go benchmark (bench/daemonbench) with
#         -cpuprofile and prints `go tool pprof -top` of it (RUNS=0 PROFILE=1: only that;
#         PROFILE_BENCHTIME=400000x)
# Needs:  go and bash (no curl); anchors.sh installs rsyslog and unpacks loggen if missing.
# Prints: anchors.sh's line per case and run (+ committed_total, received_tcp and
#         busy_before for edgeaudit), then the medians, both ratios and peak RSS.
set -euo pipefail

RUNS=${RUNS:-3}
DUR=${DUR:-10}
PORT=${PORT:-15514}
ADMIN_PORT=${ADMIN_PORT:-19780}
IDLE_WAIT=${IDLE_WAIT:-60}
IDLE_BUSY=${IDLE_BUSY:-15}
CASES=${CASES:-custom rsyslog-tcp-fsync rsyslog-tcp}
ROOT=$(git -C "$(dirname "$0")" rev-parse --show-toplevel)
ANCHORS=${ANCHORS:-$ROOT/../shared/bench/anchors.sh}
[ -f "$ANCHORS" ] || { echo "loggen.sh: $ANCHORS not found (set ANCHORS=)" >&2; exit 2; }

WORK=$(mktemp -d /tmp/edgeaudit-loggen.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
log() { echo "# $*" >&2; }

(cd "$ROOT" && go build -o "$WORK/edgeaudit" ./cmd/edgeaudit)
BIN=$WORK/edgeaudit
REV=$(git -C "$ROOT" describe --always --dirty 2>/dev/null || echo unknown)
log "edgeaudit at $REV; $(nproc) cores; $(go version | cut -d' ' -f3)"
cat > "$WORK/bench.yaml" <<EOF
site: bench
device: d1
syslog:
  tcp: "127.0.0.1:$PORT"
batch:
  max_events: 1000
  max_age: 2s
  heartbeat: 1m
admin: "127.0.0.1:$ADMIN_PORT"
log_level: warn
EOF

# The daemon is exec'd (anchors.sh measures that PID). Before the exec, a forked bash loop
# (a child, so its CPU is not counted as the daemon's) appends the committed counter to
# $ANCHOR_DIR/progress whenever it changes, and ends with the daemon.
export CUSTOM_CMD='self=$$
poll() {
  local body="" line
  printf "GET /healthz HTTP/1.0\r\nHost: bench\r\n\r\n" >&3
  while IFS= read -r line <&3; do body=$line; done
  if [[ $body =~ \"events_committed\":([0-9]+) ]] && [ "${BASH_REMATCH[1]}" != "$last" ]; then
    last=${BASH_REMATCH[1]}; echo "$EPOCHREALTIME $last" >> "$ANCHOR_DIR/progress"
  fi
}
( last=""
  while kill -0 "$self" 2>/dev/null; do
    { poll; } 2>/dev/null 3<>/dev/tcp/127.0.0.1/'"$ADMIN_PORT"'
    sleep 0.1
  done ) &
exec '"$BIN"' run --config '"$WORK/bench.yaml"' --data "$ANCHOR_DIR/data" --syslog-tcp 127.0.0.1:$ANCHOR_PORT --syslog-udp off --admin 127.0.0.1:'"$ADMIN_PORT"

# Prints the committed syslog events; notes committed/received to $WORK/counts.
export CUSTOM_COUNT='m=$(exec 3<>/dev/tcp/127.0.0.1/'"$ADMIN_PORT"' && printf "GET /metrics HTTP/1.0\r\nHost: bench\r\n\r\n" >&3 && cat <&3)
c=$(awk "/^edgeaudit_spool_events_committed_total /{print \$2}" <<<"$m")
r=$(awk "/^edgeaudit_syslog_received_total\\{transport=\"tcp\"\\}/{print \$2}" <<<"$m")
c=$(awk -v v="$c" "BEGIN{printf \"%d\", v}"); r=$(awk -v v="$r" "BEGIN{printf \"%d\", v}")
echo "committed_total=$c received_tcp=$r" >> '"$WORK/counts"'
echo $((c - 1))'

# busy_pct: CPU busy % of the whole machine (all cores) over the last second.
busy_pct() {
  local a b
  a=($(head -1 /proc/stat)); sleep 1; b=($(head -1 /proc/stat))
  local i ta=0 tb=0
  for i in 1 2 3 4 5 6 7 8; do ta=$((ta + a[i])); tb=$((tb + b[i])); done
  local idle=$(( (b[4] + b[5]) - (a[4] + a[5]) )) total=$((tb - ta))
  echo $(( total > 0 ? 100 * (total - idle) / total : 0 ))
}

# wait_idle waits (at most IDLE_WAIT s) until other work leaves the machine nearly idle.
wait_idle() {
  local i b=0
  [ "$IDLE_WAIT" -gt 0 ] || { echo "-"; return 0; }
  for ((i = 0; i < IDLE_WAIT; i++)); do
    b=$(busy_pct)
    if [ "$b" -lt "$IDLE_BUSY" ]; then echo "$b"; return 0; fi
  done
  log "machine still ${b}% busy after ${IDLE_WAIT}s; measuring anyway"
  echo "$b"
}

RAW=$WORK/raw
: > "$RAW"
for r in $(seq 1 "$RUNS"); do
  for c in $CASES; do
    sync
    busy=$(wait_idle)
    line=$(RUNS=1 DUR=$DUR PORT=$PORT bash "$ANCHORS" "$c" | tail -1)
    line=${line/run=1/run=$r}
    if [ "$c" = custom ]; then line="$line $(tail -1 "$WORK/counts")"; fi
    echo "$line busy_before=${busy}%" | tee -a "$RAW"
  done
done

summary() {
  awk -v dur="$DUR" -v runs="$RUNS" -v rev="$REV" '
  function median(s,   n, a, i, j, t) {
    n = split(s, a, " ")
    for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (a[j] + 0 < a[i] + 0) { t = a[i]; a[i] = a[j]; a[j] = t }
    if (n == 0) return 0
    return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
  }
  {
    delete f
    for (i = 1; i <= NF; i++) { split($i, kv, "="); f[kv[1]] = kv[2] }
    c = f["case"]; sub(/%/, "", f["cpu"]); sub(/KiB/, "", f["rss_peak"])
    rate[c] = rate[c] " " f["rate"]; cpu[c] = cpu[c] " " f["cpu"]; rss[c] = rss[c] " " f["rss_peak"]
    if (f["rss_peak"] + 0 > rssmax[c]) rssmax[c] = f["rss_peak"] + 0
    if (f["end"] != "drained") nbacklog[c]++
    if (f["unwritten"] + 0 != 0) nunwritten[c]++
    if (c == "custom" && f["committed_total"] - 1 != f["received_tcp"]) nmismatch++
  }
  END {
    printf "\n== summary: %d run(s) x %d s of loggen load per case (medians), edgeaudit %s ==\n", runs, dur, rev
    n = split("custom rsyslog-tcp-fsync rsyslog-tcp", cs, " ")
    name["custom"] = "edgeaudit (bbolt, fsync per commit)"
    name["rsyslog-tcp-fsync"] = "rsyslog omfile sync=on"
    name["rsyslog-tcp"] = "rsyslog omfile, no sync"
    for (i = 1; i <= n; i++) {
      c = cs[i]; if (rate[c] == "") continue
      m[c] = median(rate[c])
      printf "%-38s %9.0f ev/s  (runs:%s)  cpu %s%%  peak RSS %.1f MiB%s%s\n", name[c], m[c], rate[c], median(cpu[c]),
        median(rss[c]) / 1024, nbacklog[c] ? "  [" nbacklog[c] " run(s) ended in backlog]" : "",
        nunwritten[c] ? "  [" nunwritten[c] " run(s) with sent != written]" : ""
    }
    if (m["custom"] && m["rsyslog-tcp-fsync"]) {
      r1 = m["custom"] / m["rsyslog-tcp-fsync"]
      printf "ratio vs rsyslog sync=on:  %.2fx  (bar >= 3.0x: %s)\n", r1, (r1 >= 3.0) ? "met" : "MISSED"
    }
    if (m["custom"] && m["rsyslog-tcp"]) {
      r2 = m["custom"] / m["rsyslog-tcp"]
      printf "ratio vs rsyslog no sync:  %.2fx  (bar >= 0.4x: %s)\n", r2, (r2 >= 0.4) ? "met" : "MISSED"
    }
    if (nmismatch) printf "WARNING: in %d edgeaudit run(s) committed-1 != received: self events other than audit.start, or events still queued\n", nmismatch
    if (rssmax["custom"]) printf "edgeaudit peak RSS (VmHWM), max over runs: %.1f MiB\n", rssmax["custom"] / 1024
  }' "$RAW"
}
if [ "$RUNS" -gt 0 ]; then summary | tee -a "$RAW"; fi
if [ -n "${OUT:-}" ]; then cp "$RAW" "$OUT"; fi

if [ -n "${PROFILE:-}" ]; then
  log "profiling the in-process pipeline: go test ./bench/daemonbench -bench . -cpuprofile"
  (cd "$ROOT" && go test ./bench/daemonbench -run '^$' -bench . -benchtime "${PROFILE_BENCHTIME:-400000x}" \
      -cpuprofile "$WORK/cpu.out" -o "$WORK/daemonbench.test" &&
    go tool pprof -top -nodecount=40 "$WORK/daemonbench.test" "$WORK/cpu.out" 2>/dev/null | head -50 &&
    echo "--- cumulative ---" &&
    go tool pprof -top -cum -nodecount=40 "$WORK/daemonbench.test" "$WORK/cpu.out" 2>/dev/null | head -50)
fi
