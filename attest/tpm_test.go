package attest

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"github.com/edgeaudit/edgeaudit/internal/testtpm"
	"github.com/edgeaudit/edgeaudit/ledger"
)

// openTPM opens the test's swtpm through OpenTPM, as the daemon would.
func openTPM(t testing.TB, s *testtpm.TPM) transport.TPMCloser {
	t.Helper()
	tp, err := OpenTPM(s.Spec)
	if err != nil {
		t.Fatalf("OpenTPM(%s): %v", s.Spec, err)
	}
	t.Cleanup(func() { tp.Close() })
	return tp
}

func newTPMSigner(t testing.TB, tp transport.TPM, dir string, o TPMOptions) *TPMSigner {
	t.Helper()
	s, created, err := LoadOrCreateTPMSigner(tp, dir, o)
	if err != nil {
		t.Fatal(err)
	}
	if !created {
		t.Fatal("created=false for a new key folder")
	}
	return s
}

// signedBatch seals a one-event batch with sig, as the spool does, for ledger's verifier.
func signedBatch(t testing.TB, sig interface {
	Sign([]byte) ([]byte, error)
	KeyID() string
}) *ledger.Batch {
	t.Helper()
	ev := []byte(`{"id":"e1"}`)
	root := ledger.EventsRoot([][]byte{ev})
	h := ledger.Header{Version: ledger.FormatVersion, Site: "s1", Device: "d1", Chain: strings.Repeat("a", 32),
		Seq: 1, Prev: ledger.ZeroHash, Count: 1, Root: hex.EncodeToString(root[:]), Sealed: "2026-12-01T00:00:00Z",
		TimeSync: ledger.TimeSync{State: "unknown"}, KeyID: sig.KeyID(), Alg: ledger.AlgECDSAP256SHA256}
	hb, err := h.Encode()
	if err != nil {
		t.Fatal(err)
	}
	d := sha256.Sum256(hb)
	s, err := sig.Sign(d[:])
	if err != nil {
		t.Fatal(err)
	}
	return &ledger.Batch{Header: hb, Signature: s, Events: [][]byte{ev}}
}

type ctxSigner struct {
	t testing.TB
	*TPMSigner
}

func (c ctxSigner) Sign(d []byte) ([]byte, error) { return c.TPMSigner.Sign(c.t.Context(), d) }

