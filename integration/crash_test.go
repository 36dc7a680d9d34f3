package integration

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// The kill -9 crash test (STYLE.md §14): the real binary under continuous syslog TCP load
// is killed with SIGKILL at random moments, restarted on the same data folder each time,
// and finally stopped with SIGTERM. It then proves that the chain verifies (after every
// kill, on the crashed files, and at the end), and that no committed event was lost.
//
// Plain syslog over TCP has no application-level ack, so "committed" is defined by the
// daemon itself: edgeaudit_spool_events_committed_total counts events whose bbolt
// transaction returned (fsync'd). The test scrapes it immediately before each kill. That
// counter includes the daemon's own self-audit events (kind "self"), so the check is, per
// run r:
//
//	syslog events of run r in the chain + self events of run r in the chain >= last scrape
//
// where the chain is cut into runs at each audit.start event (every process records one
// before its syslog listener opens, and nothing of run r can be committed after the start
// of run r+1). In addition the syslog events of run r must be exactly crash-run<r>-0 ..
// crash-run<r>-(k-1): a prefix of what was sent, without holes or duplicates, and never
// more than was sent. After the final SIGTERM the open batch is sealed, so `export -events`
// (sealed batches only) must equal `export -events -open`, and these checks run on it: every
// committed event of every run is in a signed batch.

const (
	crashKills      = 20    // SIGKILLs in a full run
	crashKillsShort = 5     // under -short
	crashRate       = 30000 // messages/s the sender aims for
	crashBurst      = 60    // messages per write(2)
	crashMaxPerRun  = 100000
	crashFinalCount = 2000 // messages of the last (cleanly stopped) run
	crashMinDelay   = 50 * time.Millisecond
	crashMaxDelay   = 400 * time.Millisecond
)

// crashConfig has small batches and a short max_age, so that seals happen constantly
// and a kill often lands in the middle of a commit that also seals.
const crashConfig = `site: crash
device: d1
syslog:
  tcp: "127.0.0.1:0"
batch:
  max_events: 50
  max_age: 100ms
  heartbeat: 1s
admin: "127.0.0.1:0"
shutdown_timeout: 8s
log_level: info
`

// crashRNG returns the random source of a kill test: seeded from the clock, or from
// CRASH_SEED to replay a run; the seed is logged. stream keeps tests apart.
func crashRNG(t testing.TB, stream uint64) *rand.Rand {
	t.Helper()
	seed := uint64(time.Now().UnixNano())
	if s := os.Getenv("CRASH_SEED"); s != "" {
		v, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			t.Fatalf("CRASH_SEED=%q: %v", s, err)
		}
		seed = v
	}
	t.Logf("seed %d (rerun with CRASH_SEED=%d)", seed, seed)
	return rand.New(rand.NewPCG(seed, stream))
}

// crashPad makes a message about 200 bytes, the size of a typical audit line.
var crashPad = strings.Repeat("x", 150)

func TestKill9NoCommittedEventLost(t *testing.T) {
	kills := crashKills
	if testing.Short() {
		kills = crashKillsShort
	}
	rng := crashRNG(t, 0x6564676561756474)

	dir := t.TempDir()
	data := filepath.Join(dir, "data")
	cfg := filepath.Join(dir, "edgeaudit.yaml")
	if err := os.WriteFile(cfg, []byte(crashConfig), 0o600); err != nil {
		t.Fatal(err)
	}

	begin := time.Now()
	var runs []*crashRun
	chain := ""
	for r := range kills {
		run := &crashRun{killAfter: crashMinDelay + time.Duration(rng.Int64N(int64(crashMaxDelay-crashMinDelay)))}
		runs = append(runs, run)
		d := crashStart(t, cfg, data)
		run.recoveredOpen = d.recoveredOpen()

		stop := make(chan struct{})
		sent := make(chan crashSent, 1)
		go func() { sent <- crashSend(d.syslogAddr, r, crashMaxPerRun, stop) }()
		time.Sleep(run.killAfter)
		run.scraped = crashScrape(t, d.adminAddr)
		d.kill(t)
		close(stop)
		s := <-sent
		run.attempted, run.written = s.attempted, s.written

		// The crashed files themselves must verify, before any recovery by the daemon.
		c := crashVerify(t, data)
		if chain == "" {
			chain = c
		} else if c != chain {
			t.Fatalf("after kill %d: chain %s, want %s (the spool was replaced)", r+1, c, chain)
		}
		crashNoQuarantine(t, data)
	}

	// Last run: a bounded load, all of it committed, then an orderly stop that seals the
	// open batch.
	final := &crashRun{clean: true}
	runs = append(runs, final)
	d := crashStart(t, cfg, data)
	final.recoveredOpen = d.recoveredOpen()
	s := crashSend(d.syslogAddr, kills, crashFinalCount, nil)
	final.attempted, final.written = s.attempted, s.written
	if s.err != nil || s.written != crashFinalCount {
		t.Fatalf("final run: sent %d of %d messages: %v", s.written, crashFinalCount, s.err)
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		// The start event and every message of this run.
		final.scraped = crashScrape(t, d.adminAddr)
		if final.scraped >= crashFinalCount+1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("final run: only %d events committed 20s after sending %d messages\n%s", final.scraped, crashFinalCount, d.log())
		}
		time.Sleep(20 * time.Millisecond)
	}
	d.terminate(t)
	crashNoQuarantine(t, data)
	v := mustVerifyData(t, data)
	if v.Chain != chain {
		t.Fatalf("after the final stop: chain %s, want %s", v.Chain, chain)
	}

	// Every committed event is in the chain: the open export (sealed + committed but not
	// sealed) must equal the sealed export, because the orderly stop sealed the open batch.
	open := crashExport(t, data, true)
	sealed := crashExport(t, data, false)
	if len(open) != len(sealed) {
		t.Errorf("export -events -open has %d events, export -events %d: the final stop left events unsealed", len(open), len(sealed))
	}
	for i := range min(len(open), len(sealed)) {
		if !bytes.Equal(open[i], sealed[i]) {
			t.Errorf("event %d differs between the open and the sealed export", i)
			break
		}
	}
	if len(sealed) != v.Events {
		t.Errorf("export -events has %d events, verify counted %d in the sealed batches", len(sealed), v.Events)
	}
	crashCheckRuns(t, runs, sealed)
	t.Logf("%d kills, %d events in the chain, %s", kills, len(sealed), time.Since(begin).Round(time.Millisecond))
}

