package attest

import (
	"crypto/sha256"
	"path/filepath"
	"testing"

	"github.com/edgeaudit/edgeaudit/internal/testtpm"
)

func benchSigner(b *testing.B, o TPMOptions) *TPMSigner {
	b.Helper()
	sw := testtpm.Start(b)
	return newTPMSigner(b, openTPM(b, sw), filepath.Join(b.TempDir(), "tpm"), o)
}

// BenchmarkTPMSign is one batch signature on swtpm: storage primary, load, sign, two
// flushes, and the signature check.
func BenchmarkTPMSign(b *testing.B) {
	s := benchSigner(b, TPMOptions{})
	d := sha256.Sum256([]byte("header"))
	for b.Loop() {
		if _, err := s.Sign(b.Context(), d[:]); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "sigs/s")
}

// BenchmarkSoftwareSign is the software key's rate, for comparison.
func BenchmarkSoftwareSign(b *testing.B) {
	s, _, err := LoadOrCreateSoftware(filepath.Join(b.TempDir(), "signing.key"))
	if err != nil {
		b.Fatal(err)
	}
	d := sha256.Sum256([]byte("header"))
	for b.Loop() {
		if _, err := s.Sign(b.Context(), d[:]); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "sigs/s")
}

// BenchmarkTPMUnseal is the data key's unseal at start, over a salted session, without
// and with a PCR policy.
func BenchmarkTPMUnseal(b *testing.B) {
	for _, bc := range []struct {
		name string
		o    TPMOptions
	}{{"no-policy", TPMOptions{}}, {"pcr23", TPMOptions{PCRs: []int{23}}}} {
		b.Run(bc.name, func(b *testing.B) {
			s := benchSigner(b, bc.o)
			for b.Loop() {
				if _, err := s.UnsealDataKey(); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkTPMAttest makes a bundle (EK, AK, Certify, Quote of 8 PCRs) and verifies it.
func BenchmarkTPMAttest(b *testing.B) {
	s := benchSigner(b, TPMOptions{})
	n := []byte("bench-nonce")
	for b.Loop() {
		bu, err := s.Attest(n)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := VerifyBundle(bu, n, s.Public()); err != nil {
			b.Fatal(err)
		}
	}
}