// TestTPMSignerLifecycle: keys are created once, in a 0700 folder of 0600 files; a second
// open, and a swtpm restart on the same state, load the same key (same KeyID) whose
// signatures crypto/ecdsa and ledger's verifier accept; the sealed data key unseals to
// the same bytes after the restart; a connection open across the restart reconnects.
func TestTPMSignerLifecycle(t *testing.T) {
	sw := testtpm.Start(t)
	tp := openTPM(t, sw)
	dir := filepath.Join(t.TempDir(), "keys", "tpm")
	s := newTPMSigner(t, tp, dir, TPMOptions{})
	if got, want := s.Kind(), "tpm"; got != want {
		t.Fatalf("Kind=%q, want %q", got, want)
	}
	if fi, err := os.Stat(dir); err != nil || fi.Mode().Perm() != 0o700 {
		t.Fatalf("key folder: %v %v, want mode 0700", fi, err)
	}
	for _, f := range []string{TPMSigningFile, TPMDataKeyFile} {
		fi, err := os.Stat(filepath.Join(dir, f))
		if err != nil {
			t.Fatal(err)
		}
		if got, want := fi.Mode().Perm(), os.FileMode(0o600); got != want {
			t.Fatalf("%s mode=%v, want %v", f, got, want)
		}
	}
	if _, err := os.Stat(dir + ".new"); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("staging folder left behind: %v", err)
	}
	if id, _ := ledger.KeyID(s.Public()); id != s.KeyID() {
		t.Fatalf("KeyID=%s, want ledger.KeyID(Public())=%s", s.KeyID(), id)
	}
	data, err := s.UnsealDataKey()
	if err != nil {
		t.Fatal(err)
	}
	if len(data) != DataKeySize || bytes.Equal(data, make([]byte, DataKeySize)) {
		t.Fatalf("data key %x: want %d random bytes", data, DataKeySize)
	}

	check := func(name string, s *TPMSigner) {
		t.Helper()
		b := signedBatch(t, ctxSigner{t, s})
		d := sha256.Sum256(b.Header)
		if !ecdsa.VerifyASN1(s.Public(), d[:], b.Signature) {
			t.Fatalf("%s: signature does not verify with ecdsa.VerifyASN1", name)
		}
		v, err := ledger.NewVerifier(s.Public())
		if err != nil {
			t.Fatal(err)
		}
		if _, err := v.Verify(b); err != nil {
			t.Fatalf("%s: ledger verify: %v", name, err)
		}
	}
	check("first", s)

	reload := func(name string, tp transport.TPM) *TPMSigner {
		t.Helper()
		s2, created, err := LoadOrCreateTPMSigner(tp, dir, TPMOptions{})
		if err != nil || created {
			t.Fatalf("%s: created=%v err=%v", name, created, err)
		}
		if got, want := s2.KeyID(), s.KeyID(); got != want {
			t.Fatalf("%s: KeyID=%s, want %s", name, got, want)
		}
		got, err := s2.UnsealDataKey()
		if err != nil || !bytes.Equal(got, data) {
			t.Fatalf("%s: data key %x %v, want %x", name, got, err, data)
		}
		check(name, s2)
		return s2
	}
	// swtpm serves one connection at a time: the next open waits for this one's close.
	tp.Close()
	s2 := reload("second open", openTPM(t, sw))
	sw.Restart()
	// s2's connection died with swtpm; it reconnects and still signs.
	check("old connection after restart", s2)
	s2.c.Close()
	reload("after restart", openTPM(t, sw))
}

// TestTPMDataKeyPolicy: a data key sealed to PCR 23 unseals while the PCR holds, fails
// with ErrPolicy (not a generic error) once the PCR is extended, and unseals again after
// a restart (PCRs reset, as at a reboot into the same state). A migrated key is sealed
// as given.
func TestTPMDataKeyPolicy(t *testing.T) {
	sw := testtpm.Start(t)
	tp := openTPM(t, sw)
	want := bytes.Repeat([]byte{7}, DataKeySize)
	s := newTPMSigner(t, tp, filepath.Join(t.TempDir(), "tpm"), TPMOptions{PCRs: []int{23}, DataKey: want})
	if got := s.PCRs(); !slices.Equal(got, []int{23}) {
		t.Fatalf("PCRs()=%v, want [23]", got)
	}
	if got, err := s.UnsealDataKey(); err != nil || !bytes.Equal(got, want) {
		t.Fatalf("unseal: %x %v, want %x", got, err, want)
	}
	extendPCR(t, tp, 23)
	_, err := s.UnsealDataKey()
	if !errors.Is(err, ErrPolicy) {
		t.Fatalf("unseal after extend: %v, want ErrPolicy", err)
	}
	sw.Restart()
	if got, err := s.UnsealDataKey(); err != nil || !bytes.Equal(got, want) {
		t.Fatalf("unseal after restart: %x %v, want %x", got, err, want)
	}
	// A PCR the key is not sealed to changes nothing.
	extendPCR(t, tp, 16)
	if _, err := s.UnsealDataKey(); err != nil {
		t.Fatalf("unseal after extending PCR 16: %v", err)
	}
}

func extendPCR(t testing.TB, tp transport.TPM, pcr int) {
	t.Helper()
	d := sha256.Sum256([]byte("changed"))
	_, err := tpm2.PCRExtend{
		PCRHandle: tpm2.AuthHandle{Handle: tpm2.TPMHandle(pcr), Auth: tpm2.PasswordAuth(nil)},
		Digests:   tpm2.TPMLDigestValues{Digests: []tpm2.TPMTHA{{HashAlg: tpm2.TPMAlgSHA256, Digest: d[:]}}},
	}.Execute(tp)
	if err != nil {
		t.Fatalf("extend pcr %d: %v", pcr, err)
	}
}

