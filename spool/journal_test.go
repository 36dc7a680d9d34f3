package spool

import (
	"bytes"
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/edgeaudit/edgeaudit/audit"
)

// urgentAck appends e through AppendUrgent and returns its acknowledgement channel.
func urgentAck(t *testing.T, s *Spool, e *audit.Event) chan error {
	t.Helper()
	ch := make(chan error, 1)
	if err := s.AppendUrgent(t.Context(), e, func(err error) { ch <- err }); err != nil {
		t.Fatal(err)
	}
	return ch
}

func waitAck(t *testing.T, ch chan error) {
	t.Helper()
	select {
	case err := <-ch:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("no acknowledgement: an urgent event waited for a commit that cannot happen")
	}
}

// messages are the Message fields of evs, sorted.
// secretMessages is the sorted messages of secretEv(0) … secretEv(n-1).
func secretMessages(n int) []string {
	var out []string
	for i := range n {
		out = append(out, secretEv(i).Message)
	}
	slices.Sort(out)
	return out
}

func messages(evs []audit.Event) []string {
	var out []string
	for _, e := range evs {
		if e.Source.Kind != audit.KindSelf {
			out = append(out, e.Message)
		}
	}
	slices.Sort(out)
	return out
}

// journaledThenLost opens a spool at path whose bbolt commits all fail, sends n urgent
// events (each acknowledged by the journal alone) and one bulk event, and closes it:
// the state a power cut leaves between the journal's fsync and the bbolt commit.
func journaledThenLost(t *testing.T, path string, opts Options, n int) {
	t.Helper()
	s := openWith(t, path, Config{MaxEvents: 1000, MaxAge: time.Hour, CloseGrace: 200 * time.Millisecond}, opts)
	// The disk hangs (the commit in progress never returns) and then fails: nothing
	// reaches bbolt, and nothing refuses events before the hang ends.
	gone := make(chan struct{})
	fail := func() error { <-gone; return errors.New("disk gone") }
	s.commitFault.Store(&fail)
	for i := range n {
		waitAck(t, urgentAck(t, s, secretEv(i)))
	}
	if got := s.Stats().JournalWritten; got != uint64(n) {
		t.Errorf("Stats().JournalWritten %d after %d journaled acknowledgements", got, n)
	}
	if err := s.Append(t.Context(), ev(-1), nil); err != nil {
		t.Fatal(err)
	}
	close(gone)
	s.Close()
}

// An urgent event is acknowledged once the journal holds it, even while bbolt cannot
// commit; the next Open commits it exactly once, and it is not counted as lost. The bulk
// event, which only memory held, is (audit.events_lost).
func TestJournalAcknowledgedSurvives(t *testing.T) {
	for _, tt := range []struct {
		name string
		opts Options
	}{
		{"clear", Options{}},
		{"encrypted", Options{DataKey: testDataKey, Encrypt: true}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "spool.db")
			tt.opts.Signer = newSigner(t)
			const n = 20
			journaledThenLost(t, path, tt.opts, n)
			if tt.opts.Encrypt {
				b, err := os.ReadFile(path + journalExt)
				if err != nil {
					t.Fatal(err)
				}
				if bytes.Contains(b, []byte("SECRET-MARKER")) {
					t.Fatal("the journal holds an event in clear")
				}
			}
			s := openWith(t, path, Config{MaxEvents: 1000, MaxAge: time.Hour}, tt.opts)
			defer s.Close()
			if err := s.Seal(t.Context()); err != nil {
				t.Fatal(err)
			}
			evs := verifyAll(t, s)
			want := secretMessages(n)
			if got := messages(evs); !slices.Equal(got, want) {
				t.Fatalf("events after reopen:\n got %q\nwant %q", got, want)
			}
			lost := 0
			for _, e := range evs {
				if e.Action == "audit.events_lost" {
					lost += e.Count
				}
			}
			if lost != 1 {
				t.Fatalf("events_lost counts %d, want 1 (the bulk event only)", lost)
			}
			if got := s.Stats().JournalReplayed; got != n {
				t.Fatalf("Stats().JournalReplayed %d, want %d", got, n)
			}
		})
	}
}

