//go:build windows

package diskspace

import (
	"fmt"

	"golang.org/x/sys/windows"
)

// Of returns the usage of the volume that holds dir.
func Of(dir string) (Usage, error) {
	p, err := windows.UTF16PtrFromString(dir)
	if err != nil {
		return Usage{}, fmt.Errorf("free space of %s: %w", dir, err)
	}
	var avail, total, free uint64
	if err := windows.GetDiskFreeSpaceEx(p, &avail, &total, &free); err != nil {
		return Usage{}, fmt.Errorf("free space of %s: %w", dir, err)
	}
	return Usage{Total: int64(total), Free: int64(avail)}, nil
}
