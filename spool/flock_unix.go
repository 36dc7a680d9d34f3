//go:build unix

package spool

import (
	"os"
	"syscall"
)

// backgroundCheckSupported: the background page check needs the child to give up its
// shared lock on the file while keeping it mapped (flock locks belong to the open file).
const backgroundCheckSupported = true

func unlockFile(f *os.File) error { return syscall.Flock(int(f.Fd()), syscall.LOCK_UN) }
