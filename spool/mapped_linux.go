package spool

import (
	"time"

	bolt "go.etcd.io/bbolt"
	"golang.org/x/sys/unix"
)

// dropInterval is how often the writer gives back the pages of the spool file that
// reads have mapped into the process (dropMapped).
const dropInterval = time.Second

// dropMapped unmaps from this process the pages of bbolt's read-only shared mapping
// that readers faulted in (the uplink, the scrub, exports), which RSS otherwise counts
// until bbolt remaps: under a full syslog load they were 79 of the 112 MiB peak.
// madvise(MADV_DONTNEED) on a MAP_SHARED file mapping drops only the page table
// entries; the data stays in the page cache and the next read faults it back in. It runs
// in a read transaction, which holds bbolt's mmap lock, so the mapping cannot be remapped
// (and its range reused) meanwhile.
func (s *Spool) dropMapped() {
	s.db.View(func(tx *bolt.Tx) error {
		if base, size := s.db.Info().Data, uintptr(tx.Size()); base != 0 && size > 0 {
			// bbolt gives the map's address as a uintptr; the raw call takes it as one.
			_, _, _ = unix.Syscall(unix.SYS_MADVISE, base, size, unix.MADV_DONTNEED)
		}
		return nil
	})
}
