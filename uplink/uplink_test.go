package uplink

import (
	"context"
	"errors"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	"go.uber.org/goleak"

	"github.com/edgeaudit/edgeaudit/internal/configerr"
	"github.com/edgeaudit/edgeaudit/ledger"
)

func TestConfigValidate(t *testing.T) {
	base := func() Config {
		return Config{Broker: "tls://central.example:8883", Site: "s1", Device: "d1"}
	}
	tests := []struct {
		name  string
		edit  func(*Config)
		field string // "" means valid
	}{
		{"defaults are valid", func(*Config) {}, ""},
		{"tcp to loopback", func(c *Config) { c.Broker = "tcp://127.0.0.1:1883" }, ""},
		{"no broker", func(c *Config) { c.Broker = "" }, "uplink.broker"},
		{"tcp to a remote host", func(c *Config) { c.Broker = "tcp://central.example:1883" }, "uplink.broker"},
		{"no port", func(c *Config) { c.Broker = "tls://central.example" }, "uplink.broker"},
		{"unknown scheme", func(c *Config) { c.Broker = "http://central.example:80" }, "uplink.broker"},
		{"wildcard in device", func(c *Config) { c.Device = "d+1" }, "device"},
		{"slash in site", func(c *Config) { c.Site = "a/b" }, "site"},
		{"slash in prefix", func(c *Config) { c.Prefix = "a/b" }, "uplink.prefix"},
		{"cert without key", func(c *Config) { c.Cert = "c.pem" }, "uplink.key"},
		{"key without cert", func(c *Config) { c.Key = "k.pem" }, "uplink.cert"},
		{"password without user", func(c *Config) { c.Password = "x" }, "uplink.username"},
		{"window too big", func(c *Config) { c.Window = 5000 }, "uplink.window"},
		{"negative window", func(c *Config) { c.Window = -1 }, "uplink.window"},
		{"tiny max message", func(c *Config) { c.MaxMessageBytes = 10 }, "uplink.max_message_bytes"},
		{"negative ack timeout", func(c *Config) { c.AckTimeout = -time.Second }, "uplink.ack_timeout"},
		{"backoff max below min", func(c *Config) { c.BackoffMin, c.BackoffMax = time.Minute, time.Second }, "uplink.backoff_max"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := base()
			tt.edit(&c)
			c.ApplyDefaults()
			err := c.Validate()
			if tt.field == "" {
				if err != nil {
					t.Fatalf("Validate: %v, want nil", err)
				}
				return
			}
			var ce *configerr.Error
			if !errors.As(err, &ce) {
				t.Fatalf("Validate=%v, want a *configerr.Error for %s", err, tt.field)
			}
			if got, want := ce.Field, tt.field; got != want {
				t.Fatalf("field=%s, want %s (%v)", got, want, err)
			}
		})
	}
}

func TestDefaultsAndTopics(t *testing.T) {
	c := Config{Broker: "tls://c:8883", Site: "s1", Device: "d1"}
	c.ApplyDefaults()
	for _, tt := range []struct{ name, got, want string }{
		{"batch", c.BatchTopic(), "edgeaudit/s1/d1/batch"},
		{"ack", c.AckTopic(), "edgeaudit/s1/d1/ack"},
		{"status", c.StatusTopic(), "edgeaudit/s1/d1/status"},
		{"client id", c.ClientID, "edgeaudit-s1-d1"},
	} {
		if tt.got != tt.want {
			t.Errorf("%s=%q, want %q", tt.name, tt.got, tt.want)
		}
	}
	if got, want := c.Window, DefaultWindow; got != want {
		t.Errorf("window=%d, want %d", got, want)
	}
	if got, want := c.MaxMessageBytes, 256<<10; got != want {
		t.Errorf("max_message_bytes=%d, want %d", got, want)
	}
}

// doneToken is a completed paho token.
type doneToken struct{ err error }

