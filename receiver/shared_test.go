package receiver_test

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/edgeaudit/edgeaudit/internal/testpg"
	"github.com/edgeaudit/edgeaudit/ledger"
	"github.com/edgeaudit/edgeaudit/receiver"
	"github.com/edgeaudit/edgeaudit/receiver/pgstore"
)

// openPG is a migrated PostgreSQL store on a fresh database of the shared cluster.
func openPG(t testing.TB) *pgstore.Store {
	t.Helper()
	s, err := pgstore.Open(t.Context(), testpg.Shared(t).NewDatabase(t), nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	if err := s.Migrate(t.Context()); err != nil {
		t.Fatal(err)
	}
	return s
}

// receiptSeq verifies rc with central's key and returns its seq (0 for no receipt).
func receiptSeq(t testing.TB, rc []byte, central *ecdsa.PublicKey) uint64 {
	t.Helper()
	if rc == nil {
		return 0
	}
	r, err := ledger.VerifyReceipt(rc, central)
	if err != nil {
		t.Fatalf("receipt: %v", err)
	}
	return r.Seq
}

// verifyPG reads the device's chain back from the store (Batch) and verifies it with
// ledger.Verifier from seq 1 to want.
func verifyPG(t testing.TB, s *pgstore.Store, site, device, chain string, want uint64, pub *ecdsa.PublicKey) {
	t.Helper()
	v, err := ledger.NewVerifier(pub)
	if err != nil {
		t.Fatal(err)
	}
	for seq := uint64(1); seq <= want; seq++ {
		w, err := s.Batch(t.Context(), site, device, chain, seq)
		if err != nil {
			t.Fatalf("seq %d: %v", seq, err)
		}
		b, err := ledger.NewReader(bytes.NewReader(w)).Next()
		if err != nil {
			t.Fatal(err)
		}
		if _, err := v.Verify(b); err != nil {
			t.Fatalf("stored chain: %v", err)
		}
	}
	if h, err := s.Head(t.Context(), site, device); err != nil || h.Seq != want {
		t.Fatalf("head %+v err %v, want seq %d", h, err, want)
	}
}

// TestSharedStore: two receivers on one PostgreSQL store, each with its own cached
// head, take turns with one device's batches. A batch ahead of a stale head is decided
// on the reloaded head (stored, not held); a batch the other receiver stored in between
// is found out by Append (ErrHeadMoved) and re-receipted as a duplicate; a held batch is
// stored once the other receiver fills its gap; nothing is stored twice.
func TestSharedStore(t *testing.T) {
	s := openPG(t)
	a := newAppliance(t, "s1", "d1")
	chain := a.extend(t, nil, 10, "a")
	e1 := newEnv(t, receiver.Config{}, s)
	enroll(t, e1.keysDir, "s1", "d1", &a.key.PublicKey)
	r2, err := receiver.New(receiver.Config{Quarantine: t.TempDir()}, s, receiver.FolderKeys{Dir: e1.keysDir}, keySigner{e1.central}, nil)
	if err != nil {
		t.Fatal(err)
	}
	r1 := e1.r
	pub := &e1.central.PublicKey
	steps := []struct {
		name string
		r    *receiver.Receiver
		seq  int    // batch handed over
		want uint64 // receipt's seq
	}{
		{"r1 stores 1", r1, 1, 1},
		{"r2 stores 2", r2, 2, 2},
		{"r1, head 1 cached, stores 3", r1, 3, 3},
		{"r2, head 2 cached, stores 4", r2, 4, 4},
		{"r1, head 3 cached: 4 is stored already", r1, 4, 4},
		{"r1 stores 5", r1, 5, 5},
		{"r2 holds 7", r2, 7, 5},
		{"r1 stores 6", r1, 6, 6},
		{"r2 holds 8 and finds the gap filled", r2, 8, 8},
		// A duplicate is answered from the head this receiver knows (cheap; the
		// appliance ignores a receipt below what it has, and Run's recheck publishes the
		// newest).
		{"r1 replays 2", r1, 2, 6},
	}
	for _, st := range steps {
		rc, err := st.r.Handle(t.Context(), "s1", "d1", wire(chain[st.seq-1]))
		if err != nil {
			t.Fatalf("%s: %v", st.name, err)
		}
		if got := receiptSeq(t, rc, pub); got != st.want {
			t.Fatalf("%s: receipt seq %d, want %d", st.name, got, st.want)
		}
	}
	s1, s2 := r1.Stats(), r2.Stats()
	if got, want := s1.Batches+s2.Batches, uint64(8); got != want {
		t.Fatalf("%d + %d batches stored, want %d in all (each once)", s1.Batches, s2.Batches, want)
	}
	if s1.HeadMoved != 1 || s1.Duplicates != 2 {
		t.Fatalf("r1 stats %+v, want 1 head moved (seq 4) and 2 duplicates (4, 2)", s1)
	}
	if s2.Held != 1 {
		t.Fatalf("r2 stats %+v, want 1 held (seq 7)", s2)
	}
	verifyPG(t, s, "s1", "d1", a.chain, 8, &a.key.PublicKey)
	if n := len(e1.quarantined(t)); n != 0 {
		t.Fatalf("%d quarantined, want none", n)
	}
}

// TestSharedStoreRace: four receivers on one store get every batch of four devices at
// once (as a broker redelivering to a shared group might); every batch is stored
// exactly once, in order, and no batch is refused.
func TestSharedStoreRace(t *testing.T) {
	s := openPG(t)
	e := newEnv(t, receiver.Config{}, s)
	const devices, batches, receivers = 4, 25, 4
	var apps []*appliance
	var chains [][]*ledger.Batch
	for d := range devices {
		a := newAppliance(t, "s1", fmt.Sprintf("d%d", d))
		enroll(t, e.keysDir, "s1", a.device, &a.key.PublicKey)
		apps = append(apps, a)
		chains = append(chains, a.extend(t, nil, batches, "a"))
	}
	var rs []*receiver.Receiver
	var refused atomic.Int64
	for range receivers {
		r, err := receiver.New(receiver.Config{Quarantine: t.TempDir(), OnRefuse: func(*receiver.RefusedError) { refused.Add(1) }},
			s, receiver.FolderKeys{Dir: e.keysDir}, keySigner{e.central}, nil)
		if err != nil {
			t.Fatal(err)
		}
		rs = append(rs, r)
	}
	var wg sync.WaitGroup
	errs := make(chan error, devices*receivers)
	for d := range devices {
		for _, r := range rs {
			wg.Go(func() {
				for _, b := range chains[d] {
					if _, err := r.Handle(t.Context(), "s1", apps[d].device, wire(b)); err != nil {
						errs <- err
						return
					}
				}
			})
		}
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	var stored uint64
	for _, r := range rs {
		stored += r.Stats().Batches
	}
	if stored != devices*batches {
		t.Fatalf("%d batches stored by the receivers, want %d (each once)", stored, devices*batches)
	}
	if n := refused.Load(); n != 0 {
		t.Fatalf("%d refusals, want none", n)
	}
	for _, a := range apps {
		verifyPG(t, s, "s1", a.device, a.chain, batches, &a.key.PublicKey)
	}
}

// TestOnRefuse: OnRefuse sees each refusal once, with its reason, and runs with no
// receiver lock held: it can hand the same device's next batch to Handle.
func TestOnRefuse(t *testing.T) {
	a := newAppliance(t, "s1", "d1")
	chain := a.extend(t, nil, 3, "a")
	clone := a.extend(t, chain[:1], 2, "clone")
	var e *env
	var got []string
	var rc []byte
	var herr error
	e = newEnv(t, receiver.Config{OnRefuse: func(ref *receiver.RefusedError) {
		got = append(got, fmt.Sprintf("%d:%s", ref.Seq, ref.Reason()))
		if ref.Reason() == receiver.ReasonFork && rc == nil {
			rc, herr = e.r.Handle(context.Background(), "s1", "d1", wire(chain[2]))
		}
	}}, nil)
	enroll(t, e.keysDir, "s1", "d1", &a.key.PublicKey)
	for _, p := range [][]byte{wire(chain[0]), wire(chain[1]), []byte("garbage"), wire(clone[1])} {
		_, err := e.r.Handle(t.Context(), "s1", "d1", p)
		var ref *receiver.RefusedError
		if err != nil && !errors.As(err, &ref) {
			t.Fatal(err)
		}
	}
	if want := []string{"0:malformed", "2:fork"}; fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("OnRefuse saw %v, want %v", got, want)
	}
	if herr != nil || receiptSeq(t, rc, &e.central.PublicKey) != 3 {
		t.Fatalf("Handle from OnRefuse: receipt seq %d err %v, want 3", receiptSeq(t, rc, &e.central.PublicKey), herr)
	}
}

// TestPGStoreConformance runs the stores' conformance suite (store_test.go) against the
// PostgreSQL store, a fresh database per case.
func TestPGStoreConformance(t *testing.T) {
	testStore(t, func(t *testing.T) receiver.Store { return openPG(t) })
}

// TestSharedGroupRecheck: a receiver in a shared group (Run, on an in-process broker)
// and a second writer of the same store (Handle only, no MQTT). With no resend by the
// device: a batch held by the first is stored and receipted once the second fills the
// gap; batches the second stores (and receipts nowhere) are receipted by the first's
// recheck after the PUBACK of its last receipt; and a stale receipt the first publishes
// for a duplicate (its cached head is behind the store's) is followed by the stored
// head's, which ends up retained.
func TestSharedGroupRecheck(t *testing.T) {
	s := openPG(t)
	url, stopBroker := startBroker(t)
	defer stopBroker()
	// Run, its rechecks and its receipt publishers leave nothing behind.
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	a := newAppliance(t, "s1", "d1")
	chain := a.extend(t, nil, 6, "a")
	e := newEnv(t, receiver.Config{}, s)
	enroll(t, e.keysDir, "s1", "d1", &a.key.PublicKey)
	r1, err := receiver.New(receiver.Config{Quarantine: t.TempDir(), Broker: url, ClientID: "central-1", SharedGroup: "central"},
		s, receiver.FolderKeys{Dir: e.keysDir}, keySigner{e.central}, nil)
	if err != nil {
		t.Fatal(err)
	}
	other := e.r // the second writer
	stop := runReceiver(t, r1)
	defer stop()

	batchTopic, ackTopic := "edgeaudit/s1/d1/batch", receiver.AckTopic(receiver.DefaultPrefix, "s1", "d1")
	dev := connectDevice(t, url, "d1", ackTopic)
	defer dev.c.Disconnect(100)
	// Until r1 has subscribed, publish seq 1 again, as the uplink would.
	for got := uint64(0); got != 1; {
		dev.publish(t, batchTopic, wire(chain[0]))
		select {
		case b := <-dev.receipts:
			got = receiptSeq(t, b, &e.central.PublicKey)
		case <-time.After(time.Second):
		}
	}
	dev.publish(t, batchTopic, wire(chain[2])) // held by r1: seq 2 is missing
	if got := dev.waitSeq(t, 1); got.Seq != 1 {
		t.Fatalf("receipt for the held batch: seq %d, want 1 (the head)", got.Seq)
	}
	if _, err := other.Handle(t.Context(), "s1", "d1", wire(chain[1])); err != nil {
		t.Fatal(err)
	}
	if got := dev.waitSeq(t, 2); got.Seq != 3 {
		t.Fatalf("after the gap was filled elsewhere: receipt seq %d, want 3 (the held batch stored by r1's recheck)", got.Seq)
	}
	// The second writer stores 4 and 5 and publishes nothing, as if its receipts had
	// reached the broker before r1's 3: r1 rechecks after the PUBACK of its 3 and
	// publishes the stored head's.
	for _, b := range chain[3:5] {
		if _, err := other.Handle(t.Context(), "s1", "d1", wire(b)); err != nil {
			t.Fatal(err)
		}
	}
	if got := dev.waitSeq(t, 4); got.Seq != 5 {
		t.Fatalf("after r1's receipt 3 was acknowledged: receipt seq %d, want 5 (the stored head)", got.Seq)
	}
	if _, err := other.Handle(t.Context(), "s1", "d1", wire(chain[5])); err != nil {
		t.Fatal(err)
	}
	dev.publish(t, batchTopic, wire(chain[1])) // a duplicate: r1 answers from its head, 5
	if got := dev.waitSeq(t, 5); got.Seq != 5 {
		t.Fatalf("duplicate: receipt seq %d, want 5 (r1's cached head)", got.Seq)
	}
	if got := dev.waitSeq(t, 6); got.Seq != 6 {
		t.Fatalf("after the recheck: receipt seq %d, want 6 (the stored head)", got.Seq)
	}
	late := connectDevice(t, url, "d1-late", ackTopic)
	defer late.c.Disconnect(100)
	if got := late.waitSeq(t, 1); got.Seq != 6 {
		t.Fatalf("retained receipt seq %d, want 6", got.Seq)
	}
	if st := r1.Stats(); st.Batches != 2 || st.Held != 1 {
		t.Fatalf("r1 stats %+v, want 2 stored (1, 3) and 1 held", st)
	}
}
