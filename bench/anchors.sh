#!/usr/bin/env bash
# bench/anchors.sh - this is /work/shared/bench/anchors.sh (the shared script behind
# notes/peer-baselines.md), copied into the repo and extended; with none of the knobs
# below set it behaves exactly like the shared one. Extensions (env names as
# bench/loggen.sh passes them):
#   CONNS=N            loggen --active-connections=N (any case; default: loggen's 1)
#   CUSTOM_PROTO=udp   the custom case listens on UDP: wait for a UDP listener, loggen
#                      -i -D -P -r $UDP_RATE (0 = as fast as possible), proto=udp
#   CUSTOM_PROTO=relp  the custom case is a RELP receiver (TCP listener, proto=relp;
#                      use with LOADGEN, loggen cannot speak RELP)
#   CUSTOM_TLS=1       the custom case gets TLS: loggen -U -P (its ssl plugin, in place of
#                      -i -S), proto=tls
#   LOADGEN="cmd args" runs `cmd args <loggen's arguments> -s SIZE -I DUR 127.0.0.1 PORT`
#                      instead of loggen (e.g. bench/syslog/relpload -w 128, which takes
#                      loggen's command line and prints its "average rate = ..." summary)
#   case rsyslog-relp-fsync  rsyslog imrelp (address 127.0.0.1) -> omfile flushOnTXEnd="on"
#                      sync="on" (like rsyslog-tcp-fsync), proto=relp; needs LOADGEN; the
#                      imrelp module comes from the system or from the Debian package
#                      rsyslog-relp unpacked under /tmp/anchors-pkgcache. Not in the default
#                      set of cases (it needs a RELP load generator); accepted by name.
#
# anchors.sh - receive-throughput anchors for the established syslog daemons
# (rsyslog, syslog-ng) under syslog-ng's `loggen` load, on 127.0.0.1 only.
#
# Prints one line per configuration:
#   case=... run=N proto=... sent=N written=N unwritten=N secs=S rate=MSG/s cpu=% rss_peak=KiB
#   loggen_rate=MSG/s loggen_cpu=% end=drained|backlog
# `rate` is lines actually written to the output file divided by the time from the
# start of the load to the last growth of that file (i.e. including queue drain);
# for rsyslog-tcp-discard (nothing written) it is loggen's own send rate.
# `unwritten` = sent - written: lost (UDP drops, or syslog-ng drops without flow-control)
# when end=drained; when end=backlog the daemon was still draining its queue MAXDRAIN s
# after the load stopped, so unwritten is (mostly) still queued and rate is the sustained
# output rate under backlog. cpu = daemon CPU time / secs (200% = both cores).
# rss_peak = VmHWM of the daemon process.
#
# Usage:  bench/anchors.sh [CASE ...]          (default: all cases, one run each)
#         bench/anchors.sh --list
# Env:    DUR=10 (s of load per case)  SIZE=256 (bytes/msg)  RUNS=1
#         MAXDRAIN=8 (s to wait for queues to drain after the load ends)
#         PORT=15514 (TCP and UDP port on 127.0.0.1)  UDP_RATE=0 (0 = as fast as possible)
#         KEEP=1 keeps the scratch dir (/tmp/anchors.XXXXXX) for inspection
#         CONNS, CUSTOM_PROTO, CUSTOM_TLS, LOADGEN: see the extensions above
#
# Side by side with another daemon (e.g. ours): case `custom`, enabled by CUSTOM_CMD.
#   CUSTOM_CMD    shell command that starts the daemon in the foreground; it must `exec` the
#                 daemon (so its PID is the one measured), listen on 127.0.0.1:$ANCHOR_PORT
#                 (TCP; RFC 5424 with octet-counting framing) and keep its data under $ANCHOR_DIR.
#                 e.g. CUSTOM_CMD='exec ./edgeaudit run --data "$ANCHOR_DIR" --syslog-tcp 127.0.0.1:$ANCHOR_PORT'
#   CUSTOM_COUNT  shell command printing how many events the daemon stored (run once after the
#                 load, while the daemon still runs); default: lines of $ANCHOR_DIR/out.log
#   CUSTOM_FRAMING=lf  sends newline-framed messages instead (loggen -F)
#   Progress (for drain detection) is the total size of files under $ANCHOR_DIR.
#
# Bounded: each case runs DUR s of load plus at most MAXDRAIN s of drain and ~2 s of
# start/stop; the default 11 cases took 2.5 min here (plus a one-time install).
#
# It installs what it needs without starting any system service: rsyslogd is used from
# PATH if present, syslog-ng/loggen likewise; whatever is missing is fetched with
# `apt-get download` and unpacked (dpkg -x) under /tmp/anchors-pkgcache, because the
# Debian packages rsyslog and syslog-ng-core conflict with each other and cannot both be
# installed. Their shared-library dependencies are installed with apt-get.
set -euo pipefail

