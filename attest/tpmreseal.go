package attest

import (
	"crypto/rand"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"github.com/edgeaudit/edgeaudit/internal/atomicfile"
)

// ResealDataKey replaces the sealed data key by a new random one, sealed to the current
// values of pcrs (none: no policy), and returns it. It is the way out when the PCRs the
// old one was sealed to changed for good (a firmware or boot loader update): that key
// cannot be unsealed any more, so whatever it protected (patient tokens stay
// comparable only within each key) starts over, and the caller records that. The
// signing key is untouched. The old seal is kept beside as datakey.tpmseal.replaced-<ns>
// for forensics.
func (s *TPMSigner) ResealDataKey(pcrs []int) ([]byte, error) {
	data := make([]byte, DataKeySize)
	if _, err := rand.Read(data); err != nil {
		return nil, fmt.Errorf("reseal data key: %w", err)
	}
	sel, err := pcrSelection(pcrs)
	if err != nil {
		return nil, fmt.Errorf("reseal data key: %w", err)
	}
	var seal blob
	err = s.c.do(func(tp transport.TPM) error {
		srk, err := tpm2.CreatePrimary{PrimaryHandle: tpm2.TPMRHOwner, InPublic: tpm2.New2B(srkTemplate)}.Execute(tp)
		if err != nil {
			return tpmErr("create storage primary", err)
		}
		defer flush(tp, srk.ObjectHandle)
		parent := tpm2.AuthHandle{Handle: srk.ObjectHandle, Name: srk.Name, Auth: tpm2.PasswordAuth(nil)}
		seal, err = sealUnder(tp, parent, data, sel, len(pcrs) > 0)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("reseal data key: %w", err)
	}
	path := filepath.Join(s.dir, TPMDataKeyFile)
	if old, err := os.ReadFile(path); err == nil {
		keep := fmt.Sprintf("%s.replaced-%d", path, time.Now().UnixNano())
		if err := atomicfile.WriteFile(keep, old, 0o600); err != nil {
			return nil, fmt.Errorf("reseal data key: keep the old seal: %w", err)
		}
	}
	if err := atomicfile.WriteFile(path, encodeBlob(seal, tpm2.Marshal(sel)), 0o600); err != nil {
		return nil, fmt.Errorf("reseal data key: %w", err)
	}
	s.seal, s.sealTo = seal, sel
	return data, nil
}