func (t doneToken) Wait() bool                     { return true }
func (t doneToken) WaitTimeout(time.Duration) bool { return true }
func (t doneToken) Done() <-chan struct{}          { c := make(chan struct{}); close(c); return c }
func (t doneToken) Error() error                   { return t.err }

// recorder is a publisher that records the seqs it was given.
type recorder struct {
	mu   sync.Mutex
	seqs []uint64
	err  error
}

func (r *recorder) Publish(topic string, qos byte, retained bool, payload any) mqtt.Token {
	b, err := ledger.NewReader(strings.NewReader(string(payload.([]byte)))).Next()
	if err == nil {
		if h, err := ledger.ParseHeader(b.Header); err == nil {
			r.mu.Lock()
			r.seqs = append(r.seqs, h.Seq)
			r.mu.Unlock()
		}
	}
	return doneToken{err: r.err}
}

func newTestSender(t *testing.T, src *memSource, v hmacVerifier, rep Reporter, window int) (*Uplink, *sender, *recorder) {
	t.Helper()
	u, err := New(Config{Broker: "tcp://127.0.0.1:1", Site: "s1", Device: "d1", Window: window}, src, v, rep, nil)
	if err != nil {
		t.Fatal(err)
	}
	r := &recorder{}
	s, err := u.newSender(r)
	if err != nil {
		t.Fatal(err)
	}
	return u, s, r
}

// The window bounds what is in flight; a receipt opens it; a timeout resends from the
// first unreceipted seq.
func TestSenderWindowReceiptTimeout(t *testing.T) {
	src := newSource(t)
	src.add(t, "d1", 10, 1, 50)
	v := hmacVerifier{key: []byte("k")}
	u, s, r := newTestSender(t, src, v, nil, 3)
	steps := []struct {
		name   string
		do     func()
		sent   []uint64
		acked  uint64
		flight int
	}{
		{"fill up to the window", func() {}, []uint64{1, 2, 3}, 0, 3},
		{"fill again: window full", func() {}, []uint64{1, 2, 3}, 0, 3},
		{"receipt for 2", func() { s.receipt(v.sign(2, src.hashes[1])) }, []uint64{1, 2, 3, 4, 5}, 2, 3},
		{"timeout resends from 3", func() { s.timeout() }, []uint64{1, 2, 3, 4, 5, 3, 4, 5}, 2, 3},
		{"duplicate old receipt changes nothing", func() { s.receipt(v.sign(1, src.hashes[0])) }, []uint64{1, 2, 3, 4, 5, 3, 4, 5}, 2, 3},
		{"receipt for 5", func() { s.receipt(v.sign(5, src.hashes[4])) }, []uint64{1, 2, 3, 4, 5, 3, 4, 5, 6, 7, 8}, 5, 3},
		{"receipt for 10 acks all, sends nothing more", func() { s.receipt(v.sign(10, src.hashes[9])) }, []uint64{1, 2, 3, 4, 5, 3, 4, 5, 6, 7, 8}, 10, 0},
	}
	for _, st := range steps {
		st.do()
		if err := s.fill(); err != nil {
			t.Fatalf("%s: fill: %v", st.name, err)
		}
		if got := r.seqs; !equal(got, st.sent) {
			t.Fatalf("%s: published %v, want %v", st.name, got, st.sent)
		}
		if got := src.ackedSeq(); got != st.acked {
			t.Fatalf("%s: acked=%d, want %d", st.name, got, st.acked)
		}
		if got := len(s.inflight); got != st.flight {
			t.Fatalf("%s: in flight=%d, want %d", st.name, got, st.flight)
		}
	}
	if got, want := u.Stats().Resends, uint64(3); got != want {
		t.Fatalf("resends=%d, want %d", got, want)
	}
	// Every publish was PUBACKed (the recorder's tokens are done); counted are all but
	// the first 4 and 5, which the timeout dropped from flight before a look at them.
	if got, want := u.Stats().PubAcks, uint64(9); got != want {
		t.Fatalf("pubacks=%d, want %d", got, want)
	}
}