DUR=${DUR:-10}
SIZE=${SIZE:-256}
RUNS=${RUNS:-1}
MAXDRAIN=${MAXDRAIN:-8}
PORT=${PORT:-15514}
UDP_RATE=${UDP_RATE:-0}
TCP_RATE=${TCP_RATE:-100000000}   # per connection; loggen's own default is only 1000 msg/s
PKGCACHE=/tmp/anchors-pkgcache

ALL_CASES="rsyslog-tcp-discard rsyslog-tcp rsyslog-tcp-fsync rsyslog-tcp-diskq rsyslog-tcp-diskq-sync rsyslog-udp rsyslog-udp-4m syslogng-tcp syslogng-tcp-flowctl syslogng-tcp-diskbuf syslogng-tcp-fsync"

if [ -n "${CUSTOM_CMD:-}" ]; then ALL_CASES="$ALL_CASES custom"; fi
EXTRA_CASES="rsyslog-relp-fsync"   # accepted by name, not run by default
if [ "${1:-}" = "--list" ]; then echo "$ALL_CASES $EXTRA_CASES" | tr ' ' '\n'; exit 0; fi
CASES="${*:-$ALL_CASES}"
CUSTOM_PROTO=${CUSTOM_PROTO:-tcp}
case $CUSTOM_PROTO in tcp|udp|relp) ;; *) echo "anchors.sh: CUSTOM_PROTO=$CUSTOM_PROTO (tcp, udp or relp)" >&2; exit 2 ;; esac
LOADGEN_CMD=()
if [ -n "${LOADGEN:-}" ]; then read -ra LOADGEN_CMD <<< "$LOADGEN"; fi

log() { echo "# $*" >&2; }

# ---------------------------------------------------------------- install
apt_ready=0
apt_update_once() {
  if [ "$apt_ready" = 0 ]; then DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2; apt_ready=1; fi
}

