package attest

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"github.com/edgeaudit/edgeaudit/internal/testtpm"
)

func nonce(t testing.TB) []byte {
	t.Helper()
	n := make([]byte, 32)
	if _, err := rand.Read(n); err != nil {
		t.Fatal(err)
	}
	return n
}

// jsonRoundTrip passes b through its JSON encoding, as central receives it.
func jsonRoundTrip(t testing.TB, b *Bundle) *Bundle {
	t.Helper()
	j, err := json.Marshal(b)
	if err != nil {
		t.Fatal(err)
	}
	var out Bundle
	if err := json.Unmarshal(j, &out); err != nil {
		t.Fatal(err)
	}
	return &out
}

// TestAttestBundle: a bundle verifies after a JSON round trip, certifies the signer's
// own key and quotes the TPM's real PCR values (an extend shows up); every alteration,
// a wrong nonce, a certify of another key, another TPM's AK, is refused with ErrBundle.
func TestAttestBundle(t *testing.T) {
	sw := testtpm.Start(t)
	tp := openTPM(t, sw)
	s := newTPMSigner(t, tp, filepath.Join(t.TempDir(), "a"), TPMOptions{})
	other := newTPMSigner(t, tp, filepath.Join(t.TempDir(), "b"), TPMOptions{})
	n := nonce(t)
	b, err := s.Attest(n)
	if err != nil {
		t.Fatal(err)
	}
	b = jsonRoundTrip(t, b)
	v, err := VerifyBundle(b, n, s.Public())
	if err != nil {
		t.Fatal(err)
	}
	if got, want := v.KeyID, s.KeyID(); got != want {
		t.Fatalf("verified KeyID %s, want %s", got, want)
	}
	if got, want := len(v.PCRs), len(DefaultQuotePCRs); got != want || len(v.PCRDigest) != 32 {
		t.Fatalf("verified %d PCRs (digest %x), want %d", got, v.PCRDigest, want)
	}
	if v, err := VerifyBundle(b, n, nil); err != nil || !v.SigningKey.Equal(s.Public()) {
		t.Fatalf("VerifyBundle without an expected key: %v, want the signer's key", err)
	}

	extendPCR(t, tp, 7)
	n2 := nonce(t)
	b2, err := s.Attest(n2)
	if err != nil {
		t.Fatal(err)
	}
	v2, err := VerifyBundle(b2, n2, s.Public())
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Equal(v2.PCRs[7], v.PCRs[7]) || bytes.Equal(v2.PCRDigest, v.PCRDigest) || !bytes.Equal(v2.PCRs[0], v.PCRs[0]) {
		t.Fatalf("after extending PCR 7: pcr7 %x -> %x, pcr0 %x -> %x; want only PCR 7 to change", v.PCRs[7], v2.PCRs[7], v.PCRs[0], v2.PCRs[0])
	}

	ob, err := other.Attest(n)
	if err != nil {
		t.Fatal(err)
	}
	flip := func(p []byte) []byte { q := bytes.Clone(p); q[len(q)/2] ^= 1; return q }
	tests := []struct {
		name   string
		edit   func(b *Bundle)
		nonce  []byte
		key    *ecdsa.PublicKey
		reason string // in the error, so that each case fails where it should
	}{
		{name: "wrong nonce", nonce: nonce(t), reason: "certify: nonce does not match"},
		{name: "bundle for another nonce", edit: func(x *Bundle) { *x = *b2 }, reason: "certify: nonce does not match"},
		{name: "certify names another key", edit: func(x *Bundle) { x.SigningPublic = ob.SigningPublic }, reason: "certify names another key"},
		{name: "another key expected", key: other.Public(), reason: "not the expected key"},
		{name: "other key's certify", edit: func(x *Bundle) { x.Certify, x.CertifySignature = ob.Certify, ob.CertifySignature }, reason: "certify names another key"},
		{name: "certify altered", edit: func(x *Bundle) { x.Certify = flip(x.Certify) }, reason: "certify:"},
		{name: "certify signature altered", edit: func(x *Bundle) { x.CertifySignature = flip(x.CertifySignature) }, reason: "certify:"},
		{name: "quote altered", edit: func(x *Bundle) { x.Quote = flip(x.Quote) }, reason: "quote"},
		{name: "pcr value altered", edit: func(x *Bundle) {
			x.PCRs = append([]PCRValue(nil), x.PCRs...)
			x.PCRs[3].SHA256 = hex.EncodeToString(make([]byte, 31)) + "01"
		}, reason: "do not hash to the quoted digest"},
		{name: "pcr dropped", edit: func(x *Bundle) { x.PCRs = x.PCRs[1:] }, reason: "quote covers PCRs"},
		{name: "quote swapped for an older one", edit: func(x *Bundle) { x.Quote, x.QuoteSignature, x.PCRs = b2.Quote, b2.QuoteSignature, b2.PCRs }, reason: "quote: nonce does not match"},
		{name: "version", edit: func(x *Bundle) { x.Version = 2 }, reason: "version"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			x := *b
			if tt.edit != nil {
				tt.edit(&x)
			}
			nn := n
			if tt.nonce != nil {
				nn = tt.nonce
			}
			_, err := VerifyBundle(&x, nn, tt.key)
			if !errors.Is(err, ErrBundle) || !strings.Contains(err.Error(), tt.reason) {
				t.Fatalf("VerifyBundle: %v, want ErrBundle with %q", err, tt.reason)
			}
		})
	}
}

