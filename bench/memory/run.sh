#!/usr/bin/env bash
# bench/memory/run.sh - edgeaudit's resident memory, idle and under the full syslog load
# of bench/loggen.sh, split into anonymous memory (Go heap, stacks, runtime) and
# file-backed pages (bbolt's mmap of spool.db), plus committed events/s, so that a memory
# setting is never judged without its throughput cost.
#
# Each run:
#   idle  the daemon with every listener of the zero-config daemon (syslog UDP+TCP, HL7
#         MLLP, FHIR HTTP, admin, an uplink retrying against a loopback port nobody
#         listens on), no load; /proc/PID/status is read after IDLE s (30).
#   load  for each VARIANT: the daemon with bench/loggen.sh's bench config (syslog TCP
#         only, batch max_events 1000, max_age 2s) plus the variant's settings, under
#         loggen -i -S -P -r 100000000 -s 256 -I $DUR (one TCP connection, full speed);
#         /proc/PID/status is sampled every 0.2 s from the start of the load until the
#         committed counter stops moving, and the peak of each field is kept.
# Variants are interleaved within each run, so a busy machine hits all of them alike.
# rate = committed syslog events / (start of load -> last change of the committed
# counter, polled from /healthz every 0.1 s), as bench/loggen.sh counts it.
#
# Usage:  bench/memory/run.sh            (RUNS=3 DUR=10 IDLE=30: about 3 x (32 + 2 x 17) s = ~3.5 min)
# Env:    RUNS=3  DUR=10  IDLE=30 (s; 0 skips idle)  PORT=15524 (and the 3 above it)  ADMIN_PORT=19790
#         VARIANTS="before default": names from the table in variant(), run in this order
#           each round; before = the settings of commit 383e9f2 (queue_size 32768,
#           commit_events 8192, no memory limit), default = this build's defaults
#         GOENV_ALL="" extra environment for every daemon (e.g. GOMEMLIMIT=48MiB)
#         KEEP=DIR keeps each load's samples (time anon file shmem hwm committed) there
# Needs:  go, bash; loggen from syslog-ng-core, unpacked as bench/anchors.sh
#         does (/tmp/anchors-pkgcache; fetched with apt-get download if missing).
# Prints: one line per figure: what=idle|load variant= run= rss_anon= rss_file=
#         rss_shmem= vm_hwm= (KiB; for load, the peak of each over the samples, which
#         need not coincide) and for load rate= committed= sent= secs=, each with the
#         loadavg= before it; then the medians.
# Note:   the committed counter is polled from /healthz every 0.1 s, as bench/loggen.sh
#         does, and each /healthz walks the open batch's events through bbolt's mmap:
#         that is part of rss_file (docs/performance.md, "Memory").
set -euo pipefail

RUNS=${RUNS:-3}
DUR=${DUR:-10}
IDLE=${IDLE:-30}
PORT=${PORT:-15524}
ADMIN_PORT=${ADMIN_PORT:-19790}
VARIANTS=${VARIANTS:-before default}
GOENV_ALL=${GOENV_ALL:-}
ROOT=$(git -C "$(dirname "$0")" rev-parse --show-toplevel)
PKGCACHE=/tmp/anchors-pkgcache

# variant NAME prints "ENV...|yaml lines for the spool: section|top-level yaml lines"
# (gomemlimit48 is the limit alone on the old queue: the heap stays above it, and the
# collector runs nearly all the time)
variant() {
  case $1 in
    default)     echo "||" ;;
    before)      echo "|  queue_size: 32768\n  commit_events: 8192|memory_limit: -1" ;;
    before-lim)  echo "|  queue_size: 32768\n  commit_events: 8192|" ;;
    q4096-c4096) echo "|  queue_size: 4096\n  commit_events: 4096|" ;;
    q4096-c2048-nolim) echo "|  queue_size: 4096\n  commit_events: 2048|memory_limit: -1" ;;
    q4096)       echo "|  queue_size: 4096\n  commit_events: 8192|memory_limit: -1" ;;
    q4096-c2048) echo "|  queue_size: 4096\n  commit_events: 2048|" ;;
    q2048-c1024) echo "|  queue_size: 2048\n  commit_events: 1024|" ;;
    nolimit)     echo "||memory_limit: -1" ;;
    limit32)     echo "||memory_limit: 33554432" ;;
    gomemlimit48) echo "GOMEMLIMIT=48MiB|  queue_size: 32768\n  commit_events: 8192|" ;;
    gogc50)      echo "GOGC=50||" ;;
    *) echo "run.sh: unknown variant $1" >&2; exit 2 ;;
  esac
}
for v in $VARIANTS; do variant "$v" >/dev/null; done

