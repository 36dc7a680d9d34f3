package syslog

import (
	"bytes"
	"crypto/tls"
	"encoding/json"
	"flag"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"
)

var update = flag.Bool("update", false, "rewrite testdata/*/expected.json from the current output")

// golden is what a case's expected.json holds.
type golden struct {
	Events  []map[string]any `json:"events"`
	Rejects []rejectRecord   `json:"rejects"`
}

// TestGolden sends each testdata/<case>/input.txt over a real socket and compares the
// events and rejects with expected.json. A case folder may hold `transport` (udp, tcp or
// tls; tcp if absent), `config.yaml` (the `syslog` config keys) and `no_tokenizer` (no
// SetTokenizer call). Run with -update to
// rewrite the expected files, then review the diff.
func TestGolden(t *testing.T) {
	dirs, err := filepath.Glob(filepath.Join("testdata", "*", "input.txt"))
	if err != nil {
		t.Fatal(err)
	}
	if len(dirs) == 0 {
		t.Fatal("no golden cases in testdata")
	}
	for _, in := range dirs {
		dir := filepath.Dir(in)
		t.Run(filepath.Base(dir), func(t *testing.T) {
			t.Parallel()
			runGolden(t, dir)
		})
	}
}

func runGolden(t *testing.T, dir string) {
	input, err := os.ReadFile(filepath.Join(dir, "input.txt"))
	if err != nil {
		t.Fatal(err)
	}
	tr := "tcp"
	if b, err := os.ReadFile(filepath.Join(dir, "transport")); err == nil {
		tr = strings.TrimSpace(string(b))
	}
	var cfg Config
	if b, err := os.ReadFile(filepath.Join(dir, "config.yaml")); err == nil {
		if err := yaml.Unmarshal(b, &cfg); err != nil {
			t.Fatalf("config.yaml: %v", err)
		}
	}
	if cfg.RFC3164TimeZone == "" {
		cfg.RFC3164TimeZone = "UTC"
	}
	var pki *testPKI
	switch tr {
	case "udp":
		cfg.UDP = "127.0.0.1:0"
	case "tcp":
		cfg.TCP = "127.0.0.1:0"
	case "tls":
		pki = newTestPKI(t)
		cfg.TLS, cfg.TLSCert, cfg.TLSKey = "127.0.0.1:0", pki.CertFile, pki.KeyFile
	default:
		t.Fatalf("unknown transport %q", tr)
	}
	sink, rep := &fakeSink{}, &fakeReporter{}
	// DICOM audit messages are parsed with the test tokenizer, unless the case has a
	// no_tokenizer file (the collector as deployed without a data key).
	var setup []func(*Collector)
	if _, err := os.Stat(filepath.Join(dir, "no_tokenizer")); err != nil {
		setup = append(setup, func(c *Collector) { c.SetTokenizer(testTokenizer(t)) })
	}
	c := startCollector(t, cfg, sink, rep, func() time.Time { return fixedNow }, setup...)

	switch tr {
	case "udp":
		conn, err := net.Dial("udp", c.UDPAddr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		if _, err := conn.Write(input); err != nil {
			t.Fatal(err)
		}
		// Datagrams counts the read, before the event is appended: wait for the append
		// (every UDP case here makes an event), or a loaded machine reads the sink early.
		waitFor(t, "the datagram's event", func() bool { return c.Stats().Received["udp"] >= 1 })
	case "tcp", "tls":
		var conn net.Conn
		if tr == "tcp" {
			conn, err = net.Dial("tcp", c.TCPAddr().String())
		} else {
			conn, err = tls.Dial("tcp", c.TLSAddr().String(), pki.ClientConfig(false))
		}
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		// The server may close early (bad octet count), so write errors are expected.
		_, _ = conn.Write(input)
		if cw, ok := conn.(interface{ CloseWrite() error }); ok {
			_ = cw.CloseWrite()
		}
		_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
		_, _ = io.Copy(io.Discard, conn) // returns once the server closed its side
		waitFor(t, "the connection to end", func() bool {
			s := c.Stats()
			return s.ConnsAccepted == 1 && s.ConnsOpen == 0
		})
	}

	got := golden{Events: []map[string]any{}, Rejects: append([]rejectRecord{}, rep.getRejects()...)}
	for _, b := range sink.raw() {
		if !json.Valid(b) {
			t.Fatalf("encoder wrote invalid JSON: %s", b)
		}
		var m map[string]any
		if err := json.Unmarshal(b, &m); err != nil {
			t.Fatal(err)
		}
		m["id"], m["received"] = "<id>", "<received>"
		if src, ok := m["source"].(map[string]any); ok {
			if src["ip"] != "127.0.0.1" {
				t.Errorf("source.ip = %v, want 127.0.0.1", src["ip"])
			}
			src["ip"] = "<ip>"
		}
		got.Events = append(got.Events, m)
	}
	for _, r := range got.Rejects {
		if r.IP != "127.0.0.1" {
			t.Errorf("reject peer IP = %q, want 127.0.0.1", r.IP)
		}
	}
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	enc.SetIndent("", "  ")
	if err := enc.Encode(got); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "expected.json")
	if *update {
		if err := os.WriteFile(path, buf.Bytes(), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run with -update to create it)", err)
	}
	if !bytes.Equal(buf.Bytes(), want) {
		t.Fatalf("output differs from %s (run with -update and review the diff):\n got:\n%s\nwant:\n%s", path, buf.Bytes(), want)
	}
}