// TestTPMKeyMissing: once a folder exists, a missing blob is ErrKeyMissing from both
// loaders, and nothing is written: no new key replaces the lost one.
func TestTPMKeyMissing(t *testing.T) {
	sw := testtpm.Start(t)
	tp := openTPM(t, sw)
	for _, f := range []string{TPMSigningFile, TPMDataKeyFile} {
		t.Run(f, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "tpm")
			newTPMSigner(t, tp, dir, TPMOptions{})
			if err := os.Remove(filepath.Join(dir, f)); err != nil {
				t.Fatal(err)
			}
			before := listDir(t, dir)
			if _, _, err := LoadOrCreateTPMSigner(tp, dir, TPMOptions{}); !errors.Is(err, ErrKeyMissing) {
				t.Fatalf("LoadOrCreateTPMSigner: %v, want ErrKeyMissing", err)
			}
			if _, err := LoadTPMSigner(tp, dir, TPMOptions{}); !errors.Is(err, ErrKeyMissing) {
				t.Fatalf("LoadTPMSigner: %v, want ErrKeyMissing", err)
			}
			if got := listDir(t, dir); !slices.Equal(got, before) {
				t.Fatalf("folder after the failed loads %v, want %v (unchanged)", got, before)
			}
		})
	}
	t.Run("no folder", func(t *testing.T) {
		dir := filepath.Join(t.TempDir(), "tpm")
		if _, err := LoadTPMSigner(tp, dir, TPMOptions{}); !errors.Is(err, ErrKeyMissing) {
			t.Fatalf("LoadTPMSigner: %v, want ErrKeyMissing", err)
		}
		if ok, err := HasTPMKeys(dir); ok || err != nil {
			t.Fatalf("HasTPMKeys=%v %v after a failed load, want false", ok, err)
		}
	})
	t.Run("corrupt", func(t *testing.T) {
		dir := filepath.Join(t.TempDir(), "tpm")
		newTPMSigner(t, tp, dir, TPMOptions{})
		p := filepath.Join(dir, TPMSigningFile)
		if err := os.WriteFile(p, []byte("garbage"), 0o600); err != nil {
			t.Fatal(err)
		}
		if _, _, err := LoadOrCreateTPMSigner(tp, dir, TPMOptions{}); err == nil {
			t.Fatal("a corrupt key file loaded")
		}
		if b, _ := os.ReadFile(p); string(b) != "garbage" {
			t.Fatal("a corrupt key file was replaced")
		}
	})
}

func listDir(t testing.TB, dir string) []string {
	t.Helper()
	es, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range es {
		out = append(out, e.Name())
	}
	return out
}

// TestTPMKeyRejected: another TPM (other seeds) refuses this TPM's blobs with
// ErrKeyRejected: the key is bound to the TPM that made it.
func TestTPMKeyRejected(t *testing.T) {
	a, b := testtpm.Start(t), testtpm.Start(t)
	dir := filepath.Join(t.TempDir(), "tpm")
	newTPMSigner(t, openTPM(t, a), dir, TPMOptions{})
	_, _, err := LoadOrCreateTPMSigner(openTPM(t, b), dir, TPMOptions{})
	if !errors.Is(err, ErrKeyRejected) {
		t.Fatalf("load on another TPM: %v, want ErrKeyRejected", err)
	}
}

