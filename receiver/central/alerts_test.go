package central

import (
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/edgeaudit/edgeaudit/audit"
	"github.com/edgeaudit/edgeaudit/receiver"
)

// clock is a settable time for the alerter's windows.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// TestRefusalFloodIsSummarized: a publisher of unknown batches cannot flood central's
// trail: alerts_per_minute alerts per reason, then one summary with the count of the
// rest, written by the stop at the latest; the next minute starts a new allowance and
// writes the last one's summary.
func TestRefusalFloodIsSummarized(t *testing.T) {
	leakCheck(t)
	pw := writePasswords(t, map[string]string{"s1/d9": "pw9"})
	cfg := Config{DataDir: t.TempDir(), EmbeddedBroker: "127.0.0.1:0", EmbeddedBrokerPasswords: pw, AuditDevice: "c1", AlertsPerMinute: 3}
	cfg.SetDefaults()
	srv, err := New(cfg, testLogger())
	if err != nil {
		t.Fatal(err)
	}
	clk := &clock{t: time.Date(2026, 12, 1, 8, 0, 0, 0, time.UTC)}
	srv.alerts.now = clk.now
	stop := runServer(t, srv)
	rogue := mustConnect(t, dial{url: "tcp://" + srv.Broker().Addr(), id: "edgeaudit-s1-d9", user: "s1/d9", pass: "pw9"})
	d9 := newChain(t, "s1", "d9")
	d9.add(t, 30, 1)
	publishBatch(t, rogue, cfg.Prefix, d9)
	// OnRefuse runs after a refusal is counted: wait for the alerter to have seen all.
	// Delivery is at least once, so a batch may come twice: count what was seen.
	seen := func() (allowed int, suppressed uint64) {
		srv.alerts.mu.Lock()
		defer srv.alerts.mu.Unlock()
		return srv.alerts.counts[receiver.ReasonUnknown], srv.alerts.suppressed[receiver.ReasonUnknown]
	}
	eventually(t, "30 refusals alerted or counted", func() bool {
		a, s := seen()
		return a == 3 && s >= 27
	})
	// The next minute: one more alert is allowed, and the first minute's summary is
	// written. The clock moves under the alerter's lock, so the summary holds exactly
	// what was counted until then.
	srv.alerts.mu.Lock()
	suppressed := srv.alerts.suppressed[receiver.ReasonUnknown]
	clk.add(alertWindow)
	srv.alerts.mu.Unlock()
	publishBatch(t, rogue, cfg.Prefix, &chain{site: "s1", device: "d9", batches: d9.batches[:1]})
	eventually(t, "a refusal in the next minute", func() bool {
		srv.alerts.mu.Lock()
		defer srv.alerts.mu.Unlock()
		return srv.alerts.window.Equal(clk.now()) && srv.alerts.counts[receiver.ReasonUnknown] >= 1
	})
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	second, _ := seen()
	evs := trailEvents(t, cfg)
	var alerts int
	for _, e := range withAction(evs, audit.ActionSecurityAlert) {
		if e.Detail["reason"] == receiver.ReasonUnknown {
			alerts++
		}
	}
	if got, want := alerts, 3+second; got != want {
		t.Errorf("unknown_device alerts in the trail: %d, want %d (3 in the first minute, %d in the second)", got, want, second)
	}
	sums := withAction(evs, ActionAlertSummary)
	if len(sums) != 1 {
		t.Fatalf("summaries %v, want one", actions(sums))
	}
	if got, want := sums[0].Detail["suppressed"], strconv.FormatUint(suppressed, 10); got != want || sums[0].Detail["reason"] != receiver.ReasonUnknown {
		t.Errorf("summary %v, want reason %s suppressed %s", sums[0].Detail, receiver.ReasonUnknown, want)
	}
}

// TestAlerterQueueFull: alerts that do not fit the queue are counted into the summary,
// never waited for.
func TestAlerterQueueFull(t *testing.T) {
	a := newAlerter(alertQueue * 2)
	for range alertQueue + 5 {
		a.alert("fork", a.event(audit.ActionSecurityAlert, audit.OutcomeMinorFailure, "x", nil))
	}
	if got, want := len(a.ch), alertQueue; got != want {
		t.Errorf("queued %d, want %d", got, want)
	}
	a.mu.Lock()
	sums := a.summariesLocked()
	a.mu.Unlock()
	if len(sums) != 1 || sums[0].Detail["suppressed"] != "5" {
		t.Fatalf("summaries %+v, want one with suppressed 5", sums)
	}
}
