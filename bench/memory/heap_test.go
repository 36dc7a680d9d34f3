// Package memory finds where the daemon's memory goes under load: the whole ingest path in
// one process (as bench/daemonbench), with a heap profile written at the peak of the
// live heap, and the peak of the runtime's own accounting reported. bench/memory/run.sh
// measures the real process from outside (RSS, anonymous and file-backed).
//
//	go test ./bench/memory -run '^$' -bench . -benchtime 1000000x -heapout heap.out
//	go tool pprof -sample_index=inuse_space -top heap.out
package memory

import (
	"bufio"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"runtime/debug"
	"runtime/metrics"
	"runtime/pprof"
	"strconv"
	"testing"
	"time"

	"github.com/edgeaudit/edgeaudit/collectors/syslog"
	"github.com/edgeaudit/edgeaudit/daemon"
)

var (
	heapOut     = flag.String("heapout", "", "write a heap profile taken at the peak of the live heap to this file")
	queueSize   = flag.Int("queue_size", 0, "spool.queue_size (0 = the default)")
	commitEv    = flag.Int("commit_events", 0, "spool.commit_events (0 = the default)")
	memoryLimit = flag.Int64("memory_limit", 0, "soft memory limit in bytes as `run` sets it (0 = daemon.DefaultMemoryLimit, -1 = none)")
)

// loggenFrame is one message as `loggen -i -S -P -s 256` sends it (bench/daemonbench).
func loggenFrame(seq int) []byte {
	now := "2026-11-27T08:10:51"
	msg := fmt.Sprintf("<38>1 %s+00:00 localhost prg00000 1234 - - \xef\xbb\xbfseq: %010d, thread: 0000, runid: 1795767051, stamp: %s ", now, seq, now)
	for len(msg) < 255 {
		msg += "PADD"
	}
	msg = msg[:255] + "\n"
	return []byte(strconv.Itoa(len(msg)) + " " + msg)
}

func BenchmarkMemorySyslogTCP(b *testing.B) {
	cfg := daemon.DefaultConfig()
	cfg.Site, cfg.Device = "bench", "d1"
	cfg.DataDir = b.TempDir()
	cfg.Syslog = syslog.Config{TCP: "127.0.0.1:0"}
	cfg.HL7.MLLP, cfg.FHIR.HTTP = "", ""
	cfg.Uplink.Broker = ""
	cfg.Admin = "127.0.0.1:0"
	cfg.Batch = daemon.BatchConfig{MaxEvents: 1000, MaxAge: 2 * time.Second, Heartbeat: time.Minute}
	cfg.Spool.QueueSize, cfg.Spool.CommitEvents = *queueSize, *commitEv
	cfg.MemoryLimit = *memoryLimit
	cfg.LogLevel = "warn"
	cfg.SetDefaults()
	defer debug.SetMemoryLimit(debug.SetMemoryLimit(-1))
	daemon.ApplyMemoryLimit(&cfg, slog.New(slog.DiscardHandler))
	d, err := daemon.New(cfg, "bench", slog.New(slog.DiscardHandler))
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	runErr := make(chan error, 1)
	go func() { runErr <- d.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-runErr; err != nil {
			b.Error(err)
		}
	}()
	select {
	case <-d.Ready():
	case err := <-runErr:
		b.Fatal(err)
	case <-time.After(10 * time.Second):
		b.Fatal("daemon not ready")
	}
	_, tcp, _ := d.SyslogAddrs()
	admin := "http://" + d.AdminAddr().String() + "/healthz"
	base := committed(b, admin)

	var frames [][]byte
	for i := range 1024 {
		frames = append(frames, loggenFrame(i))
	}
	conn, err := net.Dial("tcp", tcp.String())
	if err != nil {
		b.Fatal(err)
	}
	defer conn.Close()

	// The sampler keeps the peak of the runtime's figures and, with -heapout, the heap
	// profile of the moment the live heap was largest.
	samples := []metrics.Sample{{Name: "/gc/heap/live:bytes"}, {Name: "/memory/classes/total:bytes"},
		{Name: "/memory/classes/heap/released:bytes"}, {Name: "/gc/cycles/total:gc-cycles"}}
	var peakLive, peakMapped uint64
	var gcStart uint64
	stop := make(chan struct{})
	sampled := make(chan struct{})
	metrics.Read(samples)
	gcStart = samples[3].Value.Uint64()
	go func() {
		defer close(sampled)
		t := time.NewTicker(50 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-stop:
				return
			case <-t.C:
			}
			metrics.Read(samples)
			live := samples[0].Value.Uint64()
			peakMapped = max(peakMapped, samples[1].Value.Uint64()-samples[2].Value.Uint64())
			if live > peakLive {
				peakLive = live
				if *heapOut != "" {
					f, err := os.Create(*heapOut)
					if err == nil {
						pprof.Lookup("heap").WriteTo(f, 0)
						f.Close()
					}
				}
			}
		}
	}()

	b.ResetTimer()
	start := time.Now()
	sendErr := make(chan error, 1)
	go func() {
		w := bufio.NewWriterSize(conn, 256<<10)
		for i := range b.N {
			if _, err := w.Write(frames[i%len(frames)]); err != nil {
				sendErr <- err
				return
			}
		}
		sendErr <- w.Flush()
	}()
	if err := <-sendErr; err != nil {
		b.Fatal(err)
	}
	for committed(b, admin) < base+uint64(b.N) {
		time.Sleep(2 * time.Millisecond)
	}
	elapsed := time.Since(start)
	b.StopTimer()
	close(stop)
	<-sampled
	metrics.Read(samples)
	b.ReportMetric(float64(b.N)/elapsed.Seconds(), "events/s")
	b.ReportMetric(float64(peakLive)/(1<<20), "MiB-live-peak")
	b.ReportMetric(float64(peakMapped)/(1<<20), "MiB-runtime-peak")
	b.ReportMetric(float64(samples[3].Value.Uint64()-gcStart)/elapsed.Seconds(), "GC/s")
}

func committed(b *testing.B, url string) uint64 {
	resp, err := http.Get(url)
	if err != nil {
		b.Fatal(err)
	}
	defer resp.Body.Close()
	var h struct {
		Committed uint64 `json:"events_committed"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&h); err != nil {
		b.Fatal(err)
	}
	return h.Committed
}
