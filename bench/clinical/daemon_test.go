// Package clinical measures how many events per second each collector of the daemon
// commits (fsync'd to the spool), end to end and in one process: the real daemon
// (daemon.New + Run, temporary data dir, 127.0.0.1:0 listeners, production batch
// settings) fed by clients in the same test binary. An event counts only once it is
// committed: HL7 v2 messages when their AA arrived, FHIR AuditEvents when the 201 (single)
// or the 200 batch-response with one 201 per entry (Bundle) arrived, DICOM audit messages
// over syslog when the admin /healthz reports them in events_committed.
//
//	go test ./bench/clinical -run '^$' -bench 'HL7|FHIRSingle' -benchtime 20000x
//	go test ./bench/clinical -run '^$' -bench 'FHIRBundle' -benchtime 200x
//	go test ./bench/clinical -run '^$' -bench 'DICOM' -benchtime 100000x
//
// Every benchmark reports events/s (committed), events/commit (events per spool
// transaction, from the admin /metrics: how much group commit a load shape allows) and
// cores (CPU time of the whole process, daemon and clients, per wall-clock second).
// Results and the machine they ran on are in docs/performance.md, "Clinical collectors".
package clinical

import (
	"bufio"
	"context"
	"encoding/json"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/edgeaudit/edgeaudit/collectors/fhir"
	"github.com/edgeaudit/edgeaudit/collectors/hl7"
	"github.com/edgeaudit/edgeaudit/collectors/syslog"
	"github.com/edgeaudit/edgeaudit/daemon"
)

// bench is one running daemon with every collector on a loopback port.
type bench struct {
	d     *daemon.Daemon
	admin string // http://host:port
}

// startDaemon runs a daemon until the benchmark ends. Its config is the production one
// but for the data dir, the listeners (all on 127.0.0.1:0) and the log level.
func startDaemon(b *testing.B) *bench {
	b.Helper()
	cfg := daemon.DefaultConfig()
	cfg.Site, cfg.Device = "bench", "d1"
	cfg.DataDir = b.TempDir()
	cfg.Syslog = syslog.Config{TCP: "127.0.0.1:0"}
	cfg.HL7 = hl7.Config{MLLP: "127.0.0.1:0"}
	cfg.FHIR = fhir.Config{HTTP: "127.0.0.1:0"}
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
	b.Cleanup(func() {
		cancel()
		if err := <-runErr; err != nil {
			b.Error(err)
		}
	})
	select {
	case <-d.Ready():
	case err := <-runErr:
		b.Fatal(err)
	case <-time.After(10 * time.Second):
		b.Fatal("daemon not ready")
	}
	return &bench{d: d, admin: "http://" + d.AdminAddr().String()}
}

// committed is /healthz events_committed.
func (s *bench) committed(b *testing.B) uint64 {
	b.Helper()
	resp, err := http.Get(s.admin + "/healthz")
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

// metrics reads the unlabelled counters of /metrics.
func (s *bench) metrics(b *testing.B) map[string]float64 {
	b.Helper()
	resp, err := http.Get(s.admin + "/metrics")
	if err != nil {
		b.Fatal(err)
	}
	defer resp.Body.Close()
	m := make(map[string]float64)
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "#") {
			continue
		}
		name, val, ok := strings.Cut(line, " ")
		if !ok {
			continue
		}
		if v, err := strconv.ParseFloat(val, 64); err == nil {
			m[name] = v
		}
	}
	if err := sc.Err(); err != nil {
		b.Fatal(err)
	}
	return m
}

// measure runs send (which returns once all n events are committed as the protocol
// tells it), then reports events/s and events per spool transaction.
func (s *bench) measure(b *testing.B, n int, send func()) {
	b.Helper()
	before := s.metrics(b)
	cpu0 := cpuTime()
	b.ResetTimer()
	start := time.Now()
	send()
	elapsed := time.Since(start)
	b.StopTimer()
	cpu := cpuTime() - cpu0
	after := s.metrics(b)
	b.ReportMetric(float64(n)/elapsed.Seconds(), "events/s")
	// CPU of the whole process (daemon and clients) per wall second: how much of the
	// machine the load shape used, i.e. whether the fsync wait or the CPU bounds it.
	b.ReportMetric(cpu.Seconds()/elapsed.Seconds(), "cores")
	if commits := after["edgeaudit_spool_commits_total"] - before["edgeaudit_spool_commits_total"]; commits > 0 {
		events := after["edgeaudit_spool_events_committed_total"] - before["edgeaudit_spool_events_committed_total"]
		b.ReportMetric(events/commits, "events/commit")
	}
	if after["edgeaudit_spool_refused_full_total"] != before["edgeaudit_spool_refused_full_total"] {
		b.Error("spool refused events (full): the numbers include backpressure")
	}
}

// split divides n events among k senders as evenly as possible.
func split(n, k, i int) int {
	c := n / k
	if i < n%k {
		c++
	}
	return c
}
