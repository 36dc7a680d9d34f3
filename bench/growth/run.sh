#!/usr/bin/env bash
# Growth benchmark (issue 11): commit, seal, uplink pick/read, start-up, verify and export
# against the size of an UNACKED spool. One spool grows through SIZES (GB, 1e9 bytes), and
# at each step every figure is measured and printed on one line with the load average.
#
#   bench/growth/run.sh                 # SIZES="0.5 2 8", about 15 min, needs ~20 GB in WORK
#   SIZES="0.2 0.5" bench/growth/run.sh # quick run, about 2 min
#   STARTUP_ONLY=1 SIZES=8 bench/growth/run.sh  # only the start-up lines
#
# Cold figures drop the page cache first (sync; echo 3 > /proc/sys/vm/drop_caches: root
# only; without it they are reported as skipped). The crash start (kill -9, then start:
# bbolt's full page check runs again) is cold only for sizes up to CRASH_COLD_MAX GB.
# Everything is under WORK, removed at the end unless KEEP=1.
set -euo pipefail

SIZES=${SIZES:-"0.5 2 8"}
WORK=${WORK:-/tmp/edgeaudit-growth}
ADMIN=${ADMIN:-127.0.0.1:19781}
CRASH_COLD_MAX=${CRASH_COLD_MAX:-2}
cd "$(dirname "$0")/../.."

mkdir -p "$WORK"
WORK=$(cd "$WORK" && pwd)
if [[ ${KEEP:-0} != 1 ]]; then trap 'rm -rf "$WORK"' EXIT; fi
rm -rf "$WORK/data" "$WORK/export.out"
go build -o "$WORK/growth" ./bench/growth
go build -o "$WORK/edgeaudit" ./cmd/edgeaudit
cat >"$WORK/config.yaml" <<EOF
site: growth
device: d1
data_dir: $WORK/data
syslog: {udp: "", tcp: ""}
admin: "$ADMIN"
keys: {tpm: "off"}
ntp: {off: true}
log_level: info
EOF
G="$WORK/growth"
E="$WORK/edgeaudit"
CFG="$WORK/config.yaml"

load() { cut -d' ' -f1-3 /proc/loadavg; }
line() { printf 'size=%s %-22s %s  load="%s"\n' "$SIZE" "$1" "$2" "$(load)"; }
cold() {
	sync
	if ! echo 3 >/proc/sys/vm/drop_caches 2>/dev/null; then
		return 1
	fi
}
now() { date +%s.%N; }
since() { echo "$(now) - $1" | bc -l | xargs printf '%.3f'; }

# start_daemon: start `edgeaudit run`; sets PID, and START to the seconds until /healthz
# answers.
start_daemon() {
	local t0
	t0=$(now)
	"$E" run -config "$CFG" >>"$WORK/run.log" 2>&1 &
	PID=$!
	for _ in $(seq 1 60000); do
		if curl -s --max-time 2 -o /dev/null "http://$ADMIN/healthz"; then
			START=$(since "$t0")
			return 0
		fi
		if ! kill -0 "$PID" 2>/dev/null; then
			echo "daemon exited; see $WORK/run.log" >&2
			return 1
		fi
		sleep 0.01
	done
	return 1
}
stop_daemon() {
	kill -TERM "$PID"
	wait "$PID" || true
}
startup() { # name [crash]
	start_daemon
	sleep 0.5
	if [[ ${2:-} == crash ]]; then
		kill -9 "$PID"
		wait "$PID" 2>/dev/null || true
	else
		stop_daemon
	fi
	echo "$START"
}

# The data folder as the daemon makes it (keys, signing.pub), on an empty spool.
SIZE=0
line startup_empty "$(startup x) s"

for SIZE in $SIZES; do
	"$G" fill -config "$CFG" -gb "$SIZE" | sed "s/^/size=$SIZE /"
	if cold; then c=cold; else c=warm; fi
	if [[ ${STARTUP_ONLY:-0} != 1 ]]; then "$G" measure -config "$CFG" -label "$SIZE/$c"; fi

	if cold; then line startup_cold "$(startup x) s"; else line startup_cold "skipped (cannot drop caches)"; fi
	line startup_warm "$(startup x) s"
	# A crash: kill -9 during the run, then start: the clean-close record is stale and
	# bbolt's full page check runs again, in the background past 256 MiB (warm cache:
	# the daemon had just read nothing). Then the time until the log says the
	# background check passed.
	startup x crash >/dev/null
	cat "$WORK/data/spool.db" >/dev/null # warm: the clean starts before read almost nothing of it
	line startup_after_crash_warm "$(startup x) s"
	if awk "BEGIN{exit !($SIZE <= $CRASH_COLD_MAX)}"; then
		startup x crash >/dev/null
		cold && line startup_after_crash_cold "$(startup x) s"
	fi
	startup x crash >/dev/null
	cold || true
	: >"$WORK/run.log"
	t0=$(now)
	start_daemon
	for _ in $(seq 1 6000); do
		if grep -q "page check of the spool passed\|spool damaged" "$WORK/run.log"; then break; fi
		sleep 0.1
	done
	line startup_after_crash_bg "$START s to serve, $(since "$t0") s until the background page check ended ($(grep -o 'page check of the spool passed\|spool damaged' "$WORK/run.log" | head -1))"
	stop_daemon

	if [[ ${STARTUP_ONLY:-0} == 1 ]]; then continue; fi
	bytes=$(stat -c %s "$WORK/data/spool.db")
	for c in cold warm; do
		if [[ $c == cold ]] && ! cold; then continue; fi
		t0=$(now)
		out=$("$E" verify -config "$CFG" -data "$WORK/data" 2>&1 | tail -1)
		d=$(since "$t0")
		ev=$(sed -n 's/.* \([0-9]*\) events.*/\1/p' <<<"$out")
		line "verify_$c" "$d s, $(echo "${ev:-0} / $d" | bc) events/s, $(echo "$bytes / $d / 1000000" | bc -l | xargs printf '%.1f') MB/s of spool ($out)"
	done
	for c in cold warm; do
		if [[ $c == cold ]] && ! cold; then continue; fi
		t0=$(now)
		"$E" export -config "$CFG" -data "$WORK/data" -out "$WORK/export.out" >/dev/null 2>&1
		d=$(since "$t0")
		ob=$(stat -c %s "$WORK/export.out")
		line "export_$c" "$d s, $(echo "${ev:-0} / $d" | bc) events/s, $(echo "$ob / $d / 1000000" | bc -l | xargs printf '%.1f') MB/s written ($(echo "$ob / 1000000" | bc) MB)"
		rm -f "$WORK/export.out"
	done
done
