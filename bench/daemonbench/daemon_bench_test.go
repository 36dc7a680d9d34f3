// Package daemonbench profiles the whole ingest path of the daemon in one process: one
// TCP connection of loggen-like RFC 5424 messages (octet-counted, 256 bytes) through the
// syslog collector, event encoding and hashing, the spool's group commit to bbolt (fsync)
// and sealing, with the production batch settings (1000 events, 2 s). It is what
// bench/loggen.sh runs with PROFILE=1:
//
//	go test ./bench/daemonbench -run '^$' -bench . -benchtime 400000x -cpuprofile cpu.out
//	go tool pprof -top daemonbench.test cpu.out
//
// The sender goroutine is in the profile too (a few % at most: it writes pre-built
// frames in 256 KiB writes).
package daemonbench

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"testing"
	"time"

	"github.com/edgeaudit/edgeaudit/collectors/syslog"
	"github.com/edgeaudit/edgeaudit/daemon"
)

// loggenFrame is one message as `loggen -i -S -P -s 256` sends it: octet-counted RFC 5424,
// a BOM, loggen's "seq: ..., thread: ..., runid: ..., stamp: ..." body, PADD padding and a
// trailing LF inside the 256 counted bytes.
func loggenFrame(seq int) []byte {
	now := "2026-11-27T08:10:51"
	msg := fmt.Sprintf("<38>1 %s+00:00 localhost prg00000 1234 - - \xef\xbb\xbfseq: %010d, thread: 0000, runid: 1795767051, stamp: %s ", now, seq, now)
	for len(msg) < 255 {
		msg += "PADD"
	}
	msg = msg[:255] + "\n"
	return []byte(strconv.Itoa(len(msg)) + " " + msg)
}

func BenchmarkDaemonSyslogTCP(b *testing.B) {
	cfg := daemon.DefaultConfig()
	cfg.Site, cfg.Device = "bench", "d1"
	cfg.DataDir = b.TempDir()
	cfg.Syslog = syslog.Config{TCP: "127.0.0.1:0"}
	cfg.Admin = "127.0.0.1:0"
	cfg.Batch = daemon.BatchConfig{MaxEvents: 1000, MaxAge: 2 * time.Second, Heartbeat: time.Minute}
	cfg.LogLevel = "warn"
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
	base := committed(b, admin) // the start event

	// Pre-build the stream so the sender costs little: 1024 distinct frames, repeated.
	var frames [][]byte
	for i := range 1024 {
		frames = append(frames, loggenFrame(i))
	}
	conn, err := net.Dial("tcp", tcp.String())
	if err != nil {
		b.Fatal(err)
	}
	defer conn.Close()

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
	b.ReportMetric(float64(b.N)/elapsed.Seconds(), "events/s")
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
