package fhir

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/edgeaudit/edgeaudit/audit"
	"github.com/edgeaudit/edgeaudit/collectors"
)

var (
	_ collectors.Sink       = (*fakeSink)(nil)
	_ collectors.AtomicSink = (*fakeSink)(nil)
	_ collectors.Reporter   = (*fakeReporter)(nil)
)

var errFull = errors.New("spool full")

// testKey is the fixed tokenizer key of every test, so golden tokens are stable.
var testKey = []byte("edgeaudit-fhir-test-key-0123456789abcdef")

func testTokenizer(t testing.TB) *audit.Tokenizer {
	t.Helper()
	tok, err := audit.NewTokenizer(testKey)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// fakeSink keeps the encoded bytes of each committed event. IDs are deterministic. hold,
// when set, delays every commit until it is closed. log records "commit <id>" just
// before done runs, for ordering checks. It refuses an Append when refuseAll is set,
// when refuse says so for that event, or once it holds refuseAfter events (a spool
// filling up). AppendAll stores all of its events or, with commitErr set, none of them
// and then reports commitErr to done (a commit that failed).
type fakeSink struct {
	mu          sync.Mutex
	n           int
	events      [][]byte
	refuseAll   bool
	refuse      func(*audit.Event) bool
	refuseAfter int
	commitErr   error
	hold        chan struct{}
	log         []string
	wg          sync.WaitGroup
}

func (s *fakeSink) Append(ctx context.Context, e *audit.Event, done func(error)) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := ctx.Err(); err != nil {
		return err
	}
	if s.refuseAll || (s.refuse != nil && s.refuse(e)) || (s.refuseAfter > 0 && len(s.events) >= s.refuseAfter) {
		return fmt.Errorf("append: %w", errFull)
	}
	s.n++
	if e.ID == "" {
		e.ID = fmt.Sprintf("%032x", s.n)
	}
	s.events = append(s.events, e.AppendJSON(nil))
	hold := s.hold
	id := e.ID
	s.wg.Go(func() {
		if hold != nil {
			<-hold
		}
		s.mu.Lock()
		s.log = append(s.log, "commit "+id)
		s.mu.Unlock()
		if done != nil {
			done(nil)
		}
	})
	return nil
}

func (s *fakeSink) AppendAll(ctx context.Context, evs []*audit.Event, done func(error)) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := ctx.Err(); err != nil {
		return err
	}
	if s.refuseAll {
		return fmt.Errorf("append all: %w", errFull)
	}
	ids := make([]string, len(evs))
	for i, e := range evs {
		s.n++
		if e.ID == "" {
			e.ID = fmt.Sprintf("%032x", s.n)
		}
		ids[i] = e.ID
	}
	if err := s.commitErr; err != nil {
		s.wg.Go(func() { done(fmt.Errorf("commit: %w", err)) })
		return nil
	}
	for _, e := range evs {
		s.events = append(s.events, e.AppendJSON(nil))
	}
	hold := s.hold
	s.wg.Go(func() {
		if hold != nil {
			<-hold
		}
		s.mu.Lock()
		s.log = append(s.log, "commit "+strings.Join(ids, " "))
		s.mu.Unlock()
		done(nil)
	})
	return nil
}

// appendOnly is a sink without AppendAll, which cannot commit a transaction at once.
type appendOnly struct{ s *fakeSink }

func (a appendOnly) Append(ctx context.Context, e *audit.Event, done func(error)) error {
	return a.s.Append(ctx, e, done)
}

func (s *fakeSink) record(msg string) {
	s.mu.Lock()
	s.log = append(s.log, msg)
	s.mu.Unlock()
}

func (s *fakeSink) raw() [][]byte {
	s.wg.Wait()
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([][]byte(nil), s.events...)
}

func (s *fakeSink) logLines() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.log...)
}

type rejectRecord struct {
	Transport string `json:"transport"`
	Reason    string `json:"reason"`
	SHA256    string `json:"sha256,omitempty"`
	Size      int64  `json:"size"`
}

type fakeReporter struct {
	mu      sync.Mutex
	rejects []rejectRecord
}

func (r *fakeReporter) Reject(kind, transport, peerIP, reason, sha256 string, size int64) {
	if kind != audit.KindFHIR {
		panic("reject with kind " + kind)
	}
	r.mu.Lock()
	r.rejects = append(r.rejects, rejectRecord{transport, reason, sha256, size})
	r.mu.Unlock()
}

func (r *fakeReporter) Lost(kind, transport, reason string, n uint64) {}

func (r *fakeReporter) get() []rejectRecord {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]rejectRecord{}, r.rejects...)
}

var fixedNow = time.Date(2026, 3, 15, 10, 0, 0, 0, time.UTC)

// newTestCollector builds a collector (not running) with a pinned clock.
func newTestCollector(t testing.TB, cfg Config, sink collectors.Sink, rep collectors.Reporter) *Collector {
	t.Helper()
	c, err := New(cfg, sink, rep, testTokenizer(t), nil)
	if err != nil {
		t.Fatal(err)
	}
	c.now = func() time.Time { return fixedNow }
	return c
}

// startCollector runs c until the test ends and waits until it listens.
func startCollector(t testing.TB, c *Collector) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- c.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-errc; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	select {
	case <-c.Ready():
	case err := <-errc:
		t.Fatalf("Run: %v", err)
	case <-time.After(10 * time.Second):
		t.Fatal("collector not ready")
	}
}

func readFile(t testing.TB, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func contentTypeFor(name string) string {
	if len(name) > 4 && name[len(name)-4:] == ".xml" {
		return "application/fhir+xml"
	}
	return "application/fhir+json"
}

func mustStatus(t testing.TB, resp *http.Response, want int) {
	t.Helper()
	if resp.StatusCode != want {
		t.Fatalf("status=%d, want %d", resp.StatusCode, want)
	}
}

// nopSink commits every event at once, on the caller's goroutine (benchmarks).
type nopSink struct{}

func (nopSink) Append(ctx context.Context, e *audit.Event, done func(error)) error {
	if e.ID == "" {
		e.ID = audit.NewID(time.Now())
	}
	_ = e.AppendJSON(make([]byte, 0, 1024))
	if done != nil {
		done(nil)
	}
	return nil
}