// After a clean close, or a reopen that committed the journal, nothing is handed over
// again: no duplicates.
func TestJournalNoDuplicates(t *testing.T) {
	path := filepath.Join(t.TempDir(), "spool.db")
	sig := newSigner(t)
	journaledThenLost(t, path, Options{Signer: sig}, 5)
	for round := range 3 {
		s := openSpool(t, path, Config{MaxEvents: 1000, MaxAge: time.Hour}, sig)
		waitAck(t, urgentAck(t, s, ev(100+round)))
		if err := s.Seal(t.Context()); err != nil {
			t.Fatal(err)
		}
		if got := len(messages(verifyAll(t, s))); got != 5+round+1 {
			t.Fatalf("round %d: %d events, want %d", round, got, 5+round+1)
		}
		s.Close()
	}
}

// journalRecords returns the offsets of the records of the journal at path.
func journalRecords(t *testing.T, path string) []int64 {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var offs []int64
	for off := int64(journalHeaderSize); off+journalRecHeader <= int64(len(b)); {
		n := int64(binary.BigEndian.Uint32(b[off:]))
		if n == 0 {
			break
		}
		offs = append(offs, off)
		off += journalRecHeader + n
	}
	return offs
}

// A torn last record (the process died during its write, so it was never acknowledged)
// ends the journal quietly; a damaged record with good ones after it is skipped and
// recorded as a loss.
func TestJournalTornAndDamaged(t *testing.T) {
	tests := []struct {
		name      string
		record    func(n int) int // which record to damage
		wantEvs   int
		wantLost  int
		truncated bool
	}{
		{"torn last record", func(n int) int { return n - 1 }, 4, 0, true},
		{"bit flipped in the middle", func(n int) int { return 2 }, 4, 1, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "spool.db")
			sig := newSigner(t)
			journaledThenLost(t, path, Options{Signer: sig}, 5)
			offs := journalRecords(t, path+journalExt)
			if len(offs) != 5 {
				t.Fatalf("%d records in the journal, want 5", len(offs))
			}
			f, err := os.OpenFile(path+journalExt, os.O_RDWR, 0)
			if err != nil {
				t.Fatal(err)
			}
			at := offs[tt.record(len(offs))]
			if tt.truncated {
				// The end of the record never reached the disk.
				if _, err := f.WriteAt(make([]byte, 64), at+journalRecHeader+10); err != nil {
					t.Fatal(err)
				}
			} else {
				b := make([]byte, 1)
				f.ReadAt(b, at+journalRecHeader+3)
				b[0] ^= 0x10
				f.WriteAt(b, at+journalRecHeader+3)
			}
			f.Close()
			s := openSpool(t, path, Config{MaxEvents: 1000, MaxAge: time.Hour}, sig)
			defer s.Close()
			if err := s.Seal(t.Context()); err != nil {
				t.Fatal(err)
			}
			evs := verifyAll(t, s)
			if got := len(messages(evs)); got != tt.wantEvs {
				t.Fatalf("%d events, want %d", got, tt.wantEvs)
			}
			lost := 0
			for _, e := range evs {
				if e.Action == "audit.events_lost" && e.Detail["cause"] == "journal record unreadable" {
					lost += e.Count
				}
			}
			if lost != tt.wantLost {
				t.Fatalf("journal losses recorded %d, want %d", lost, tt.wantLost)
			}
		})
	}
}

