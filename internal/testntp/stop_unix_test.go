//go:build !windows

package testntp

import (
	"errors"
	"syscall"
	"testing"
	"time"
)

// TestStopKillsChronyd: after Stop the chronyd process is gone (libfaketime is
// preloaded into chronyd itself, so no wrapper leaves an orphan) and its port answers
// no more; a second Stop is harmless; Restart serves the same port with the same skew.
func TestStopKillsChronyd(t *testing.T) {
	s := Start(t, Options{Offset: time.Second})
	pid := s.cmd.Process.Pid
	s.Stop()
	s.Stop()
	if err := syscall.Kill(pid, 0); !errors.Is(err, syscall.ESRCH) {
		t.Fatalf("kill -0 %d after Stop: %v, want ESRCH", pid, err)
	}
	if _, err := query(t, s.Addr, 200*time.Millisecond); err == nil {
		t.Fatal("the stopped server still answers")
	}
	s.Restart()
	r, err := query(t, s.Addr, 2*time.Second)
	if err != nil {
		t.Fatalf("after Restart: %v", err)
	}
	if r.ClockOffset < 500*time.Millisecond || r.ClockOffset > 1500*time.Millisecond {
		t.Fatalf("offset after Restart %v, want about 1s (the same options)", r.ClockOffset)
	}
}
