package receiver_test

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/edgeaudit/edgeaudit/audit"
	"github.com/edgeaudit/edgeaudit/ledger"
	"github.com/edgeaudit/edgeaudit/receiver"
)

// checkTrail verifies a trail in a folder store as `edgeaudit verify -key central.pub`
// would, checks that the head's receipt verifies and names the head, and returns the
// trail's events in chain order.
func checkTrail(t testing.TB, st receiver.FolderStore, site, device string, pub *ecdsa.PublicKey) []audit.Event {
	t.Helper()
	h, err := st.Head(t.Context(), site, device)
	if err != nil {
		t.Fatal(err)
	}
	if h.Seq == 0 {
		t.Fatal("the trail is empty")
	}
	verifyStored(t, st.Dir, site, device, h, pub)
	rc, err := ledger.VerifyReceipt(h.Receipt, pub)
	if err != nil {
		t.Fatalf("head receipt: %v", err)
	}
	if rc.Site != site || rc.Device != device || rc.Chain != h.Chain || rc.Seq != h.Seq || rc.HeaderHash != h.Hash {
		t.Fatalf("head receipt %+v does not name the head %+v", rc, h)
	}
	var out []audit.Event
	err = st.Query(t.Context(), receiver.Query{Site: site, Device: device}, func(m receiver.Match) error {
		e, err := audit.Decode(m.Event)
		if err != nil {
			return err
		}
		if again := e.AppendJSON(nil); !bytes.Equal(again, m.Event) {
			t.Errorf("seq %d event %d is not audit's encoding", m.Seq, m.Index)
		}
		out = append(out, e)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func TestAuditTrailRecord(t *testing.T) {
	st := receiver.FolderStore{Dir: t.TempDir()}
	signer := keySigner{genKey(t)}
	tr, err := receiver.NewAuditTrail(st, signer, receiver.DefaultTrailSite, "host1", nil)
	if err != nil {
		t.Fatal(err)
	}
	query := audit.Event{Action: audit.ActionAuditLogUsed, Outcome: audit.OutcomeSuccess, Actor: audit.Actor{User: "alice"},
		Codes: []audit.Code{receiver.CodeAuditLogUsed}, Count: 3, Detail: map[string]string{"patient": "tok1"}}
	alert := audit.Event{ID: "fixed", Action: audit.ActionSecurityAlert, Outcome: audit.OutcomeMajorFailure, Reason: "fork",
		Source: audit.Source{Kind: audit.KindSelf, App: "receiver"}}
	if err := tr.Record(t.Context(), query, alert); err != nil {
		t.Fatal(err)
	}
	if err := tr.Record(t.Context(), audit.Event{Action: audit.ActionAppStop}); err != nil {
		t.Fatal(err)
	}
	if err := tr.Record(t.Context()); err != nil {
		t.Fatalf("Record of nothing: %v", err)
	}
	if h, _ := st.Head(t.Context(), receiver.DefaultTrailSite, "host1"); h.Seq != 2 {
		t.Fatalf("head seq %d, want 2 (one batch per Record, none for an empty one)", h.Seq)
	}
	got := checkTrail(t, st, receiver.DefaultTrailSite, "host1", signer.Public())
	if len(got) != 3 {
		t.Fatalf("%d events, want 3", len(got))
	}
	q, a, stop := got[0], got[1], got[2]
	tests := []struct {
		name      string
		got, want any
	}{
		{"query action", q.Action, audit.ActionAuditLogUsed},
		{"query code", fmt.Sprint(q.Codes), fmt.Sprint([]audit.Code{receiver.CodeAuditLogUsed})},
		{"query user", q.Actor.User, "alice"},
		{"query count", q.Count, 3},
		{"filled source", q.Source, audit.Source{Kind: audit.KindSelf, Transport: "internal", App: "edgeaudit", Host: "host1"}},
		{"filled id", len(q.ID), 32},
		{"filled times", q.Time.IsZero() || q.Received.IsZero(), false},
		{"given id kept", a.ID, "fixed"},
		{"given source kept", a.Source.App, "receiver"},
		{"given outcome kept", a.Outcome, audit.OutcomeMajorFailure},
		{"filled outcome", stop.Outcome, audit.OutcomeUnknown},
	}
	for _, tt := range tests {
		if tt.got != tt.want {
			t.Errorf("%s: %v, want %v", tt.name, tt.got, tt.want)
		}
	}
	if query.ID != "" || query.Source.Kind != "" {
		t.Error("Record changed the caller's event")
	}
}

func TestNewAuditTrailValidates(t *testing.T) {
	st := receiver.FolderStore{Dir: t.TempDir()}
	signer := keySigner{genKey(t)}
	for _, tt := range []struct {
		name         string
		store        receiver.Store
		signer       receiver.Signer
		site, device string
	}{
		{"no store", nil, signer, "central", "h"},
		{"no signer", st, nil, "central", "h"},
		{"bad site", st, signer, "../x", "h"},
		{"empty device", st, signer, "central", ""},
	} {
		if _, err := receiver.NewAuditTrail(tt.store, tt.signer, tt.site, tt.device, nil); err == nil {
			t.Errorf("%s: accepted", tt.name)
		}
	}
}

// Two AuditTrails on one FolderStore, in one process, writing at once, make one
// contiguous chain: the file lock serializes them.
func TestAuditTrailConcurrentWriters(t *testing.T) {
	st := receiver.FolderStore{Dir: t.TempDir()}
	signer := keySigner{genKey(t)}
	const writers, records = 2, 15
	var wg sync.WaitGroup
	errs := make(chan error, writers*records)
	for w := range writers {
		tr, err := receiver.NewAuditTrail(st, signer, "central", "host1", nil)
		if err != nil {
			t.Fatal(err)
		}
		for i := range records {
			wg.Go(func() {
				errs <- tr.Record(t.Context(), audit.Event{Action: audit.ActionAuditLogUsed, Reason: fmt.Sprintf("w%d-%d", w, i)})
			})
		}
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	checkReasons(t, checkTrail(t, st, "central", "host1", signer.Public()), writers, records)
}

// checkReasons checks that every "w<w>-<i>" was recorded exactly once.
func checkReasons(t testing.TB, evs []audit.Event, writers, records int) {
	t.Helper()
	seen := map[string]int{}
	for _, e := range evs {
		seen[e.Reason]++
	}
	for w := range writers {
		for i := range records {
			if r := fmt.Sprintf("w%d-%d", w, i); seen[r] != 1 {
				t.Errorf("%s recorded %d times, want once", r, seen[r])
			}
		}
	}
	if len(evs) != writers*records {
		t.Errorf("%d events, want %d", len(evs), writers*records)
	}
}

const trailChildEnv = "EDGEAUDIT_TEST_TRAIL_CHILD"

// TestAuditTrailChildProcess is the other process of TestAuditTrailTwoProcesses; it
// does nothing in a normal run.
func TestAuditTrailChildProcess(t *testing.T) {
	dir := os.Getenv(trailChildEnv)
	if dir == "" {
		t.Skip("only run as TestAuditTrailTwoProcesses' child")
	}
	pemBytes, err := os.ReadFile(filepath.Join(dir, "central.key"))
	if err != nil {
		t.Fatal(err)
	}
	blk, _ := pem.Decode(pemBytes)
	k, err := x509.ParseECPrivateKey(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	n, _ := strconv.Atoi(os.Getenv(trailChildEnv + "_N"))
	tr, err := receiver.NewAuditTrail(receiver.FolderStore{Dir: filepath.Join(dir, "store")}, keySigner{k}, "central", "host1", nil)
	if err != nil {
		t.Fatal(err)
	}
	for i := range n {
		if err := tr.Record(t.Context(), audit.Event{Action: audit.ActionAuditLogUsed, Reason: fmt.Sprintf("w1-%d", i)}); err != nil {
			t.Fatal(err)
		}
	}
}

// Two processes (this test and a re-executed test binary) writing one FolderStore trail
// at once make one contiguous chain: the lock is an flock, not a mutex.
func TestAuditTrailTwoProcesses(t *testing.T) {
	dir := t.TempDir()
	k := genKey(t)
	der, err := x509.MarshalECPrivateKey(k)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "central.key"), pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	const records = 25
	cmd := exec.CommandContext(t.Context(), os.Args[0], "-test.run=^TestAuditTrailChildProcess$", "-test.count=1", "-test.v")
	cmd.Env = append(os.Environ(), trailChildEnv+"="+dir, trailChildEnv+"_N="+strconv.Itoa(records))
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	st := receiver.FolderStore{Dir: filepath.Join(dir, "store")}
	tr, err := receiver.NewAuditTrail(st, keySigner{k}, "central", "host1", nil)
	if err != nil {
		t.Fatal(err)
	}
	// Start writing once the child has: the child's process start takes longer than
	// this process's 25 records would.
	for {
		h, err := st.Head(t.Context(), "central", "host1")
		if err != nil {
			t.Fatal(err)
		}
		if h.Seq > 0 {
			break
		}
		select {
		case <-t.Context().Done():
			t.Fatal(t.Context().Err())
		case <-time.After(5 * time.Millisecond):
		}
	}
	for i := range records {
		if err := tr.Record(t.Context(), audit.Event{Action: audit.ActionAuditLogUsed, Reason: fmt.Sprintf("w0-%d", i)}); err != nil {
			t.Fatal(err)
		}
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("child: %v\n%s", err, out.String())
	}
	if !bytes.Contains(out.Bytes(), []byte("--- PASS: TestAuditTrailChildProcess")) {
		t.Fatalf("the child did not run its test:\n%s", out.String())
	}
	evs := checkTrail(t, st, "central", "host1", &k.PublicKey)
	checkReasons(t, evs, 2, records)
	switches := 0
	for i := 1; i < len(evs); i++ {
		if evs[i].Reason[:2] != evs[i-1].Reason[:2] {
			switches++
		}
	}
	t.Logf("the writers took turns %d times", switches) // how much they overlapped; not asserted
}

// casStore is a shared store without a lock (as PostgreSQL is): Append refuses an
// entry that does not follow the stored head with ErrHeadMoved. It keeps batches in
// memory. moved makes the next that many Appends fail as if another writer came first.
type casStore struct {
	mu      sync.Mutex
	head    receiver.Head
	batches []*ledger.Batch
	appends int
	moved   int
}

func (c *casStore) Head(context.Context, string, string) (receiver.Head, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.head, nil
}

func (c *casStore) Header(_ context.Context, _, _, _ string, seq uint64) ([]byte, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if seq == 0 || seq > uint64(len(c.batches)) {
		return nil, os.ErrNotExist
	}
	return c.batches[seq-1].Header, nil
}

func (c *casStore) Append(_ context.Context, e receiver.Entry) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.appends++
	prev := ledger.ZeroHash
	if c.head.Seq > 0 {
		prev = c.head.Hash
	}
	if c.moved > 0 || e.Header.Seq != c.head.Seq+1 || e.Header.Prev != prev || c.head.Chain != "" && e.Header.Chain != c.head.Chain {
		c.moved = max(c.moved-1, 0)
		return fmt.Errorf("append seq %d: %w", e.Header.Seq, receiver.ErrHeadMoved)
	}
	c.batches = append(c.batches, e.Batch)
	c.head = receiver.Head{Chain: e.Header.Chain, Seq: e.Header.Seq, Hash: e.Hash, Receipt: e.Receipt}
	return nil
}

func TestAuditTrailRetriesWhenTheHeadMoved(t *testing.T) {
	signer := keySigner{genKey(t)}
	t.Run("concurrent writers", func(t *testing.T) {
		st := &casStore{}
		const writers, records = 3, 10
		var wg sync.WaitGroup
		errs := make(chan error, writers*records)
		for w := range writers {
			tr, err := receiver.NewAuditTrail(st, signer, "central", "host1", nil)
			if err != nil {
				t.Fatal(err)
			}
			wg.Go(func() {
				for i := range records {
					errs <- tr.Record(t.Context(), audit.Event{Action: audit.ActionAuditLogUsed, Reason: fmt.Sprintf("w%d-%d", w, i)})
				}
			})
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			if err != nil {
				t.Fatal(err)
			}
		}
		v, err := ledger.NewVerifier(signer.Public())
		if err != nil {
			t.Fatal(err)
		}
		var evs []audit.Event
		for _, b := range st.batches {
			if _, err := v.Verify(b); err != nil {
				t.Fatal(err)
			}
			for _, raw := range b.Events {
				e, err := audit.Decode(raw)
				if err != nil {
					t.Fatal(err)
				}
				evs = append(evs, e)
			}
		}
		checkReasons(t, evs, writers, records)
		if _, err := ledger.VerifyReceipt(st.head.Receipt, signer.Public()); err != nil {
			t.Fatalf("head receipt: %v", err)
		}
	})
	t.Run("moved a few times", func(t *testing.T) {
		st := &casStore{moved: 3}
		tr, err := receiver.NewAuditTrail(st, signer, "central", "host1", nil)
		if err != nil {
			t.Fatal(err)
		}
		if err := tr.Record(t.Context(), audit.Event{Action: audit.ActionAppStart}); err != nil {
			t.Fatal(err)
		}
		if st.appends != 4 || st.head.Seq != 1 {
			t.Fatalf("%d appends, head seq %d; want 4 and 1", st.appends, st.head.Seq)
		}
	})
	t.Run("always moved", func(t *testing.T) {
		st := &casStore{moved: 1 << 30}
		tr, err := receiver.NewAuditTrail(st, signer, "central", "host1", nil)
		if err != nil {
			t.Fatal(err)
		}
		err = tr.Record(t.Context(), audit.Event{Action: audit.ActionAppStart})
		if !errors.Is(err, receiver.ErrHeadMoved) {
			t.Fatalf("err=%v, want ErrHeadMoved", err)
		}
		if st.appends != receiver.TrailRetries {
			t.Fatalf("%d appends, want %d (bounded)", st.appends, receiver.TrailRetries)
		}
	})
}

func TestFolderStoreLock(t *testing.T) {
	st := receiver.FolderStore{Dir: t.TempDir()}
	unlock, err := st.Lock(t.Context(), "central", "host1")
	if err != nil {
		t.Fatal(err)
	}
	// A second locker waits; its ctx ends the wait.
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if _, err := st.Lock(ctx, "central", "host1"); !errors.Is(err, context.Canceled) {
		t.Fatalf("second lock: err=%v, want context.Canceled", err)
	}
	// Another device's lock is independent.
	u2, err := st.Lock(t.Context(), "central", "host2")
	if err != nil {
		t.Fatal(err)
	}
	u2()
	unlock()
	u3, err := st.Lock(t.Context(), "central", "host1")
	if err != nil {
		t.Fatalf("lock after unlock: %v", err)
	}
	u3()
	fi, err := os.Stat(filepath.Join(st.Dir, "central", "host1", ".lock"))
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Fatalf("lock file mode %v, want 0600", fi.Mode().Perm())
	}
	if _, err := st.Lock(t.Context(), "..", "x"); err == nil {
		t.Fatal("a site that is not a name was locked")
	}
}

// BenchmarkAuditTrailRecord records one event per call on a FolderStore: a lock, a head
// read, two signatures and the store's three atomic writes.
func BenchmarkAuditTrailRecord(b *testing.B) {
	tr, err := receiver.NewAuditTrail(receiver.FolderStore{Dir: b.TempDir()}, keySigner{genKey(b)}, "central", "host1", nil)
	if err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		if err := tr.Record(b.Context(), audit.Event{Action: audit.ActionAuditLogUsed}); err != nil {
			b.Fatal(err)
		}
	}
}
