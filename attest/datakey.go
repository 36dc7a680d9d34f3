package attest

import (
	"crypto/rand"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/edgeaudit/edgeaudit/internal/atomicfile"
)

// DataKeySize is the size of the tokenizer's data key.
const DataKeySize = 32

// LoadOrCreateDataKey loads the 32-byte data key at path (the HMAC key behind patient
// tokens), or creates it with mode 0600 when the file does not exist. It lives beside the
// signing key until the TPM seals it. A file of the wrong size is an error, never
// replaced: a new key would silently change every patient's token.
func LoadOrCreateDataKey(path string) (key []byte, created bool, err error) {
	b, err := os.ReadFile(path)
	switch {
	case errors.Is(err, os.ErrNotExist):
		key = make([]byte, DataKeySize)
		if _, err := rand.Read(key); err != nil {
			return nil, false, fmt.Errorf("create data key: %w", err)
		}
		if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
			return nil, false, fmt.Errorf("create data key: %w", err)
		}
		if err := atomicfile.WriteFile(path, key, 0o600); err != nil {
			return nil, false, fmt.Errorf("create data key: %w", err)
		}
		return key, true, nil
	case err != nil:
		return nil, false, fmt.Errorf("load data key: %w", err)
	case len(b) != DataKeySize:
		return nil, false, fmt.Errorf("load data key %s: %d bytes, want %d", path, len(b), DataKeySize)
	}
	return b, false, nil
}
