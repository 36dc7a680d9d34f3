package spool

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	bolt "go.etcd.io/bbolt"
	"go.uber.org/goleak"

	"github.com/edgeaudit/edgeaudit/attest"
	"github.com/edgeaudit/edgeaudit/audit"
	"github.com/edgeaudit/edgeaudit/ledger"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func newSigner(t testing.TB) *attest.SoftwareSigner {
	t.Helper()
	s, _, err := attest.LoadOrCreateSoftware(filepath.Join(t.TempDir(), "signing.key"))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func openSpool(t testing.TB, path string, cfg Config, sig Signer) *Spool {
	t.Helper()
	cfg.MinFreeBytes = 1 // tests must not depend on the machine's free space
	s, err := Open(path, cfg, Options{Site: "s1", Device: "d1", Signer: sig})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func ev(i int) *audit.Event {
	now := time.Now().UTC()
	return &audit.Event{Time: now, Received: now, Source: audit.Source{Kind: audit.KindSyslog, Transport: "tcp"},
		Action: "system.log", Outcome: audit.OutcomeUnknown, Message: fmt.Sprintf("event %d", i)}
}

// waitSigned waits until every closed batch is signed (the open batch is empty in the
// tests that call it, so Seal closes nothing new).
func waitSigned(t testing.TB, s *Spool) {
	t.Helper()
	if p, _ := s.Position(); p.OpenEvents > 0 && p.Unsigned == 0 {
		t.Fatalf("waitSigned with %d events in the open batch", p.OpenEvents)
	}
	if err := s.Seal(t.Context()); err != nil {
		t.Fatal(err)
	}
}

func appendSync(t testing.TB, s *Spool, e *audit.Event) {
	t.Helper()
	ch := make(chan error, 1)
	if err := s.Append(t.Context(), e, func(err error) { ch <- err }); err != nil {
		t.Fatal(err)
	}
	if err := <-ch; err != nil {
		t.Fatal(err)
	}
}

type chainReader interface {
	Batches(uint64, func(*ledger.Batch) error) error
	Position() (Position, error)
}

// verifyAll checks every stored batch of s with the ledger verifier, anchored at the
// pruned position, and returns the events.
func verifyAll(t testing.TB, s *Spool) []audit.Event {
	t.Helper()
	return verifyWith(t, s, s.opts.Signer)
}

func verifyWith(t testing.TB, s chainReader, sig Signer) []audit.Event {
	t.Helper()
	p, err := s.Position()
	if err != nil {
		t.Fatal(err)
	}
	v, err := ledger.NewVerifier(sig.Public())
	if err != nil {
		t.Fatal(err)
	}
	if p.PrunedSeq > 0 {
		v.Anchor(p.PrunedSeq, p.PrunedHash)
	}
	var events []audit.Event
	err = s.Batches(1, func(b *ledger.Batch) error {
		if _, err := v.Verify(b); err != nil {
			return err
		}
		for _, e := range b.Events {
			d, err := audit.Decode(e)
			if err != nil {
				return err
			}
			events = append(events, d)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("verify: %v", err)
	}
	return events
}

func TestAppendSealVerify(t *testing.T) {
	s := openSpool(t, filepath.Join(t.TempDir(), "spool.db"), Config{MaxEvents: 100, MaxAge: time.Hour, Heartbeat: time.Minute}, newSigner(t))
	defer s.Close()
	const n = 2550
	var wg sync.WaitGroup
	var acked atomic.Int64
	for w := range 5 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range n / 5 {
				if err := s.Append(t.Context(), ev(w*1000+i), func(err error) {
					if err == nil {
						acked.Add(1)
					}
				}); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	if err := s.Seal(t.Context()); err != nil {
		t.Fatal(err)
	}
	if got, want := acked.Load(), int64(n); got != want {
		t.Fatalf("acked=%d, want %d", got, want)
	}
	events := verifyAll(t, s)
	if got, want := len(events), n; got != want {
		t.Fatalf("events in sealed batches=%d, want %d", got, want)
	}
	p, _ := s.Position()
	if got, want := p.HeadSeq, uint64(26); got != want { // 25 full batches + 50 sealed by Seal
		t.Fatalf("head seq=%d, want %d", got, want)
	}
	ids := map[string]bool{}
	for _, e := range events {
		if ids[e.ID] {
			t.Fatalf("duplicate id %s", e.ID)
		}
		ids[e.ID] = true
	}
}

// The done callback runs only after the event is durable: reading the file from inside
// it must find the event.
func TestDoneAfterCommit(t *testing.T) {
	s := openSpool(t, filepath.Join(t.TempDir(), "spool.db"), Config{}, newSigner(t))
	defer s.Close()
	for i := range 20 {
		e := ev(i)
		ch := make(chan bool, 1)
		if err := s.Append(t.Context(), e, func(err error) {
			found := false
			s.db.View(func(tx *bolt.Tx) error {
				c := tx.Bucket(bucketEvents).Cursor()
				for k, v := c.First(); k != nil; k, v = c.Next() {
					if strings.Contains(string(v), e.ID) {
						found = true
					}
				}
				return nil
			})
			ch <- found && err == nil
		}); err != nil {
			t.Fatal(err)
		}
		if !<-ch {
			t.Fatalf("event %d: not in the database when done ran", i)
		}
	}
}

func TestRecoverOpenBatchAfterClose(t *testing.T) {
	path := filepath.Join(t.TempDir(), "spool.db")
	sig := newSigner(t)
	s := openSpool(t, path, Config{MaxEvents: 10, MaxAge: time.Hour}, sig)
	for i := range 25 {
		appendSync(t, s, ev(i))
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = openSpool(t, path, Config{MaxEvents: 10, MaxAge: time.Hour}, sig)
	defer s.Close()
	p, _ := s.Position()
	if p.HeadSeq != 2 || p.OpenEvents != 5 {
		t.Fatalf("after reopen head=%d open=%d, want 2 and 5", p.HeadSeq, p.OpenEvents)
	}
	for i := range 5 {
		appendSync(t, s, ev(100+i))
	}
	waitSigned(t, s)
	p, _ = s.Position()
	if got, want := p.HeadSeq, uint64(3); got != want {
		t.Fatalf("head=%d, want %d (recovered batch filled up)", got, want)
	}
	if got, want := len(verifyAll(t, s)), 30; got != want {
		t.Fatalf("events=%d, want %d", got, want)
	}
}

func TestMaxAgeAndHeartbeat(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		dir, err := os.MkdirTemp("", "spool")
		if err != nil {
			t.Fatal(err)
		}
		defer os.RemoveAll(dir)
		s := openSpool(t, filepath.Join(dir, "spool.db"), Config{MaxEvents: 1000, MaxAge: 2 * time.Second, Heartbeat: time.Minute}, newSigner(t))
		defer s.Close()
		appendSync(t, s, ev(1))
		time.Sleep(1 * time.Second)
		if p, _ := s.Position(); p.HeadSeq != 0 {
			t.Fatalf("sealed after 1s: head=%d, want 0", p.HeadSeq)
		}
		time.Sleep(2 * time.Second)
		synctest.Wait()
		if p, _ := s.Position(); p.HeadSeq != 1 {
			t.Fatalf("after max_age: head=%d, want 1", p.HeadSeq)
		}
		// Idle: exactly one empty heartbeat batch a minute.
		time.Sleep(2*time.Minute + time.Second)
		synctest.Wait()
		p, _ := s.Position()
		if got, want := p.HeadSeq, uint64(3); got != want {
			t.Fatalf("after 2 idle minutes: head=%d, want %d", got, want)
		}
		var counts []int
		s.Batches(1, func(b *ledger.Batch) error { counts = append(counts, len(b.Events)); return nil })
		if fmt.Sprint(counts) != "[1 0 0]" {
			t.Fatalf("batch sizes=%v, want [1 0 0]", counts)
		}
	})
}

func TestAckAndPrune(t *testing.T) {
	path := filepath.Join(t.TempDir(), "spool.db")
	sig := newSigner(t)
	cfg := Config{MaxEvents: 5, MaxAge: time.Hour, Retention: time.Hour}
	s := openSpool(t, path, cfg, sig)
	for i := range 25 {
		appendSync(t, s, ev(i))
	}
	waitSigned(t, s)
	if n, err := s.Prune(time.Now().Add(48 * time.Hour)); err != nil || n != 0 {
		t.Fatalf("prune before any ack: n=%d err=%v, want 0 (never delete unacked)", n, err)
	}
	if err := s.Ack(3); err != nil {
		t.Fatal(err)
	}
	if n, err := s.Prune(time.Now()); err != nil || n != 0 {
		t.Fatalf("prune within retention: n=%d err=%v, want 0", n, err)
	}
	if n, err := s.Prune(time.Now().Add(2 * time.Hour)); err != nil || n != 3 {
		t.Fatalf("prune: n=%d err=%v, want 3", n, err)
	}
	s.Ack(99) // clamps to head
	p, _ := s.Position()
	if p.AckedSeq != 5 || p.PrunedSeq != 3 {
		t.Fatalf("acked=%d pruned=%d, want 5 and 3", p.AckedSeq, p.PrunedSeq)
	}
	if got, want := len(verifyAll(t, s)), 10; got != want {
		t.Fatalf("events after prune=%d, want %d", got, want)
	}
	s.Close()
	// The pruned anchor lets a reopened spool verify its tail.
	s = openSpool(t, path, cfg, sig)
	defer s.Close()
	if p2, _ := s.Position(); p2.Chain != p.Chain {
		t.Fatal("reopen after prune quarantined the spool")
	}
}

func TestQuarantineTamperedSpool(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "spool.db")
	sig := newSigner(t)
	s := openSpool(t, path, Config{MaxEvents: 5, MaxAge: time.Hour}, sig)
	for i := range 12 {
		appendSync(t, s, ev(i))
	}
	old, _ := s.Position()
	s.Close()

	tests := []struct {
		name   string
		tamper func(t *testing.T, path string)
	}{
		{"event edited", func(t *testing.T, path string) {
			editDB(t, path, func(tx *bolt.Tx) error {
				k := make([]byte, 12)
				copy(k, seqKey(2))
				v := tx.Bucket(bucketEvents).Get(k)
				return tx.Bucket(bucketEvents).Put(k, []byte(strings.Replace(string(v), "event", "EVENT", 1)))
			})
		}},
		{"batch deleted", func(t *testing.T, path string) {
			editDB(t, path, func(tx *bolt.Tx) error { return tx.Bucket(bucketBatches).Delete(seqKey(2)) })
		}},
		{"garbage file", func(t *testing.T, path string) {
			os.WriteFile(path, []byte(strings.Repeat("not a bbolt file ", 1000)), 0o600)
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := t.TempDir()
			p := filepath.Join(d, "spool.db")
			b, _ := os.ReadFile(path)
			os.WriteFile(p, b, 0o600)
			tt.tamper(t, p)
			s := openSpool(t, p, Config{MaxEvents: 5, MaxAge: time.Hour}, sig)
			if err := s.Seal(t.Context()); err != nil {
				t.Fatal(err)
			}
			events := verifyAll(t, s)
			s.Close()
			m, _ := filepath.Glob(p + ".quarantine-*")
			if len(m) != 1 {
				t.Fatalf("quarantined files=%v, want one", m)
			}
			if len(events) != 1 || events[0].Action != "audit.spool_quarantined" || events[0].Detail["file"] != filepath.Base(m[0]) {
				t.Fatalf("new chain events=%+v, want one quarantine event naming %s", events, filepath.Base(m[0]))
			}
			if np, _ := s.Position(); np.Chain == old.Chain {
				t.Fatal("new chain reuses the quarantined chain id")
			}
		})
	}
}

func editDB(t *testing.T, path string, fn func(*bolt.Tx) error) {
	t.Helper()
	db, err := bolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := db.Update(fn); err != nil {
		t.Fatal(err)
	}
	db.Close()
}

func TestBackpressureWhenFull(t *testing.T) {
	path := filepath.Join(t.TempDir(), "spool.db")
	cfg := Config{MaxEvents: 100, MaxAge: time.Hour, MaxSizeBytes: 1 << 20, Retention: time.Nanosecond}
	s := openSpool(t, path, cfg, newSigner(t))
	defer s.Close()
	big := strings.Repeat("x", 2000)
	accepted := 0
	var full error
	for i := range 5000 {
		e := ev(i)
		e.Message = big
		ch := make(chan error, 1)
		if err := s.Append(t.Context(), e, func(err error) { ch <- err }); err != nil {
			full = err
			break
		}
		if err := <-ch; err != nil {
			t.Fatal(err)
		}
		accepted++
	}
	if !errors.Is(full, ErrFull) {
		t.Fatalf("after %d events err=%v, want ErrFull", accepted, full)
	}
	if st := s.Stats(); !st.Full || st.RefusedFull == 0 {
		t.Fatalf("stats=%+v, want Full and RefusedFull>0", st)
	}
	// Nothing was deleted to make room.
	if err := s.Seal(t.Context()); err != nil {
		t.Fatal(err)
	}
	if got := len(verifyAll(t, s)); got != accepted {
		t.Fatalf("stored=%d, want every accepted event (%d)", got, accepted)
	}
	// Central acknowledges, retention prunes, and the spool takes events again.
	p, _ := s.Position()
	s.Ack(p.HeadSeq)
	if _, err := s.Prune(time.Now().Add(time.Second)); err != nil {
		t.Fatal(err)
	}
	if err := s.Append(t.Context(), ev(0), nil); err != nil {
		t.Fatalf("after prune: %v, want accepted", err)
	}
}

func TestSecondOpenIsLocked(t *testing.T) {
	path := filepath.Join(t.TempDir(), "spool.db")
	sig := newSigner(t)
	s := openSpool(t, path, Config{}, sig)
	defer s.Close()
	_, err := Open(path, Config{MinFreeBytes: 1}, Options{Signer: sig})
	if !errors.Is(err, ErrLocked) {
		t.Fatalf("second open err=%v, want ErrLocked", err)
	}
	if _, err := OpenReader(path); !errors.Is(err, ErrLocked) {
		t.Fatalf("reader while open err=%v, want ErrLocked", err)
	}
}

func TestAppendAfterClose(t *testing.T) {
	s := openSpool(t, filepath.Join(t.TempDir(), "spool.db"), Config{}, newSigner(t))
	s.Close()
	if err := s.Append(context.Background(), ev(1), nil); !errors.Is(err, ErrClosed) {
		t.Fatalf("err=%v, want ErrClosed", err)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("second close: %v", err)
	}
}

func TestConfigValidate(t *testing.T) {
	tests := []struct {
		name  string
		cfg   Config
		field string
	}{
		{"zero is valid", Config{}, ""},
		{"max events", Config{MaxEvents: -1}, "batch.max_events"},
		{"max age", Config{MaxAge: time.Millisecond}, "batch.max_age"},
		{"heartbeat too long", Config{Heartbeat: time.Hour}, "batch.heartbeat"},
		{"size", Config{MaxSizeBytes: 100}, "spool.max_size_bytes"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.cfg.SetDefaults()
			err := tt.cfg.Validate()
			var ce *ConfigError
			switch {
			case tt.field == "" && err != nil:
				t.Fatalf("err=%v, want nil", err)
			case tt.field != "" && (!errors.As(err, &ce) || ce.Field != tt.field):
				t.Fatalf("err=%v, want a ConfigError for %s", err, tt.field)
			}
		})
	}
}

// OnSeal fires after each commit that sealed a batch (the uplink's wake-up), and not
// after commits that only add events to the open batch.
func TestOnSeal(t *testing.T) {
	var seals atomic.Int32
	cfg := Config{MaxEvents: 3, MaxAge: time.Hour, MinFreeBytes: 1}
	s, err := Open(filepath.Join(t.TempDir(), "spool.db"), cfg, Options{Site: "s1", Device: "d1", Signer: newSigner(t),
		OnSeal: func() { seals.Add(1) }})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	for i := range 2 {
		appendSync(t, s, ev(i))
	}
	if got := seals.Load(); got != 0 {
		t.Fatalf("OnSeal called %d times before any seal", got)
	}
	appendSync(t, s, ev(2)) // the third event fills the batch
	waitSigned(t, s)
	if got, want := seals.Load(), int32(1); got != want {
		t.Fatalf("OnSeal called %d times after the batch filled, want %d", got, want)
	}
	appendSync(t, s, ev(3))
	if err := s.Seal(t.Context()); err != nil {
		t.Fatal(err)
	}
	if got, want := seals.Load(), int32(2); got != want {
		t.Fatalf("OnSeal called %d times after Seal, want %d", got, want)
	}
}