// crashRun is what the test knows about one daemon process.
type crashRun struct {
	clean         bool          // stopped with SIGTERM, not killed
	killAfter     time.Duration // after the syslog listener was up
	attempted     int           // messages handed to write(2): the daemon can have no more
	written       int           // messages whose write returned without error
	scraped       uint64        // committed-events counter read just before the kill
	recoveredOpen int           // open-batch events the spool recovered at this start (-1: none logged)
}

// crashCheckRuns cuts the chain into runs at each audit.start and checks every run.
func crashCheckRuns(t testing.TB, runs []*crashRun, lines [][]byte) {
	t.Helper()
	type crashEvent struct {
		Source struct {
			Kind string `json:"kind"`
		} `json:"source"`
		Action  string `json:"action"`
		Message string `json:"message"`
	}
	type seg struct {
		self   int
		seen   map[int]bool
		maxN   int
		others int
	}
	var segs []*seg
	for i, line := range lines {
		var e crashEvent
		if err := json.Unmarshal(line, &e); err != nil {
			t.Fatalf("event %d: %v: %s", i, err, line)
		}
		if e.Source.Kind == "self" && e.Action == "audit.start" {
			segs = append(segs, &seg{seen: map[int]bool{}, maxN: -1})
		}
		if len(segs) == 0 {
			t.Fatalf("event %d comes before the first audit.start: %s", i, line)
		}
		cur := segs[len(segs)-1]
		switch e.Source.Kind {
		case "self":
			cur.self++
			continue
		case "syslog":
		default:
			t.Errorf("event %d: unexpected source kind %q", i, e.Source.Kind)
			continue
		}
		var r, n int
		tag, _, _ := strings.Cut(e.Message, " ")
		if _, err := fmt.Sscanf(tag, "crash-run%d-%d", &r, &n); err != nil {
			t.Errorf("event %d: message %.40q is not one of ours", i, e.Message)
			continue
		}
		if r != len(segs)-1 {
			t.Errorf("event %d: %s is in the part of the chain of run %d", i, tag, len(segs)-1)
			cur.others++
			continue
		}
		if cur.seen[n] {
			t.Errorf("run %d: message %d committed twice", r, n)
		}
		cur.seen[n] = true
		cur.maxN = max(cur.maxN, n)
	}
	if len(segs) != len(runs) {
		t.Fatalf("chain has %d audit.start events, want %d (one per process)", len(segs), len(runs))
	}
	var withLoad, beyondScrape int
	for i, run := range runs {
		sg := segs[i]
		k := len(sg.seen)
		if sg.maxN+1 != k {
			var missing []int
			for n := 0; n <= sg.maxN && len(missing) < 10; n++ {
				if !sg.seen[n] {
					missing = append(missing, n)
				}
			}
			t.Errorf("run %d: %d messages committed, but the highest is %d: holes at %v...", i, k, sg.maxN, missing)
		}
		if k > run.attempted {
			t.Errorf("run %d: %d messages committed, but only %d were sent", i, k, run.attempted)
		}
		persisted := uint64(k + sg.self)
		if persisted < run.scraped {
			t.Errorf("run %d: LOST COMMITTED EVENTS: the daemon reported %d committed before the kill, the chain has %d of this run (%d syslog + %d self)",
				i, run.scraped, persisted, k, sg.self)
		}
		if run.clean && k != run.written {
			t.Errorf("final run: %d of %d messages in the chain", k, run.written)
		}
		if run.scraped > uint64(sg.self) {
			withLoad++
		}
		if persisted > run.scraped {
			beyondScrape++
		}
		how := fmt.Sprintf("killed after %v", run.killAfter.Round(time.Millisecond))
		if run.clean {
			how = "SIGTERM"
		}
		t.Logf("run %2d: %-18s sent %6d, committed at last scrape %6d, in chain %6d syslog + %d self, recovered open batch %d",
			i, how, run.attempted, run.scraped, k, sg.self, run.recoveredOpen)
	}
	// The bound above is vacuous unless syslog events were committed before most kills.
	if killed := len(runs) - 1; withLoad < (killed+1)/2 {
		t.Errorf("only %d of %d kills happened after syslog events were committed: the load did not reach the daemon", withLoad, killed)
	}
	t.Logf("%d of %d runs had syslog events committed before the last scrape; in %d the chain holds more than the last scrape (commits in flight at the kill)",
		withLoad, len(runs), beyondScrape)
}

