package receiver_test

import (
	"crypto/ecdsa"
	"crypto/rand"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/edgeaudit/edgeaudit/audit"
	"github.com/edgeaudit/edgeaudit/internal/testpg"
	"github.com/edgeaudit/edgeaudit/ledger"
	"github.com/edgeaudit/edgeaudit/receiver"
	"github.com/edgeaudit/edgeaudit/receiver/pgstore"
)

// sealAudit seals n batches of perBatch audit events (about 300 bytes each, with
// patient, user and study tokens, as collectors produce them) for site/device.
func sealAudit(b testing.TB, key *ecdsa.PrivateKey, site, device string, n, perBatch int) [][]byte {
	b.Helper()
	kid, err := ledger.KeyID(&key.PublicKey)
	if err != nil {
		b.Fatal(err)
	}
	t0 := time.Date(2026, 12, 1, 8, 0, 0, 0, time.UTC)
	prev := ledger.ZeroHash
	var out [][]byte
	for seq := 1; seq <= n; seq++ {
		events := make([][]byte, perBatch)
		for i := range events {
			ev := audit.Event{ID: fmt.Sprintf("%s-%d-%d", device, seq, i), Time: t0.Add(time.Duration(i) * time.Second), Received: t0,
				Source: audit.Source{Kind: audit.KindDICOM, Host: "pacs-01", AETitle: "PACS01"}, Action: "phi.view", Outcome: audit.OutcomeSuccess,
				Actor: audit.Actor{User: fmt.Sprintf("u%03d", i%50)}, Patient: fmt.Sprintf("pt-%06d", i%997), Study: []string{fmt.Sprintf("st-%06d", i%311)},
				Message: strings.Repeat("x", 60), RawSHA256: strings.Repeat("0", 64)}
			events[i] = ev.AppendJSON(nil)
		}
		h := ledger.Header{Site: site, Device: device, Chain: strings.Repeat("ab", 16), Seq: uint64(seq), Prev: prev,
			Sealed: "2026-12-01T08:00:00Z", TimeSync: ledger.TimeSync{State: "unknown"}, KeyID: kid}
		hb, sig, err := h.Seal(ledger.EventsRoot(events), len(events), func(d []byte) ([]byte, error) { return ecdsa.SignASN1(rand.Reader, key, d) })
		if err != nil {
			b.Fatal(err)
		}
		hh := ledger.HeaderHash(hb)
		prev = fmt.Sprintf("%x", hh[:])
		out = append(out, (&ledger.Batch{Header: hb, Signature: sig, Events: events}).AppendWire(nil))
	}
	return out
}

// BenchmarkHandlePG measures Handle with the PostgreSQL store: every check, the receipt
// signed, the batch and its 1000 events committed durably (a cluster of its own with
// fsync on), one goroutine. Every chainLen batches it moves on to a new device with the
// same events. Reported: events/s and batches/s.
func BenchmarkHandlePG(b *testing.B) {
	const chainLen, perBatch = 16, 1000
	c := testpg.Start(b, testpg.Options{Fsync: true})
	s, err := pgstore.Open(b.Context(), c.DSN(), nil)
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	if err := s.Migrate(b.Context()); err != nil {
		b.Fatal(err)
	}
	e := newEnv(b, receiver.Config{}, s)
	key := genKey(b)
	round, i := 0, 0
	var payloads [][]byte
	next := func() {
		round++
		dev := fmt.Sprintf("d%d", round)
		b.StopTimer()
		enroll(b, e.keysDir, "s1", dev, &key.PublicKey)
		payloads = sealAudit(b, key, "s1", dev, chainLen, perBatch)
		b.StartTimer()
	}
	next()
	b.Logf("batch %d bytes", len(payloads[0]))
	for b.Loop() {
		if i == chainLen {
			next()
			i = 0
		}
		rc, err := e.r.Handle(b.Context(), "s1", fmt.Sprintf("d%d", round), payloads[i])
		if err != nil || rc == nil {
			b.Fatalf("seq %d: %v", i+1, err)
		}
		i++
	}
	b.ReportMetric(float64(b.N*perBatch)/b.Elapsed().Seconds(), "events/s")
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "batches/s")
	b.ReportMetric(0, "ns/op")
}

// BenchmarkHandlePGParallel is BenchmarkHandlePG with two receivers on one database,
// each handling its own devices at once (as two members of a shared group would): it
// shows how far appends of different devices proceed side by side. Reported: events/s
// and batches/s over both.
func BenchmarkHandlePGParallel(b *testing.B) {
	const chainLen, perBatch, receivers = 16, 1000, 2
	c := testpg.Start(b, testpg.Options{Fsync: true})
	s, err := pgstore.Open(b.Context(), c.DSN(), nil)
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	if err := s.Migrate(b.Context()); err != nil {
		b.Fatal(err)
	}
	e := newEnv(b, receiver.Config{}, s)
	key := genKey(b)
	// Every batch is sealed before the clock starts: chainLen per device, enough devices
	// for b.N batches and a partly used one per receiver.
	type chain struct {
		device   string
		payloads [][]byte
	}
	chains := make(chan chain, b.N/chainLen+receivers+1)
	for d := range cap(chains) {
		dev := fmt.Sprintf("p%d", d)
		enroll(b, e.keysDir, "s1", dev, &key.PublicKey)
		chains <- chain{dev, sealAudit(b, key, "s1", dev, chainLen, perBatch)}
	}
	close(chains)
	var rs []*receiver.Receiver
	for range receivers {
		r, err := receiver.New(receiver.Config{Quarantine: b.TempDir()}, s, receiver.FolderKeys{Dir: e.keysDir}, keySigner{e.central}, nil)
		if err != nil {
			b.Fatal(err)
		}
		rs = append(rs, r)
	}
	var wg sync.WaitGroup
	work := make(chan struct{}, b.N)
	for range b.N {
		work <- struct{}{}
	}
	close(work)
	errs := make(chan error, receivers)
	b.ResetTimer()
	start := time.Now()
	for _, r := range rs {
		wg.Go(func() {
			for {
				ch, ok := <-chains
				if !ok {
					return
				}
				for _, p := range ch.payloads {
					if _, ok := <-work; !ok {
						return
					}
					if rc, err := r.Handle(b.Context(), "s1", ch.device, p); err != nil || rc == nil {
						errs <- fmt.Errorf("%s: %v", ch.device, err)
						return
					}
				}
			}
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	b.StopTimer()
	close(errs)
	for err := range errs {
		b.Fatal(err)
	}
	b.ReportMetric(float64(b.N*perBatch)/elapsed.Seconds(), "events/s")
	b.ReportMetric(float64(b.N)/elapsed.Seconds(), "batches/s")
	b.ReportMetric(0, "ns/op")
}
