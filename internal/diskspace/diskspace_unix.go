//go:build unix

package diskspace

import (
	"fmt"

	"golang.org/x/sys/unix"
)

// Of returns the usage of the file system that holds dir.
func Of(dir string) (Usage, error) {
	var fs unix.Statfs_t
	if err := unix.Statfs(dir, &fs); err != nil {
		return Usage{}, fmt.Errorf("statfs %s: %w", dir, err)
	}
	bs := int64(fs.Bsize)
	return Usage{Total: int64(fs.Blocks) * bs, Free: int64(fs.Bavail) * bs}, nil
}
