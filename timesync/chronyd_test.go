package timesync

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/edgeaudit/edgeaudit/internal/testntp"
	"github.com/edgeaudit/edgeaudit/ledger"
)

// Integration tests: the real query (beevik/ntp over UDP) against a real chronyd on
// 127.0.0.1 (internal/testntp). Waits are bounds on how long a test may take, never
// assertions about speed.

// waitBound bounds every wait for a change; the checks run every second.
const waitBound = 20 * time.Second

// chanReporter hands the checker's changes to the test.
type chanReporter chan Change

func (r chanReporter) Report(c Change) { r <- c }

// running is a Checker under Run for the length of a test.
type running struct {
	*Checker
	changes chanReporter
}

func startChecker(t *testing.T, cfg Config) *running {
	t.Helper()
	if cfg.Interval == 0 {
		cfg.Interval = time.Second
	}
	rep := make(chanReporter, 64)
	c, err := New(cfg, rep, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run=%v, want nil", err)
			}
		case <-time.After(waitBound):
			t.Errorf("Run did not return within %v of its cancel", waitBound)
		}
	})
	return &running{Checker: c, changes: rep}
}

// wait returns the first change of kind, failing on any other state change first
// unless it is listed in allow.
func (r *running) wait(t *testing.T, kind Kind, allow ...Kind) Change {
	t.Helper()
	deadline := time.After(waitBound)
	for {
		select {
		case c := <-r.changes:
			if c.Kind == kind {
				return c
			}
			ok := false
			for _, k := range allow {
				ok = ok || k == c.Kind
			}
			if !ok {
				t.Fatalf("change %s (%+v) while waiting for %s", c.Kind, c.State, kind)
			}
		case <-deadline:
			t.Fatalf("no %s change within %v; state %+v", kind, waitBound, r.State())
		}
	}
}

func TestChronydSynced(t *testing.T) {
	srv := testntp.Start(t, testntp.Options{})
	r := startChecker(t, Config{Servers: []string{srv.Addr}})
	ch := r.wait(t, KindSynced)
	ts := ch.State
	if ch.From != StateUnknown || ch.To != StateSynced || ts.State != StateSynced || r.State().State != StateSynced {
		t.Fatalf("change %+v (state now %+v), want unknown → synced", ch, r.State())
	}
	if ts.Server != srv.Addr || ts.Stratum != 8 || ts.RefID != "127.127.1.1" || ts.Leap != 0 || ts.Error != "" {
		t.Fatalf("State()=%+v, want chronyd's local stratum 8 answer", ts)
	}
	// Server and client share this machine's clock, so the true offset is 0 and NTP's
	// error is at most half the round trip (plus chronyd's read of the clock): a larger
	// offset is a wrong computation, not a slow machine.
	if off, bound := time.Duration(ts.OffsetNS), time.Duration(ts.RTTNS)/2+time.Millisecond; off < -bound || off > bound {
		t.Fatalf("offset %v against a chronyd on the same clock, want within ±%v (rtt/2 + 1ms)", off, bound)
	}
	if ts.RTTNS <= 0 || ts.RootDistanceNS <= 0 || ts.MaxOffset != int64(DefaultMaxOffset) {
		t.Fatalf("State()=%+v, want a positive rtt and root distance and max_offset_ns", ts)
	}
	checked, err := time.Parse(time.RFC3339Nano, ts.Checked)
	if err != nil || time.Since(checked) > time.Minute || time.Since(checked) < -time.Minute {
		t.Fatalf("checked %q (%v), want a time near now", ts.Checked, err)
	}
	if !r.Synced() {
		t.Fatal("Synced()=false in state synced")
	}
	// A verifier (ledger.ParseHeader refuses unknown members) reads the evidence back.
	h := ledger.Header{Version: ledger.FormatVersion, Site: "s1", Device: "d1", Seq: 1, Prev: ledger.ZeroHash, TimeSync: ts}
	hb, err := h.Encode()
	if err != nil {
		t.Fatal(err)
	}
	back, err := ledger.ParseHeader(hb)
	if err != nil {
		t.Fatalf("parse a header with the checker's evidence: %v", err)
	}
	if back.TimeSync != ts {
		t.Fatalf("time_sync after a round trip %+v, want %+v", back.TimeSync, ts)
	}
	st := r.Stats()
	if len(st.Servers) != 1 || st.Servers[0].Error != "" || st.Servers[0].LastGood.IsZero() || st.Server != srv.Addr || st.Checks == 0 {
		t.Fatalf("Stats()=%+v", st)
	}
}

