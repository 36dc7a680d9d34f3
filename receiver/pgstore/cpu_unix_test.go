//go:build !windows

package pgstore_test

import (
	"syscall"
	"testing"
	"time"
)

// clientCPU is this process's user plus system CPU time.
func clientCPU(tb testing.TB) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		tb.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