// Receipts that do not match the local chain are reported and never acked.
func TestReceiptChecks(t *testing.T) {
	v := hmacVerifier{key: []byte("k")}
	tests := []struct {
		name      string
		receipt   func(src *memSource) []byte
		acked     uint64
		kind      string // incident, "" for none
		bad       uint64
		incidents uint64
	}{
		{"good", func(s *memSource) []byte { return v.sign(4, s.hashes[3]) }, 4, "", 0, 0},
		{"good, hash in upper case", func(s *memSource) []byte { return v.sign(2, strings.ToUpper(s.hashes[1])) }, 2, "", 0, 0},
		{"bad mac", func(s *memSource) []byte { b := v.sign(4, s.hashes[3]); b[len(b)-1] ^= 1; return b }, 0, "", 1, 0},
		{"other key", func(s *memSource) []byte { return hmacVerifier{key: []byte("x")}.sign(4, s.hashes[3]) }, 0, "", 1, 0},
		{"garbage", func(*memSource) []byte { return []byte("\x00\x01") }, 0, "", 1, 0},
		{"beyond the head: rollback", func(s *memSource) []byte { return v.sign(9, strings.Repeat("ab", 32)) }, 0, IncidentRollback, 0, 1},
		{"other hash in flight: fork", func(s *memSource) []byte { return v.sign(3, flipLast(s.hashes[2])) }, 0, IncidentFork, 0, 1},
		{"other hash at the head: fork", func(s *memSource) []byte { return v.sign(5, strings.Repeat("cd", 32)) }, 0, IncidentFork, 0, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			src := newSource(t)
			src.add(t, "d1", 5, 1, 50)
			rep := &reporter{}
			u, s, _ := newTestSender(t, src, v, rep, 4) // 1..4 in flight, 5 not yet
			if err := s.fill(); err != nil {
				t.Fatal(err)
			}
			s.receipt(tt.receipt(src))
			if got := src.ackedSeq(); got != tt.acked {
				t.Fatalf("acked=%d, want %d", got, tt.acked)
			}
			st := u.Stats()
			if got := st.BadReceipts; got != tt.bad {
				t.Fatalf("bad receipts=%d, want %d", got, tt.bad)
			}
			if got := st.Incidents; got != tt.incidents {
				t.Fatalf("incidents=%d, want %d", got, tt.incidents)
			}
			in := rep.incidents()
			if tt.kind == "" {
				if len(in) != 0 {
					t.Fatalf("reported %v, want nothing", in)
				}
				return
			}
			if len(in) != 1 || in[0].Kind != tt.kind {
				t.Fatalf("reported %v, want one %s", in, tt.kind)
			}
			s.receipt(tt.receipt(src)) // the same again: counted, not reported twice
			if got := len(rep.incidents()); got != 1 {
				t.Fatalf("reported %d times, want once", got)
			}
		})
	}
}

// flipLast changes the last hex digit, so the hash surely differs.
func flipLast(h string) string {
	if h[63] == '0' {
		return h[:63] + "1"
	}
	return h[:63] + "0"
}

// A receipt for an old batch that is no longer in flight is checked against the spool.
func TestReceiptForOldBatchIsChecked(t *testing.T) {
	src := newSource(t)
	src.add(t, "d1", 6, 1, 50)
	src.acked = 3
	v := hmacVerifier{key: []byte("k")}
	rep := &reporter{}
	_, s, _ := newTestSender(t, src, v, rep, 2)
	s.receipt(v.sign(2, strings.Repeat("00", 32)))
	if in := rep.incidents(); len(in) != 1 || in[0].Kind != IncidentFork || in[0].Seq != 2 {
		t.Fatalf("reported %v, want a fork at seq 2", in)
	}
	if got, want := src.ackedSeq(), uint64(3); got != want {
		t.Fatalf("acked=%d, want %d", got, want)
	}
}

