//go:build !windows

package spool

import "syscall"

// freeBytesAt is what dir's file system has free for an unprivileged writer
// (statfs(2): f_bavail blocks of f_bsize bytes).
func freeBytesAt(dir string) (int64, bool) {
	var fs syscall.Statfs_t
	if err := syscall.Statfs(dir, &fs); err != nil {
		return 0, false
	}
	return int64(fs.Bavail) * int64(fs.Bsize), true
}