# unpack PKG into $PKGCACHE/PKG (no maintainer scripts, no service start) and install its lib deps
unpack_pkg() {
  local pkg=$1 dir=$PKGCACHE/$1
  if [ -d "$dir/root" ]; then return 0; fi
  apt_update_once
  mkdir -p "$dir"
  local deps
  deps=$(apt-cache depends --no-recommends --no-suggests --no-conflicts --no-breaks \
           --no-replaces --no-enhances "$pkg" | awk '$1 ~ /Depends:/ && $2 ~ /^(lib|zlib)/ {print $2}' | sort -u)
  if [ -n "$deps" ]; then
    # shellcheck disable=SC2086
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $deps >&2
  fi
  (cd "$dir" && apt-get download -qq "$pkg" >&2 2>/dev/null && dpkg -x ./*.deb root)
}

RSYSLOGD=""; RS_MODARG=()
setup_rsyslog() {
  if command -v rsyslogd >/dev/null 2>&1; then
    RSYSLOGD=$(command -v rsyslogd)
  else
    unpack_pkg rsyslog
    RSYSLOGD=$PKGCACHE/rsyslog/root/usr/sbin/rsyslogd
    RS_MODARG=(-M "$(dirname "$(find "$PKGCACHE/rsyslog/root/usr/lib" -name imtcp.so | head -1)")")
  fi
}

SYSLOGNG=""; LOGGEN=""; SNG_ENV=()
setup_syslogng() {
  if command -v syslog-ng >/dev/null 2>&1 && command -v loggen >/dev/null 2>&1; then
    SYSLOGNG=$(command -v syslog-ng); LOGGEN=$(command -v loggen)
  else
    unpack_pkg syslog-ng-core
    local r=$PKGCACHE/syslog-ng-core/root
    SYSLOGNG=$r/usr/sbin/syslog-ng; LOGGEN=$r/usr/bin/loggen
    SNG_ENV=(env "SYSLOGNG_PREFIX=$r/usr" "LD_LIBRARY_PATH=$r/usr/lib/syslog-ng")
  fi
}

# imrelp: from the system if this rsyslogd's module dir (or the system's) has it, else from
# rsyslog-relp unpacked under $PKGCACHE; loaded by absolute path, so it works both with
# rsyslogd from PATH (no -M) and with the unpacked one (-M pointing at another dir)
IMRELP=""
setup_imrelp() {
  local dirs=() d
  if [ ${#RS_MODARG[@]} -gt 0 ]; then dirs+=("${RS_MODARG[1]}"); fi
  for d in "${dirs[@]}" /usr/lib/*/rsyslog /usr/lib/rsyslog /usr/lib64/rsyslog; do
    if [ -f "$d/imrelp.so" ]; then IMRELP=$d/imrelp.so; return 0; fi
  done
  unpack_pkg rsyslog-relp
  IMRELP=$(find "$PKGCACHE/rsyslog-relp/root/usr/lib" -name imrelp.so | head -1)
  [ -n "$IMRELP" ] || { log "imrelp.so not found in rsyslog-relp"; return 1; }
}

setup_rsyslog
setup_syslogng
case " $CASES " in *" rsyslog-relp-fsync "*)
  [ ${#LOADGEN_CMD[@]} -gt 0 ] || { log "rsyslog-relp-fsync needs LOADGEN= (a RELP load generator, e.g. bench/syslog/relpload)"; exit 2; }
  setup_imrelp ;;
esac

SCR=$(mktemp -d /tmp/anchors.XXXXXX)
DPID=""
cleanup() {
  if [ -n "$DPID" ] && kill -0 "$DPID" 2>/dev/null; then kill -TERM "$DPID" 2>/dev/null || true; sleep 1; kill -KILL "$DPID" 2>/dev/null || true; fi
  if [ -z "${KEEP:-}" ]; then rm -rf "$SCR"; else log "scratch kept: $SCR"; fi
}
trap cleanup EXIT INT TERM

# ---------------------------------------------------------------- configs
# rsyslog: input bound to its own ruleset so rsyslogd's own start/stop messages stay out of the file
rs_conf() { # $1=case $2=dir
  local c=$1 d=$2 input action
  case $c in
    rsyslog-udp) input="module(load=\"imudp\")
input(type=\"imudp\" address=\"127.0.0.1\" port=\"$PORT\" ruleset=\"r\")" ;;
    rsyslog-udp-4m) input="module(load=\"imudp\")
input(type=\"imudp\" address=\"127.0.0.1\" port=\"$PORT\" ruleset=\"r\" rcvBufSize=\"4m\")" ;;
    rsyslog-relp*) input="module(load=\"$IMRELP\")
input(type=\"imrelp\" address=\"127.0.0.1\" port=\"$PORT\" ruleset=\"r\")" ;;
    *)           input="module(load=\"imtcp\")
input(type=\"imtcp\" address=\"127.0.0.1\" port=\"$PORT\" ruleset=\"r\")" ;;
  esac
  case $c in
    rsyslog-tcp|rsyslog-udp|rsyslog-udp-4m)
      action="action(type=\"omfile\" file=\"$d/out.log\")" ;;
    rsyslog-tcp-discard)   # receive + parse, then drop: the ceiling of this loggen load on this box
      # (rsyslog refuses a config with no action at all, so one that never matches)
      action="if \$programname == \"never-matches\" then action(type=\"omfile\" file=\"$d/out.log\")" ;;
    rsyslog-tcp-fsync|rsyslog-relp-fsync)   # fsync of file + dir after every batch (group commit)
      action="action(type=\"omfile\" file=\"$d/out.log\" flushOnTXEnd=\"on\" sync=\"on\")" ;;
    rsyslog-tcp-diskq)   # disk-only action queue, no fsync
      action="action(type=\"omfile\" file=\"$d/out.log\" queue.type=\"Disk\" queue.filename=\"aq\" queue.maxDiskSpace=\"4g\" queue.saveOnShutdown=\"on\")" ;;
    rsyslog-tcp-diskq-sync)   # disk-only action queue, queue files fsync'd, and omfile fsync per batch
      action="action(type=\"omfile\" file=\"$d/out.log\" sync=\"on\" queue.type=\"Disk\" queue.filename=\"aq\" queue.maxDiskSpace=\"4g\" queue.syncQueueFiles=\"on\" queue.saveOnShutdown=\"on\")" ;;
  esac
  cat <<EOF
global(workDirectory="$d/work")
$input
ruleset(name="r") {
  $action
}
EOF
}

