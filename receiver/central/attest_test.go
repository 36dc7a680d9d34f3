package central

import (
	"crypto/ecdsa"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/edgeaudit/edgeaudit/attest"
	"github.com/edgeaudit/edgeaudit/audit"
	"github.com/edgeaudit/edgeaudit/internal/testtpm"
	"github.com/edgeaudit/edgeaudit/ledger"
)

// tpmKey is a signing key made in a real swtpm, and what it attests with.
type tpmKey struct {
	s *attest.TPMSigner
}

// newTPMKeys starts a swtpm and makes n signing keys in it (separate key folders, one
// TPM: same AK and EK).
func newTPMKeys(t testing.TB, n int) []tpmKey {
	t.Helper()
	sw := testtpm.Start(t)
	tp, err := attest.OpenTPM(sw.Spec)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tp.Close() })
	var out []tpmKey
	for i := range n {
		s, _, err := attest.LoadOrCreateTPMSigner(tp, filepath.Join(t.TempDir(), "tpm", string(rune('a'+i))), attest.TPMOptions{})
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, tpmKey{s: s})
	}
	return out
}

func newNonce(t testing.TB) []byte {
	t.Helper()
	n := make([]byte, 32)
	if _, err := rand.Read(n); err != nil {
		t.Fatal(err)
	}
	return n
}

// bundle attests k for nonce and passes it through JSON, as the file central reads.
func (k tpmKey) bundle(t testing.TB, nonce []byte) *attest.Bundle {
	t.Helper()
	b, err := k.s.Attest(nonce)
	if err != nil {
		t.Fatal(err)
	}
	return cloneBundle(t, b)
}

func cloneBundle(t testing.TB, b *attest.Bundle) *attest.Bundle {
	t.Helper()
	j, err := json.Marshal(b)
	if err != nil {
		t.Fatal(err)
	}
	var out attest.Bundle
	if err := json.Unmarshal(j, &out); err != nil {
		t.Fatal(err)
	}
	return &out
}

// snapshot reads every file under dir, so a test can show that a refusal wrote nothing.
func snapshot(t testing.TB, dir string) map[string]string {
	t.Helper()
	out := map[string]string{}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := os.ReadFile(p)
		out[p] = string(b)
		return err
	})
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		t.Fatal(err)
	}
	return out
}

func keyID(t testing.TB, k *ecdsa.PublicKey) string {
	t.Helper()
	id, err := ledger.KeyID(k)
	if err != nil {
		t.Fatal(err)
	}
	return id
}

