package integration

import (
	"fmt"
	"testing"
	"time"
)

// sigtermBound is the longest the daemon may take to exit after SIGTERM: its shutdown
// budget (shutdown_timeout, 8s) plus a margin. It is a failure bound, not a speed target.
const sigtermBound = 10 * time.Second

// TestSigtermSealsAndExits sends messages that stay in the open batch (max_age is an
// hour), sends SIGTERM, and checks that the daemon exits with status 0 within
// sigtermBound and that the messages are in the sealed chain: export without -open has
// them all, ending with the audit.stop event, and nothing is left unsealed.
func TestSigtermSealsAndExits(t *testing.T) {
	t.Parallel()
	const n = 50
	d := startDaemon(t, daemonConfig{MaxAge: time.Hour})
	want := markers("sigterm", n)
	sendOctet(t, d.tcp, want)
	d.waitMetric(t, n, "edgeaudit_syslog_received_total", "transport", "tcp")

	// Committed but not sealed: only the shutdown can seal them.
	var h health
	eventually(t, waitTimeout, func() (bool, string) {
		h = d.mustHealth(t)
		return h.OpenEvents >= n, fmt.Sprintf("open_events %d, want at least %d", h.OpenEvents, n)
	})
	took := d.stopWithin(t, sigtermBound)
	t.Logf("exited with status 0 %v after SIGTERM", took.Round(time.Millisecond))

	evs := exportEvents(t, d.dataDir, false)
	checkMarkers(t, syslogByMessage(evs), want, "tcp")
	if len(evs) > 0 {
		if last := evs[len(evs)-1]; last.Source.Kind != "self" || last.Action != "audit.stop" {
			t.Errorf("last sealed event is %s %s, want self audit.stop", last.Source.Kind, last.Action)
		}
	}
	if got, want := len(exportEvents(t, d.dataDir, true)), len(evs); got != want {
		t.Errorf("export -events -open has %d events, export -events %d: %d left unsealed", got, want, got-want)
	}
	if v := mustVerifyData(t, d.dataDir); v.LastSeq <= h.HeadSeq {
		t.Errorf("chain ends at seq %d, the head before SIGTERM was %d: no batch sealed at shutdown", v.LastSeq, h.HeadSeq)
	}
}
