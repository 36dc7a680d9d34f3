package spool

import "golang.org/x/sys/windows"

// freeBytesAt is what dir's volume has free for the calling user
// (GetDiskFreeSpaceEx's FreeBytesAvailableToCaller, which honours disk quotas, as
// f_bavail does on Unix).
func freeBytesAt(dir string) (int64, bool) {
	p, err := windows.UTF16PtrFromString(dir)
	if err != nil {
		return 0, false
	}
	var avail, total, free uint64
	if err := windows.GetDiskFreeSpaceEx(p, &avail, &total, &free); err != nil {
		return 0, false
	}
	return int64(avail), true
}
