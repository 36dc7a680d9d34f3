package testtpm

import (
	"bytes"
	"testing"

	"github.com/google/go-tpm/tpm2"
)

// TestStartRestart proves the helper's promise: a real TPM answers, and after Restart the
// same seeds give the same primary key while the PCRs are reset.
func TestStartRestart(t *testing.T) {
	s := Start(t)
	primary := func() []byte {
		tp := s.Open(t)
		rsp, err := tpm2.CreatePrimary{PrimaryHandle: tpm2.TPMRHOwner, InPublic: tpm2.New2B(tpm2.ECCSRKTemplate)}.Execute(tp)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := (tpm2.FlushContext{FlushHandle: rsp.ObjectHandle}).Execute(tp); err != nil {
			t.Fatal(err)
		}
		return rsp.Name.Buffer
	}
	before := primary()
	s.Restart()
	if got := primary(); !bytes.Equal(got, before) {
		t.Fatalf("primary name after restart %x, want %x", got, before)
	}
	other := Start(t)
	s = other
	if got := primary(); bytes.Equal(got, before) {
		t.Fatal("a second swtpm derived the same primary: its state folder is not its own")
	}
}
