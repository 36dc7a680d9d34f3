package syslog

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/edgeaudit/edgeaudit/audit"
	"github.com/edgeaudit/edgeaudit/collectors"
)

var (
	_ collectors.Sink     = (*fakeSink)(nil)
	_ collectors.Reporter = (*fakeReporter)(nil)
)

var errFull = errors.New("spool full")

// fakeSink keeps the encoded bytes of each event, as the spool would. It can refuse the
// next appends, refuse all, or block until released.
type fakeSink struct {
	mu        sync.Mutex
	events    [][]byte
	refuse    int  // refuse this many appends with errFull
	refuseAll bool // refuse every append with errFull
	block     chan struct{}
	refused   int
}

func (s *fakeSink) Append(ctx context.Context, e *audit.Event, done func(error)) error {
	s.mu.Lock()
	block := s.block
	s.mu.Unlock()
	if block != nil {
		select {
		case <-block:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := ctx.Err(); err != nil {
		return err
	}
	if s.refuseAll || s.refuse > 0 {
		if s.refuse > 0 {
			s.refuse--
		}
		s.refused++
		return errFull
	}
	if e.ID == "" {
		e.ID = audit.NewID(time.Now())
	}
	s.events = append(s.events, e.AppendJSON(nil))
	if done != nil {
		go done(nil)
	}
	return nil
}

func (s *fakeSink) setBlock(ch chan struct{}) {
	s.mu.Lock()
	s.block = ch
	s.mu.Unlock()
}

func (s *fakeSink) len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.events)
}

func (s *fakeSink) decoded(t testing.TB) []audit.Event {
	t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]audit.Event, 0, len(s.events))
	for _, b := range s.events {
		e, err := audit.Decode(b)
		if err != nil {
			t.Fatalf("decode event %s: %v", b, err)
		}
		out = append(out, e)
	}
	return out
}

func (s *fakeSink) raw() [][]byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([][]byte(nil), s.events...)
}

type rejectRecord struct {
	Kind      string `json:"-"`
	Transport string `json:"transport"`
	IP        string `json:"-"`
	Reason    string `json:"reason"`
	SHA256    string `json:"sha256,omitempty"`
	Size      int64  `json:"size"`
}

type fakeReporter struct {
	mu      sync.Mutex
	rejects []rejectRecord
	lost    map[string]uint64 // "transport/reason"
}

func (r *fakeReporter) Reject(kind, transport, peerIP, reason, sha256 string, size int64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.rejects = append(r.rejects, rejectRecord{kind, transport, peerIP, reason, sha256, size})
}

func (r *fakeReporter) Lost(kind, transport, reason string, n uint64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.lost == nil {
		r.lost = make(map[string]uint64)
	}
	r.lost[transport+"/"+reason] += n
}

func (r *fakeReporter) getRejects() []rejectRecord {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]rejectRecord(nil), r.rejects...)
}

func (r *fakeReporter) getLost(key string) uint64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.lost[key]
}

// fixedNow is the clock of tests that need deterministic receive times and RFC 3164
// years.
var fixedNow = time.Date(2026, 3, 15, 12, 0, 0, 500_000_000, time.UTC)

// startCollector runs a collector for the test's duration and returns it once it is
// ready. Each setup function is applied before Run (e.g. SetTokenizer). The cleanup
// cancels it and checks that Run returned nil.
func startCollector(t testing.TB, cfg Config, sink collectors.Sink, rep collectors.Reporter, now func() time.Time, setup ...func(*Collector)) *Collector {
	t.Helper()
	c, err := New(cfg, sink, rep, nil)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	if now != nil {
		c.now = now
	}
	for _, f := range setup {
		f(c)
	}
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- c.Run(ctx) }()
	select {
	case <-c.Ready():
	case err := <-errc:
		cancel()
		t.Fatalf("Run: %v", err)
	case <-time.After(10 * time.Second):
		cancel()
		t.Fatal("collector not ready after 10s")
	}
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-errc:
			if err != nil {
				t.Errorf("Run returned %v, want nil", err)
			}
		case <-time.After(10 * time.Second):
			t.Error("Run did not return 10s after cancel")
		}
	})
	return c
}

// waitFor polls cond until it holds or 10 s have passed.
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}
