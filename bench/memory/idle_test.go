package memory

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"runtime"
	"runtime/metrics"
	"runtime/pprof"
	"strings"
	"testing"
	"time"

	"github.com/edgeaudit/edgeaudit/daemon"
)

var idleFor = flag.Duration("idle", 0, "TestIdleMemory: run the daemon with every listener this long, then report its memory (0 skips)")

// TestIdleMemory runs the zero-config daemon's listeners (syslog UDP and TCP, HL7,
// FHIR, admin, an uplink retrying against a port nobody listens on) with no load for
// -idle, then prints the runtime's accounting, the goroutines, and with -heapout a heap
// profile:
//
//	go test ./bench/memory -run TestIdleMemory -idle 30s -heapout idle.out -v
func TestIdleMemory(t *testing.T) {
	if *idleFor == 0 {
		t.Skip("-idle not set")
	}
	cfg := daemon.DefaultConfig()
	cfg.Site, cfg.Device = "bench", "d1"
	cfg.DataDir = t.TempDir()
	cfg.Syslog.UDP, cfg.Syslog.TCP = "127.0.0.1:0", "127.0.0.1:0"
	cfg.HL7.MLLP, cfg.FHIR.HTTP, cfg.Admin = "127.0.0.1:0", "127.0.0.1:0", "127.0.0.1:0"
	cfg.Uplink.Broker = "tcp://127.0.0.1:1" // retries in the background
	cfg.NTP.Off = true
	cfg.LogLevel = "warn"
	cfg.SetDefaults()
	daemon.ApplyMemoryLimit(&cfg, slog.New(slog.DiscardHandler))
	d, err := daemon.New(cfg, "bench", slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	runErr := make(chan error, 1)
	go func() { runErr <- d.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-runErr; err != nil {
			t.Error(err)
		}
	}()
	<-d.Ready()
	time.Sleep(*idleFor)
	names := []string{"/gc/heap/live:bytes", "/memory/classes/heap/objects:bytes", "/memory/classes/heap/unused:bytes",
		"/memory/classes/heap/free:bytes", "/memory/classes/heap/released:bytes", "/memory/classes/heap/stacks:bytes",
		"/memory/classes/os-stacks:bytes", "/memory/classes/metadata/other:bytes", "/memory/classes/metadata/mspan/inuse:bytes",
		"/memory/classes/profiling/buckets:bytes", "/memory/classes/other:bytes", "/memory/classes/total:bytes", "/sched/goroutines:goroutines"}
	s := make([]metrics.Sample, len(names))
	for i, n := range names {
		s[i].Name = n
	}
	runtime.GC()
	metrics.Read(s)
	for _, x := range s {
		if strings.HasSuffix(x.Name, ":bytes") {
			t.Logf("%-45s %8.2f MiB", x.Name, float64(x.Value.Uint64())/(1<<20))
		} else {
			t.Logf("%-45s %8d", x.Name, x.Value.Uint64())
		}
	}
	if st, err := os.ReadFile("/proc/self/status"); err == nil {
		for _, l := range strings.Split(string(st), "\n") {
			if strings.HasPrefix(l, "Rss") || strings.HasPrefix(l, "VmHWM") {
				t.Log(strings.Join(strings.Fields(l), " "))
			}
		}
	}
	var b strings.Builder
	pprof.Lookup("goroutine").WriteTo(&b, 1)
	t.Log(strings.SplitN(b.String(), "\n", 2)[0])
	if *heapOut != "" {
		f, err := os.Create(*heapOut)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		if err := pprof.Lookup("heap").WriteTo(f, 0); err != nil {
			t.Fatal(fmt.Errorf("write heap profile: %w", err))
		}
	}
}