// crashDaemon is one running `edgeaudit run` process.
type crashDaemon struct {
	cmd        *exec.Cmd
	syslogAddr string
	adminAddr  string
	exited     chan struct{}
	waitErr    error // valid after exited is closed

	mu     sync.Mutex
	stderr bytes.Buffer
}

func (d *crashDaemon) log() string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.stderr.String()
}

var (
	crashListeningRE = regexp.MustCompile(`msg=listening .*addr=(\S+)`)
	crashRecoveredRE = regexp.MustCompile(`msg="spool recovered" .*open_events=(\d+)`)
)

// recoveredOpen returns the open-batch events the spool reported recovering, or -1.
func (d *crashDaemon) recoveredOpen() int {
	if m := crashRecoveredRE.FindStringSubmatch(d.log()); m != nil {
		n, _ := strconv.Atoi(m[1])
		return n
	}
	return -1
}

// crashStart starts the daemon on data and returns once its syslog TCP listener is bound.
// The syslog port is chosen by the kernel (127.0.0.1:0) and read from the log; the admin
// port is picked free beforehand, and the start is retried if another process took it
// meanwhile (the admin listener is bound before the daemon records anything).
func crashStart(t testing.TB, cfg, data string) *crashDaemon {
	t.Helper()
	for attempt := 1; ; attempt++ {
		d := &crashDaemon{adminAddr: freeAddr(t, "tcp"), exited: make(chan struct{})}
		// binPath is built once by TestMain (harness_test.go), with -race under -race.
		d.cmd = exec.Command(binPath, "run", "--config", cfg, "--data", data,
			"--syslog-tcp", "127.0.0.1:0", "--syslog-udp", "off", "--admin", d.adminAddr)
		pipe, err := d.cmd.StderrPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := d.cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			select {
			case <-d.exited:
			default:
				d.cmd.Process.Kill()
				<-d.exited
			}
		})
		addr := make(chan string, 1)
		go func() {
			sc := bufio.NewScanner(pipe)
			sc.Buffer(make([]byte, 64<<10), 1<<20)
			for sc.Scan() {
				line := sc.Text()
				d.mu.Lock()
				d.stderr.WriteString(line + "\n")
				d.mu.Unlock()
				if m := crashListeningRE.FindStringSubmatch(line); m != nil {
					select {
					case addr <- m[1]:
					default:
					}
				}
			}
			d.waitErr = d.cmd.Wait() // after the last read of the pipe
			close(d.exited)
		}()
		select {
		case d.syslogAddr = <-addr:
			mustLoopback(t, d.syslogAddr)
			return d
		case <-d.exited:
			// A free port taken meanwhile: "admin: ADDR: address already in use ..."
			// from the start's port probe (or "listen admin" from its bind).
			if (strings.Contains(d.log(), "listen admin") || strings.Contains(d.log(), "address already in use")) && attempt < 5 {
				continue
			}
			t.Fatalf("daemon exited before listening: %v\n%s", d.waitErr, d.log())
		case <-time.After(20 * time.Second):
			d.cmd.Process.Kill()
			<-d.exited
			t.Fatalf("daemon not listening after 20s\n%s", d.log())
		}
	}
}