// TestChronydSkewed: a server whose clock is 5 s ahead (libfaketime) puts the checker in
// state offset with the measured offset.
func TestChronydSkewed(t *testing.T) {
	srv := testntp.Start(t, testntp.Options{Offset: 5 * time.Second})
	r := startChecker(t, Config{Servers: []string{srv.Addr}})
	ch := r.wait(t, KindOffset)
	if off := time.Duration(ch.State.OffsetNS); off < 4*time.Second || off > 6*time.Second {
		t.Fatalf("reported offset %v, want 4s..6s", off)
	}
	ts := r.State()
	if ts.State != StateOffset || !strings.Contains(ts.Error, "beyond ntp.max_offset") || r.Synced() {
		t.Fatalf("State()=%+v Synced()=%v, want offset beyond max and not synced", ts, r.Synced())
	}
	if off := time.Duration(ts.OffsetNS); off < 4*time.Second || off > 6*time.Second {
		t.Fatalf("offset %v, want 4s..6s", off)
	}
}

// TestChronydSkewWithinMax: with max_offset 10s the same +5s server is synced: the limit
// is the operator's.
func TestChronydSkewWithinMax(t *testing.T) {
	srv := testntp.Start(t, testntp.Options{Offset: 5 * time.Second})
	r := startChecker(t, Config{Servers: []string{srv.Addr}, MaxOffset: 10 * time.Second})
	ch := r.wait(t, KindSynced)
	if off := time.Duration(ch.State.OffsetNS); off < 4*time.Second || off > 6*time.Second {
		t.Fatalf("offset %v, want 4s..6s", off)
	}
}

// TestUnreachable: no NTP server is a state (unsynced, reported), never an end of Run;
// the error says why. Both ways a server can be missing: a closed port (refused at
// once) and a bound port that never answers (timeout).
func TestUnreachable(t *testing.T) {
	for _, tt := range []struct {
		name  string
		addr  func(testing.TB) string
		want  string // in the header
		stats string // in Stats, the whole error
	}{
		{"closed port", testntp.ClosedPort, "connection refused", "connection refused"},
		{"black hole", testntp.BlackHole, "no answer (timeout)", "i/o timeout"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			addr := tt.addr(t)
			r := startChecker(t, Config{Servers: []string{addr}, Timeout: 300 * time.Millisecond})
			ch := r.wait(t, KindUnsynced)
			if ch.From != StateUnknown || ch.State.Error != addr+": "+tt.want {
				t.Fatalf("change %+v, want unknown → unsynced with error %q", ch, addr+": "+tt.want)
			}
			if r.Synced() {
				t.Fatal("Synced()=true")
			}
			// Run goes on checking: the next check fails again, without a new change.
			n := r.Stats().Checks
			deadline := time.Now().Add(waitBound)
			for r.Stats().Checks <= n {
				if time.Now().After(deadline) {
					t.Fatalf("no check after the first within %v", waitBound)
				}
				time.Sleep(50 * time.Millisecond)
			}
			st := r.Stats()
			if st.State != StateUnsynced || st.Servers[0].Failures < 2 || !strings.Contains(st.Servers[0].Error, tt.stats) {
				t.Fatalf("Stats()=%+v, want unsynced with repeated failures", st)
			}
			select {
			case c := <-r.changes:
				t.Fatalf("change %+v although the state stayed unsynced", c)
			default:
			}
		})
	}
}