// A failed Ack is retried: the receipt is not lost.
func TestAckRetried(t *testing.T) {
	src := newSource(t)
	src.add(t, "d1", 3, 1, 50)
	src.failAck = errors.New("disk full")
	v := hmacVerifier{key: []byte("k")}
	u, s, _ := newTestSender(t, src, v, nil, 8)
	if err := s.fill(); err != nil {
		t.Fatal(err)
	}
	s.receipt(v.sign(3, src.hashes[2]))
	if got := src.ackedSeq(); got != 0 {
		t.Fatalf("acked=%d while Ack fails, want 0", got)
	}
	if st := u.Stats(); !strings.Contains(st.LastError, "disk full") {
		t.Fatalf("last error=%q, want the ack error", st.LastError)
	}
	src.mu.Lock()
	src.failAck = nil
	src.mu.Unlock()
	if err := s.refresh(); err != nil {
		t.Fatal(err)
	}
	if got, want := src.ackedSeq(), uint64(3); got != want {
		t.Fatalf("acked=%d after the retry, want %d", got, want)
	}
}

// A publish error ends the session (fill returns it) so Run reconnects.
func TestPublishErrorEndsSession(t *testing.T) {
	src := newSource(t)
	src.add(t, "d1", 2, 1, 50)
	_, s, r := newTestSender(t, src, hmacVerifier{}, nil, 8)
	r.err = errors.New("broken pipe")
	if err := s.fill(); err != nil {
		t.Fatalf("first fill: %v (the error shows on the next)", err)
	}
	if err := s.fill(); err == nil || !strings.Contains(err.Error(), "broken pipe") {
		t.Fatalf("fill after a failed publish: %v, want the publish error", err)
	}
}

// Stats: unsent count and the age of the oldest unsent batch come from the spool.
func TestStatsUnsent(t *testing.T) {
	src := newSource(t)
	src.add(t, "d1", 4, 1, 50)
	src.acked = 1
	u, err := New(Config{Broker: "tcp://127.0.0.1:1", Site: "s1", Device: "d1"}, src, hmacVerifier{}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	h, _ := ledger.ParseHeader(src.batches[1].Header)
	sealed, _ := time.Parse(time.RFC3339Nano, h.Sealed)
	st := u.Stats()
	if got, want := st.Unsent, uint64(3); got != want {
		t.Fatalf("unsent=%d, want %d", got, want)
	}
	if st.OldestUnsent <= 0 || st.OldestUnsent > time.Since(sealed) {
		t.Fatalf("oldest unsent=%v, want in (0, %v]", st.OldestUnsent, time.Since(sealed))
	}
	if got, want := st.State, StateDisconnected; got != want {
		t.Fatalf("state=%s, want %s", got, want)
	}
}

// With no broker answering, Run keeps retrying in the background, and returns when
// cancelled, leaving no goroutine behind.
func TestRunWithoutBrokerStops(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close() // nothing listens there now
	src := newSource(t)
	src.add(t, "d1", 2, 1, 10)
	u, err := New(Config{Broker: "tcp://" + addr, Site: "s1", Device: "d1",
		BackoffMin: 10 * time.Millisecond, BackoffMax: 20 * time.Millisecond}, src, hmacVerifier{}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- u.Run(ctx) }()
	eventually(t, "a connection error", func() bool { return u.Stats().LastError != "" })
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Run=%v, want nil", err)
	}
	if got, want := u.Stats().Unsent, uint64(2); got != want {
		t.Fatalf("unsent=%d, want %d", got, want)
	}
	goleak.VerifyNone(t)
}

// Notify never blocks, however often it is called without a Run.
func TestNotifyNeverBlocks(t *testing.T) {
	u, err := New(Config{Broker: "tcp://127.0.0.1:1", Site: "s1", Device: "d1"}, newSource(t), hmacVerifier{}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	for range 100 {
		u.Notify()
	}
	if got, want := len(u.wake), 1; got != want {
		t.Fatalf("pending wakes=%d, want %d", got, want)
	}
}

// keepingVerifier stores receipts, or fails to.
type keepingVerifier struct {
	hmacVerifier
	mu   sync.Mutex
	err  error
	kept []uint64
}

func (k *keepingVerifier) Keep(seq uint64, receipt []byte) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.err != nil {
		return k.err
	}
	if s, _, err := k.Verify(receipt); err != nil || s != seq {
		return errors.New("kept receipt does not name seq")
	}
	k.kept = append(k.kept, seq)
	return nil
}

