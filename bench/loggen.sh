#!/usr/bin/env bash
# bench/loggen.sh - sustained *committed* events/s of edgeaudit under syslog-ng's `loggen`
# TCP load, measured next to rsyslog (imtcp -> omfile, with and without sync="on") and
# syslog-ng (file() fsync(yes)) on the same machine in the same run, plus edgeaudit's CPU
# per event and peak RSS.
#
# It drives bench/anchors.sh (the shared ../shared/bench/anchors.sh behind
# notes/peer-baselines.md, copied into the repo and extended with the CONNS, CUSTOM_PROTO,
# CUSTOM_TLS and LOADGEN knobs and the rsyslog-relp-fsync case) with its `custom` case
# for edgeaudit, so all three daemons get the identical load:
#   loggen -i -S -P -r 100000000 -s 256 -I $DUR 127.0.0.1 $PORT
# (one TCP connection, RFC 5424 with octet-counting framing, 256-byte messages, no rate
# limit; syslog-ng gets -F, newline framing, which its network() source expects). The
# cases run interleaved: round 1 = edgeaudit, rsyslog sync, rsyslog no-sync, syslog-ng
# fsync, round 2 = the same, ... and the page cache is flushed (`sync`) before every
# case, so one case's writeback does not land in the next one's fsyncs.
#
# edgeaudit variants (anchors.sh's `custom` case with another listener or load):
#   custom        syslog.tcp, one loggen connection (the headline case)
#   custom-cN     syslog.tcp, N loggen connections (--active-connections=N), e.g. custom-c8
#   custom-tls    syslog.tls (self-signed P-256 certificate made with openssl), loggen -U
#   custom-udp    syslog.udp (udp_read_buffer default) at UDP_RATE (default 100000 msg/s),
#                 from relpload -D, paced evenly (UDP_LOAD=loggen: loggen -D, which starts
#                 with a burst of several times the rate); written =
#                 edgeaudit_syslog_received_total{transport="udp"}, and the line gets
#                 kernel_drops= (edgeaudit_input_lost_total, kernel_drop). anchors.sh's
#                 rsyslog-udp and rsyslog-udp-4m get the same load.
#   custom-relp   syslog.relp, load from bench/syslog/relpload (a RELP client with loggen's
#                 command line and message shape; window RELP_WINDOW=128, omrelp's default)
# and anchors.sh's rsyslog-relp-fsync (imrelp -> omfile sync="on") gets the same relpload.
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
#         ANCHORS=path/to/anchors.sh (default: bench/anchors.sh in this repo)
#         IDLE_WAIT=5 (s at most to wait, before each case, until the machine is less
#         than IDLE_BUSY=15 % busy over 1 s; it has 2 cores, and other work on it skews
#         the comparison; 0 disables; the busy % seen is printed as busy_before=, the
#         1/5/15-min load average as load=)
#         CASES="custom rsyslog-tcp-fsync rsyslog-tcp syslogng-tcp-fsync" (one round, in
#         this order; any anchors.sh case or edgeaudit variant above)
#         RATIOS="custom/rsyslog-tcp>=0.6 custom/rsyslog-tcp-fsync>=4 custom/syslogng-tcp-fsync>=2"
#         (A/B>=BAR: ratio of the median rates, printed when both cases ran)
#         EXTRA_YAML="spool: {commit_events: 4096}" (appended to edgeaudit's config)
#         UDP_RATE=100000  UDP_LOAD=paced|loggen  RELP_WINDOW=128  BIN=prebuilt edgeaudit (default: go build)
#         OUT=FILE also writes the raw anchors.sh lines and the summary to FILE
#         PROFILE=1 afterwards runs the in-process Go benchmark (bench/daemonbench) with
#         -cpuprofile and prints `go tool pprof -top` of it (RUNS=0 PROFILE=1: only that;
#         PROFILE_BENCHTIME=400000x)
# Needs:  go and bash (no curl); anchors.sh installs rsyslog and unpacks loggen if missing.
# Prints: anchors.sh's line per case and run (+ committed_total, received and
#         kernel_drops for edgeaudit; busy_before and load for all), then one `figure`
#         line per case (median rate, CPU, µs of daemon CPU per written event, peak RSS,
#         the runs and the 1-min load averages) and one per ratio in RATIOS.
set -euo pipefail

RUNS=${RUNS:-3}
DUR=${DUR:-10}
PORT=${PORT:-15514}
ADMIN_PORT=${ADMIN_PORT:-19780}
IDLE_WAIT=${IDLE_WAIT:-5}
IDLE_BUSY=${IDLE_BUSY:-15}
CASES=${CASES:-custom rsyslog-tcp-fsync rsyslog-tcp syslogng-tcp-fsync}
RATIOS=${RATIOS:-custom/rsyslog-tcp>=0.6 custom/rsyslog-tcp-fsync>=4 custom/syslogng-tcp-fsync>=2}
UDP_RATE=${UDP_RATE:-100000}
RELP_WINDOW=${RELP_WINDOW:-128}
ROOT=$(git -C "$(dirname "$0")" rev-parse --show-toplevel)
ANCHORS=${ANCHORS:-$ROOT/bench/anchors.sh}
[ -f "$ANCHORS" ] || { echo "loggen.sh: $ANCHORS not found (set ANCHORS=)" >&2; exit 2; }

