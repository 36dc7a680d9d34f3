package evidence_test

import (
	"crypto/ecdsa"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/edgeaudit/edgeaudit/audit"
	"github.com/edgeaudit/edgeaudit/evidence"
	"github.com/edgeaudit/edgeaudit/ledger"
	"github.com/edgeaudit/edgeaudit/receiver"
)

// BenchmarkWriteVerify packages one patient's events out of 20 batches of 1000 (one
// event in 10 matches, so every batch is used), then verifies the package.
func BenchmarkWriteVerify(b *testing.B) {
	dir := b.TempDir()
	st := receiver.FolderStore{Dir: filepath.Join(dir, "store")}
	keys := receiver.FolderKeys{Dir: filepath.Join(dir, "devices")}
	central, dev := genKey(b), genKey(b)
	if err := os.MkdirAll(filepath.Join(keys.Dir, "s1"), 0o700); err != nil {
		b.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(keys.Dir, "s1", "d1.pub"), pubPEM(b, &dev.PublicKey), 0o600); err != nil {
		b.Fatal(err)
	}
	kid, err := ledger.KeyID(&dev.PublicKey)
	if err != nil {
		b.Fatal(err)
	}
	const batches, perBatch = 20, 1000
	chain, prev := hex.EncodeToString(randBytes(b, 16)), ledger.ZeroHash
	t0 := time.Date(2026, 12, 1, 8, 0, 0, 0, time.UTC)
	var last string
	for s := range batches {
		var evs [][]byte
		for i := range perBatch {
			patient := fmt.Sprintf("tok-%d", i%10)
			e := audit.Event{ID: audit.NewID(t0), Time: t0, Received: t0, Source: audit.Source{Kind: audit.KindDICOM, Host: "pacs1.example", AETitle: "PACS1"},
				Action: audit.ActionPHIView, Outcome: audit.OutcomeSuccess, Actor: audit.Actor{User: "user1", Role: "radiologist"},
				Patient: patient, Study: []string{fmt.Sprintf("tok-study-%06d", s*perBatch+i)}, RawSHA256: hex.EncodeToString(make([]byte, 32))}
			evs = append(evs, e.AppendJSON(nil))
		}
		h := ledger.Header{Site: "s1", Device: "d1", Chain: chain, Seq: uint64(s + 1), Prev: prev, Sealed: "2026-12-01T09:00:00Z",
			TimeSync: ledger.TimeSync{State: "unknown"}, KeyID: kid}
		hb, sig, err := h.Seal(ledger.EventsRoot(evs), len(evs), func(d []byte) ([]byte, error) { return ecdsa.SignASN1(rand.Reader, dev, d) })
		if err != nil {
			b.Fatal(err)
		}
		sum := ledger.HeaderHash(hb)
		prev, last = hex.EncodeToString(sum[:]), hex.EncodeToString(sum[:])
		rc := signReceipt(b, central, ledger.Receipt{Site: "s1", Device: "d1", Chain: chain, Seq: h.Seq, HeaderHash: last, Time: t0})
		if err := st.Append(b.Context(), receiver.Entry{Site: "s1", Device: "d1", Header: h, Hash: last,
			Batch: &ledger.Batch{Header: hb, Signature: sig, Events: evs}, Receipt: rc}); err != nil {
			b.Fatal(err)
		}
	}
	q := receiver.Query{Patient: "tok-3"}
	for b.Loop() {
		out := filepath.Join(b.TempDir(), "case")
		sum, err := evidence.Write(b.Context(), out, st, st, keys, &central.PublicKey, q)
		if err != nil {
			b.Fatal(err)
		}
		rep, err := evidence.Verify(out)
		if err != nil {
			b.Fatal(err)
		}
		if sum.Events != batches*perBatch/10 || rep.Events != sum.Events || rep.Batches != batches {
			b.Fatalf("summary %+v, report %d events %d batches", sum, rep.Events, rep.Batches)
		}
	}
	b.ReportMetric(float64(batches*perBatch/10*b.N)/b.Elapsed().Seconds(), "packaged-events/s")
}
