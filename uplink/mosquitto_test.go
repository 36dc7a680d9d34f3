package uplink

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/edgeaudit/edgeaudit/internal/testmqtt"
	"github.com/edgeaudit/edgeaudit/internal/testpki"
)

// runUplink starts u.Run and returns a stop function that cancels it and waits for Run
// to return.
func runUplink(t *testing.T, u *Uplink) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- u.Run(ctx) }()
	var stopped bool
	stop = func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run: %v", err)
			}
		case <-time.After(30 * time.Second):
			t.Fatal("Run did not return 30s after cancel")
		}
	}
	t.Cleanup(stop)
	return stop
}

// checkOrder: every arrival is a duplicate of a seq already delivered or exactly the
// next one; never a gap, never a reordering.
func checkOrder(t *testing.T, seqs []uint64) {
	t.Helper()
	var high uint64
	for i, s := range seqs {
		if s > high+1 {
			t.Fatalf("arrival %d is seq %d after a highest of %d: a gap or reordering (%v)", i, s, high, seqs)
		}
		high = max(high, s)
	}
}

// status subscribes to the device's retained status topic.
func status(t *testing.T, b *testmqtt.Broker, device string) (<-chan string, mqtt.Client) {
	t.Helper()
	return watch(t, b, "edgeaudit/s1/"+device+"/status")
}

// watch subscribes to topic as central and passes on each payload.
func watch(t *testing.T, b *testmqtt.Broker, topic string) (<-chan string, mqtt.Client) {
	t.Helper()
	ch := make(chan string, 16)
	o := mqtt.NewClientOptions().AddBroker(b.URL).SetClientID("watch-" + strings.ReplaceAll(topic, "/", "-")).SetUsername(centralUser).
		SetPassword(centralPass).SetTLSConfig(b.ClientTLS()).SetAutoReconnect(false)
	c := mqtt.NewClient(o)
	if tok := c.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("status watcher: %v", tok.Error())
	}
	t.Cleanup(func() { c.Disconnect(100) })
	if tok := c.Subscribe(topic, 1, func(_ mqtt.Client, m mqtt.Message) { ch <- string(m.Payload()) }); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("subscribe %s: %v", topic, tok.Error())
	}
	return ch, c
}

func waitFor(t *testing.T, ch <-chan string, want string) {
	t.Helper()
	timeout := time.After(30 * time.Second)
	for {
		select {
		case got := <-ch:
			if got == want {
				return
			}
		case <-timeout:
			t.Fatalf("status %q never seen", want)
		}
	}
}

