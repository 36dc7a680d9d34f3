package integration

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// The RELP tests run the real daemon with `syslog.relp` and a real rsyslogd (Debian
// rsyslog + rsyslog-relp) that forwards with omrelp. RELP acknowledges each message
// ("rsp 200") only after its commit, and omrelp keeps and resends every message it did
// not see acknowledged, so across any number of kill -9 every message fed to rsyslogd
// must end up in the chain: a missing one is an acknowledgement sent before its commit.

const (
	relpForwardCount = 1000
	relpKills        = 8
	relpKillsShort   = 3
	relpMaxFed       = 40000 // messages fed during the kill loop, at most
	relpBurst        = 30    // lines per write to rsyslogd
	relpBurstEvery   = 10 * time.Millisecond
	relpWindow       = 128 // omrelp windowSize in startRsyslogRELP
)

// TestRELPRsyslogForward: every message that rsyslogd forwards with omrelp is in the
// chain once, over transport "relp", and the chain verifies.
func TestRELPRsyslogForward(t *testing.T) {
	t.Parallel()
	rsyslogd := peer(t, "rsyslogd", "")
	requireOmrelp(t)
	dir := t.TempDir()
	data, cfg := filepath.Join(dir, "data"), filepath.Join(dir, "edgeaudit.yaml")
	relp, admin := freeAddr(t, "tcp"), freeAddr(t, "tcp")
	if err := os.WriteFile(cfg, []byte(relpDaemonConfig(data, relp, admin, "")), 0o600); err != nil {
		t.Fatal(err)
	}
	d := startRELPDaemon(t, dir, cfg, data, "relp")
	rs := startRsyslogRELP(t, rsyslogd, relp, "")
	want := markers("relp-fwd", relpForwardCount)
	feedRsyslog(t, rs, append(want, "relp-fwd-end"))
	evs := relpUntil(t, &d, dir, "relp-fwd-end", "relp")
	byMsg := syslogByMessage(evs)
	checkMarkers(t, byMsg, want, "relp")
	mustVerifyData(t, data)
	rs.terminate(t, stopTimeout)
}

