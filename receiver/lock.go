package receiver

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/edgeaudit/edgeaudit/internal/filelock"
)

// Locker is a Store that can keep other writers, in this process or another, away from
// one device's chain while the caller reads the head and appends after it. The audit
// trail uses it: the receive daemon and an `edgeaudit query` may record at once.
type Locker interface {
	// Lock blocks until the caller holds site/device's lock or ctx is done. unlock
	// releases it and may be called once. The lock is advisory: only writers that
	// take it are excluded (the receiver's Handle does not; it never writes the trail).
	Lock(ctx context.Context, site, device string) (unlock func(), err error)
}

var _ Locker = FolderStore{}

// lockPoll bounds how long a waiting Lock sleeps between tries.
const lockPoll = 20 * time.Millisecond

// Lock implements Locker with flock(2) (LockFileEx on Windows) on <Dir>/<site>/<device>/.lock (created 0600,
// folders 0700). flock locks belong to the open file, so two lockers in one process
// exclude each other as two processes do, and the kernel drops the lock of a process
// that dies. It polls with LOCK_NB so that ctx can end the wait.
func (f FolderStore) Lock(ctx context.Context, site, device string) (func(), error) {
	dir, err := f.deviceDir(site, device)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("lock %s/%s: %w", site, device, err)
	}
	fh, err := os.OpenFile(filepath.Join(dir, ".lock"), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("lock %s/%s: %w", site, device, err)
	}
	wait := time.Millisecond
	for {
		ok, err := filelock.TryLock(fh)
		if err != nil {
			fh.Close()
			return nil, fmt.Errorf("lock %s/%s: %w", site, device, err)
		}
		if ok {
			break
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			fh.Close()
			return nil, fmt.Errorf("lock %s/%s: %w", site, device, ctx.Err())
		case <-t.C:
		}
		wait = min(2*wait, lockPoll)
	}
	// Closing the file releases the lock.
	return func() { fh.Close() }, nil
}