// (1) Batches arrive in order, central receipts them, the source is acked to the last
// seq; status goes online, then offline at a clean stop; no goroutine is left.
func TestDeliverInOrderAndAck(t *testing.T) {
	b := startBroker(t)
	v := hmacVerifier{key: []byte("central")}
	ce := startCentral(t, b, v)
	st, watcher := status(t, b, "d1")
	src := newSource(t)
	src.add(t, "d1", 40, 3, 200)
	u, err := New(testConfig(b, "d1", "d1", "pw1"), src, v, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	stop := runUplink(t, u)
	waitFor(t, st, "online")
	eventually(t, "ack 40", func() bool { return src.ackedSeq() == 40 })
	src.add(t, "d1", 10, 1, 100) // sealed while running
	u.Notify()
	eventually(t, "ack 50", func() bool { return src.ackedSeq() == 50 })
	stop()
	waitFor(t, st, "offline")

	seqs := ce.seqs()
	checkOrder(t, seqs)
	if got, want := len(seqs), 50; got != want {
		t.Fatalf("arrivals=%d, want %d (no duplicates without a fault): %v", got, want, seqs)
	}
	s := u.Stats()
	if got, want := s.Unsent, uint64(0); got != want {
		t.Errorf("unsent=%d, want %d", got, want)
	}
	if got, want := s.Published, uint64(50); got != want {
		t.Errorf("published=%d, want %d", got, want)
	}
	if got, want := s.Resends, uint64(0); got != want {
		t.Errorf("resends=%d, want %d", got, want)
	}
	if got, want := s.State, StateDisconnected; got != want {
		t.Errorf("state=%s, want %s", got, want)
	}
	ce.stop()
	watcher.Disconnect(100)
	leakCheck(t)
}

// The device's public key is published retained on its key topic at connect, for a
// central that trusts on first use; a watcher that subscribes later still gets it.
func TestPublishesKeyRetained(t *testing.T) {
	b := startBroker(t)
	v := hmacVerifier{key: []byte("central")}
	src := newSource(t)
	cfg := testConfig(b, "d1", "d1", "pw1")
	cfg.PublicKey = []byte("-----BEGIN PUBLIC KEY-----\nMFkw\n-----END PUBLIC KEY-----\n")
	u, err := New(cfg, src, v, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	st, _ := status(t, b, "d1")
	runUplink(t, u)
	waitFor(t, st, "online") // the key is published before online
	keys, _ := watch(t, b, "edgeaudit/s1/d1/key")
	waitFor(t, keys, string(cfg.PublicKey))
}

// A restart resends from AckedSeq+1: nothing central already acknowledged goes again.
func TestRestartResendsFromAcked(t *testing.T) {
	b := startBroker(t)
	v := hmacVerifier{key: []byte("central")}
	ce := startCentral(t, b, v)
	src := newSource(t)
	src.add(t, "d1", 12, 1, 100)
	src.acked = 7
	ce.stored, ce.hashes[7] = 7, src.hashes[6] // central holds 1..7 already
	u, err := New(testConfig(b, "d1", "d1", "pw1"), src, v, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	runUplink(t, u)
	eventually(t, "ack 12", func() bool { return src.ackedSeq() == 12 })
	if got, want := ce.seqs(), []uint64{8, 9, 10, 11, 12}; !equal(got, want) {
		t.Fatalf("arrivals=%v, want %v", got, want)
	}
}

func equal(a, b []uint64) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// (2) No receipt within ack_timeout: everything from the first unreceipted seq goes again.
func TestResendAfterAckTimeout(t *testing.T) {
	b := startBroker(t)
	v := hmacVerifier{key: []byte("central")}
	ce := startCentral(t, b, v)
	ce.setSilent(true)
	src := newSource(t)
	src.add(t, "d1", 5, 1, 100)
	cfg := testConfig(b, "d1", "d1", "pw1")
	cfg.AckTimeout = 200 * time.Millisecond
	u, err := New(cfg, src, v, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	runUplink(t, u)
	// Batch 1 twice means one timeout passed and the resend started at the first seq.
	eventually(t, "a resend of seq 1", func() bool {
		n := 0
		for _, s := range ce.seqs() {
			if s == 1 {
				n++
			}
		}
		return n >= 2
	})
	if got := src.ackedSeq(); got != 0 {
		t.Fatalf("acked=%d without a receipt, want 0 (a PUBACK is never an ack)", got)
	}
	ce.setSilent(false)
	eventually(t, "ack 5", func() bool { return src.ackedSeq() == 5 })
	s := u.Stats()
	if s.Resends == 0 {
		t.Errorf("resends=0, want > 0")
	}
	checkOrder(t, ce.seqs())
}

// (3) ACL denial is silent in MQTT 3.1.1: user d1 publishing on d2's topics gets its
// PUBACKs, nothing arrives, and the batches stay unreceipted.
func TestACLDenialKeepsBatchesUnreceipted(t *testing.T) {
	b := startBroker(t)
	v := hmacVerifier{key: []byte("central")}
	ce := startCentral(t, b, v)
	src := newSource(t)
	src.add(t, "d2", 3, 1, 100)
	u, err := New(testConfig(b, "d2", "d1", "pw1"), src, v, nil, nil) // d1's credentials, d2's topics
	if err != nil {
		t.Fatal(err)
	}
	runUplink(t, u)
	// The broker PUBACKs all three although its ACL drops them.
	eventually(t, "3 PUBACKs", func() bool { return u.Stats().PubAcks >= 3 })
	// Give the broker a moment in which a delivery could arrive, then check that none
	// did (a denial cannot be observed otherwise in MQTT 3.1.1).
	time.Sleep(500 * time.Millisecond)
	s := u.Stats()
	if got, want := s.State, StateConnected; got != want {
		t.Fatalf("state=%s (%s), want %s", got, s.LastError, want)
	}
	if got := ce.seqs(); len(got) != 0 {
		t.Fatalf("central got %v through a denying ACL", got)
	}
	if got, want := src.ackedSeq(), uint64(0); got != want {
		t.Fatalf("acked=%d, want %d", got, want)
	}
	if got, want := s.Unsent, uint64(3); got != want {
		t.Fatalf("unsent=%d, want %d", got, want)
	}
}

// (4) The broker is killed mid-stream and restarted: everything arrives, in order
// (duplicates allowed), and all is acked at the end.
func TestBrokerRestartMidStream(t *testing.T) {
	b := startBroker(t)
	v := hmacVerifier{key: []byte("central")}
	ce := startCentral(t, b, v)
	src := newSource(t)
	src.add(t, "d1", 300, 5, 300)
	cfg := testConfig(b, "d1", "d1", "pw1")
	cfg.AckTimeout = time.Second
	u, err := New(cfg, src, v, nil, slog.New(slog.NewTextHandler(tlog{t}, &slog.HandlerOptions{Level: slog.LevelDebug})))
	if err != nil {
		t.Fatal(err)
	}
	stop := runUplink(t, u)
	eventually(t, "some acks", func() bool { return src.ackedSeq() >= 20 })
	b.Restart()
	src.add(t, "d1", 50, 5, 300) // sealed during the outage
	eventually(t, "ack 350", func() bool { return src.ackedSeq() == 350 }, func() string {
		ce.mu.Lock()
		defer ce.mu.Unlock()
		return fmt.Sprintf("uplink %+v; central stored %d, %d arrivals: %v", u.Stats(), ce.stored, len(ce.arrived), ce.arrived)
	})
	stop()
	// Arrivals may skip ahead once: the uplink can reconnect before central has
	// resubscribed, and the broker drops what nobody subscribes to (clean sessions, no
	// persistence). Central stores only the next seq, so the skipped ones come again on
	// the ack timeout. What must hold: central stored every seq, in order, once.
	seqs := ce.seqs()
	seen := map[uint64]bool{}
	for _, s := range seqs {
		seen[s] = true
	}
	for seq := uint64(1); seq <= 350; seq++ {
		if !seen[seq] {
			t.Fatalf("seq %d never arrived", seq)
		}
	}
	ce.mu.Lock()
	stored := ce.stored
	ce.mu.Unlock()
	if got, want := stored, uint64(350); got != want {
		t.Fatalf("central stored up to %d, want %d", got, want)
	}
	s := u.Stats()
	if s.Reconnects == 0 {
		t.Errorf("reconnects=0, want > 0")
	}
	if got, want := s.Unsent, uint64(0); got != want {
		t.Errorf("unsent=%d, want %d", got, want)
	}
	t.Logf("%d arrivals for 350 batches, %d resends, %d reconnects", len(seqs), s.Resends, s.Reconnects)
	ce.stop()
	leakCheck(t)
}

// (5) A batch larger than max_message_bytes is reported, kept unreceipted, and holds
// back the ones after it; nothing is dropped.
func TestOversizeReportedNotDropped(t *testing.T) {
	b := startBroker(t)
	v := hmacVerifier{key: []byte("central")}
	ce := startCentral(t, b, v)
	src := newSource(t)
	src.add(t, "d1", 3, 2, 1000)
	src.add(t, "d1", 1, 3, 100<<10) // about 300 KiB
	src.add(t, "d1", 1, 2, 1000)
	rep := &reporter{}
	u, err := New(testConfig(b, "d1", "d1", "pw1"), src, v, rep, nil)
	if err != nil {
		t.Fatal(err)
	}
	runUplink(t, u)
	eventually(t, "ack 3 and the report", func() bool { return src.ackedSeq() == 3 && len(rep.incidents()) > 0 })
	in := rep.incidents()
	if got, want := len(in), 1; got != want {
		t.Fatalf("incidents=%v, want %d", in, want)
	}
	if got, want := in[0].Kind, IncidentOversize; got != want {
		t.Fatalf("kind=%s, want %s", got, want)
	}
	if got, want := in[0].Seq, uint64(4); got != want {
		t.Fatalf("seq=%d, want %d", got, want)
	}
	if in[0].Size <= DefaultMaxMessageBytes || in[0].Limit != DefaultMaxMessageBytes {
		t.Fatalf("size=%d limit=%d, want size above %d", in[0].Size, in[0].Limit, DefaultMaxMessageBytes)
	}
	s := u.Stats()
	if got, want := s.OversizeSeq, uint64(4); got != want {
		t.Errorf("oversize seq=%d, want %d", got, want)
	}
	if got, want := s.Published, uint64(3); got != want {
		t.Errorf("published=%d, want %d (nothing at or after the oversize batch)", got, want)
	}
	if got, want := s.Unsent, uint64(2); got != want {
		t.Errorf("unsent=%d, want %d", got, want)
	}
	if got, want := ce.seqs(), []uint64{1, 2, 3}; !equal(got, want) {
		t.Errorf("arrivals=%v, want %v", got, want)
	}
}

// The broker is verified and the client authenticates: each broken credential keeps the
// uplink out, retrying, with the reason in Stats.
func TestRefusedConnections(t *testing.T) {
	b := startBroker(t)
	other := testpki.New(t) // a CA the broker does not know, and that does not know it
	tests := []struct {
		name string
		edit func(*Config)
	}{
		{"broker not trusted", func(c *Config) { c.TLS = other.ClientConfig(true) }},
		{"no client certificate", func(c *Config) { c.TLS = b.PKI.ClientConfig(false) }},
		{"wrong password", func(c *Config) { c.Password = "wrong" }},
		{"broker name not in its certificate", func(c *Config) { c.TLS.ServerName = "central.example" }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			src := newSource(t)
			src.add(t, "d1", 1, 1, 10)
			cfg := testConfig(b, "d1", "d1", "pw1")
			tt.edit(&cfg)
			u, err := New(cfg, src, hmacVerifier{}, nil, nil)
			if err != nil {
				t.Fatal(err)
			}
			stop := runUplink(t, u)
			eventually(t, "a connection error", func() bool { return u.Stats().LastError != "" })
			stop()
			s := u.Stats()
			t.Logf("refused: %s", s.LastError)
			if s.Published != 0 || s.State != StateDisconnected {
				t.Fatalf("published=%d state=%s, want 0 and %s", s.Published, s.State, StateDisconnected)
			}
			leakCheck(t)
		})
	}
}

// tlog writes log lines into the test's log, kept only when it fails.
type tlog struct{ t *testing.T }

var tlogMu sync.Mutex

func (w tlog) Write(p []byte) (int, error) {
	tlogMu.Lock()
	defer tlogMu.Unlock()
	w.t.Log(string(p))
	return len(p), nil
}
