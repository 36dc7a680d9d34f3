package uplink

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	"go.uber.org/goleak"

	"github.com/edgeaudit/edgeaudit/internal/testmqtt"
	"github.com/edgeaudit/edgeaudit/ledger"
)

// TestMain refuses dials to anything but loopback (STYLE 12).
func TestMain(m *testing.M) {
	// Every broker address in these tests is a 127.0.0.1 literal, so no name is ever
	// looked up; a lookup means something reaches for the network.
	net.DefaultResolver.PreferGo = true
	net.DefaultResolver.Dial = func(context.Context, string, string) (net.Conn, error) {
		return nil, errors.New("tests resolve no names")
	}
	os.Exit(m.Run())
}

// memSource is an in-memory Source: sealed batches built as ledger's tests build them.
type memSource struct {
	mu      sync.Mutex
	key     *ecdsa.PrivateKey
	batches []*ledger.Batch
	hashes  []string
	acked   uint64
	acks    []uint64 // each Ack that moved the mark
	calls   int      // every Ack call
	failAck error
}

func newSource(t testing.TB) *memSource {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return &memSource{key: k}
}

// add seals n batches of events events each, every event size bytes.
func (s *memSource) add(t testing.TB, device string, n, events, size int) {
	t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	kid, _ := ledger.KeyID(&s.key.PublicKey)
	for range n {
		seq := uint64(len(s.batches) + 1)
		prev := ledger.ZeroHash
		if seq > 1 {
			prev = s.hashes[seq-2]
		}
		var evs [][]byte
		for i := range events {
			e := fmt.Sprintf(`{"id":"%d-%d","pad":"`, seq, i)
			e += strings.Repeat("x", max(size-len(e)-2, 0)) + `"}`
			evs = append(evs, []byte(e))
		}
		h := ledger.Header{Site: "s1", Device: device, Chain: strings.Repeat("ab", 16), Seq: seq, Prev: prev,
			Sealed: time.Now().UTC().Format(time.RFC3339Nano), TimeSync: ledger.TimeSync{State: "unknown"}, KeyID: kid}
		hb, sig, err := h.Seal(ledger.EventsRoot(evs), len(evs), func(d []byte) ([]byte, error) { return ecdsa.SignASN1(rand.Reader, s.key, d) })
		if err != nil {
			t.Fatal(err)
		}
		s.batches = append(s.batches, &ledger.Batch{Header: hb, Signature: sig, Events: evs})
		s.hashes = append(s.hashes, hexHash(ledger.HeaderHash(hb)))
	}
}

func (s *memSource) Position() (Position, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	p := Position{HeadSeq: uint64(len(s.batches)), AckedSeq: s.acked}
	if n := len(s.hashes); n > 0 {
		p.HeadHash = s.hashes[n-1]
	}
	return p, nil
}

func (s *memSource) Batches(from uint64, fn func(*ledger.Batch) error) error {
	for seq := max(from, 1); ; seq++ {
		s.mu.Lock()
		if seq > uint64(len(s.batches)) {
			s.mu.Unlock()
			return nil
		}
		b := s.batches[seq-1]
		s.mu.Unlock()
		if err := fn(b); err != nil {
			return err
		}
	}
}

func (s *memSource) Ack(seq uint64) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.calls++
	if s.failAck != nil {
		return s.failAck
	}
	seq = min(seq, uint64(len(s.batches)))
	if seq > s.acked {
		s.acked = seq
		s.acks = append(s.acks, seq)
	}
	return nil
}

func (s *memSource) ackedSeq() uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.acked
}

// hmacVerifier is the test's receipt format: "seq hash mac", mac = HMAC-SHA-256 over
// "seq hash". The real one (ledger.VerifyReceipt) is ECDSA-signed.
type hmacVerifier struct{ key []byte }

func (v hmacVerifier) sign(seq uint64, hash string) []byte {
	// The name given is stretched to a 32-byte key: FIPS 140-only mode refuses HMAC keys
	// under 112 bits, and the tests run in it too.
	key := sha256.Sum256(v.key)
	m := hmac.New(sha256.New, key[:])
	fmt.Fprintf(m, "%d %s", seq, hash)
	return fmt.Appendf(nil, "%d %s %s", seq, hash, hex.EncodeToString(m.Sum(nil)))
}