// TestAttestPinned: the AK and EK are the same after a swtpm restart (derived from the
// endorsement seed), so a device's bundles keep verifying against the keys pinned at
// enrolment; a second swtpm's bundle is consistent on its own but refused by either pin.
func TestAttestPinned(t *testing.T) {
	a, b := testtpm.Start(t), testtpm.Start(t)
	sa := newTPMSigner(t, openTPM(t, a), filepath.Join(t.TempDir(), "a"), TPMOptions{})
	n := nonce(t)
	ba, err := sa.Attest(n)
	if err != nil {
		t.Fatal(err)
	}
	enrolled, err := VerifyBundle(ba, n, nil)
	if err != nil {
		t.Fatal(err)
	}
	pins := Pins{AK: enrolled.AK, EK: enrolled.EK}

	a.Restart()
	n = nonce(t)
	ba, err = sa.Attest(n)
	if err != nil {
		t.Fatal(err)
	}
	v, err := VerifyBundlePinned(ba, n, sa.Public(), pins)
	if err != nil {
		t.Fatalf("after restart: %v", err)
	}
	if v.ResetCount <= enrolled.ResetCount {
		t.Fatalf("reset count %d after a restart, want more than %d", v.ResetCount, enrolled.ResetCount)
	}

	sb := newTPMSigner(t, openTPM(t, b), filepath.Join(t.TempDir(), "b"), TPMOptions{})
	bb, err := sb.Attest(n)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := VerifyBundle(bb, n, sb.Public()); err != nil {
		t.Fatalf("second TPM's bundle unpinned: %v, want it self-consistent", err)
	}
	for _, p := range []struct {
		name string
		pins Pins
	}{{"ak", Pins{AK: pins.AK}}, {"ek", Pins{EK: pins.EK}}, {"both", pins}} {
		if _, err := VerifyBundlePinned(bb, n, sb.Public(), p.pins); !errors.Is(err, ErrBundle) {
			t.Errorf("second TPM's bundle pinned to the first's %s: %v, want ErrBundle", p.name, err)
		}
	}
	// Grafting the first TPM's AK onto the second's evidence breaks the signatures.
	graft := *bb
	graft.AKPublic, graft.EKPublic = ba.AKPublic, ba.EKPublic
	if _, err := VerifyBundlePinned(&graft, n, sb.Public(), pins); !errors.Is(err, ErrBundle) {
		t.Errorf("grafted AK: %v, want ErrBundle", err)
	}
}

// TestAttestEKCert: an EK certificate in NV (written here by the test, as swtpm_setup
// --create-ek-cert would, without its machine-wide CA) is carried in the bundle byte for
// byte, read in several chunks, whether the index allows reading with its own auth or
// the owner's; the ECC index is preferred, the RSA one used when alone.
func TestAttestEKCert(t *testing.T) {
	tests := []struct {
		name  string
		attrs tpm2.TPMANV
		index uint32
	}{
		{"ecc authread", tpm2.TPMANV{AuthRead: true}, EKCertIndexECC},
		{"ecc ownerread", tpm2.TPMANV{OwnerRead: true}, EKCertIndexECC},
		{"rsa only", tpm2.TPMANV{AuthRead: true, OwnerRead: true}, EKCertIndexRSA},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			sw := testtpm.Start(t)
			tp := openTPM(t, sw)
			s := newTPMSigner(t, tp, filepath.Join(t.TempDir(), "a"), TPMOptions{})
			b, err := s.Attest(nonce(t))
			if err != nil {
				t.Fatal(err)
			}
			if b.EKCert != nil || b.EKCertIndex != 0 {
				t.Fatalf("EK cert %d bytes at %#x on a TPM without one", len(b.EKCert), b.EKCertIndex)
			}
			cert := make([]byte, 1200)
			if _, err := rand.Read(cert); err != nil {
				t.Fatal(err)
			}
			writeNV(t, tp, tt.index, tt.attrs, cert)
			n := nonce(t)
			b, err = s.Attest(n)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(b.EKCert, cert) || b.EKCertIndex != tt.index {
				t.Fatalf("EK cert %d bytes at %#x, want the %d written at %#x", len(b.EKCert), b.EKCertIndex, len(cert), tt.index)
			}
			if _, err := VerifyBundle(jsonRoundTrip(t, b), n, s.Public()); err != nil {
				t.Fatal(err)
			}
		})
	}
}

func writeNV(t testing.TB, tp transport.TPM, idx uint32, attrs tpm2.TPMANV, data []byte) {
	t.Helper()
	owner := tpm2.AuthHandle{Handle: tpm2.TPMRHOwner, Auth: tpm2.PasswordAuth(nil)}
	attrs.OwnerWrite, attrs.NoDA, attrs.NT = true, true, tpm2.TPMNTOrdinary
	pub := tpm2.TPMSNVPublic{
		NVIndex: tpm2.TPMHandle(idx), NameAlg: tpm2.TPMAlgSHA256,
		Attributes: attrs,
		DataSize:   uint16(len(data)),
	}
	if _, err := (tpm2.NVDefineSpace{AuthHandle: owner, PublicInfo: tpm2.New2B(pub)}).Execute(tp); err != nil {
		t.Fatalf("define nv %#x: %v", idx, err)
	}
	for off := 0; off < len(data); off += 512 {
		rp, err := tpm2.NVReadPublic{NVIndex: tpm2.TPMHandle(idx)}.Execute(tp)
		if err != nil {
			t.Fatal(err)
		}
		end := min(off+512, len(data))
		_, err = tpm2.NVWrite{AuthHandle: owner, NVIndex: tpm2.NamedHandle{Handle: tpm2.TPMHandle(idx), Name: rp.NVName},
			Data: tpm2.TPM2BMaxNVBuffer{Buffer: data[off:end]}, Offset: uint16(off)}.Execute(tp)
		if err != nil {
			t.Fatalf("write nv %#x at %d: %v", idx, off, err)
		}
	}
}
