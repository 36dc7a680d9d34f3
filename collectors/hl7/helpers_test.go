package hl7

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"strings"
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

var (
	errFull   = errors.New("spool full")
	errCommit = errors.New("commit failed")
)

// testKey is the fixed data key of the test tokenizer, so golden files are stable.
var testKey = []byte("edgeaudit-hl7-test-key-0123456789abcdef")

func testTokenizer(t testing.TB) *audit.Tokenizer {
	t.Helper()
	tok, err := audit.NewTokenizer(testKey)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// fakeSink keeps the encoded bytes of each event. Commits are confirmed from another
// goroutine after commitDelay; each confirmation is recorded in the shared order log
// before done runs, so tests can check that no ACK overtook its commit.
type fakeSink struct {
	mu          sync.Mutex
	events      [][]byte
	refuseAll   bool          // Append returns errFull
	failCommit  bool          // done gets errCommit
	commitDelay time.Duration // wait before done
	order       *orderLog     // may be nil
}

func (s *fakeSink) Append(ctx context.Context, e *audit.Event, done func(error)) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := ctx.Err(); err != nil {
		return err
	}
	if s.refuseAll {
		return errFull
	}
	if e.ID == "" {
		e.ID = audit.NewID(time.Now())
	}
	enc := e.AppendJSON(nil)
	fail, delay, order, ctl := s.failCommit, s.commitDelay, s.order, e.CorrelationID
	go func() {
		time.Sleep(delay)
		if fail {
			done(errCommit)
			return
		}
		s.mu.Lock()
		s.events = append(s.events, enc)
		s.mu.Unlock()
		if order != nil {
			order.add("commit " + ctl)
		}
		done(nil)
	}()
	return nil
}

func (s *fakeSink) set(f func(s *fakeSink)) {
	s.mu.Lock()
	f(s)
	s.mu.Unlock()
}

func (s *fakeSink) len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.events)
}

func (s *fakeSink) raw() [][]byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([][]byte(nil), s.events...)
}

// orderLog records events from several goroutines in the order they happened.
type orderLog struct {
	mu  sync.Mutex
	log []string
}

func (o *orderLog) add(s string) {
	o.mu.Lock()
	o.log = append(o.log, s)
	o.mu.Unlock()
}

func (o *orderLog) get() []string {
	o.mu.Lock()
	defer o.mu.Unlock()
	return append([]string(nil), o.log...)
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
	lost    map[string]uint64
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

// fixedNow is the clock of tests that need deterministic receive and ACK times.
var fixedNow = time.Date(2026, 3, 15, 12, 0, 0, 500_000_000, time.UTC)

// startCollector runs a collector for the test's duration and returns it once it is
// ready. The cleanup cancels it and checks that Run returned nil.
func startCollector(t testing.TB, cfg Config, sink collectors.Sink, rep collectors.Reporter) *Collector {
	t.Helper()
	if cfg.MLLP == "" {
		cfg.MLLP = "127.0.0.1:0"
	}
	if cfg.Timezone == "" {
		cfg.Timezone = "UTC"
	}
	c, err := New(cfg, sink, rep, testTokenizer(t), nil)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	c.now = func() time.Time { return fixedNow }
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

// mllpClient is a test sender: it frames messages and reads ACKs.
type mllpClient struct {
	conn net.Conn
	br   *bufio.Reader
	fr   *Framer
}

func dialMLLP(t testing.TB, addr net.Addr) *mllpClient {
	t.Helper()
	conn, err := net.DialTimeout("tcp", addr.String(), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return newClient(conn)
}

func newClient(conn net.Conn) *mllpClient {
	br := bufio.NewReader(conn)
	return &mllpClient{conn: conn, br: br, fr: NewFramer(br, 1<<20)}
}

func frame(msg string) []byte {
	return append(append([]byte{startBlock}, msg...), endBlock, carriage)
}

func (c *mllpClient) send(t testing.TB, msg string) {
	t.Helper()
	if _, err := c.conn.Write(frame(msg)); err != nil {
		t.Fatal(err)
	}
}

// readACK reads one ACK block and returns it parsed.
func (c *mllpClient) readACK(t testing.TB) *Message {
	t.Helper()
	_ = c.conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	b, err := c.fr.Next()
	if err != nil {
		t.Fatalf("read ack: %v", err)
	}
	m, err := Parse(bytes.Clone(b))
	if err != nil {
		t.Fatalf("parse ack %q: %v", b, err)
	}
	return m
}

// expectClosed asserts the server closes the connection without another ACK.
func (c *mllpClient) expectClosed(t testing.TB) {
	t.Helper()
	_ = c.conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.fr.Next(); !errors.Is(err, io.EOF) {
		t.Fatalf("read after close: %v, want EOF", err)
	}
}

func ackCode(m *Message) string { return m.Component(m.Field("MSA", 1), 1) }

// adt is a small ADT^A01 with the given control id.
func adt(ctl string) string {
	return strings.Join([]string{
		"MSH|^~\\&|REG|HOSP|EDGE|AUDIT|20260315110000||ADT^A01^ADT_A01|" + ctl + "|P|2.5.1",
		"EVN|A01|20260315110000|||OP123^Clerk^Carla",
		"PID|1||MRN4711^^^HOSP&1.2.3&ISO^MR~99887766^^^NATION||Doe^Jane||19800102|F|||Main St 1^^Town",
		"PV1|1|I",
	}, "\r") + "\r"
}