func (v hmacVerifier) Verify(b []byte) (uint64, string, error) {
	f := strings.Fields(string(b))
	if len(f) != 3 {
		return 0, "", errors.New("malformed receipt")
	}
	seq, err := strconv.ParseUint(f[0], 10, 64)
	if err != nil {
		return 0, "", err
	}
	if want := v.sign(seq, f[1]); !hmac.Equal(want, b) {
		return 0, "", errors.New("bad receipt mac")
	}
	return seq, f[1], nil
}

// reporter collects incidents.
type reporter struct {
	mu  sync.Mutex
	got []Incident
}

func (r *reporter) Report(in Incident) {
	r.mu.Lock()
	r.got = append(r.got, in)
	r.mu.Unlock()
}

func (r *reporter) incidents() []Incident {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]Incident(nil), r.got...)
}

// central is a fake central: a paho subscriber that decodes every batch, stores the
// contiguous ones, and receipts the highest stored seq (duplicates re-receipted), as
// the receiver will.
type central struct {
	t       testing.TB
	b       *testmqtt.Broker
	cmu     sync.Mutex
	cur     mqtt.Client
	lost    chan struct{}
	kept    chan struct{}
	v       hmacVerifier
	mu      sync.Mutex
	arrived []uint64 // every delivery, in arrival order
	stored  uint64
	hashes  map[uint64]string
	once    sync.Once
	silent  bool // no receipts
	queue   chan mqtt.Message
	quit    chan struct{}
	served  chan struct{}
}

// stop disconnects central and waits for its queue to drain. Idempotent.
func (ce *central) stop() {
	ce.once.Do(func() {
		close(ce.quit)
		<-ce.kept
		ce.client().Disconnect(100)
		<-ce.served
	})
}

const (
	centralUser = "central"
	centralPass = "central-pw"
)

// aclFile confines each device (its MQTT user name) to its own topics.
const aclFile = `user central
topic readwrite edgeaudit/#

pattern write edgeaudit/s1/%u/batch
pattern readwrite edgeaudit/s1/%u/status
pattern write edgeaudit/s1/%u/key
pattern read edgeaudit/s1/%u/ack
`

func startBroker(t testing.TB) *testmqtt.Broker { return startBrokerOpts(t, false) }

func startBrokerOpts(t testing.TB, noDelay bool) *testmqtt.Broker {
	return testmqtt.Start(t, testmqtt.Options{
		Users: map[string]string{"d1": "pw1", "d2": "pw2", centralUser: centralPass},
		ACL:   aclFile, TCPNoDelay: noDelay,
	})
}

func startCentral(t testing.TB, b *testmqtt.Broker, v hmacVerifier) *central {
	t.Helper()
	ce := &central{t: t, v: v, b: b, hashes: map[uint64]string{}, queue: make(chan mqtt.Message, 1<<16),
		quit: make(chan struct{}), served: make(chan struct{}), kept: make(chan struct{}), lost: make(chan struct{}, 1)}
	go ce.serve()
	if err := ce.connect(); err != nil {
		t.Fatalf("central connect: %v", err)
	}
	go ce.keep()
	t.Cleanup(ce.stop)
	// Wait until a message published now comes back through the subscription.
	probe := fmt.Sprintf("edgeaudit/s1/probe%d/batch", time.Now().UnixNano())
	deadline := time.Now().Add(10 * time.Second)
	for !ce.sawProbe() {
		ce.client().Publish(probe, 1, false, "probe").WaitTimeout(time.Second)
		if time.Now().After(deadline) {
			t.Fatal("central subscription not in place after 10s")
		}
		time.Sleep(20 * time.Millisecond)
	}
	ce.mu.Lock()
	ce.arrived = nil
	ce.mu.Unlock()
	return ce
}

// connect makes a new client and subscribes. Central reconnects by itself, with a new
// client each time, not with paho's auto-reconnect: its resume path has a data race in
// v1.5.1 (client.resume writes a packet the outgoing goroutine is writing).
func (ce *central) connect() error {
	o := mqtt.NewClientOptions().AddBroker(ce.b.URL).SetClientID("central").SetUsername(centralUser).
		SetPassword(centralPass).SetTLSConfig(ce.b.ClientTLS()).SetCleanSession(true).
		SetAutoReconnect(false).SetConnectTimeout(5 * time.Second).
		// A publish on a client whose connection just died would otherwise wait 30 s
		// (paho's default) and hold up every receipt behind it.
		SetWriteTimeout(200 * time.Millisecond).
		SetOrderMatters(true). // one handler at a time, in arrival order
		SetConnectionLostHandler(func(mqtt.Client, error) {
			select {
			case ce.lost <- struct{}{}:
			default:
			}
		})
	c := mqtt.NewClient(o)
	if tok := c.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		return fmt.Errorf("connect: %v", tok.Error())
	}
	if tok := c.Subscribe("edgeaudit/s1/+/batch", 1, ce.onBatch); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		c.Disconnect(0)
		return fmt.Errorf("subscribe: %v", tok.Error())
	}
	ce.cmu.Lock()
	ce.cur = c
	ce.cmu.Unlock()
	return nil
}

