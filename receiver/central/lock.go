package central

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/edgeaudit/edgeaudit/internal/filelock"
)

// ErrStoreBusy: another process (a running `edgeaudit receive`, or an import) holds
// the folder store.
var ErrStoreBusy = errors.New("the store folder is in use by another edgeaudit receive")

// lockFile is the process lock of a folder store: one receiver process owns a folder.
const lockFile = ".receive.lock"

// lockStore takes the folder store's process lock (flock, or LockFileEx on Windows, on <store>/.receive.lock,
// without waiting) and returns its release.
func lockStore(dir string) (func(), error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("lock store: %w", err)
	}
	path := filepath.Join(dir, lockFile)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("lock store: %w", err)
	}
	ok, err := filelock.TryLock(f)
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("lock store %s: %w", path, err)
	}
	if !ok {
		f.Close()
		return nil, fmt.Errorf("lock store %s: %w; stop it first (the PostgreSQL store allows several)", path, ErrStoreBusy)
	}
	return func() { f.Close() }, nil
}
