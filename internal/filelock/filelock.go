// Package filelock takes advisory, exclusive, non-blocking locks on open files:
// flock(2) on Unix, LockFileEx on Windows.
package filelock

import "os"

// TryLock takes an exclusive lock on f without waiting. It returns false and a nil
// error when another open file (in this process or another) holds the lock, and an
// error when the lock cannot be taken for another reason. The lock belongs to the
// open file: closing f releases it, and so does the end of the process.
func TryLock(f *os.File) (bool, error) { return tryLock(f) }
