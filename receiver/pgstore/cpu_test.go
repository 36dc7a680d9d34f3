package pgstore_test

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// serverCPU is the CPU time of the cluster in dir so far: the postmaster and its
// children (backends, WAL writer, checkpointer), from /proc. Backends that exited are
// not counted; the benchmarks keep theirs open.
func serverCPU(tb testing.TB, dir string) time.Duration {
	b, err := os.ReadFile(filepath.Join(dir, "data", "postmaster.pid"))
	if err != nil {
		tb.Fatal(err)
	}
	pm, _, _ := strings.Cut(string(b), "\n")
	ents, err := os.ReadDir("/proc")
	if err != nil {
		tb.Fatal(err)
	}
	var ticks int64
	for _, e := range ents {
		if _, err := strconv.Atoi(e.Name()); err != nil {
			continue
		}
		st, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		// pid (comm) state ppid ... utime stime: fields 4, 14, 15.
		s := string(st)
		i := strings.LastIndexByte(s, ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(s[i+1:])
		if len(f) < 13 || (e.Name() != pm && f[1] != pm) {
			continue
		}
		u, _ := strconv.ParseInt(f[11], 10, 64)
		k, _ := strconv.ParseInt(f[12], 10, 64)
		ticks += u + k
	}
	return time.Duration(ticks) * (time.Second / 100) // USER_HZ
}

// cpuMeter reports client and server CPU per batch over a benchmark loop.
type cpuMeter struct {
	tb             testing.TB
	dir            string
	client, server time.Duration
}

func startCPU(tb testing.TB, dir string) *cpuMeter {
	return &cpuMeter{tb: tb, dir: dir, client: clientCPU(tb), server: serverCPU(tb, dir)}
}

// report adds client-ms/batch, server-ms/batch and events/cpu-s (events per second of
// client plus server CPU: the rate two cores would reach if both parts kept them busy).
func (m *cpuMeter) report(b *testing.B, batches, perBatch int) {
	c := clientCPU(b) - m.client
	s := serverCPU(b, m.dir) - m.server
	b.ReportMetric(c.Seconds()*1000/float64(batches), "client-ms/batch")
	b.ReportMetric(s.Seconds()*1000/float64(batches), "server-ms/batch")
	if c+s > 0 {
		b.ReportMetric(float64(batches*perBatch)/(c+s).Seconds(), "events/cpu-s")
	}
}