// TestTPMNoHandleLeak: after many signs, unseals and attestations, from several
// goroutines at once and two signers sharing one connection, the TPM holds no transient object and no session (swtpm has no
// resource manager, so a leak would stay); tpm2-tools agrees.
func TestTPMNoHandleLeak(t *testing.T) {
	sw := testtpm.Start(t)
	tp := openTPM(t, sw)
	s := newTPMSigner(t, tp, filepath.Join(t.TempDir(), "tpm"), TPMOptions{PCRs: []int{23}})
	// Two signers on one connection share its operation lock; interleaved operations could
	// overflow the TPM's three object slots (TPM_RC_OBJECT_MEMORY) or flush each other.
	signers := []*TPMSigner{s, newTPMSigner(t, tp, filepath.Join(t.TempDir(), "tpm2"), TPMOptions{})}
	var wg sync.WaitGroup
	errs := make(chan error, 64)
	for g := range 4 {
		s := signers[g%2]
		wg.Go(func() {
			for i := range 8 {
				d := sha256.Sum256(fmt.Appendf(nil, "%d/%d", g, i))
				sig, err := s.Sign(t.Context(), d[:])
				if err != nil {
					errs <- err
					return
				}
				if !ecdsa.VerifyASN1(s.Public(), d[:], sig) {
					errs <- errors.New("signature does not verify")
				}
			}
			if _, err := s.UnsealDataKey(); err != nil {
				errs <- err
			}
			if _, err := s.Attest([]byte("nonce-nonce")); err != nil {
				errs <- err
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	extendPCR(t, tp, 23)
	if _, err := s.UnsealDataKey(); !errors.Is(err, ErrPolicy) {
		t.Fatalf("unseal after extend: %v, want ErrPolicy", err)
	}
	for _, ht := range []struct {
		name string
		ht   tpm2.TPMHT
	}{{"transient", tpm2.TPMHTTransient}, {"hmac/loaded sessions", tpm2.TPMHTHMACSession}, {"policy/saved sessions", tpm2.TPMHTPolicySession}} {
		if got := handles(t, tp, ht.ht); len(got) != 0 {
			t.Errorf("%s handles left: %v, want none", ht.name, got)
		}
	}

	tool, err := exec.LookPath("tpm2_getcap")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("tpm2_getcap not found (CI=true; apt-get install tpm2-tools)")
		}
		t.Skip("tpm2_getcap not found; skipping the tpm2-tools cross-check")
	}
	// swtpm serves one client at a time.
	tp.Close()
	for _, c := range []string{"handles-transient", "handles-loaded-session"} {
		cmd := exec.Command(tool, c)
		cmd.Env = append(os.Environ(), "TPM2TOOLS_TCTI="+sw.TCTI())
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("tpm2_getcap %s: %v\n%s", c, err, out)
		}
		if strings.Contains(string(out), "0x") {
			t.Errorf("tpm2_getcap %s lists handles:\n%s", c, out)
		}
	}
}

func handles(t testing.TB, tp transport.TPM, ht tpm2.TPMHT) []tpm2.TPMHandle {
	t.Helper()
	rsp, err := tpm2.GetCapability{Capability: tpm2.TPMCapHandles, Property: uint32(ht) << 24, PropertyCount: 64}.Execute(tp)
	if err != nil {
		t.Fatal(err)
	}
	h, err := rsp.CapabilityData.Data.Handles()
	if err != nil {
		t.Fatal(err)
	}
	var out []tpm2.TPMHandle
	for _, x := range h.Handle {
		if uint32(x)>>24 == uint32(ht) {
			out = append(out, x)
		}
	}
	return out
}

// TestOpenTPMErrors: every way of "no TPM here" is ErrNoTPM (the daemon's auto fallback);
// a bad spec is a config error, not ErrNoTPM.
func TestOpenTPMErrors(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "tpmrm0")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := l.Addr().String()
	l.Close()
	tests := []struct {
		name, spec string
		noTPM      bool
	}{
		{"missing device", filepath.Join(dir, "nothing"), true},
		{"regular file", file, true},
		{"nothing listening", "tcp://" + closed, true},
		{"missing socket", "unix://" + filepath.Join(dir, "swtpm.sock"), true},
		{"tbs off windows", "tbs", true},
		{"unknown scheme", "mssim://127.0.0.1:2321", false},
		{"no port", "tcp://127.0.0.1", false},
		{"last port", "tcp://127.0.0.1:65535", false},
		{"empty", "", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tp, err := OpenTPM(tt.spec)
			if err == nil {
				tp.Close()
				t.Fatal("OpenTPM succeeded")
			}
			if got := errors.Is(err, ErrNoTPM); got != tt.noTPM {
				t.Fatalf("errors.Is(%v, ErrNoTPM)=%v, want %v", err, got, tt.noTPM)
			}
		})
	}
}

