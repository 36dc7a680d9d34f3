package attest

import (
	"crypto/ecdsa"
	"crypto/sha256"
	"os"
	"path/filepath"
	"testing"
)

func TestSoftwareSignerLifecycle(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "keys", "signing.key")
	s, created, err := LoadOrCreateSoftware(p)
	if err != nil {
		t.Fatal(err)
	}
	if !created {
		t.Fatal("created=false for a new key")
	}
	fi, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := fi.Mode().Perm(), os.FileMode(0o600); got != want {
		t.Fatalf("key mode=%v, want %v", got, want)
	}
	d := sha256.Sum256([]byte("header"))
	sig, err := s.Sign(t.Context(), d[:])
	if err != nil {
		t.Fatal(err)
	}
	s2, created, err := LoadOrCreateSoftware(p)
	if err != nil || created {
		t.Fatalf("reload: created=%v err=%v", created, err)
	}
	if got, want := s2.KeyID(), s.KeyID(); got != want {
		t.Fatalf("key id after reload %s, want %s", got, want)
	}
	if !ecdsa.VerifyASN1(s2.Public(), d[:], sig) {
		t.Fatal("signature does not verify with the reloaded key")
	}
	pub := filepath.Join(dir, "signing.pub")
	if err := WritePublicPEM(pub, s.Public()); err != nil {
		t.Fatal(err)
	}
	keys, err := ReadPublicPEM(pub)
	if err != nil || len(keys) != 1 || !keys[0].Equal(s.Public()) {
		t.Fatalf("ReadPublicPEM: %v %v", keys, err)
	}
}

func TestLoadCorruptKeyFails(t *testing.T) {
	p := filepath.Join(t.TempDir(), "signing.key")
	os.WriteFile(p, []byte("garbage"), 0o600)
	if _, _, err := LoadOrCreateSoftware(p); err == nil {
		t.Fatal("want error for a corrupt key file, not a new key")
	}
	if b, _ := os.ReadFile(p); string(b) != "garbage" {
		t.Fatal("corrupt key file was overwritten")
	}
}

func TestDataKey(t *testing.T) {
	p := filepath.Join(t.TempDir(), "keys", "data.key")
	k, created, err := LoadOrCreateDataKey(p)
	if err != nil || !created || len(k) != DataKeySize {
		t.Fatalf("create: len=%d created=%v err=%v", len(k), created, err)
	}
	k2, created, err := LoadOrCreateDataKey(p)
	if err != nil || created || string(k2) != string(k) {
		t.Fatalf("reload: created=%v err=%v same=%v", created, err, string(k2) == string(k))
	}
	if fi, _ := os.Stat(p); fi.Mode().Perm() != 0o600 {
		t.Fatalf("mode %v, want 0600", fi.Mode().Perm())
	}
	os.WriteFile(p, []byte("short"), 0o600)
	if _, _, err := LoadOrCreateDataKey(p); err == nil {
		t.Fatal("a truncated data key was accepted")
	}
}