func (ce *central) client() mqtt.Client {
	ce.cmu.Lock()
	defer ce.cmu.Unlock()
	return ce.cur
}

// keep reconnects after a lost connection until stop.
func (ce *central) keep() {
	defer close(ce.kept)
	for {
		select {
		case <-ce.quit:
			return
		case <-ce.lost:
		}
		for ce.connect() != nil {
			select {
			case <-ce.quit:
				return
			case <-time.After(20 * time.Millisecond):
			}
		}
	}
}

const probeSeq = ^uint64(0)

// onBatch runs on paho's router goroutine (OrderMatters): it only queues, so it never
// blocks paho; serve stores and receipts.
func (ce *central) onBatch(_ mqtt.Client, m mqtt.Message) {
	select {
	case ce.queue <- m:
	case <-ce.quit:
	}
}

func (ce *central) serve() {
	defer close(ce.served)
	for {
		select {
		case m := <-ce.queue:
			ce.handle(m)
		case <-ce.quit:
			return
		}
	}
}

func (ce *central) handle(m mqtt.Message) {
	c := ce.client()
	if bytes.Equal(m.Payload(), []byte("probe")) {
		ce.mu.Lock()
		ce.arrived = append(ce.arrived, probeSeq)
		ce.mu.Unlock()
		return
	}
	b, err := ledger.NewReader(bytes.NewReader(m.Payload())).Next()
	if err != nil {
		ce.t.Errorf("central: decode batch on %s: %v", m.Topic(), err)
		return
	}
	h, err := ledger.ParseHeader(b.Header)
	if err != nil {
		ce.t.Errorf("central: %v", err)
		return
	}
	ce.mu.Lock()
	ce.arrived = append(ce.arrived, h.Seq)
	if h.Seq == ce.stored+1 {
		ce.stored = h.Seq
		ce.hashes[h.Seq] = hexHash(ledger.HeaderHash(b.Header))
	}
	stored, hash, silent := ce.stored, ce.hashes[ce.stored], ce.silent
	ce.mu.Unlock()
	if !silent && stored > 0 {
		c.Publish("edgeaudit/s1/"+h.Device+"/ack", 1, false, ce.v.sign(stored, hash))
	}
}

func (ce *central) sawProbe() bool {
	ce.mu.Lock()
	defer ce.mu.Unlock()
	for _, s := range ce.arrived {
		if s == probeSeq {
			return true
		}
	}
	return false
}

func (ce *central) seqs() []uint64 {
	ce.mu.Lock()
	defer ce.mu.Unlock()
	return append([]uint64(nil), ce.arrived...)
}

func (ce *central) setSilent(v bool) {
	ce.mu.Lock()
	ce.silent = v
	ce.mu.Unlock()
}

// testConfig is device d1 on the broker, with short timers.
func testConfig(b *testmqtt.Broker, device, user, pass string) Config {
	return Config{
		Broker: b.URL, TLS: b.ClientTLS(), Site: "s1", Device: device, Username: user, Password: pass,
		AckTimeout: 5 * time.Second, PollInterval: 20 * time.Millisecond,
		BackoffMin: 50 * time.Millisecond, BackoffMax: 500 * time.Millisecond, ConnectTimeout: 5 * time.Second,
	}
}

// eventually polls cond (for progress over a real broker; never a timing assert).
func eventually(t testing.TB, what string, cond func() bool, state ...func() string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			for _, f := range state {
				t.Log(f())
			}
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// leakCheck fails the test if goroutines other than the broker's are left.
func leakCheck(t *testing.T) {
	t.Helper()
	goleak.VerifyNone(t, goleak.IgnoreAnyFunction("github.com/edgeaudit/edgeaudit/internal/testmqtt.(*Broker).start.func1"))
}