sng_conf() { # $1=case $2=dir
  local c=$1 d=$2 dest flags=""
  case $c in
    syslogng-tcp)         dest="file(\"$d/out.log\")" ;;
    syslogng-tcp-flowctl) dest="file(\"$d/out.log\")"; flags="flags(flow-control);" ;;
    syslogng-tcp-diskbuf) dest="file(\"$d/out.log\" disk-buffer(reliable(yes) disk-buf-size(2147483648) dir(\"$d/work\")))"; flags="flags(flow-control);" ;;
    syslogng-tcp-fsync)   dest="file(\"$d/out.log\" fsync(yes))"; flags="flags(flow-control);" ;;
  esac
  cat <<EOF
@version: 3.38
options { stats-freq(0); log-fifo-size(100000); };
source s_net { network(ip("127.0.0.1") port($PORT) transport("tcp") flags(syslog-protocol)
                       max-connections(10) log-iw-size(10000)); };
destination d_out { $dest; };
log { source(s_net); destination(d_out); $flags };
EOF
}

# ---------------------------------------------------------------- measurement
cpu_ticks() { awk '{print $14+$15}' "/proc/$1/stat"; }
now() { date +%s.%N; }

wait_listen() { # proto port
  local i
  for i in $(seq 1 50); do
    if [ "$1" = udp ]; then ss -lunH "sport = :$2" | grep -q . && return 0
    else ss -ltnH "sport = :$2" | grep -q . && return 0; fi
    sleep 0.1
  done
  log "daemon did not listen on $1/$2"; return 1
}