// TestRELPRsyslogKill9 kills the daemon with SIGKILL at random moments while rsyslogd
// streams to it over RELP, restarting it on the same data folder and port each time.
// Every message fed to rsyslogd must be in the chain at the end (omrelp resends what it
// did not see acknowledged, so a hole means an acknowledgement before the commit), with
// at most one window of duplicates per kill, and the chain verifies.
func TestRELPRsyslogKill9(t *testing.T) {
	t.Parallel()
	rsyslogd := peer(t, "rsyslogd", "")
	requireOmrelp(t)
	kills := relpKills
	if testing.Short() {
		kills = relpKillsShort
	}
	rng := crashRNG(t, 0x72656c70)

	dir := t.TempDir()
	data, cfg := filepath.Join(dir, "data"), filepath.Join(dir, "edgeaudit.yaml")
	relp, admin := freeAddr(t, "tcp"), freeAddr(t, "tcp")
	if err := os.WriteFile(cfg, []byte(relpDaemonConfig(data, relp, admin, "")), 0o600); err != nil {
		t.Fatal(err)
	}
	rs := startRsyslogRELP(t, rsyslogd, relp, "")

	// One connection feeds rsyslogd for the whole test, so its order is the order on the
	// RELP session; the end marker follows the last message on it.
	feed := dial(t, "tcp", rs.input)
	stop := make(chan struct{})
	var (
		wg      sync.WaitGroup
		fedN    atomic.Int64 // messages written to rsyslogd
		feedErr error        // read after wg.Wait
	)
	wg.Go(func() {
		tick := time.NewTicker(relpBurstEvery)
		defer tick.Stop()
		for n := 0; n < relpMaxFed; {
			select {
			case <-stop:
				return
			case <-tick.C:
			}
			var b []byte
			k := min(relpBurst, relpMaxFed-n)
			for i := range k {
				b = append(b, relpLine(fmt.Sprintf("relp-kill-%d", n+i))...)
			}
			_ = feed.SetWriteDeadline(time.Now().Add(30 * time.Second))
			if _, err := feed.Write(b); err != nil {
				feedErr = err
				return
			}
			n += k
			fedN.Store(int64(n))
		}
	})

	for k := range kills {
		d := startRELPDaemon(t, dir, cfg, data, "relp")
		time.Sleep(300*time.Millisecond + time.Duration(rng.Int64N(int64(900*time.Millisecond))))
		d.kill(t)
		t.Logf("kill %d: %d messages fed so far", k+1, fedN.Load())
	}
	close(stop)
	wg.Wait()
	if feedErr != nil {
		t.Fatalf("feeding rsyslogd: %v", feedErr)
	}
	fed := int(fedN.Load())
	if _, err := feed.Write([]byte(relpLine("relp-kill-end"))); err != nil {
		t.Fatalf("feeding rsyslogd the end marker: %v", err)
	}

	d := startRELPDaemon(t, dir, cfg, data, "relp")
	evs := relpUntil(t, &d, dir, "relp-kill-end", "relp")
	count, wrong := relpCount(evs, "relp-kill-", "relp")
	missing, dups := 0, 0
	for i := range fed {
		n := count[fmt.Sprintf("relp-kill-%d", i)]
		if n == 0 {
			if missing++; missing <= 5 {
				t.Errorf("relp-kill-%d was fed to rsyslogd but is not in the chain", i)
			}
		}
		dups += max(n-1, 0)
	}
	if missing > 0 {
		t.Errorf("%d of %d messages missing from the chain", missing, fed)
	}
	if wrong != 0 {
		t.Errorf("%d events with the relp-kill- prefix have another transport or source", wrong)
	}
	// Only what was committed but not yet acknowledged at a kill comes twice: at most one
	// window per kill.
	if dups > kills*relpWindow {
		t.Errorf("%d duplicates after %d kills, want at most %d (one window each)", dups, kills, kills*relpWindow)
	}
	mustVerifyData(t, data)
	t.Logf("%d kills, %d messages fed, %d distinct in the chain, %d duplicates", kills, fed, len(count)-min(1, count["relp-kill-end"]), dups)
	rs.terminate(t, stopTimeout)
}

// TestRELPRsyslogTLS: omrelp with tls="on" and a client certificate into relp_tls with
// tls_client_ca: every message is in the chain once over "relp+tls".
func TestRELPRsyslogTLS(t *testing.T) {
	t.Parallel()
	rsyslogd := peer(t, "rsyslogd", "")
	requireOmrelp(t)
	ca := newPKI(t, t.TempDir(), "relp")
	dir := t.TempDir()
	data, cfg := filepath.Join(dir, "data"), filepath.Join(dir, "edgeaudit.yaml")
	plain, relpTLS, admin := freeAddr(t, "tcp"), freeAddr(t, "tcp"), freeAddr(t, "tcp")
	q := strconv.Quote
	extra := fmt.Sprintf("  relp_tls: %s\n  tls_cert: %s\n  tls_key: %s\n  tls_client_ca: %s\n",
		q(relpTLS), q(ca.ServerCert), q(ca.ServerKey), q(ca.CAFile))
	if err := os.WriteFile(cfg, []byte(relpDaemonConfig(data, plain, admin, extra)), 0o600); err != nil {
		t.Fatal(err)
	}
	d := startRELPDaemon(t, dir, cfg, data, "relp+tls")
	rs := startRsyslogRELP(t, rsyslogd, relpTLS, fmt.Sprintf(
		`tls="on" tls.caCert=%q tls.myCert=%q tls.myPrivKey=%q tls.authMode="name" tls.permittedPeer=[%q]`,
		ca.CAFile, ca.ClientCert, ca.ClientKey, serverName))
	want := markers("relp-tls", 300)
	feedRsyslog(t, rs, append(want, "relp-tls-end"))
	evs := relpUntil(t, &d, dir, "relp-tls-end", "relp+tls")
	checkMarkers(t, syslogByMessage(evs), want, "relp+tls")
	mustVerifyData(t, data)
	rs.terminate(t, stopTimeout)
}