// kill sends SIGKILL and waits for the process to be gone.
func (d *crashDaemon) kill(t testing.TB) {
	t.Helper()
	if err := d.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatalf("kill -9: %v\n%s", err, d.log())
	}
	<-d.exited
	if strings.Contains(d.log(), "WARNING: DATA RACE") {
		t.Errorf("the daemon reported a data race\n%s", d.log())
	}
	var ee *exec.ExitError
	if !errors.As(d.waitErr, &ee) {
		t.Fatalf("daemon ended with %v before the kill\n%s", d.waitErr, d.log())
	}
	if ws, ok := ee.Sys().(syscall.WaitStatus); !ok || !ws.Signaled() || ws.Signal() != syscall.SIGKILL {
		t.Fatalf("daemon ended with %v before the kill\n%s", d.waitErr, d.log())
	}
}

// terminate sends SIGTERM and expects an orderly exit with status 0.
func (d *crashDaemon) terminate(t testing.TB) {
	t.Helper()
	if err := d.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case <-d.exited:
	case <-time.After(20 * time.Second):
		d.cmd.Process.Kill()
		<-d.exited
		t.Fatalf("daemon did not stop within 20s of SIGTERM\n%s", d.log())
	}
	if d.waitErr != nil {
		t.Fatalf("daemon stopped with %v\n%s", d.waitErr, d.log())
	}
	if strings.Contains(d.log(), "WARNING: DATA RACE") {
		t.Errorf("the daemon reported a data race\n%s", d.log())
	}
}

// crashScrape reads edgeaudit_spool_events_committed_total from /metrics.
func crashScrape(t testing.TB, admin string) uint64 {
	t.Helper()
	resp, err := httpClient.Get("http://" + admin + "/metrics")
	if err != nil {
		t.Fatalf("scrape /metrics: %v", err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		v, ok := strings.CutPrefix(sc.Text(), "edgeaudit_spool_events_committed_total ")
		if !ok {
			continue
		}
		f, err := strconv.ParseFloat(v, 64)
		if err != nil {
			t.Fatalf("scrape /metrics: %q: %v", sc.Text(), err)
		}
		return uint64(f)
	}
	t.Fatalf("scrape /metrics: no edgeaudit_spool_events_committed_total (status %s, err %v)", resp.Status, sc.Err())
	return 0
}

type crashSent struct {
	attempted, written int
	err                error
}

// crashSend sends up to limit octet-counted RFC 5424 messages crash-run<run>-<n> at
// crashRate until stop is closed or a write fails (the daemon was killed). With stop nil
// it sends all limit messages and closes the connection cleanly.
func crashSend(addr string, run, limit int, stop <-chan struct{}) crashSent {
	var s crashSent
	conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		s.err = err
		return s
	}
	defer conn.Close()
	start := time.Now()
	var buf []byte
	for s.attempted < limit {
		select {
		case <-stop:
			return s
		default:
		}
		if due := int(time.Since(start).Seconds() * crashRate); s.attempted >= due {
			time.Sleep(time.Millisecond)
			continue
		}
		buf = buf[:0]
		n := min(crashBurst, limit-s.attempted)
		for i := range n {
			msg := fmt.Sprintf("<110>1 2026-11-27T08:00:00.000Z crash-host crashtest %d - - crash-run%d-%d %s", run, run, s.attempted+i, crashPad)
			buf = strconv.AppendInt(buf, int64(len(msg)), 10)
			buf = append(buf, ' ')
			buf = append(buf, msg...)
		}
		s.attempted += n
		conn.SetWriteDeadline(time.Now().Add(5 * time.Second))
		if _, err := conn.Write(buf); err != nil {
			s.err = err
			return s
		}
		s.written += n
	}
	return s
}

// crashVerify requires `edgeaudit verify -data` to pass and returns the chain id.
func crashVerify(t testing.TB, data string) string {
	t.Helper()
	return mustVerifyData(t, data).Chain
}

// crashExport runs `edgeaudit export -events [-open]` and returns the JSON lines.
func crashExport(t testing.TB, data string, open bool) [][]byte {
	t.Helper()
	out := filepath.Join(t.TempDir(), "events.jsonl")
	args := []string{"export", "-data", data, "-out", out, "-events"}
	if open {
		args = append(args, "-open")
	}
	if res := runCLI(t, args...); res.code != 0 {
		t.Fatalf("%s", res)
	}
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	// Each export of the stopped spool records itself in the chain (audit.export): the
	// records of this test's own exports are not what it checks.
	var lines [][]byte
	for _, l := range bytes.Split(bytes.TrimSuffix(b, []byte("\n")), []byte("\n")) {
		if !bytes.Contains(l, []byte(`"action":"audit.export"`)) {
			lines = append(lines, l)
		}
	}
	return lines
}

// crashNoQuarantine fails if the daemon moved a spool aside: after a kill -9 the spool
// must recover, not be replaced.
func crashNoQuarantine(t testing.TB, data string) {
	t.Helper()
	if m, _ := filepath.Glob(filepath.Join(data, "spool.db.quarantine-*")); len(m) > 0 {
		t.Fatalf("spool was quarantined: %v", m)
	}
}