run_case() { # case run#
  local c=$1 d=$SCR/$1.$2 proto=tcp lgargs
  mkdir -p "$d/work"
  case $c in *udp*) proto=udp ;; *relp*) proto=relp ;; custom) proto=$CUSTOM_PROTO ;; esac
  if [ "$c" = custom ] && [ "$proto" = tcp ] && [ "${CUSTOM_TLS:-}" = 1 ]; then proto=tls; fi
  case $c in
    rsyslog-*)
      rs_conf "$c" "$d" > "$d/rsyslog.conf"
      "$RSYSLOGD" "${RS_MODARG[@]}" -n -f "$d/rsyslog.conf" -i "$d/rsyslogd.pid" > "$d/daemon.log" 2>&1 &
      DPID=$!
      # loggen -P: RFC 5424 with octet-counting framing (imtcp accepts both framings)
      if [ "$proto" = udp ]; then lgargs=(-i -D -P -r "${UDP_RATE/#0/100000000}")
      else lgargs=(-i -S -P -r "$TCP_RATE"); fi ;;
    syslogng-*)
      sng_conf "$c" "$d" > "$d/syslog-ng.conf"
      "${SNG_ENV[@]}" "$SYSLOGNG" -F --no-caps -f "$d/syslog-ng.conf" -R "$d/work/persist" \
         -c "$d/work/ctl" -p "$d/work/pid" > "$d/daemon.log" 2>&1 &
      DPID=$!
      # network() in 3.38 reads newline-framed TCP: -F turns off octet-counting framing
      lgargs=(-i -S -P -F -r "$TCP_RATE") ;;
    custom)
      ANCHOR_DIR=$d ANCHOR_PORT=$PORT bash -c "$CUSTOM_CMD" > "$d/daemon.log" 2>&1 &
      DPID=$!
      if [ "$proto" = udp ]; then lgargs=(-i -D -P -r "${UDP_RATE/#0/100000000}")
      elif [ "${CUSTOM_TLS:-}" = 1 ]; then lgargs=(-U -P -r "$TCP_RATE")   # -U: loggen's ssl plugin (TCP), in place of the socket plugin's -i -S
      else lgargs=(-i -S -P -r "$TCP_RATE"); fi
      if [ "${CUSTOM_FRAMING:-}" = lf ]; then lgargs+=(-F); fi ;;
  esac
  if [ -n "${CONNS:-}" ]; then lgargs+=("--active-connections=$CONNS"); fi
  local lgcmd=("${SNG_ENV[@]}" "$LOGGEN")
  if [ ${#LOADGEN_CMD[@]} -gt 0 ]; then lgcmd=("${LOADGEN_CMD[@]}"); fi
  wait_listen "$proto" "$PORT" || { cat "$d/daemon.log" >&2; return 1; }
  sleep 0.3
  local hz cpu0 t0 t1 tend lg size last=-1 tlast lgend="" status="drained"
  hz=$(getconf CLK_TCK); cpu0=$(cpu_ticks $DPID); t0=$(now); tlast=$t0
  ( TIMEFORMAT='%U %S %R'
    time "${lgcmd[@]}" "${lgargs[@]}" -s "$SIZE" -I "$DUR" 127.0.0.1 "$PORT" > "$d/loggen.log" 2>&1
  ) 2> "$d/loggen.time" &
  lg=$!
  while :; do
    sleep 0.2
    if [ "$c" = custom ]; then size=$(du -sb "$d" 2>/dev/null | cut -f1)
    else size=$(stat -c %s "$d/out.log" 2>/dev/null || echo 0); fi
    t1=$(now)
    if [ "$size" != "$last" ]; then last=$size; tlast=$t1; fi
    if [ -z "$lgend" ] && ! kill -0 $lg 2>/dev/null; then lgend=$t1; fi
    if [ -n "$lgend" ]; then
      if awk -v a="$t1" -v b="$tlast" 'BEGIN{exit !(a-b>=1.5)}'; then tend=$tlast; break; fi
      if awk -v a="$t1" -v b="$lgend" -v m="$MAXDRAIN" 'BEGIN{exit !(a-b>=m)}'; then tend=$t1; status="backlog"; break; fi
    fi
    if awk -v a="$t1" -v b="$t0" -v m="$((DUR + 30))" 'BEGIN{exit !(a-b>=m)}'; then pkill -TERM -P $lg 2>/dev/null || true; fi
  done
  wait $lg || true
  local cpu1 rss written sent lrate ltime lcpu
  cpu1=$(cpu_ticks $DPID)
  rss=$(awk '/VmHWM/{print $2}' "/proc/$DPID/status")
  written=0
  if [ "$c" = custom ] && [ -n "${CUSTOM_COUNT:-}" ]; then
    written=$(ANCHOR_DIR=$d ANCHOR_PORT=$PORT bash -c "$CUSTOM_COUNT" | tail -1)
  elif [ -f "$d/out.log" ]; then written=$(wc -l < "$d/out.log"); fi
  sent=$(grep -o 'count=[0-9]*' "$d/loggen.log" | tail -1 | cut -d= -f2); sent=${sent:-0}
  lrate=$(grep -o 'average rate = [0-9.]*' "$d/loggen.log" | tail -1 | awk '{print $4}')
  ltime=$(grep -o 'time=[0-9.]*' "$d/loggen.log" | tail -1 | cut -d= -f2)
  lcpu=$(awk 'NF==3 && $3>0 {printf "%.0f", 100*($1+$2)/$3}' "$d/loggen.time" 2>/dev/null)
  kill -TERM $DPID 2>/dev/null || true
  local i; for i in $(seq 1 50); do kill -0 $DPID 2>/dev/null || break; sleep 0.2; done
  kill -KILL $DPID 2>/dev/null || true; wait $DPID 2>/dev/null || true; DPID=""
  awk -v c="$c" -v p="$proto" -v s="$sent" -v w="$written" -v t0="$t0" -v te="$tend" \
      -v cpu=$((cpu1 - cpu0)) -v hz="$hz" -v rss="$rss" -v lr="${lrate:-0}" -v lt="${ltime:-1}" -v lc="${lcpu:-0}" -v st="$status" -v run="$2" 'BEGIN{
    secs = te - t0; rate = w / secs
    if (c ~ /discard/) { secs = lt; rate = lr; w = s }   # nothing written: report what loggen got through
    printf "case=%s run=%s proto=%s sent=%d written=%d unwritten=%d secs=%.2f rate=%.0f cpu=%.0f%% rss_peak=%dKiB loggen_rate=%.0f loggen_cpu=%d%% end=%s\n",
      c, run, p, s, w, s - w, secs, rate, 100 * cpu / hz / secs, rss, lr, lc, st }'
  if [ -z "${KEEP:-}" ]; then rm -rf "$d"; fi
}

log "rsyslogd: $("$RSYSLOGD" -v | head -1)"
log "syslog-ng: $("${SNG_ENV[@]}" "$SYSLOGNG" --version | head -1); loggen: $LOGGEN"
log "load: ${LOADGEN:-loggen} RFC5424 ${SIZE}B msgs, ${DUR}s per case, ${CONNS:-1} connection(s), 127.0.0.1:$PORT"
for c in $CASES; do
  case " $ALL_CASES $EXTRA_CASES " in *" $c "*) ;; *) log "unknown case $c"; exit 2 ;; esac
  for r in $(seq 1 "$RUNS"); do run_case "$c" "$r"; done
done
