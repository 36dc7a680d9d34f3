package attest

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/sha256"
	"encoding/binary"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/google/go-tpm/tpm2"

	"github.com/edgeaudit/edgeaudit/internal/testtpm"
)

// tpm2Tools finds tpm2-tools' binaries: a failure under CI=true, else a skip.
func tpm2Tools(t testing.TB, names ...string) {
	t.Helper()
	for _, n := range names {
		if _, err := exec.LookPath(n); err != nil {
			if os.Getenv("CI") == "true" {
				t.Fatalf("%s not found (CI=true; apt-get install tpm2-tools)", n)
			}
			t.Skipf("%s not found; apt-get install tpm2-tools to run this cross-check", n)
		}
	}
}

// TestTPMBlobsWithTPM2Tools: the key files hold the standard TPM2B_PUBLIC and
// TPM2B_PRIVATE (docs/format.md): tpm2-tools 5.4 loads them under the same storage
// primary (persisted here at 0x81000001 only for the tools), unseals the same data key
// and signs with the same key.
func TestTPMBlobsWithTPM2Tools(t *testing.T) {
	tpm2Tools(t, "tpm2_load", "tpm2_unseal", "tpm2_sign", "tpm2_flushcontext")
	sw := testtpm.Start(t)
	tp := openTPM(t, sw)
	dir := filepath.Join(t.TempDir(), "tpm")
	s := newTPMSigner(t, tp, dir, TPMOptions{})
	want, err := s.UnsealDataKey()
	if err != nil {
		t.Fatal(err)
	}
	srk, err := tpm2.CreatePrimary{PrimaryHandle: tpm2.TPMRHOwner, InPublic: tpm2.New2B(srkTemplate)}.Execute(tp)
	if err != nil {
		t.Fatal(err)
	}
	_, err = tpm2.EvictControl{
		Auth:             tpm2.AuthHandle{Handle: tpm2.TPMRHOwner, Auth: tpm2.PasswordAuth(nil)},
		ObjectHandle:     &tpm2.NamedHandle{Handle: srk.ObjectHandle, Name: srk.Name},
		PersistentHandle: 0x81000001,
	}.Execute(tp)
	if err != nil {
		t.Fatal(err)
	}
	flush(tp, srk.ObjectHandle)
	tp.Close() // swtpm serves one client at a time

	work := t.TempDir()
	split := func(file, name string) {
		t.Helper()
		b, err := os.ReadFile(filepath.Join(dir, file))
		if err != nil {
			t.Fatal(err)
		}
		b = b[len(tpmFileMagic):]
		n := 2 + int(binary.BigEndian.Uint16(b))
		m := 2 + int(binary.BigEndian.Uint16(b[n:]))
		for ext, part := range map[string][]byte{".pub": b[:n], ".priv": b[n : n+m]} {
			if err := os.WriteFile(filepath.Join(work, name+ext), part, 0o600); err != nil {
				t.Fatal(err)
			}
		}
	}
	split(TPMDataKeyFile, "data")
	split(TPMSigningFile, "sign")
	tool := func(args ...string) []byte {
		t.Helper()
		cmd := exec.Command(args[0], args[1:]...)
		cmd.Dir = work
		cmd.Env = append(os.Environ(), "TPM2TOOLS_TCTI="+sw.TCTI())
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("%v: %v\n%s", args, err, stderr.String())
		}
		return out
	}
	tool("tpm2_load", "-C", "0x81000001", "-u", "data.pub", "-r", "data.priv", "-c", "data.ctx")
	if got := tool("tpm2_unseal", "-c", "data.ctx"); !bytes.Equal(got, want) {
		t.Fatalf("tpm2_unseal gave %x, want UnsealDataKey's %x", got, want)
	}
	tool("tpm2_flushcontext", "-t")
	msg := []byte("header bytes")
	if err := os.WriteFile(filepath.Join(work, "msg"), msg, 0o600); err != nil {
		t.Fatal(err)
	}
	tool("tpm2_load", "-C", "0x81000001", "-u", "sign.pub", "-r", "sign.priv", "-c", "sign.ctx")
	tool("tpm2_sign", "-c", "sign.ctx", "-g", "sha256", "-f", "plain", "-o", "sig.der", "msg")
	sig, err := os.ReadFile(filepath.Join(work, "sig.der"))
	if err != nil {
		t.Fatal(err)
	}
	d := sha256.Sum256(msg)
	if !ecdsa.VerifyASN1(s.Public(), d[:], sig) {
		t.Fatal("tpm2_sign's signature does not verify with the TPMSigner's public key")
	}
}