// TestChronydUnsynchronized: a chronyd without a time source answers stratum 0, leap 3
// without a kiss code: a bad answer (unsynced), not a DENY, so it is asked again.
func TestChronydUnsynchronized(t *testing.T) {
	srv := testntp.Start(t, testntp.Options{Unsynchronized: true})
	r := startChecker(t, Config{Servers: []string{srv.Addr}})
	ch := r.wait(t, KindUnsynced)
	if !strings.Contains(ch.State.Error, "kiss of death") {
		t.Fatalf("error %q, want the stratum 0 answer named", ch.State.Error)
	}
	deadline := time.Now().Add(waitBound)
	for r.Stats().Servers[0].Failures < 2 {
		if time.Now().After(deadline) {
			t.Fatalf("server not asked again within %v: %+v", waitBound, r.Stats())
		}
		time.Sleep(50 * time.Millisecond)
	}
	if s := r.Stats().Servers[0]; s.Denied || s.Backoff != 1 {
		t.Fatalf("server %+v, want neither denied nor backed off", s)
	}
}

// TestChronydLostAndBack: synced; chronyd dies and after max_age the state is unsynced
// (reported, naming the refusal); chronyd comes back on the same port and the state is
// synced again (reported).
func TestChronydLostAndBack(t *testing.T) {
	srv := testntp.Start(t, testntp.Options{})
	r := startChecker(t, Config{Servers: []string{srv.Addr}, MaxAge: 2 * time.Second})
	r.wait(t, KindSynced)
	srv.Stop()
	ch := r.wait(t, KindUnsynced)
	if !strings.Contains(ch.State.Error, "connection refused") || ch.State.Server != srv.Addr || ch.State.Checked == "" {
		t.Fatalf("unsynced evidence %+v, want the last answer and the refusal", ch.State)
	}
	srv.Restart()
	ch = r.wait(t, KindSynced)
	if ch.From != StateUnsynced {
		t.Fatalf("change %+v, want unsynced → synced", ch)
	}
	if st := r.Stats(); st.Servers[0].Failures != 0 || st.Servers[0].Error != "" {
		t.Fatalf("server after recovery %+v", st.Servers[0])
	}
}

// TestBestOfTwo: one dead server and one chronyd: the state is synced from chronyd and
// the dead one's failure is in Stats, not in the header.
func TestBestOfTwo(t *testing.T) {
	srv := testntp.Start(t, testntp.Options{})
	dead := testntp.ClosedPort(t)
	r := startChecker(t, Config{Servers: []string{dead, srv.Addr}})
	ch := r.wait(t, KindSynced)
	if ch.State.Server != srv.Addr || ch.State.Error != "" {
		t.Fatalf("evidence %+v, want %s's answer", ch.State, srv.Addr)
	}
	st := r.Stats()
	if !strings.Contains(st.Servers[0].Error, "connection refused") {
		t.Fatalf("dead server stats %+v, want its refusal", st.Servers[0])
	}
}

// TestQueryCancel: a cancel ends a real query in flight (its socket is closed) with
// ctx's error, not the query's 30 s timeout; this is what lets Run return promptly.
func TestQueryCancel(t *testing.T) {
	hole := testntp.BlackHole(t)
	ctx, cancel := context.WithCancel(t.Context())
	time.AfterFunc(50*time.Millisecond, cancel)
	_, err := ntpQuery(ctx, hole, 30*time.Second)
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("query cancelled in flight: %v, want context.Canceled", err)
	}
	// The real query against chronyd, for contrast, answers.
	srv := testntp.Start(t, testntp.Options{})
	r, err := ntpQuery(t.Context(), srv.Addr, 2*time.Second)
	if err != nil || validate(r, DefaultMaxRootDistance) != nil {
		t.Fatalf("query %s: %v", srv.Addr, err)
	}
}
