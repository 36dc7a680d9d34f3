package spool

import (
	"os"

	"golang.org/x/sys/unix"
)

// fdatasync flushes f's data (and the metadata needed to read it back), as bbolt does
// for its own file on Linux.
func fdatasync(f *os.File) error { return unix.Fdatasync(int(f.Fd())) }
