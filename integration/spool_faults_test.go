package integration

import (
	"encoding/binary"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestDamagedSpoolCLIAndRestart truncates a real daemon's spool the ways a failing disk
// does. verify and export must name the file and the reason and exit 1 (no Go stack
// trace); the daemon must start anyway, quarantine the file, record it in a new chain
// that verifies, and say "failure" in health.
func TestDamagedSpoolCLIAndRestart(t *testing.T) {
	tests := []struct {
		name   string
		damage func(t *testing.T, path string)
	}{
		// bbolt grows its file in large sparse steps; half of what its meta page says is
		// in use is the truncation that matters.
		{"truncated to half of its pages", func(t *testing.T, path string) {
			if err := os.Truncate(path, boltUsedBytes(t, path)/2); err != nil {
				t.Fatal(err)
			}
		}},
		{"truncated to its last used page", func(t *testing.T, path string) {
			if err := os.Truncate(path, boltUsedBytes(t, path)-4096); err != nil {
				t.Fatal(err)
			}
		}},
		{"truncated to 8 KiB", func(t *testing.T, path string) {
			if err := os.Truncate(path, 8<<10); err != nil {
				t.Fatal(err)
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := startClinical(t, clinicalConfig{})
			sendOctet(t, d.tcp, markers("damaged", 200))
			d.waitMetric(t, 200, "edgeaudit_syslog_received_total", "transport", "tcp")
			d.stop(t)
			spoolDB := filepath.Join(d.dataDir, "spool.db")
			tt.damage(t, spoolDB)

			for _, args := range [][]string{
				{"verify", "-data", d.dataDir},
				{"export", "-data", d.dataDir, "-out", filepath.Join(t.TempDir(), "out.eab")},
			} {
				res := runCLI(t, args...)
				if res.code != 1 {
					t.Fatalf("want exit 1 on a damaged spool\n%s", res)
				}
				out := res.stdout + res.stderr
				if strings.Contains(out, "goroutine ") || strings.Contains(out, "panic") {
					t.Fatalf("a Go crash instead of an error\n%s", res)
				}
				if !strings.Contains(out, "spool.db") || !strings.Contains(out, "damaged") {
					t.Fatalf("the error does not name the file and the damage\n%s", res)
				}
			}

			d.restart(t)
			h := d.mustHealth(t)
			if h.Status != "failure" || !hasHealthIncident(h, "audit.spool_quarantined") {
				t.Fatalf("health=%+v, want failure with the quarantine incident", h)
			}
			d.stop(t)
			if m, _ := filepath.Glob(spoolDB + ".quarantine-*"); len(m) != 1 {
				t.Fatalf("quarantined files=%v, want one", m)
			}
			mustVerifyData(t, d.dataDir)
			evs := exportClinical(t, d.dataDir, true)
			if len(evs) == 0 || evs[0].Action != "audit.spool_quarantined" {
				t.Fatalf("new chain starts with %v, want audit.spool_quarantined", evs)
			}
		})
	}
}

// boltUsedBytes reads the high water mark from the newer of a bbolt file's meta pages.
func boltUsedBytes(t *testing.T, path string) int64 {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	le := binary.LittleEndian
	ps := int(le.Uint32(b[16+8:]))
	m := b[16:]
	if m1 := b[ps+16:]; le.Uint64(m1[48:]) > le.Uint64(m[48:]) {
		m = m1
	}
	return int64(le.Uint64(m[40:])) * int64(ps)
}

func hasHealthIncident(h health, action string) bool {
	for _, in := range h.Incidents {
		if in.Action == action {
			return true
		}
	}
	return false
}

// TestFullSpoolStillStarts fills a real daemon's spool to its max_size_bytes, stops it,
// and starts it again: it must start (today's bug: `record start: spool full`, exit),
// answer MLLP senders with AE instead of refusing connections, show the state in health,
// and still record its own start and stop from the evidence reserve.
func TestFullSpoolStillStarts(t *testing.T) {
	d := startClinical(t, clinicalConfig{HL7: true})
	d.stop(t)
	cfg, err := os.ReadFile(d.config)
	if err != nil {
		t.Fatal(err)
	}
	extra := "spool:\n  max_size_bytes: 2097152\n  min_free_bytes: 1\nbatch:\n  max_events: 100\n  max_age: 100ms\n"
	if err := os.WriteFile(d.config, append(cfg, extra...), 0o600); err != nil {
		t.Fatal(err)
	}
	d.restart(t)
	// Fill: large syslog messages until the spool refuses (TCP stops being read).
	big := strings.Repeat("F", 8000)
	msgs := make([]string, 0, 400)
	for i := range 400 {
		msgs = append(msgs, big+markers("full", 400)[i])
	}
	go writeOctet(d.tcp, msgs) // blocks once the spool stops reading; ends with the daemon
	eventually(t, 60*time.Second, func() (bool, string) {
		h, err := d.healthz(t.Context())
		return err == nil && h.SpoolFull, "spool never reported full"
	})
	d.stop(t)

	d.restart(t)
	h := d.mustHealth(t)
	if !h.SpoolFull {
		t.Fatalf("health=%+v, want spool_full after a restart on a full spool", h)
	}
	c, err := dialMLLP(d.mllp)
	if err != nil {
		t.Fatalf("MLLP connection refused on a full spool: %v", err)
	}
	defer c.Close()
	ack, err := c.exchange(hl7Block("FULL1"), 20*time.Second)
	if err != nil {
		t.Fatalf("no answer to an MLLP message on a full spool: %v", err)
	}
	if code, _, _, err := ackMSA(ack); err != nil || code != "AE" {
		t.Fatalf("MSA-1=%q (%v), want AE (backpressure)", code, err)
	}
	d.stop(t)
	evs := exportClinical(t, d.dataDir, true)
	starts, stops := 0, 0
	for _, e := range evs {
		switch e.Action {
		case "audit.start":
			starts++
		case "audit.stop":
			stops++
		}
	}
	if starts < 3 || stops < 3 {
		t.Fatalf("starts=%d stops=%d, want every run's start and stop (3 each) recorded from the reserve", starts, stops)
	}
	mustVerifyData(t, d.dataDir)
}

// hl7Block is a minimal ADT^A01 with control id ctrl (exchange adds the MLLP frame).
func hl7Block(ctrl string) []byte {
	return []byte("MSH|^~\\&|RIS|SITE|EDGE|SITE|20261201120000||ADT^A01|" + ctrl + "|P|2.5\rEVN|A01|20261201120000\rPID|1||12345^^^HOSP^MR||DOE^JOHN\r")
}