// A receipt is kept before it acks; when keeping fails, nothing is acked until it works.
func TestReceiptKeptBeforeAck(t *testing.T) {
	src := newSource(t)
	src.add(t, "d1", 3, 1, 50)
	kv := &keepingVerifier{hmacVerifier: hmacVerifier{key: []byte("k")}, err: errors.New("disk full")}
	u, err := New(Config{Broker: "tcp://127.0.0.1:1", Site: "s1", Device: "d1"}, src, kv, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	s, err := u.newSender(&recorder{})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.fill(); err != nil {
		t.Fatal(err)
	}
	s.receipt(kv.sign(2, src.hashes[1]))
	if got := src.ackedSeq(); got != 0 {
		t.Fatalf("acked=%d although keeping failed, want 0", got)
	}
	kv.mu.Lock()
	kv.err = nil
	kv.mu.Unlock()
	if err := s.refresh(); err != nil {
		t.Fatal(err)
	}
	if got, want := src.ackedSeq(), uint64(2); got != want {
		t.Fatalf("acked=%d, want %d", got, want)
	}
	s.receipt(kv.sign(3, src.hashes[2]))
	if got, want := kv.kept, []uint64{2, 3}; !equal(got, want) {
		t.Fatalf("kept %v, want %v", got, want)
	}
	if got, want := src.ackedSeq(), uint64(3); got != want {
		t.Fatalf("acked=%d, want %d", got, want)
	}
}

// Ack is a spool commit: polling calls it only when a receipt moved the mark.
func TestNoAckWithoutNews(t *testing.T) {
	src := newSource(t)
	src.add(t, "d1", 3, 1, 50)
	v := hmacVerifier{key: []byte("k")}
	_, s, _ := newTestSender(t, src, v, nil, 8)
	if err := s.fill(); err != nil {
		t.Fatal(err)
	}
	for range 5 {
		if err := s.refresh(); err != nil {
			t.Fatal(err)
		}
	}
	s.receipt(v.sign(3, src.hashes[2]))
	s.receipt(v.sign(3, src.hashes[2]))
	for range 5 {
		if err := s.refresh(); err != nil {
			t.Fatal(err)
		}
	}
	if got, want := src.calls, 1; got != want {
		t.Fatalf("Ack calls=%d, want %d", got, want)
	}
}

// A broker that accepts TCP and never completes the TLS handshake does not hold up a
// stop: the handshake ends with ctx, not after connect_timeout (here an hour).
func TestStopDuringHandshake(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	accepted := make(chan net.Conn, 4)
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				close(accepted)
				return
			}
			accepted <- c // held open, silent
		}
	}()
	src := newSource(t)
	u, err := New(Config{Broker: "tls://" + l.Addr().String(), Site: "s1", Device: "d1",
		ConnectTimeout: time.Hour}, src, hmacVerifier{}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- u.Run(ctx) }()
	conn := <-accepted // the uplink is in its handshake now
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Run=%v, want nil", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("Run still connecting 30s after cancel")
	}
	conn.Close()
	l.Close()
	for c := range accepted {
		c.Close()
	}
	goleak.VerifyNone(t)
}

// Validate reports every problem at once, not only the first.
func TestValidateReportsEveryProblem(t *testing.T) {
	c := Config{Broker: "tcp://central.example:1883", Site: "s1", Device: "d1", Window: 5000, Password: "x"}
	c.ApplyDefaults()
	err := c.Validate()
	for _, want := range []string{"uplink.broker", "uplink.window", "uplink.username"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Validate=%v, want it to name %s", err, want)
		}
	}
}