WORK=$(mktemp -d /tmp/edgeaudit-mem.XXXXXX)
DPID=""
cleanup() { if [ -n "$DPID" ]; then kill "$DPID" 2>/dev/null || true; wait "$DPID" 2>/dev/null || true; fi; rm -rf "$WORK"; }
trap cleanup EXIT
log() { echo "# $*" >&2; }

# loggen, as anchors.sh finds or unpacks it
if command -v loggen >/dev/null 2>&1; then
  LOGGEN=(loggen)
else
  r=$PKGCACHE/syslog-ng-core/root
  if [ ! -x "$r/usr/bin/loggen" ]; then
    log "unpacking syslog-ng-core for loggen (apt-get download)"
    mkdir -p "$PKGCACHE/syslog-ng-core"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
    deps=$(apt-cache depends --no-recommends --no-suggests --no-conflicts --no-breaks \
      --no-replaces --no-enhances syslog-ng-core | awk '$1 ~ /Depends:/ && $2 ~ /^(lib|zlib)/ {print $2}' | sort -u)
    # shellcheck disable=SC2086
    [ -z "$deps" ] || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $deps >&2
    (cd "$PKGCACHE/syslog-ng-core" && apt-get download -qq syslog-ng-core >&2 && dpkg -x ./*.deb root)
  fi
  LOGGEN=(env "SYSLOGNG_PREFIX=$r/usr" "LD_LIBRARY_PATH=$r/usr/lib/syslog-ng" "$r/usr/bin/loggen")
fi

(cd "$ROOT" && go build -o "$WORK/edgeaudit" ./cmd/edgeaudit)
BIN=$WORK/edgeaudit
REV=$(git -C "$ROOT" describe --always --dirty 2>/dev/null || echo unknown)
log "edgeaudit at $REV; $(nproc) cores; $(go version | cut -d' ' -f3); variants: $VARIANTS"

# status PID prints "rss_anon rss_file rss_shmem vm_hwm" in KiB
status() { awk '/^RssAnon/{a=$2} /^RssFile/{f=$2} /^RssShmem/{s=$2} /^VmHWM/{h=$2} END{print a+0, f+0, s+0, h+0}' "/proc/$1/status" 2>/dev/null; }
loadavg() { cut -d' ' -f1-3 /proc/loadavg | tr ' ' '/'; }

# committed prints edgeaudit_spool_events_committed_total from /healthz ("" if none)
committed() {
  local body="" line
  { exec 3<>/dev/tcp/127.0.0.1/"$ADMIN_PORT"; } 2>/dev/null || return 0
  printf "GET /healthz HTTP/1.0\r\nHost: bench\r\n\r\n" >&3
  while IFS= read -r line <&3; do body=$line; done
  exec 3<&-
  [[ $body =~ \"events_committed\":([0-9]+) ]] && echo "${BASH_REMATCH[1]}"
}

wait_ready() { local i; for ((i = 0; i < 100; i++)); do [ -n "$(committed)" ] && return 0; sleep 0.1; done; log "daemon not ready"; return 1; }

start_daemon() { # DIR CONFIG ENV...
  local dir=$1 cfg=$2; shift 2
  env "$@" "$BIN" run --config "$cfg" --data "$dir/data" > "$dir/daemon.log" 2>&1 &
  DPID=$!
  wait_ready
}
stop_daemon() { kill "$DPID"; wait "$DPID" 2>/dev/null || true; DPID=""; }

idle_once() { # RUN
  local d=$WORK/idle$1; mkdir -p "$d"
  cat > "$d/cfg.yaml" <<YAML
site: bench
device: d1
syslog:
  udp: "127.0.0.1:$PORT"
  tcp: "127.0.0.1:$PORT"
hl7:
  mllp: "127.0.0.1:$((PORT + 1))"
fhir:
  http: "127.0.0.1:$((PORT + 2))"
uplink:
  broker: "tcp://127.0.0.1:$((PORT + 3))"
admin: "127.0.0.1:$ADMIN_PORT"
log_level: warn
YAML
  # shellcheck disable=SC2086
  start_daemon "$d" "$d/cfg.yaml" $GOENV_ALL
  sleep "$IDLE"
  read -r a f s h < <(status "$DPID")
  echo "what=idle variant=all-listeners run=$1 rss_anon=$a rss_file=$f rss_shmem=$s vm_hwm=$h rss=$((a + f + s)) loadavg=$(loadavg)"
  stop_daemon
}

load_once() { # RUN VARIANT
  local d=$WORK/load$1-$2 spec envs spoolcfg top; mkdir -p "$d"
  spec=$(variant "$2"); envs=${spec%%|*}; spec=${spec#*|}; spoolcfg=${spec%%|*}; top=${spec#*|}
  {
    printf 'site: bench\ndevice: d1\nsyslog:\n  tcp: "127.0.0.1:%s"\n  udp: ""\n' "$PORT"
    printf 'batch:\n  max_events: 1000\n  max_age: 2s\n  heartbeat: 1m\n'
    printf 'admin: "127.0.0.1:%s"\nlog_level: warn\n' "$ADMIN_PORT"
    [ -z "$spoolcfg" ] || printf 'spool:\n%b\n' "$spoolcfg"
    [ -z "$top" ] || printf '%b\n' "$top"
  } > "$d/cfg.yaml"
  sync
  # shellcheck disable=SC2086
  start_daemon "$d" "$d/cfg.yaml" $GOENV_ALL $envs
  local base; base=$(committed)
  local la; la=$(loadavg)
  local t0; t0=$EPOCHREALTIME
  "${LOGGEN[@]}" -i -S -P -r 100000000 -s 256 -I "$DUR" 127.0.0.1 "$PORT" > "$d/loggen.log" 2>&1 &
  local lpid=$!
  local pa=0 pf=0 ps=0 ph=0 a f s h c last="" tlast=$t0 still=0 tick=0
  while :; do
    if ((tick % 2 == 0)); then
      read -r a f s h < <(status "$DPID")
      ((a > pa)) && pa=$a; ((f > pf)) && pf=$f; ((s > ps)) && ps=$s; ((h > ph)) && ph=$h
      echo "$EPOCHREALTIME $a $f $s $h ${last:-0}" >> "$d/samples"
    fi
    c=$(committed)
    if [ -n "$c" ] && [ "$c" != "$last" ]; then last=$c; tlast=$EPOCHREALTIME; still=0; else still=$((still + 1)); fi
    # done when loggen has ended and the counter has not moved for 1.5 s
    if ! kill -0 "$lpid" 2>/dev/null && ((still >= 15)); then break; fi
    tick=$((tick + 1))
    sleep 0.1
  done
  wait "$lpid" || true
  read -r a f s h < <(status "$DPID")
  ((h > ph)) && ph=$h
  local sent; sent=$(grep -o 'count=[0-9]*' "$d/loggen.log" | tail -1 | cut -d= -f2)
  local n=$((last - base))
  local secs rate
  secs=$(awk -v a="$t0" -v b="$tlast" 'BEGIN{printf "%.2f", b - a}')
  rate=$(awk -v n="$n" -v s="$secs" 'BEGIN{printf "%.0f", (s > 0 ? n / s : 0)}')
  echo "what=load variant=$2 run=$1 rss_anon=$pa rss_file=$pf rss_shmem=$ps vm_hwm=$ph rate=$rate committed=$n sent=${sent:-0} secs=$secs loadavg=$la"
  stop_daemon
  if [ -n "${KEEP:-}" ]; then mkdir -p "$KEEP" && cp "$d/samples" "$KEEP/samples-$1-$2" && cp "$d/daemon.log" "$KEEP/daemon-$1-$2.log"; fi
}

RAW=$WORK/raw; : > "$RAW"
for r in $(seq 1 "$RUNS"); do
  if [ "$IDLE" -gt 0 ]; then idle_once "$r" | tee -a "$RAW"; fi
  for v in $VARIANTS; do load_once "$r" "$v" | tee -a "$RAW"; done
done

awk -v rev="$REV" '
function median(s,   n, a, i, j, t) {
  n = split(s, a, " ")
  for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (a[j] + 0 < a[i] + 0) { t = a[i]; a[i] = a[j]; a[j] = t }
  return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
}
{ delete f; for (i = 1; i <= NF; i++) { split($i, kv, "="); f[kv[1]] = kv[2] }
  k = f["what"] " " f["variant"]; if (!(k in seen)) { seen[k] = 1; order[++n] = k }
  an[k] = an[k] " " f["rss_anon"]; fi[k] = fi[k] " " f["rss_file"]; hw[k] = hw[k] " " f["vm_hwm"]; ra[k] = ra[k] " " f["rate"]
  if (f["what"] == "load" && f["committed"] != f["sent"]) bad[k]++ }
END {
  printf "== medians, edgeaudit %s ==\n", rev
  for (i = 1; i <= n; i++) { k = order[i]
    printf "%-28s rss_anon %6.1f MiB  rss_file %6.1f MiB  vm_hwm %6.1f MiB", k, median(an[k]) / 1024, median(fi[k]) / 1024, median(hw[k]) / 1024
    if (k ~ /^load/) printf "  rate %7.0f ev/s (runs:%s)%s", median(ra[k]), ra[k], bad[k] ? "  [committed != sent in " bad[k] " run(s)]" : ""
    printf "\n" } }' "$RAW"
