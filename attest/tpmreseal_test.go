package attest

import (
	"bytes"
	"errors"
	"path/filepath"
	"testing"

	"github.com/edgeaudit/edgeaudit/internal/testtpm"
)

// After the PCRs a data key is sealed to change for good, ResealDataKey gives a new key
// sealed to the current values, which unseals (also from a fresh load of the folder),
// and leaves the signing key as it was.
func TestResealDataKeyAfterPCRChange(t *testing.T) {
	sw := testtpm.Start(t)
	tp := openTPM(t, sw)
	dir := filepath.Join(t.TempDir(), "tpm")
	old := bytes.Repeat([]byte{7}, DataKeySize)
	s := newTPMSigner(t, tp, dir, TPMOptions{PCRs: []int{23}, DataKey: old})
	kid := s.KeyID()
	extendPCR(t, tp, 23)
	if _, err := s.UnsealDataKey(); !errors.Is(err, ErrPolicy) {
		t.Fatalf("unseal after extend: %v, want ErrPolicy", err)
	}
	fresh, err := s.ResealDataKey([]int{23})
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Equal(fresh, old) || len(fresh) != DataKeySize {
		t.Fatalf("resealed key %x: want a new %d-byte key", fresh, DataKeySize)
	}
	again, err := LoadTPMSigner(tp, dir, TPMOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if got, err := again.UnsealDataKey(); err != nil || !bytes.Equal(got, fresh) {
		t.Fatalf("unseal of the new seal: %x %v, want %x", got, err, fresh)
	}
	if again.KeyID() != kid {
		t.Fatalf("signing key changed: %s, was %s", again.KeyID(), kid)
	}
	// Still bound: another change refuses the new seal too.
	extendPCR(t, tp, 23)
	if _, err := again.UnsealDataKey(); !errors.Is(err, ErrPolicy) {
		t.Fatalf("unseal of the new seal after another extend: %v, want ErrPolicy", err)
	}
}
