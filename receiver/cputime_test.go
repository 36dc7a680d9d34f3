package receiver_test

import (
	"testing"
	"time"
)

// cpuMeter reports events per CPU second over the benchmark loop. Setup that runs with
// the timer stopped is subtracted, as far as it is bracketed with pause/resume.
type cpuMeter struct {
	tb      testing.TB
	start   time.Duration
	paused  time.Duration
	pauseAt time.Duration
}

func startCPU(tb testing.TB) *cpuMeter { return &cpuMeter{tb: tb, start: cpuTime(tb)} }

func (m *cpuMeter) pause()  { m.pauseAt = cpuTime(m.tb) }
func (m *cpuMeter) resume() { m.paused += cpuTime(m.tb) - m.pauseAt }

// report adds "events/cpu-s" for events handled since startCPU.
func (m *cpuMeter) report(b *testing.B, events int) {
	used := cpuTime(b) - m.start - m.paused
	if used > 0 {
		b.ReportMetric(float64(events)/used.Seconds(), "events/cpu-s")
	}
}