// TestTPMGoneAtRunTime: a TPM that stops answering after the keys loaded is ErrTPM, never
// ErrNoTPM (which would allow a fallback to software keys), and the same signer works
// again once the TPM is back.
func TestTPMGoneAtRunTime(t *testing.T) {
	sw := testtpm.Start(t)
	s := newTPMSigner(t, openTPM(t, sw), filepath.Join(t.TempDir(), "tpm"), TPMOptions{})
	d := sha256.Sum256([]byte("header"))
	sw.Stop()
	_, err := s.Sign(t.Context(), d[:])
	if !errors.Is(err, ErrTPM) || errors.Is(err, ErrNoTPM) {
		t.Fatalf("sign with swtpm stopped: %v, want ErrTPM and not ErrNoTPM", err)
	}
	if _, err := s.UnsealDataKey(); !errors.Is(err, ErrTPM) || errors.Is(err, ErrNoTPM) {
		t.Fatalf("unseal with swtpm stopped: %v, want ErrTPM and not ErrNoTPM", err)
	}
	sw.Restart()
	sig, err := s.Sign(t.Context(), d[:])
	if err != nil || !ecdsa.VerifyASN1(s.Public(), d[:], sig) {
		t.Fatalf("sign after swtpm is back: %v", err)
	}
}

// TestTPMUnixSocket: the unix:// spec (swtpm --server type=unixio, go-tpm's linuxudstpm,
// one connection per command) signs, unseals and survives a restart.
func TestTPMUnixSocket(t *testing.T) {
	sw := testtpm.StartUnix(t)
	s := newTPMSigner(t, openTPM(t, sw), filepath.Join(t.TempDir(), "tpm"), TPMOptions{PCRs: []int{23}})
	want, err := s.UnsealDataKey()
	if err != nil {
		t.Fatal(err)
	}
	sw.Restart()
	d := sha256.Sum256([]byte("header"))
	sig, err := s.Sign(t.Context(), d[:])
	if err != nil || !ecdsa.VerifyASN1(s.Public(), d[:], sig) {
		t.Fatalf("sign after restart: %v", err)
	}
	if got, err := s.UnsealDataKey(); err != nil || !bytes.Equal(got, want) {
		t.Fatalf("unseal after restart: %x %v, want %x", got, err, want)
	}
}

// TestTPMCreateInterrupted: a staging folder left by a creation that crashed before its
// rename is not a key folder: it is discarded and the keys are made whole. A signer
// refuses a digest of the wrong size and a cancelled context without touching the TPM.
func TestTPMCreateInterrupted(t *testing.T) {
	sw := testtpm.Start(t)
	tp := openTPM(t, sw)
	dir := filepath.Join(t.TempDir(), "tpm")
	if err := os.MkdirAll(dir+".new", 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir+".new", TPMSigningFile), []byte("half"), 0o600); err != nil {
		t.Fatal(err)
	}
	if ok, err := HasTPMKeys(dir); ok || err != nil {
		t.Fatalf("HasTPMKeys with only a staging folder: %v %v, want false", ok, err)
	}
	s := newTPMSigner(t, tp, dir, TPMOptions{})
	if _, err := os.Stat(dir + ".new"); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("staging folder after creation: %v, want gone", err)
	}
	if got, want := listDir(t, dir), []string{TPMDataKeyFile, TPMSigningFile}; !slices.Equal(got, want) {
		t.Fatalf("key folder %v, want %v", got, want)
	}
	if _, err := s.Sign(t.Context(), []byte("short")); err == nil {
		t.Fatal("signed a 5-byte digest")
	}
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	d := sha256.Sum256(nil)
	if _, err := s.Sign(ctx, d[:]); !errors.Is(err, context.Canceled) {
		t.Fatalf("sign with a cancelled context: %v, want context.Canceled", err)
	}
}