WORK=$(mktemp -d /tmp/edgeaudit-loggen.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
log() { echo "# $*" >&2; }

if [ -z "${BIN:-}" ]; then
  (cd "$ROOT" && go build -o "$WORK/edgeaudit" ./cmd/edgeaudit)
  BIN=$WORK/edgeaudit
fi
UDP_LOAD=${UDP_LOAD:-paced}
case " $CASES " in *relp*|*udp*)
  (cd "$ROOT" && go build -o "$WORK/relpload" ./bench/syslog/relpload) ;;
esac
udp_loadgen=""
if [ "$UDP_LOAD" = paced ]; then udp_loadgen="$WORK/relpload"; fi
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
${EXTRA_YAML:-}
EOF
# the variants' configs: the same with another listener on PORT (the flags turn tcp off)
sed "s|^  tcp: .*|  relp: \"127.0.0.1:$PORT\"|" "$WORK/bench.yaml" > "$WORK/relp.yaml"
case " $CASES " in *custom-tls*)
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj /CN=127.0.0.1 \
    -addext subjectAltName=IP:127.0.0.1 -keyout "$WORK/key.pem" -out "$WORK/cert.pem" 2>/dev/null
  sed "s|^  tcp: .*|  tls: \"127.0.0.1:$PORT\"\n  tls_cert: $WORK/cert.pem\n  tls_key: $WORK/key.pem|" \
    "$WORK/bench.yaml" > "$WORK/tls.yaml" ;;
esac

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
exec '"$BIN"' run --config "$EA_CONFIG" --data "$ANCHOR_DIR/data" $EA_FLAGS --admin 127.0.0.1:'"$ADMIN_PORT"

# Prints the committed syslog events (custom-udp: the received ones, since loss is what it
# measures); notes committed, received (all transports) and kernel drops to $WORK/counts.
export CUSTOM_COUNT='m=$(exec 3<>/dev/tcp/127.0.0.1/'"$ADMIN_PORT"' && printf "GET /metrics HTTP/1.0\r\nHost: bench\r\n\r\n" >&3 && cat <&3)
c=$(awk "/^edgeaudit_spool_events_committed_total /{printf \"%d\", \$2}" <<<"$m")
r=$(awk "/^edgeaudit_syslog_received_total/{s+=\$2} END{printf \"%d\", s}" <<<"$m")
k=$(awk "/^edgeaudit_input_lost_total.*kernel_drop/{s+=\$2} END{printf \"%d\", s}" <<<"$m")
echo "committed_total=$c received=$r kernel_drops=$k" >> '"$WORK/counts"'
# syslog events committed = all committed but the daemon self events (audit.start, ...), at most
# the received ones; custom-udp counts the received ones
if [ "$EA_VARIANT" = custom-udp ] || [ $((c - 1)) -gt "$r" ]; then echo "$r"; else echo $((c - 1)); fi'

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

# run_one CASE: one anchors.sh run of CASE (an anchors.sh case or an edgeaudit variant);
# prints anchors.sh's line with case=CASE.
run_one() {
  local c=$1 acase=$1 line
  local env=(EA_VARIANT="$1" EA_CONFIG="$WORK/bench.yaml" EA_FLAGS="--syslog-tcp 127.0.0.1:$PORT --syslog-udp off"
    CONNS=1 LOADGEN= CUSTOM_PROTO=tcp CUSTOM_TLS=)
  case $c in
    custom-c[0-9]*) acase=custom; env+=(CONNS="${c#custom-c}") ;;
    custom-tls) acase=custom; env+=(EA_CONFIG="$WORK/tls.yaml" EA_FLAGS="--syslog-tcp off --syslog-udp off" CUSTOM_TLS=1) ;;
    custom-udp) acase=custom; env+=(EA_FLAGS="--syslog-tcp off --syslog-udp 127.0.0.1:$PORT" CUSTOM_PROTO=udp UDP_RATE="$UDP_RATE" LOADGEN="$udp_loadgen") ;;
    rsyslog-udp*) env+=(UDP_RATE="$UDP_RATE" LOADGEN="$udp_loadgen") ;;
    custom-relp) acase=custom; env+=(EA_CONFIG="$WORK/relp.yaml" EA_FLAGS="--syslog-tcp off --syslog-udp off" CUSTOM_PROTO=relp LOADGEN="$WORK/relpload -w $RELP_WINDOW") ;;
    rsyslog-relp*) env+=(LOADGEN="$WORK/relpload -w $RELP_WINDOW") ;;
  esac
  line=$(env "${env[@]}" RUNS=1 DUR="$DUR" PORT="$PORT" bash "$ANCHORS" "$acase" | tail -1)
  line=${line/case=$acase /case=$c }
  if [ "$acase" = custom ]; then line="$line $(tail -1 "$WORK/counts")"; fi
  echo "$line"
}

