package receiver_test

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"os"
	"sync"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	mochi "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/listeners"
	"github.com/mochi-mqtt/server/v2/packets"
	"go.uber.org/goleak"

	"github.com/edgeaudit/edgeaudit/internal/testpg"
	"github.com/edgeaudit/edgeaudit/ledger"
	"github.com/edgeaudit/edgeaudit/receiver"
)

func TestMain(m *testing.M) {
	// Every broker address here is a 127.0.0.1 literal, so no name is ever looked up; a
	// lookup means something reaches for the network.
	net.DefaultResolver.PreferGo = true
	net.DefaultResolver.Dial = func(context.Context, string, string) (net.Conn, error) {
		return nil, errors.New("tests resolve no names")
	}
	// One PostgreSQL cluster for the whole binary (the shared-store tests), stopped here.
	os.Exit(testpg.Main(m))
}

// allowAll lets every client connect and use every topic. (mochi's auth.AllowHook
// would do the same, but its package needs gopkg.in/yaml.v3, which go.sum lacks.)
type allowAll struct{ mochi.HookBase }

func (h *allowAll) ID() string { return "allow-all" }
func (h *allowAll) Provides(b byte) bool {
	return b == mochi.OnConnectAuthenticate || b == mochi.OnACLCheck
}
func (h *allowAll) OnConnectAuthenticate(*mochi.Client, packets.Packet) bool { return true }
func (h *allowAll) OnACLCheck(*mochi.Client, string, bool) bool              { return true }

// startBroker runs an in-process mochi-mqtt broker on 127.0.0.1:0; stop closes it.
func startBroker(t testing.TB) (url string, stop func()) {
	t.Helper()
	s := mochi.New(&mochi.Options{Logger: slog.New(slog.DiscardHandler)})
	if err := s.AddHook(new(allowAll), nil); err != nil {
		t.Fatal(err)
	}
	l := listeners.NewTCP(listeners.Config{ID: "t", Address: "127.0.0.1:0"})
	if err := s.AddListener(l); err != nil {
		t.Fatal(err)
	}
	if err := s.Serve(); err != nil {
		t.Fatal(err)
	}
	return "tcp://" + l.Address(), func() { s.Close() }
}

// device is an appliance's MQTT side: it publishes batches and collects receipts.
type deviceClient struct {
	c        paho.Client
	receipts chan []byte
}

func connectDevice(t testing.TB, url, id, ackTopic string) *deviceClient {
	t.Helper()
	d := &deviceClient{receipts: make(chan []byte, 100)}
	o := paho.NewClientOptions().AddBroker(url).SetClientID(id).SetAutoReconnect(false).SetConnectTimeout(10 * time.Second)
	d.c = paho.NewClient(o)
	if tok := d.c.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("device connect: %v", tok.Error())
	}
	tok := d.c.Subscribe(ackTopic, 1, func(_ paho.Client, m paho.Message) { d.receipts <- m.Payload() })
	if !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("device subscribe: %v", tok.Error())
	}
	return d
}

func (d *deviceClient) publish(t testing.TB, topic string, payload []byte) {
	t.Helper()
	if tok := d.c.Publish(topic, 1, false, payload); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("publish: %v", tok.Error())
	}
}

// waitSeq reads receipts until one names seq want or more and returns it. Receipts are
// cumulative and delivery is at least once (a batch redelivered after a restart is
// re-receipted), so lower ones are skipped. The timeout only bounds a broken test.
func (d *deviceClient) waitSeq(t testing.TB, want uint64) ledger.Receipt {
	t.Helper()
	for {
		select {
		case b := <-d.receipts:
			r, err := ledger.ParseReceipt(b)
			if err != nil {
				t.Fatalf("receipt: %v", err)
			}
			if r.Seq >= want {
				return r
			}
		case <-time.After(30 * time.Second):
			t.Fatalf("no receipt for seq %d within 30 s", want)
		}
	}
}

// runReceiver starts Run and returns a function that stops it and returns its error.
func runReceiver(t testing.TB, r *receiver.Receiver) (stop func() error) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	return func() error {
		cancel()
		select {
		case err := <-done:
			return err
		case <-time.After(30 * time.Second):
			t.Fatal("Run did not return within 30 s of cancel")
			return nil
		}
	}
}

