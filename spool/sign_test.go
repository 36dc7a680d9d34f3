package spool

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"encoding/binary"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/edgeaudit/edgeaudit/audit"
	"github.com/edgeaudit/edgeaudit/ledger"
)

// A signer that fails (a TPM reset, a removed token) does not stop collection: events
// are committed and acknowledged, batches keep closing and wait for their signatures,
// the head does not move, and the fault and its end are in the chain.
func TestSignerOutageKeepsCommitting(t *testing.T) {
	sig := &flakySigner{Signer: newSigner(t)}
	s := openSpool(t, filepath.Join(t.TempDir(), "spool.db"), Config{MaxEvents: 10, MaxAge: time.Hour}, sig)
	defer s.Close()
	sig.broken.Store(true)
	const n = 35
	for i := range n {
		appendSync(t, s, ev(i)) // committed, acknowledged, while nothing can be signed
	}
	st := s.Stats()
	if st.Holding || st.Full {
		t.Fatalf("stats %+v: a signer outage must not hold commits or refuse events", st)
	}
	p, _ := s.Position()
	// The open batch may also hold the signing_failed event already.
	if p.HeadSeq != 0 || p.Unsigned != 3 || p.OpenEvents < n {
		t.Fatalf("position %+v, want head 0, 3 unsigned batches, at least %d events not in a signed batch", p, n)
	}
	deadline := time.Now().Add(10 * time.Second)
	for !s.Stats().SignFailing && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	if st := s.Stats(); !st.SignFailing || st.SignErrors == 0 || st.Unsigned != 3 {
		t.Fatalf("stats %+v, want signing failing with errors and 3 unsigned", st)
	}
	sig.broken.Store(false)
	// The recovery event is appended by the signer once it works again, so it may come
	// after the first Seal's batch: seal until it is in (bounded).
	var got, failed, recovered int
	for try := 0; recovered == 0 && try < 100; try++ {
		if err := s.Seal(t.Context()); err != nil {
			t.Fatal(err)
		}
		got, failed, recovered = countSigning(verifyAll(t, s))
		if recovered == 0 {
			time.Sleep(10 * time.Millisecond)
		}
	}
	if got != n || failed != 1 || recovered != 1 {
		t.Fatalf("chain holds %d events, %d signing_failed, %d signing_recovered; want %d, 1, 1", got, failed, recovered, n)
	}
	// A batch the last Seal closed may still be with the signer: wait for it (bounded).
	for deadline := time.Now().Add(10 * time.Second); s.Stats().Unsigned != 0 && time.Now().Before(deadline); {
		time.Sleep(5 * time.Millisecond)
	}
	if st := s.Stats(); st.SignFailing || st.Unsigned != 0 {
		t.Fatalf("stats after recovery %+v", st)
	}
}

// countSigning counts the collected events and the signing fault events.
func countSigning(events []audit.Event) (got, failed, recovered int) {
	for _, e := range events {
		switch e.Action {
		case ActionSigningFailed:
			failed++
		case ActionSigningRecovered:
			recovered++
		default:
			got++
		}
	}
	return got, failed, recovered
}

// Headers closed but not signed when the spool closes (or the process dies) are signed
// at the next Open, byte for byte as they were prepared, so the batches after them still
// link.
func TestUnsignedSignedAtOpen(t *testing.T) {
	path := filepath.Join(t.TempDir(), "spool.db")
	good := newSigner(t)
	sig := &flakySigner{Signer: good}
	cfg := Config{MaxEvents: 10, MaxAge: time.Hour, CloseGrace: 50 * time.Millisecond}
	s := openSpool(t, path, cfg, sig)
	sig.broken.Store(true)
	for i := range 25 {
		appendSync(t, s, ev(i))
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	prepared := unsignedHeaders(t, path)
	if len(prepared) != 2 {
		t.Fatalf("%d unsigned headers after close, want 2", len(prepared))
	}
	s = openSpool(t, path, cfg, good)
	defer s.Close()
	for i := range 5 {
		appendSync(t, s, ev(100+i))
	}
	if err := s.Seal(t.Context()); err != nil {
		t.Fatal(err)
	}
	var i int
	events := 0
	err := s.Batches(1, func(b *ledger.Batch) error {
		if i < len(prepared) && !bytes.Equal(b.Header, prepared[i]) {
			t.Errorf("batch %d header differs from the one prepared before the restart", i+1)
		}
		i++
		events += len(b.Events)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if got := len(verifyAll(t, s)); got < 30 {
		t.Fatalf("chain holds %d events, want at least 30", got)
	}
	if p, _ := s.Position(); p.HeadSeq < 3 || p.Unsigned != 0 || p.OpenEvents != 0 {
		t.Fatalf("position %+v, want head >= 3, nothing unsigned or open", p)
	}
}

// An unsigned batch whose events were changed while the spool was closed must not be
// signed: Open finds that its header does not match its events and quarantines.
func TestTamperedUnsignedBatchQuarantined(t *testing.T) {
	path := filepath.Join(t.TempDir(), "spool.db")
	sig := &flakySigner{Signer: newSigner(t)}
	cfg := Config{MaxEvents: 10, MaxAge: time.Hour, CloseGrace: 50 * time.Millisecond}
	s := openSpool(t, path, cfg, sig)
	sig.broken.Store(true)
	for i := range 10 {
		appendSync(t, s, ev(i))
	}
	s.Close()
	db, err := bolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		var k [12]byte
		binary.BigEndian.PutUint64(k[:8], 1)
		b := tx.Bucket(bucketEvents)
		v := append([]byte(nil), b.Get(k[:])...)
		v[len(v)/2] ^= 1
		return b.Put(k[:], v)
	})
	db.Close()
	if err != nil {
		t.Fatal(err)
	}
	sig.broken.Store(false)
	s = openSpool(t, path, cfg, sig)
	defer s.Close()
	var quarantined bool
	for _, in := range s.Incidents() {
		quarantined = quarantined || in.Action == ActionQuarantined
	}
	if !quarantined {
		t.Fatalf("incidents %+v: the tampered unsigned batch was not caught", s.Incidents())
	}
}

// unsignedHeaders reads the unsigned bucket of a closed spool.
func unsignedHeaders(t testing.TB, path string) [][]byte {
	t.Helper()
	db, err := bolt.Open(path, 0o600, &bolt.Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var out [][]byte
	db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketUnsigned).ForEach(func(_, v []byte) error {
			out = append(out, bytes.Clone(v))
			return nil
		})
	})
	return out
}