// A journal smaller than the load wraps: a new generation once the writer committed
// everything in it. Every event is in the chain once, also after a reopen.
func TestJournalWraps(t *testing.T) {
	old := journalSize
	journalSize = 64 << 10
	t.Cleanup(func() { journalSize = old })
	path := filepath.Join(t.TempDir(), "spool.db")
	sig := newSigner(t)
	s := openSpool(t, path, Config{MaxEvents: 500, MaxAge: time.Hour}, sig)
	const n = 2000
	for i := range n {
		waitAck(t, urgentAck(t, s, ev(i)))
	}
	gen := s.jn.gen
	s.Close()
	if gen < 3 {
		t.Fatalf("journal generation %d after %d events in 64 KiB, want it to have wrapped", gen, n)
	}
	s = openSpool(t, path, Config{MaxEvents: 500, MaxAge: time.Hour}, sig)
	defer s.Close()
	if err := s.Seal(t.Context()); err != nil {
		t.Fatal(err)
	}
	got := messages(verifyAll(t, s))
	if len(got) != n || len(slices.Compact(got)) != n {
		t.Fatalf("%d events (%d distinct), want %d", len(got), len(slices.Compact(slices.Clone(got))), n)
	}
	if r := s.jn.replayed.Load(); r != 0 {
		t.Fatalf("replayed %d after a clean close, want 0", r)
	}
}

// crashImage copies the spool's files as a power cut would leave them: the process
// gone with no Close, the journal still holding records bbolt committed.
func crashImage(t *testing.T, path string) string {
	t.Helper()
	dst := filepath.Join(t.TempDir(), "spool.db")
	matches, err := filepath.Glob(path + "*")
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range matches {
		b, err := os.ReadFile(m)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(dst+m[len(path):], b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return dst
}

// Records bbolt committed are not handed over again after a crash: the commit stored
// how far it got (journal_applied) with the events themselves.
func TestJournalCommittedNotReplayedAfterCrash(t *testing.T) {
	path := filepath.Join(t.TempDir(), "spool.db")
	sig := newSigner(t)
	s := openSpool(t, path, Config{MaxEvents: 1000, MaxAge: time.Hour}, sig)
	const n = 5
	for i := range n {
		waitAck(t, urgentAck(t, s, ev(i)))
	}
	if err := s.Seal(t.Context()); err != nil { // committed, and quiet: a clean image
		t.Fatal(err)
	}
	img := crashImage(t, path)
	s.Close()
	if offs := journalRecords(t, img+journalExt); len(offs) < n {
		t.Fatalf("the crash image's journal holds %d records, want the %d committed ones still there", len(offs), n)
	}
	c := openSpool(t, img, Config{MaxEvents: 1000, MaxAge: time.Hour}, sig)
	defer c.Close()
	if err := c.Seal(t.Context()); err != nil {
		t.Fatal(err)
	}
	if got := len(messages(verifyAll(t, c))); got != n {
		t.Fatalf("%d events after the crash, want %d (no duplicates)", got, n)
	}
}

// A journal that cannot be written (its file gone bad) costs latency, not events: the
// senders are answered after the bbolt commit instead, the events are in the chain, and
// the failure is counted.
func TestJournalWriteFailureFallsBackToCommit(t *testing.T) {
	path := filepath.Join(t.TempDir(), "spool.db")
	s := openSpool(t, path, Config{MaxEvents: 1000, MaxAge: time.Hour}, newSigner(t))
	// Before the journal goroutine has written anything: every write from here fails.
	if err := s.jn.f.Close(); err != nil {
		t.Fatal(err)
	}
	const n = 10
	for i := range n {
		waitAck(t, urgentAck(t, s, secretEv(i)))
	}
	st := s.Stats()
	if st.JournalWriteErrors == 0 || st.JournalWritten != 0 {
		t.Fatalf("journal writes failed %d, written %d; want failures and nothing written", st.JournalWriteErrors, st.JournalWritten)
	}
	if st.Committed < n {
		t.Fatalf("%d events committed after %d acknowledgements", st.Committed, n)
	}
	if err := s.Seal(t.Context()); err != nil {
		t.Fatal(err)
	}
	if got, want := messages(verifyAll(t, s)), secretMessages(n); !slices.Equal(got, want) {
		t.Fatalf("events in the chain:\n got %q\nwant the %d acknowledged %q", got, n, want)
	}
	_ = s.Close() // closing the journal's file reports it closed already
}
