package syslog

import (
	"testing"
	"time"
)

// The parts of the drain tests that name the new config key and counters, apart so
// that drain_burst_test.go also builds against the code before them (to see it fail).

func setDrainTimeout(cfg *Config, d time.Duration) { cfg.DrainTimeout = d }

// checkUnread asserts the drain's exact count of what it could not store: frames in
// Stats and in the reporter, and the bytes (wantBytes: everything after the last stored
// frame) as shutdown_unread rejects.
func checkUnread(t *testing.T, c *Collector, rep *fakeReporter, frames int, wantBytes int64) {
	t.Helper()
	st := c.Stats()
	if got, want := st.UnreadFrames+st.Lost[LossShutdown], uint64(frames); got != want {
		t.Errorf("unread frames %d + in hand %d = %d, want %d", st.UnreadFrames, st.Lost[LossShutdown], got, want)
	}
	if st.UnreadFrames == 0 {
		t.Error("UnreadFrames = 0: the budget was meant to be spent")
	}
	var bytes int64
	for _, r := range rep.getRejects() {
		if r.Reason == ReasonShutdownUnread {
			bytes += r.Size
		}
	}
	if bytes != wantBytes || uint64(bytes) != st.UnreadBytes {
		t.Errorf("shutdown_unread bytes reported %d, Stats %d; want %d", bytes, st.UnreadBytes, wantBytes)
	}
}
