package receiver_test

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/edgeaudit/edgeaudit/ledger"
	"github.com/edgeaudit/edgeaudit/receiver"
)

// gatedStore is a folder store whose AppendGroup can be held at a gate, fails once
// at the call asked for (writing nothing), and records each device's committed seq.
type gatedStore struct {
	receiver.FolderStore
	blocked chan int      // gets the group's size when a call reaches the gate
	gate    chan struct{} // closed to let calls through

	mu        sync.Mutex
	failCall  int   // the call (1, 2, …) that fails; 0: none
	calls     []int // sizes of the groups, in call order
	failed    []int // sizes of the groups that failed
	committed map[string]uint64
}

var errInjected = errors.New("injected commit failure")

func (s *gatedStore) AppendGroup(ctx context.Context, es []receiver.Entry) error {
	select {
	case s.blocked <- len(es):
	default:
	}
	<-s.gate
	s.mu.Lock()
	s.calls = append(s.calls, len(es))
	if len(s.calls) == s.failCall {
		s.failed = append(s.failed, len(es))
		s.mu.Unlock()
		return errInjected
	}
	s.mu.Unlock()
	if err := s.FolderStore.AppendGroup(ctx, es); err != nil {
		return err
	}
	s.mu.Lock()
	for _, e := range es {
		s.committed[e.Site+"/"+e.Device] = e.Header.Seq
	}
	s.mu.Unlock()
	return nil
}

func (s *gatedStore) committedSeq(site, dev string) uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.committed[site+"/"+dev]
}

// TestGroupReceiptsAfterCommit: batches queued while a commit is under way are stored
// as one group; no receipt goes out before its batch's group is committed (every
// receipt is checked against the store's committed seq when it arrives); a group whose
// commit fails sends none of its receipts, and its batches are stored by the next
// attempt; a tampered batch in the group is refused once and holds nothing back.
func TestGroupReceiptsAfterCommit(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	url, stopBroker := startBroker(t)
	defer stopBroker()

	e := newEnv(t, receiver.Config{}, nil)
	st := &gatedStore{FolderStore: receiver.FolderStore{Dir: e.storeDir}, blocked: make(chan int, 1),
		gate: make(chan struct{}), committed: map[string]uint64{}}
	a1, a2 := newAppliance(t, "s1", "d1"), newAppliance(t, "s1", "d2")
	c1, c2 := a1.extend(t, nil, 4, "a"), a2.extend(t, nil, 3, "b")
	enroll(t, e.keysDir, "s1", "d1", &a1.key.PublicKey)
	enroll(t, e.keysDir, "s1", "d2", &a2.key.PublicKey)
	r, err := receiver.New(receiver.Config{Quarantine: e.quarDir, Broker: url, ClientID: "central-1"}, st,
		receiver.FolderKeys{Dir: e.keysDir}, keySigner{e.central}, nil)
	if err != nil {
		t.Fatal(err)
	}
	stop := runReceiver(t, r)

	dev1 := connectDevice(t, url, "d1", receiver.AckTopic(receiver.DefaultPrefix, "s1", "d1"))
	defer dev1.c.Disconnect(100)
	dev2 := connectDevice(t, url, "d2", receiver.AckTopic(receiver.DefaultPrefix, "s1", "d2"))
	defer dev2.c.Disconnect(100)
	// waitSeq, with every receipt checked against what the store has committed.
	wait := func(d *deviceClient, site, dev string, want uint64) {
		t.Helper()
		for {
			select {
			case b := <-d.receipts:
				rc, err := ledger.VerifyReceipt(b, &e.central.PublicKey)
				if err != nil {
					t.Fatalf("receipt: %v", err)
				}
				if c := st.committedSeq(site, dev); rc.Seq > c {
					t.Fatalf("receipt for %s/%s seq %d before its commit (committed %d)", site, dev, rc.Seq, c)
				}
				if rc.Seq >= want {
					return
				}
			case <-time.After(30 * time.Second):
				t.Fatalf("no receipt for %s/%s seq %d within 30 s", site, dev, want)
			}
		}
	}

	// The receiver may still be subscribing: publish seq 1 until its commit starts.
	var n int
	for n == 0 {
		dev1.publish(t, "edgeaudit/s1/d1/batch", wire(c1[0]))
		select {
		case n = <-st.blocked:
		case <-time.After(time.Second):
		}
	}
	select {
	case b := <-dev1.receipts:
		t.Fatalf("a receipt (%d bytes) while its group's commit is held", len(b))
	case <-time.After(300 * time.Millisecond):
	}
	// Queued behind the held commit: the rest of both chains and a tampered batch.
	tampered := *c2[1]
	tampered.Events = tampered.Events[1:]
	for _, b := range c1[1:] {
		dev1.publish(t, "edgeaudit/s1/d1/batch", wire(b))
	}
	dev2.publish(t, "edgeaudit/s1/d2/batch", wire(&tampered))
	for _, b := range c2 {
		dev2.publish(t, "edgeaudit/s1/d2/batch", wire(b))
	}
	time.Sleep(300 * time.Millisecond) // for the receiver's client to queue them
	st.mu.Lock()
	st.failCall = 2
	st.mu.Unlock()
	close(st.gate)
	// The held commit succeeds; the next, of the queued batches, fails: none of its
	// receipts goes out, and the attempt after it stores them.
	wait(dev1, "s1", "d1", 1)
	wait(dev1, "s1", "d1", 4)
	wait(dev2, "s1", "d2", 3)

	st.mu.Lock()
	calls, failed := append([]int(nil), st.calls...), append([]int(nil), st.failed...)
	st.mu.Unlock()
	if len(failed) != 1 || failed[0] < 2 {
		t.Fatalf("failed commits %v, want one, of a group", failed)
	}
	grouped := false
	for _, c := range calls {
		grouped = grouped || c > 1
	}
	if !grouped {
		t.Fatalf("group sizes %v: no group of more than one batch", calls)
	}
	if n := len(e.quarantined(t)); n != 1 {
		t.Fatalf("%d quarantined, want 1 (the tampered batch)", n)
	}
	for _, d := range []struct {
		dev   string
		a     *appliance
		chain []*ledger.Batch
	}{{"d1", a1, c1}, {"d2", a2, c2}} {
		h, err := st.Head(t.Context(), "s1", d.dev)
		if err != nil {
			t.Fatal(err)
		}
		if got, want := h.Seq, uint64(len(d.chain)); got != want {
			t.Fatalf("%s head seq %d, want %d", d.dev, got, want)
		}
		verifyStored(t, e.storeDir, "s1", d.dev, h, &d.a.key.PublicKey)
	}
	if err := stop(); err != nil {
		t.Fatalf("Run: %v", err)
	}
	t.Logf("group sizes %v, failed %v, stats %+v", calls, failed, r.Stats())
}