// slowSigner takes d for each signature: a busy TPM.
type slowSigner struct {
	Signer
	d     time.Duration
	calls atomic.Int64
}

func (s *slowSigner) Sign(ctx context.Context, digest []byte) ([]byte, error) {
	s.calls.Add(1)
	select {
	case <-time.After(s.d):
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	return s.Signer.Sign(ctx, digest)
}
func (s *slowSigner) Public() *ecdsa.PublicKey { return s.Signer.Public() }

// BenchmarkIngestSigner: events/s into the spool (appended and committed, 1000 per
// batch) with a software signer and with one that takes 200 ms a signature. Signing is
// off the commit path, so the slow signer must not lower ingest; batches wait for their
// signatures instead (unsigned-at-end says how many).
func BenchmarkIngestSigner(b *testing.B) {
	for _, tc := range []struct {
		name  string
		delay time.Duration
	}{{"software", 0}, {"slow200ms", 200 * time.Millisecond}} {
		b.Run(tc.name, func(b *testing.B) {
			var sig Signer = newSigner(b)
			if tc.delay > 0 {
				sig = &slowSigner{Signer: sig, d: tc.delay}
			}
			s := openSpool(b, filepath.Join(b.TempDir(), "spool.db"), Config{MaxEvents: 1000, MaxAge: time.Hour}, sig)
			var wg sync.WaitGroup
			b.ResetTimer()
			for i := range b.N {
				wg.Add(1)
				if err := s.Append(context.Background(), ev(i), func(error) { wg.Done() }); err != nil {
					b.Fatal(err)
				}
			}
			wg.Wait()
			b.StopTimer()
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "events/s")
			b.ReportMetric(float64(s.Stats().Unsigned), "unsigned-at-end")
			s.Close()
		})
	}
}

// A reader of a closed spool (export -events -open) sees the events of batches that
// wait for their signature as well as the open batch's: nothing committed is hidden.
func TestReaderOpenEventsIncludeUnsigned(t *testing.T) {
	path := filepath.Join(t.TempDir(), "spool.db")
	sig := &flakySigner{Signer: newSigner(t)}
	s := openSpool(t, path, Config{MaxEvents: 10, MaxAge: time.Hour, CloseGrace: 50 * time.Millisecond}, sig)
	sig.broken.Store(true)
	for i := range 25 {
		appendSync(t, s, ev(i))
	}
	s.Close()
	r, err := OpenReader(path)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	evs, err := r.OpenEvents()
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, b := range evs {
		e, err := audit.Decode(b)
		if err != nil {
			t.Fatal(err)
		}
		if e.Action != ActionSigningFailed {
			got = append(got, e.Message)
		}
	}
	if len(got) != 25 || got[0] != "event 0" || got[24] != "event 24" {
		t.Fatalf("open events %d (%q … %q), want events 0..24 in order", len(got), got[0], got[len(got)-1])
	}
}

// Batches left unsigned by one key and opened with another (a recovered key) are
// re-prepared for the new key, so that each header names the key that signs it.
func TestUnsignedRekeyedForNewKey(t *testing.T) {
	path := filepath.Join(t.TempDir(), "spool.db")
	sig := &flakySigner{Signer: newSigner(t)}
	cfg := Config{MaxEvents: 10, MaxAge: time.Hour, CloseGrace: 50 * time.Millisecond}
	s := openSpool(t, path, cfg, sig)
	sig.broken.Store(true)
	for i := range 25 {
		appendSync(t, s, ev(i))
	}
	s.Close()
	next := newSigner(t)
	s = openSpool(t, path, cfg, next)
	defer s.Close()
	if err := s.Seal(t.Context()); err != nil {
		t.Fatal(err)
	}
	got, _, _ := countSigning(verifyWith(t, s, next))
	if got != 25 {
		t.Fatalf("%d events verify with the new key, want 25", got)
	}
}
