package spool

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// With NoQuarantine, damage the tail check finds is returned, and the file is left where
// it was: no quarantine, no new chain. Without it the same file is quarantined.
func TestOpenNoQuarantine(t *testing.T) {
	sig := newSigner(t)
	src := filepath.Join(t.TempDir(), "spool.db")
	cfg := Config{MaxEvents: 5, MaxAge: time.Hour}
	s := openWith(t, src, cfg, encOpts(sig))
	for i := range 20 {
		appendSync(t, s, secretEv(i))
	}
	s.Close()
	flipLastByte(t, src, eventKey(4, 0)) // in the tail the open checks
	damaged, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}

	opts := encOpts(sig)
	opts.Site, opts.Device, opts.NoQuarantine = "s1", "d1", true
	cfg.MinFreeBytes = 1
	_, err = Open(src, cfg, opts)
	var oe *OpenError
	if !errors.As(err, &oe) || !errors.Is(err, ErrChainBroken) {
		t.Fatalf("open with NoQuarantine: err=%v, want an *OpenError wrapping ErrChainBroken", err)
	}
	if m, _ := filepath.Glob(src + ".quarantine-*"); len(m) != 0 {
		t.Fatalf("quarantined %v with NoQuarantine", m)
	}
	if fi, err := os.Stat(src); err != nil || fi.Size() != int64(len(damaged)) {
		t.Fatalf("the damaged spool is not where it was: %v", err)
	}

	s = openWith(t, src, cfg, encOpts(sig))
	s.Close()
	if !hasIncident(s.Incidents(), ActionQuarantined) {
		t.Fatalf("incidents %+v, want a quarantine without NoQuarantine", s.Incidents())
	}
}

// EventsAfter returns the events of the batches after a seq, sealed since or not, in
// order and in clear.
func TestEventsAfter(t *testing.T) {
	sig := newSigner(t)
	s := openWith(t, filepath.Join(t.TempDir(), "spool.db"), Config{MaxEvents: 5, MaxAge: time.Hour}, encOpts(sig))
	defer s.Close()
	for i := range 13 { // 2 sealed batches, 3 open events
		appendSync(t, s, secretEv(i))
	}
	waitSignedN(t, s, 2)
	tests := []struct {
		after uint64
		want  int
	}{{0, 13}, {1, 8}, {2, 3}, {3, 0}, {9, 0}}
	for _, tt := range tests {
		evs, err := s.EventsAfter(tt.after)
		if err != nil {
			t.Fatal(err)
		}
		if got, want := len(evs), tt.want; got != want {
			t.Fatalf("EventsAfter(%d): %d events, want %d", tt.after, got, want)
		}
		if len(evs) > 0 && !bytes.Contains(evs[len(evs)-1], []byte(`"message":"`)) {
			t.Fatalf("EventsAfter(%d): last event not in clear: %.80s", tt.after, evs[len(evs)-1])
		}
	}
}

// waitSignedN waits until n batches are sealed and signed.
func waitSignedN(t testing.TB, s *Spool, n uint64) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		if p, _ := s.Position(); p.HeadSeq >= n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d batches not sealed within 5s", n)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