// TestEnrolAttested: a bundle from a real swtpm enrols the key it certifies, with the
// TPM's AK and EK pinned beside it (0600); each bad bundle is refused for its own
// reason and writes nothing: a wrong nonce, another TPM for a pinned device, a certify
// of another key, tampered quote or PCRs, not the key the operator expected, a replayed
// nonce, another key without -replace. A new key of the same TPM replaces with replace;
// removal drops the pins, so another TPM may enrol then.
func TestEnrolAttested(t *testing.T) {
	a := newTPMKeys(t, 2) // two keys in TPM A
	b := newTPMKeys(t, 1) // TPM B
	dir := t.TempDir()

	n1 := newNonce(t)
	res, err := EnrolAttested(dir, "s1", "d1", a[0].bundle(t, n1), n1, nil, false)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := res.KeyID, a[0].s.KeyID(); got != want || !res.Changed || res.Pinned {
		t.Fatalf("first attested enrolment: key %s changed %v pinned %v, want %s, changed, not pinned before", got, res.Changed, res.Pinned, want)
	}
	if _, kid, err := readKeyFile(filepath.Join(dir, "s1", "d1.pub")); err != nil || kid != a[0].s.KeyID() {
		t.Fatalf("enrolled key file: %s, %v; want %s", kid, err, a[0].s.KeyID())
	}
	fi, err := os.Stat(filepath.Join(dir, "s1", "d1.attest.json"))
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("pins file: %v, mode %v; want 0600", err, fi.Mode().Perm())
	}
	pinned, err := ReadAttestation(dir, "s1", "d1")
	if err != nil || pinned == nil {
		t.Fatalf("read pins: %v, %v", pinned, err)
	}
	vA, err := attest.VerifyBundle(a[0].bundle(t, n1), n1, nil)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := pinned.AKKeyID, keyID(t, vA.AK); got != want {
		t.Fatalf("pinned ak %s, want TPM A's %s", got, want)
	}
	if got, want := pinned.EKKeyID, keyID(t, vA.EK); got != want {
		t.Fatalf("pinned ek %s, want TPM A's %s", got, want)
	}
	if got, want := pinned.Nonce, hex.EncodeToString(n1); got != want || len(pinned.PCRs) != 8 || len(pinned.PCRDigest) != 64 {
		t.Fatalf("pins nonce %s (want %s), %d PCRs, digest %q", got, want, len(pinned.PCRs), pinned.PCRDigest)
	}

	// Another key of TPM A: its bundle's signing_public, grafted onto key 0's bundle.
	nOther := newNonce(t)
	otherKeyPub := a[1].bundle(t, nOther).SigningPublic
	for _, tt := range []struct {
		name     string
		device   string
		make     func(n []byte) *attest.Bundle
		nonce    func(n []byte) []byte // the nonce central verifies with
		expected *ecdsa.PublicKey
		wantIs   error
		want     string
	}{
		{name: "wrong nonce", device: "d2", make: func(n []byte) *attest.Bundle { return a[0].bundle(t, n) },
			nonce: func([]byte) []byte { return newNonce(t) }, wantIs: attest.ErrBundle, want: "nonce does not match"},
		{name: "another TPM for a pinned device", device: "d1", make: func(n []byte) *attest.Bundle { return b[0].bundle(t, n) },
			wantIs: attest.ErrBundle, want: "not the pinned attestation key"},
		{name: "certified key is not the signing key", device: "d2", make: func(n []byte) *attest.Bundle {
			x := a[0].bundle(t, n)
			x.SigningPublic = otherKeyPub
			return x
		}, wantIs: attest.ErrBundle, want: "certify names another key"},
		{name: "tampered quote", device: "d2", make: func(n []byte) *attest.Bundle {
			x := a[0].bundle(t, n)
			x.Quote[len(x.Quote)-1] ^= 1
			return x
		}, wantIs: attest.ErrBundle, want: "quote"},
		{name: "tampered certify signature", device: "d2", make: func(n []byte) *attest.Bundle {
			x := a[0].bundle(t, n)
			x.CertifySignature[len(x.CertifySignature)-1] ^= 1
			return x
		}, wantIs: attest.ErrBundle, want: "certify"},
		{name: "tampered PCR value", device: "d2", make: func(n []byte) *attest.Bundle {
			x := a[0].bundle(t, n)
			x.PCRs[0].SHA256 = strings.Repeat("ab", 32)
			return x
		}, wantIs: attest.ErrBundle, want: "do not hash to the quoted digest"},
		{name: "not the key the operator was given", device: "d2", make: func(n []byte) *attest.Bundle { return a[0].bundle(t, n) },
			expected: b[0].s.Public(), wantIs: attest.ErrBundle, want: "not the expected key"},
		{name: "replayed bundle and nonce", device: "d1", make: func([]byte) *attest.Bundle { return a[0].bundle(t, n1) },
			nonce: func([]byte) []byte { return n1 }, wantIs: ErrNonceReused},
		{name: "another key of the same TPM without replace", device: "d1", make: func(n []byte) *attest.Bundle { return a[1].bundle(t, n) },
			wantIs: ErrKeyExists},
		{name: "a device name with a path", device: "../d1", make: func(n []byte) *attest.Bundle { return a[0].bundle(t, n) },
			want: "must be 1-64 letters"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			before := snapshot(t, dir)
			n := newNonce(t)
			bun := tt.make(n)
			if tt.nonce != nil {
				n = tt.nonce(n)
			}
			_, err := EnrolAttested(dir, "s1", tt.device, bun, n, tt.expected, false)
			if err == nil || (tt.wantIs != nil && !errors.Is(err, tt.wantIs)) || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err %v, want %v containing %q", err, tt.wantIs, tt.want)
			}
			if after := snapshot(t, dir); !maps.Equal(before, after) {
				t.Fatalf("a refused bundle changed the devices folder: %d files before, %d after", len(before), len(after))
			}
		})
	}

	// The same TPM's new key (a recovered appliance) replaces with replace, still pinned.
	n2 := newNonce(t)
	res, err = EnrolAttested(dir, "s1", "d1", a[1].bundle(t, n2), n2, a[1].s.Public(), true)
	if err != nil {
		t.Fatal(err)
	}
	if res.KeyID != a[1].s.KeyID() || res.Previous != a[0].s.KeyID() || !res.Changed || !res.Pinned {
		t.Fatalf("replace from the same TPM: %+v, want key %s replacing %s, pinned", res.Enrolment, a[1].s.KeyID(), a[0].s.KeyID())
	}
	devs, err := ListDevices(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(devs) != 1 || !devs[0].Attested || devs[0].AKKeyID != pinned.AKKeyID || devs[0].KeyID != a[1].s.KeyID() {
		t.Fatalf("list %+v, want s1/d1 attested by ak %s with key %s", devs, pinned.AKKeyID, a[1].s.KeyID())
	}
	// Removal forgets the pins: the operator may enrol the device from a new TPM.
	if _, err := Unenrol(dir, "s1", "d1"); err != nil {
		t.Fatal(err)
	}
	if a, err := ReadAttestation(dir, "s1", "d1"); err != nil || a != nil {
		t.Fatalf("pins after removal: %+v, %v; want none", a, err)
	}
	n3 := newNonce(t)
	if res, err := EnrolAttested(dir, "s1", "d1", b[0].bundle(t, n3), n3, nil, false); err != nil || res.KeyID != b[0].s.KeyID() {
		t.Fatalf("enrol from TPM B after removal: %+v, %v", res.Enrolment, err)
	}
}

