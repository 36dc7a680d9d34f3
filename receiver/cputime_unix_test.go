//go:build !windows

package receiver_test

import (
	"syscall"
	"testing"
	"time"
)

// cpuTime is the process's user plus system CPU time so far. With GOMAXPROCS=1 (-cpu 1)
// events per CPU second is the rate per core, whatever else runs on the machine: wall
// time on a shared machine measures the other work as much as ours.
func cpuTime(tb testing.TB) time.Duration {
	tb.Helper()
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		tb.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
