package daemon

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/edgeaudit/edgeaudit/attest"
	"github.com/edgeaudit/edgeaudit/audit"
	"github.com/edgeaudit/edgeaudit/ledger"
	"github.com/edgeaudit/edgeaudit/spool"
)

func testConfig(t *testing.T) Config {
	c := DefaultConfig()
	c.Site, c.Device = "s1", "d1"
	c.DataDir = filepath.Join(t.TempDir(), "data")
	c.Syslog.UDP, c.Syslog.TCP = "127.0.0.1:0", "127.0.0.1:0"
	c.HL7.MLLP, c.FHIR.HTTP = "127.0.0.1:0", "127.0.0.1:0"
	c.Admin = "127.0.0.1:0"
	c.Spool.MinFreeBytes = 1
	// Hermetic: no NTP queries to the pool and no broker on 1883 (the zero config's).
	c.NTP.Off = true
	c.Uplink = UplinkSection{}
	return c
}

// TestRunLifecycle starts the whole daemon in-process, sends syslog, stops it, and checks
// the chain: start event, the message, stop event, all sealed and verifying, and no
// goroutine left behind.
func TestRunLifecycle(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	cfg := testConfig(t)
	d, err := New(cfg, "test", slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx) }()
	select {
	case <-d.Ready():
	case err := <-done:
		t.Fatalf("run: %v", err)
	case <-time.After(10 * time.Second):
		t.Fatal("daemon not ready after 10s")
	}
	_, tcpAddr, _ := d.SyslogAddrs()
	conn, err := net.Dial("tcp", tcpAddr.String())
	if err != nil {
		t.Fatal(err)
	}
	for i := range 10 {
		fmt.Fprintf(conn, "<38>1 2026-11-27T08:00:00Z pacs1 viewer - - - lifecycle-%d\n", i)
	}
	conn.Close()

	// One HL7 v2 message over MLLP: the ACK arrives after the commit.
	mllpAddr, fhirAddr := d.ClinicalAddrs()
	mc, err := net.Dial("tcp", mllpAddr.String())
	if err != nil {
		t.Fatal(err)
	}
	adt := "MSH|^~\\&|RIS|SITE|PACS|SITE|20261127080000||ADT^A08|MSG0001|P|2.5\rEVN|A08|20261127080000\rPID|1||PAT-4711^^^HOSP^MR||DOE^JANE||19610412|F\r"
	fmt.Fprintf(mc, "\x0b%s\x1c\r", adt)
	mc.SetReadDeadline(time.Now().Add(10 * time.Second))
	ack := make([]byte, 4096)
	n, err := mc.Read(ack)
	mc.Close()
	if err != nil || !strings.Contains(string(ack[:n]), "MSA|AA|MSG0001") {
		t.Fatalf("MLLP ack=%q err=%v, want MSA|AA|MSG0001", ack[:n], err)
	}
	// One FHIR AuditEvent: 201 after the commit.
	body := `{"resourceType":"AuditEvent","type":{"system":"http://dicom.nema.org/resources/ontology/DCM","code":"110114"},"subtype":[{"system":"http://dicom.nema.org/resources/ontology/DCM","code":"110122"}],"action":"E","recorded":"2026-11-27T08:00:00Z","outcome":"0","agent":[{"who":{"display":"tech01"},"requestor":true}],"source":{"observer":{"display":"viewer1"}}}`
	resp, err := http.Post("http://"+fhirAddr.String()+"/AuditEvent", "application/fhir+json", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusCreated {
		t.Fatalf("FHIR status=%d, want 201", resp.StatusCode)
	}
	// Wait (bounded) until all ten are committed, through the admin endpoint.
	deadline := time.Now().Add(10 * time.Second)
	for {
		resp, err := http.Get("http://" + d.AdminAddr().String() + "/metrics")
		if err == nil {
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if strings.Contains(string(b), `edgeaudit_syslog_received_total{transport="tcp"} 10`) {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatal("messages not received within 10s")
		}
		time.Sleep(20 * time.Millisecond)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("run returned %v", err)
	}

	// Encrypted by default: none of the messages is in the file in clear.
	raw, err := os.ReadFile(cfg.SpoolPath())
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(raw, []byte("lifecycle-")) {
		t.Fatal("spool.db holds a syslog message in clear (spool.encrypt defaults to true)")
	}
	dataKey, err := os.ReadFile(cfg.DataKeyPath())
	if err != nil {
		t.Fatal(err)
	}
	r, err := spool.OpenReaderWithKey(cfg.SpoolPath(), dataKey)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	keys, err := attest.ReadPublicPEM(cfg.PublicKeyPath())
	if err != nil {
		t.Fatal(err)
	}
	v, _ := ledger.NewVerifier(keys...)
	var actions []string
	err = r.Batches(1, func(b *ledger.Batch) error {
		if _, err := v.Verify(b); err != nil {
			return err
		}
		for _, raw := range b.Events {
			e, err := audit.Decode(raw)
			if err != nil {
				return err
			}
			actions = append(actions, e.Action)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("verify: %v", err)
	}
	// Start and stop frame the chain; the collectors' events may interleave.
	if len(actions) < 2 || actions[0] != "audit.start" || actions[len(actions)-1] != "audit.stop" {
		t.Fatalf("actions=%v, want audit.start first and audit.stop last", actions)
	}
	counts := map[string]int{}
	for _, a := range actions {
		counts[a]++
	}
	// The first start makes both keys; keys.tpm: auto without a TPM falls back to them.
	want := map[string]int{"audit.start": 1, "audit.key_created": 2, "system.log": 10, "patient.register": 1, "auth.login": 1, "audit.stop": 1}
	if counts["audit.tpm_fallback"] == 1 {
		want["audit.tpm_fallback"] = 1
	}
	if fmt.Sprint(counts) != fmt.Sprint(want) {
		t.Fatalf("actions %v, want %v", counts, want)
	}
	if open, _ := r.OpenEvents(); len(open) != 0 {
		t.Fatalf("%d events left unsealed after shutdown, want 0", len(open))
	}
}

// A daemon that cannot start (a port in use, TLS files missing, for each collector)
// returns an error naming the problem, and does so before it opens the spool: no chain
// with a start and no stop is left behind.
func TestRunFailsBeforeOpeningTheSpool(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	missing := func(t *testing.T) (string, string) {
		return filepath.Join(t.TempDir(), "missing.pem"), filepath.Join(t.TempDir(), "missing-key.pem")
	}
	tests := []struct {
		name  string
		setup func(t *testing.T, cfg *Config)
		want  string
	}{
		{"busy syslog port", func(t *testing.T, cfg *Config) { cfg.Syslog.TCP = ln.Addr().String() }, ln.Addr().String()},
		{"busy mllp port", func(t *testing.T, cfg *Config) { cfg.HL7.MLLP = ln.Addr().String() }, "hl7.mllp"},
		{"busy fhir port", func(t *testing.T, cfg *Config) { cfg.FHIR.HTTP = ln.Addr().String() }, "fhir.http"},
		{"hl7 tls files missing", func(t *testing.T, cfg *Config) { cfg.HL7.TLSCert, cfg.HL7.TLSKey = missing(t) }, "hl7.tls_cert"},
		{"fhir tls files missing", func(t *testing.T, cfg *Config) { cfg.FHIR.TLSCert, cfg.FHIR.TLSKey = missing(t) }, "fhir.tls_cert"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := testConfig(t)
			tt.setup(t, &cfg)
			// Missing files are refused by New already; a busy port only by Run.
			d, err := New(cfg, "test", slog.New(slog.DiscardHandler))
			if err == nil {
				ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
				defer cancel()
				err = d.Run(ctx)
			}
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err=%v, want one naming %s", err, tt.want)
			}
			if _, err := os.Stat(cfg.SpoolPath()); !errors.Is(err, os.ErrNotExist) {
				t.Fatalf("spool exists after a failed start (stat: %v); it must not be opened", err)
			}
		})
	}
}