// relpUntil waits until end (the last message fed) is in the chain, then returns the
// exported events (sealed and open) with the daemon stopped. The chain can only be read
// with the daemon stopped (the spool is locked), so it stops the daemon (SIGTERM, exit
// status 0 required), looks, and restarts it while end is not there yet, for at most a
// minute: rsyslogd delivers in order, so end in the chain means everything before it
// was delivered.
func relpUntil(t testing.TB, d **relpDaemon, dir, end, transport string) []event {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for wait := 500 * time.Millisecond; ; wait = min(2*wait, 5*time.Second) {
		time.Sleep(wait)
		cur := *d
		cur.terminate(t, stopTimeout)
		if cur.waitErr != nil {
			t.Fatalf("daemon exited with %v after SIGTERM, want status 0\n%s", cur.waitErr, cur.log())
		}
		evs := exportEvents(t, cur.dataDir, true)
		if len(syslogByMessage(evs)[end]) > 0 {
			return evs
		}
		if time.Now().After(deadline) {
			t.Fatalf("%q not in the chain a minute after it was fed\n%s", end, cur.log())
		}
		*d = startRELPDaemon(t, dir, cur.config, cur.dataDir, transport)
	}
}

// TestRELPAckAfterFdatasync proves the ordering behind the RELP acknowledgement, as
// TestAckAfterFdatasync does for HL7 and FHIR: the daemon runs under strace, and every
// "rsp 200" to a syslog command must be written after a completed fdatasync of spool.db
// that follows the read of that command. A binary whose spool never syncs (build tag
// edgeaudit_unsafe_nosync) must fail the same check.
func TestRELPAckAfterFdatasync(t *testing.T) {
	straceBin := peer(t, "strace", "STRACE")
	nosync := buildNoSyncBinary(t)
	const n = 20
	tests := []struct {
		name   string
		bin    string
		wantOK bool
	}{
		{"real binary", binPath, true},
		{"no-sync control", nosync, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			data, cfg := filepath.Join(dir, "data"), filepath.Join(dir, "edgeaudit.yaml")
			relp, admin := freeAddr(t, "tcp"), freeAddr(t, "tcp")
			if err := os.WriteFile(cfg, []byte(relpDaemonConfig(data, relp, admin, "")), 0o600); err != nil {
				t.Fatal(err)
			}
			trace := filepath.Join(dir, "strace.txt")
			cmd := straceCommand(straceBin, trace, tt.bin, "run", "--config", cfg)
			d := startRELPDaemonCmd(t, dir, cmd, "relp", 2*startTimeout)
			c := dialRELPClient(t, relp)
			c.open(t)
			var markers []string
			for i := range n {
				m := fmt.Sprintf("relp-fsync-%04d", i)
				if rsp := c.syslog(t, rfc5424(m)); rsp != "200 OK" {
					t.Fatalf("rsp to %s: %q, want 200 OK", m, rsp)
				}
				markers = append(markers, m)
			}
			c.close(t)
			stopTracedProcess(t, d.process)
			covered, why := checkAckOrdering(t, trace, markers, traceRELPAck)
			if tt.wantOK && covered != len(markers) {
				t.Fatalf("%d of %d rsp 200 follow an fdatasync of spool.db that covers them; first problem: %s", covered, len(markers), why)
			}
			if !tt.wantOK && covered != 0 {
				t.Fatalf("the check passed %d acknowledgements of a binary that never syncs its spool: it proves nothing", covered)
			}
			t.Logf("%s: %d of %d rsp 200 covered by an fdatasync", tt.name, covered, len(markers))
		})
	}
}