// TestAddAttestedDevice: the server records an attested enrolment in central's trail
// (admin.key_change, attested=true, the AK and EK key ids), records a re-attestation
// of the same key, refuses central's own site, and refuses a plain -replace of a pinned
// device's key.
func TestAddAttestedDevice(t *testing.T) {
	k := newTPMKeys(t, 1)[0]
	cfg := Config{DataDir: t.TempDir(), AuditDevice: "c1"}
	cfg.SetDefaults()
	srv, err := New(cfg, testLogger())
	if err != nil {
		t.Fatal(err)
	}
	n := newNonce(t)
	res, err := srv.AddAttestedDevice(t.Context(), "s1", "d1", k.bundle(t, n), n, nil, false)
	if err != nil {
		t.Fatal(err)
	}
	n2 := newNonce(t)
	again, err := srv.AddAttestedDevice(t.Context(), "s1", "d1", k.bundle(t, n2), n2, k.s.Public(), false)
	if err != nil || again.Changed {
		t.Fatalf("attest the same key again: %+v, %v; want unchanged", again.Enrolment, err)
	}
	n3 := newNonce(t)
	if _, err := srv.AddAttestedDevice(t.Context(), cfg.AuditSite, "c9", k.bundle(t, n3), n3, nil, false); !errors.Is(err, ErrReservedSite) {
		t.Fatalf("attested enrolment under the audit site: %v, want ErrReservedSite", err)
	}
	if _, err := srv.AddDevice(t.Context(), "s1", "d1", pubPEM(t, &genKey(t).PublicKey), true); !errors.Is(err, ErrPinned) {
		t.Fatalf("plain -replace of an attested device's key: %v, want ErrPinned", err)
	}
	if _, kid, _ := readKeyFile(filepath.Join(cfg.Devices, "s1", "d1.pub")); kid != k.s.KeyID() {
		t.Fatalf("key after the refused plain replace: %s, want %s", kid, k.s.KeyID())
	}
	var reasons []string
	for _, e := range withAction(trailEvents(t, cfg), audit.ActionKeyChange) {
		if e.Detail["attested"] != "true" || e.Detail["key_id"] != k.s.KeyID() || e.Detail["ak_key_id"] != res.Attestation.AKKeyID ||
			e.Detail["ek_key_id"] != res.Attestation.EKKeyID || e.Detail["pcr_digest"] == "" {
			t.Errorf("key change detail %v, want attested key %s, ak %s, ek %s", e.Detail, k.s.KeyID(), res.Attestation.AKKeyID, res.Attestation.EKKeyID)
		}
		reasons = append(reasons, e.Reason)
	}
	if got, want := strings.Join(reasons, ","), "device enrolled,device attested"; got != want {
		t.Fatalf("key changes in central's trail: %q, want %q", got, want)
	}
}