RAW=$WORK/raw
: > "$RAW"
for r in $(seq 1 "$RUNS"); do
  for c in $CASES; do
    sync
    busy=$(wait_idle)
    load=$(cut -d' ' -f1-3 /proc/loadavg | tr ' ' /)
    line=$(run_one "$c")
    line=${line/run=1/run=$r}
    echo "$line busy_before=${busy}% load=$load" | tee -a "$RAW"
  done
done

summary() {
  awk -v dur="$DUR" -v runs="$RUNS" -v rev="$REV" -v cases="$CASES" -v ratios="$RATIOS" '
  function median(s,   n, a, i, j, t) {
    n = split(s, a, " ")
    for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (a[j] + 0 < a[i] + 0) { t = a[i]; a[i] = a[j]; a[j] = t }
    if (n == 0) return 0
    return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
  }
  /^case=/ {
    delete f
    for (i = 1; i <= NF; i++) { split($i, kv, "="); f[kv[1]] = kv[2] }
    c = f["case"]; sub(/%/, "", f["cpu"]); sub(/KiB/, "", f["rss_peak"])
    rate[c] = rate[c] " " f["rate"]; cpu[c] = cpu[c] " " f["cpu"]; rss[c] = rss[c] " " f["rss_peak"]
    if (f["written"] + 0 > 0) us[c] = us[c] " " sprintf("%.2f", f["cpu"] / 100 * f["secs"] * 1e6 / f["written"])
    split(f["load"], la, "/"); load[c] = load[c] "," la[1]
    if (f["rss_peak"] + 0 > rssmax[c]) rssmax[c] = f["rss_peak"] + 0
    if (f["end"] != "drained") nbacklog[c]++
    sw[c] = sw[c] "," (f["sent"] - f["written"])
    if (f["sent"] + 0 > 0) lp[c] = lp[c] " " sprintf("%.3f", 100 * (f["sent"] - f["written"]) / f["sent"])
    if (f["kernel_drops"] != "") kd[c] = kd[c] "," f["kernel_drops"]
    if (c ~ /^custom/ && c != "custom-udp" && f["committed_total"] - 1 < f["received"]) nmismatch++
  }
  END {
    printf "\n== summary: %d run(s) x %d s of load per case (medians), edgeaudit %s ==\n", runs, dur, rev
    name["custom"] = "edgeaudit tcp, 1 connection (bbolt, fsync per commit, signed)"
    name["custom-tls"] = "edgeaudit tls, 1 connection"
    name["custom-udp"] = "edgeaudit udp (received; sent-written = lost)"
    name["custom-relp"] = "edgeaudit relp, 1 session"
    name["rsyslog-tcp-fsync"] = "rsyslog omfile sync=on"
    name["rsyslog-tcp"] = "rsyslog omfile, no sync"
    name["syslogng-tcp-fsync"] = "syslog-ng file() fsync(yes)"
    name["rsyslog-relp-fsync"] = "rsyslog imrelp -> omfile sync=on"
    n = split(cases, cs, " ")
    for (i = 1; i <= n; i++) {
      c = cs[i]; if (rate[c] == "" || seen[c]++) continue
      m[c] = median(rate[c]); nm = (c in name) ? name[c] : c
      if (c ~ /^custom-c[0-9]+$/) nm = "edgeaudit tcp, " substr(c, 9) " connections"
      printf "figure case=%s rate=%.0f/s cpu=%s%% cpu_us_per_event=%s rss=%.1fMiB runs=%s sent-written=%s lost_pct=%s load1=%s%s%s  # %s\n",
        c, m[c], median(cpu[c]), median(us[c]), median(rss[c]) / 1024, substr(rate[c], 2), substr(sw[c], 2), median(lp[c]), substr(load[c], 2),
        kd[c] != "" ? " kernel_drops=" substr(kd[c], 2) : "", nbacklog[c] ? " backlog_runs=" nbacklog[c] : "", nm
    }
    n = split(ratios, rs, " ")
    for (i = 1; i <= n; i++) {
      split(rs[i], ab, ">="); split(ab[1], p, "/")
      if (!m[p[1]] || !m[p[2]]) continue
      r = m[p[1]] / m[p[2]]
      printf "figure ratio=%s value=%.2fx bar=%sx %s\n", ab[1], r, ab[2], (r >= ab[2]) ? "met" : "MISSED"
    }
    if (nmismatch) printf "WARNING: in %d edgeaudit run(s) committed-1 < received: events still queued at the end\n", nmismatch
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
