package attest_test

import (
	"fmt"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/edgeaudit/edgeaudit/attest"
	"github.com/edgeaudit/edgeaudit/audit"
	"github.com/edgeaudit/edgeaudit/internal/testtpm"
	"github.com/edgeaudit/edgeaudit/ledger"
	"github.com/edgeaudit/edgeaudit/spool"
)

// The spool's signer interface, as the daemon will hand the TPM signer to it.
var _ spool.Signer = (*attest.TPMSigner)(nil)

// TestTPMSignerSealsSpool: a real spool seals with the TPM signer; after a swtpm restart
// the reloaded signer (same key) reopens the spool, whose tail check accepts it, and the
// chain continues; ledger's verifier accepts every batch with the TPM key alone.
func TestTPMSignerSealsSpool(t *testing.T) {
	sw := testtpm.Start(t)
	keys := filepath.Join(t.TempDir(), "keys", "tpm")
	path := filepath.Join(t.TempDir(), "spool.db")
	cfg := spool.Config{MaxEvents: 10, MaxAge: time.Hour, MinFreeBytes: 1}

	run := func(first, n int) *attest.TPMSigner {
		t.Helper()
		tp, err := attest.OpenTPM(sw.Spec)
		if err != nil {
			t.Fatal(err)
		}
		defer tp.Close()
		sig, _, err := attest.LoadOrCreateTPMSigner(tp, keys, attest.TPMOptions{})
		if err != nil {
			t.Fatal(err)
		}
		sp, err := spool.Open(path, cfg, spool.Options{Site: "s1", Device: "d1", Signer: sig})
		if err != nil {
			t.Fatal(err)
		}
		errs := make(chan error, n)
		for i := first; i < first+n; i++ {
			now := time.Now().UTC()
			e := &audit.Event{Time: now, Received: now, Source: audit.Source{Kind: audit.KindSyslog, Transport: "tcp"},
				Action: "system.log", Outcome: audit.OutcomeUnknown, Message: fmt.Sprintf("event %d", i)}
			if err := sp.Append(t.Context(), e, func(err error) { errs <- err }); err != nil {
				t.Fatal(err)
			}
		}
		for range n {
			if err := <-errs; err != nil {
				t.Fatal(err)
			}
		}
		if err := sp.Seal(t.Context()); err != nil {
			t.Fatal(err)
		}
		if err := sp.Close(); err != nil {
			t.Fatal(err)
		}
		return sig
	}
	s1 := run(0, 25)
	sw.Restart()
	s2 := run(25, 15)
	if s1.KeyID() != s2.KeyID() {
		t.Fatalf("key id after restart %s, want %s", s2.KeyID(), s1.KeyID())
	}

	r, err := spool.OpenReader(path)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	v, err := ledger.NewVerifier(s1.Public())
	if err != nil {
		t.Fatal(err)
	}
	events := 0
	err = r.Batches(1, func(b *ledger.Batch) error {
		if _, err := v.Verify(b); err != nil {
			return err
		}
		events += len(b.Events)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if got, want := events, 40; got != want {
		t.Fatalf("verified %d events, want %d", got, want)
	}
}

// BenchmarkSpoolIngestTPM: events/s into a real spool (appended and committed, batches
// of 1000) signed by a swtpm key and by a software key. The TPM signs off the commit
// path, so its cost must not show in ingest; unsigned-at-end says how many batches were
// still waiting for their signature when the last event was committed.
func BenchmarkSpoolIngestTPM(b *testing.B) {
	for _, kind := range []string{"software", "swtpm"} {
		b.Run(kind, func(b *testing.B) {
			var sig spool.Signer
			if kind == "swtpm" {
				sw := testtpm.Start(b)
				tp, err := attest.OpenTPM(sw.Spec)
				if err != nil {
					b.Fatal(err)
				}
				b.Cleanup(func() { tp.Close() })
				s, _, err := attest.LoadOrCreateTPMSigner(tp, filepath.Join(b.TempDir(), "tpm"), attest.TPMOptions{})
				if err != nil {
					b.Fatal(err)
				}
				sig = s
			} else {
				s, _, err := attest.LoadOrCreateSoftware(filepath.Join(b.TempDir(), "signing.key"))
				if err != nil {
					b.Fatal(err)
				}
				sig = s
			}
			sp, err := spool.Open(filepath.Join(b.TempDir(), "spool.db"), spool.Config{MaxEvents: 1000, MaxAge: time.Hour, MinFreeBytes: 1},
				spool.Options{Site: "s1", Device: "d1", Signer: sig})
			if err != nil {
				b.Fatal(err)
			}
			now := time.Now().UTC()
			var wg sync.WaitGroup
			b.ResetTimer()
			for i := range b.N {
				e := &audit.Event{Time: now, Received: now, Source: audit.Source{Kind: audit.KindSyslog, Transport: "tcp"},
					Action: "system.log", Outcome: audit.OutcomeUnknown, Message: fmt.Sprintf("event %d", i)}
				wg.Add(1)
				if err := sp.Append(b.Context(), e, func(error) { wg.Done() }); err != nil {
					b.Fatal(err)
				}
			}
			wg.Wait()
			b.StopTimer()
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "events/s")
			b.ReportMetric(float64(sp.Stats().Unsigned), "unsigned-at-end")
			if err := sp.Close(); err != nil {
				b.Fatal(err)
			}
		})
	}
}
