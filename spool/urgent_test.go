package spool

import (
	"context"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

// An urgent event (AppendUrgent: a sender waiting for its acknowledgement) is
// committed ahead of bulk events queued before it: with 20,000 bulk events queued, it
// is acknowledged while most of them still wait.
func TestUrgentAheadOfBulk(t *testing.T) {
	s := openSpool(t, filepath.Join(t.TempDir(), "spool.db"), Config{MaxEvents: 1000, MaxAge: time.Hour, CommitEvents: 256}, newSigner(t))
	defer s.Close()
	const bulk = 20000
	var mu sync.Mutex
	committed := 0
	var wg sync.WaitGroup
	wg.Add(bulk)
	for i := range bulk {
		if err := s.Append(t.Context(), ev(i), func(err error) {
			if err != nil {
				t.Error(err)
			}
			mu.Lock()
			committed++
			mu.Unlock()
			wg.Done()
		}); err != nil {
			t.Fatal(err)
		}
	}
	ch := make(chan error, 1)
	if err := s.AppendUrgent(t.Context(), ev(-1), func(err error) { ch <- err }); err != nil {
		t.Fatal(err)
	}
	if err := <-ch; err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	before := committed
	mu.Unlock()
	wg.Wait()
	// Through the bulk queue it would come after all of them; a commit or two of bulk
	// events may go first (the one in progress, and 64 that share its transaction).
	if before > bulk-1000 {
		t.Fatalf("the urgent event was acknowledged after %d of %d bulk events queued before it; want it ahead of most", before, bulk)
	}
	if err := s.Seal(t.Context()); err != nil {
		t.Fatal(err)
	}
	if got := len(verifyAll(t, s)); got != bulk+1 {
		t.Fatalf("chain holds %d events, want %d", got, bulk+1)
	}
}

// An urgent event appended before Seal is in the batch Seal closes, and one appended
// before Close is committed by Close: the urgent lane loses nothing at a stop.
func TestUrgentSealAndClose(t *testing.T) {
	path := filepath.Join(t.TempDir(), "spool.db")
	cfg := Config{MaxEvents: 1000, MaxAge: time.Hour}
	s := openSpool(t, path, cfg, newSigner(t))
	for i := range 50 {
		done := make(chan error, 1)
		if err := s.AppendUrgent(t.Context(), ev(i), func(err error) { done <- err }); err != nil {
			t.Fatal(err)
		}
		if i == 49 {
			// Not waited for: Seal must still take it.
			break
		}
		if err := <-done; err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Seal(t.Context()); err != nil {
		t.Fatal(err)
	}
	if p, _ := s.Position(); p.OpenEvents != 0 || p.HeadSeq != 1 {
		t.Fatalf("after Seal: %+v, want one batch and nothing open", p)
	}
	if got := len(verifyAll(t, s)); got != 50 {
		t.Fatalf("sealed %d events, want 50", got)
	}
	done := make(chan error, 1)
	if err := s.AppendUrgent(context.Background(), ev(50), func(err error) { done <- err }); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatalf("urgent event before Close: %v", err)
	}
	if err := s.AppendUrgent(context.Background(), ev(51), nil); err != ErrClosed {
		t.Fatalf("AppendUrgent after Close: %v, want ErrClosed", err)
	}
	s = openSpool(t, path, cfg, newSigner(t))
	defer s.Close()
	if p, _ := s.Position(); p.OpenEvents != 1 {
		t.Fatalf("after reopen: %d open events, want the one appended before Close", p.OpenEvents)
	}
}

// The writer's gather waits for as many urgent events as its last urgent commit
// carried, no more; a wait that ends short lowers the count, and with one sender (or a
// commit time not yet known) it does not wait at all.
func TestGatherWait(t *testing.T) {
	tests := []struct {
		name     string
		want     int // urgent events in the last commit
		commit   time.Duration
		have     int // urgent events already in the transaction
		arriving int // urgent events sent to the channel before wait
		got      int
	}{
		{"first commit", 0, 0, 1, 5, 0},
		{"one sender", 1, time.Millisecond, 1, 5, 0},
		{"all senders back", 16, time.Millisecond, 1, 15, 15},
		{"more than last time", 4, time.Millisecond, 1, 10, 3},
		{"some gone quiet", 16, time.Millisecond, 1, 4, 4},
		{"commit time unknown", 16, 0, 1, 15, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ch := make(chan item, 64)
			for range tt.arriving {
				ch <- item{}
			}
			g := gather{want: tt.want, commit: tt.commit}
			more, _ := g.wait(ch, tt.have)
			if got := len(more); got != tt.got {
				t.Fatalf("wait took %d urgent events, want %d", got, tt.got)
			}
			g.committed(tt.have+tt.got, tt.commit)
			if g.want != tt.have+tt.got {
				t.Fatalf("next want %d, want %d", g.want, tt.have+tt.got)
			}
		})
	}
}

// While journaled events arrive, bulk transactions stay short (journalBulkEvents): the
// journal's fdatasync waits for the flush of the bulk commit in progress. 8,000 bulk
// events queued behind a stalled commit, right after a journaled one, take at least
// 8000/journalBulkEvents commits, not the two or three that CommitEvents would allow.
func TestJournaledEventsKeepBulkCommitsShort(t *testing.T) {
	s := openSpool(t, filepath.Join(t.TempDir(), "spool.db"), Config{MaxEvents: 100000, MaxAge: time.Hour, CommitEvents: 4096, QueueSize: 16384}, newSigner(t))
	defer s.Close()
	release := make(chan struct{})
	var once sync.Once
	stall := func() error {
		once.Do(func() { <-release })
		return nil
	}
	s.commitFault.Store(&stall)
	ch := make(chan error, 1)
	if err := s.AppendUrgent(t.Context(), ev(-1), func(err error) { ch <- err }); err != nil {
		t.Fatal(err)
	}
	if err := <-ch; err != nil { // the journal answered; the writer's commit of it stalls
		t.Fatal(err)
	}
	const bulk = 8000
	for i := range bulk {
		if err := s.Append(t.Context(), ev(i), nil); err != nil {
			t.Fatal(err)
		}
	}
	for deadline := time.Now().Add(10 * time.Second); len(s.queue) < bulk-rawQueueSize && time.Now().Before(deadline); {
		time.Sleep(time.Millisecond)
	}
	before := s.Stats().Commits
	close(release)
	if err := s.Seal(t.Context()); err != nil {
		t.Fatal(err)
	}
	got := s.Stats().Commits - before
	if want := uint64(bulk / journalBulkEvents); got < want {
		t.Fatalf("%d bulk events right after a journaled one went in %d commits, want at least %d (at most %d events each)", bulk, got, want, journalBulkEvents)
	}
}