// TestRunOverMQTT: batches published by a device are stored and receipted in order; a
// refused batch gets no receipt (the next receipt is the next good batch's); receipts
// are retained; batches published while the receiver is away arrive after it restarts
// (persistent session); and Run leaves no goroutine behind.
func TestRunOverMQTT(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	url, stopBroker := startBroker(t)
	defer stopBroker()

	a := newAppliance(t, "s1", "d1")
	chain := a.extend(t, nil, 6, "a")
	e := newEnv(t, receiver.Config{}, nil)
	enroll(t, e.keysDir, "s1", "d1", &a.key.PublicKey)
	cfg := receiver.Config{Quarantine: e.quarDir, Broker: url, ClientID: "central-1"}
	newRecv := func() *receiver.Receiver {
		r, err := receiver.New(cfg, e.store, receiver.FolderKeys{Dir: e.keysDir}, keySigner{e.central}, nil)
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	r := newRecv()
	stop := runReceiver(t, r)

	batchTopic, ackTopic := "edgeaudit/s1/d1/batch", receiver.AckTopic(receiver.DefaultPrefix, "s1", "d1")
	dev := connectDevice(t, url, "d1", ackTopic)
	defer dev.c.Disconnect(100)

	tampered := *chain[2]
	tampered.Events = tampered.Events[1:]
	// The receiver may still be subscribing: the device resends until receipted, as the
	// uplink does after its ack timeout.
	var got ledger.Receipt
	for got.Seq != 1 {
		dev.publish(t, batchTopic, wire(chain[0]))
		select {
		case b := <-dev.receipts:
			got, _ = ledger.VerifyReceipt(b, &e.central.PublicKey)
		case <-time.After(time.Second):
		}
	}
	dev.publish(t, batchTopic, wire(chain[1]))
	dev.publish(t, batchTopic, wire(&tampered))
	dev.publish(t, batchTopic, wire(chain[2]))
	for _, want := range []uint64{2, 3} {
		if got := dev.waitSeq(t, want); got.Seq != want || got.HeaderHash != hashOf(chain[want-1]) {
			t.Fatalf("receipt seq %d hash %s, want seq %d hash %s (the tampered batch is never stored)", got.Seq, got.HeaderHash, want, hashOf(chain[want-1]))
		}
	}
	if err := stop(); err != nil {
		t.Fatalf("Run: %v", err)
	}

	// Published while the receiver is away: the broker keeps them for its session.
	for _, b := range chain[3:] {
		dev.publish(t, batchTopic, wire(b))
	}
	r = newRecv()
	stop = runReceiver(t, r)
	// The broker may redeliver the session's batches in any order (the receiver holds
	// and applies them); the receipts end at seq 6.
	if got := dev.waitSeq(t, 6); got.Seq != 6 || got.HeaderHash != hashOf(chain[5]) {
		t.Fatalf("after restart: receipt seq %d, want 6", got.Seq)
	}
	// Retained: a device that connects now learns central's position at once.
	late := connectDevice(t, url, "d1-late", ackTopic)
	if got := late.waitSeq(t, 1); got.Seq != 6 {
		t.Fatalf("retained receipt seq %d, want 6", got.Seq)
	}
	late.c.Disconnect(100)
	if err := stop(); err != nil {
		t.Fatalf("Run: %v", err)
	}
	if st := r.Stats(); st.Batches != 3 {
		t.Fatalf("second receiver stats %+v, want 3 batches stored", st)
	}
	h, _ := e.store.Head(t.Context(), "s1", "d1")
	verifyStored(t, e.storeDir, "s1", "d1", h, &a.key.PublicKey)
	if h.Seq != 6 {
		t.Fatalf("stored head %d, want 6", h.Seq)
	}
	if n := len(e.quarantined(t)); n != 1 {
		t.Fatalf("%d quarantined, want 1 (the tampered batch)", n)
	}
}

func TestRunStopsWhileBrokerIsAway(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	// A port nothing listens on: Run keeps retrying the connection until cancelled.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	e := newEnv(t, receiver.Config{}, nil)
	failed := &logWatch{msg: "connect to broker, will retry", seen: make(chan struct{})}
	r, err := receiver.New(receiver.Config{Quarantine: e.quarDir, Broker: "tcp://" + addr}, e.store,
		receiver.FolderKeys{Dir: e.keysDir}, keySigner{e.central}, slog.New(failed))
	if err != nil {
		t.Fatal(err)
	}
	stop := runReceiver(t, r)
	select {
	case <-failed.seen:
	case <-time.After(30 * time.Second):
		t.Fatal("no failed connection attempt logged within 30 s")
	}
	if err := stop(); err != nil {
		t.Fatalf("Run: %v, want nil after cancel", err)
	}
}

// logWatch is a slog handler that closes seen when a record with message msg arrives.
type logWatch struct {
	msg  string
	seen chan struct{}
	once sync.Once
}

func (w *logWatch) Enabled(context.Context, slog.Level) bool { return true }
func (w *logWatch) Handle(_ context.Context, r slog.Record) error {
	if r.Message == w.msg {
		w.once.Do(func() { close(w.seen) })
	}
	return nil
}
func (w *logWatch) WithAttrs([]slog.Attr) slog.Handler { return w }
func (w *logWatch) WithGroup(string) slog.Handler      { return w }
