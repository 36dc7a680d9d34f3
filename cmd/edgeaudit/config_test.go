package main

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/edgeaudit/edgeaudit/daemon"
	"github.com/edgeaudit/edgeaudit/internal/testpki"
)

var update = flag.Bool("update", false, "rewrite the expected files of testdata/config-check")

// checkDir is a folder with the input of one case and the files configs refer to: a
// throw-away PKI (ca.pem, cert.pem, key.pem, client.pem, client.key), a file that is not
// PEM (garbage.pem) and a bearer tokens file without tokens.
func checkDir(t *testing.T, input []byte) (dir, config string) {
	t.Helper()
	dir = t.TempDir()
	pki := testpki.New(t)
	for name, src := range map[string]string{"ca.pem": pki.CAFile, "cert.pem": pki.CertFile, "key.pem": pki.KeyFile,
		"client.pem": pki.ClientCertFile, "client.key": pki.ClientKeyFile} {
		b, err := os.ReadFile(src)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	for name, body := range map[string]string{"garbage.pem": "not a certificate\n", "empty-tokens.txt": "# none yet\n"} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	config = filepath.Join(dir, "edgeaudit.yaml")
	if err := os.WriteFile(config, input, 0o600); err != nil {
		t.Fatal(err)
	}
	return dir, config
}

// runCheck runs `config -check` and gives what an admin sees: stdout, then the exit code
// and main's message.
func runCheck(t *testing.T, config string) string {
	t.Helper()
	var out bytes.Buffer
	err := (&ConfigCommand{Out: &out}).Run(t.Context(), []string{"-check", config})
	var ce *exitCodeError
	switch {
	case err == nil:
		out.WriteString("exit 0\n")
	case errors.As(err, &ce):
		fmt.Fprintf(&out, "exit %d: %s\n", ce.code, ce.msg)
	default:
		fmt.Fprintf(&out, "exit %d: %v\n", exitFailure, err)
	}
	return out.String()
}

// Each case under testdata/config-check is a config file and what `config -check` says
// of it: every problem in one pass, one per line, with its line, key and what is
// accepted; "ok" only when run would start. -update rewrites expected.out.
func TestConfigCheckGolden(t *testing.T) {
	cases, err := filepath.Glob("testdata/config-check/*/input.yaml")
	if err != nil || len(cases) == 0 {
		t.Fatalf("no cases: %v", err)
	}
	for _, in := range cases {
		name := filepath.Base(filepath.Dir(in))
		t.Run(name, func(t *testing.T) {
			input, err := os.ReadFile(in)
			if err != nil {
				t.Fatal(err)
			}
			dir, config := checkDir(t, input)
			got := strings.ReplaceAll(runCheck(t, config), dir, "$DIR")
			want := filepath.Join(filepath.Dir(in), "expected.out")
			if *update {
				if err := os.WriteFile(want, []byte(got), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			w, err := os.ReadFile(want)
			if err != nil {
				t.Fatalf("%v (run with -update to write it)", err)
			}
			if got != string(w) {
				t.Errorf("config -check %s:\n%s\nwant:\n%s", name, got, w)
			}
			for _, goType := range []string{"time.Duration", "syslog.Config", "!!str", "!!int", "[]string", "unmarshal"} {
				if strings.Contains(got, goType) {
					t.Errorf("the output names a Go or YAML type (%s):\n%s", goType, got)
				}
			}
		})
	}
}

// `run` refuses a bad file with the same problems as `config -check`, before it opens
// anything (no data folder appears).
func TestRunRefusesWhatCheckReports(t *testing.T) {
	input, err := os.ReadFile("testdata/config-check/files/input.yaml")
	if err != nil {
		t.Fatal(err)
	}
	dir, config := checkDir(t, input)
	err = (&RunCommand{}).Run(t.Context(), []string{"-config", config})
	if err == nil {
		t.Fatal("run started with a bad config")
	}
	for _, want := range []string{"syslog.tls_cert", "hl7.tls_cert", "hl7.tls_client_ca", "fhir.bearer_tokens_file",
		"uplink.cert", "uplink.central_key", "privacy.redact_rules[0].pattern"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("run's error lacks %s:\n%v", want, err)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "data")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("run made its data folder before refusing the config (%v)", err)
	}
}

// A port in use fails the start naming its key, before the spool is opened.
func TestRunPortInUseNamesTheKey(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	addr := ln.Addr().String()
	dir := t.TempDir()
	config := filepath.Join(dir, "edgeaudit.yaml")
	body := fmt.Sprintf("site: s1\ndata_dir: data\nadmin: \"\"\nkeys: {tpm: off}\nsyslog:\n  tcp: %q\n", addr)
	if err := os.WriteFile(config, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	if out := runCheck(t, config); !strings.Contains(out, "ok (ports are checked at start)") {
		t.Fatalf("config -check: %s", out)
	}
	err = (&RunCommand{}).Run(t.Context(), []string{"-config", config})
	want := fmt.Sprintf("syslog.tcp: %s: address already in use (another process listens there; change syslog.tcp or stop it)", addr)
	if err == nil || !strings.Contains(err.Error(), want) {
		t.Fatalf("run: %v, want %q", err, want)
	}
	if _, err := os.Stat(filepath.Join(dir, "data")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("run made its data folder before finding the port in use (%v)", err)
	}
}

// `config` prints the sample whose values are the defaults, and -effective what a file
// gives with them filled in.
func TestConfigPrintsDefaults(t *testing.T) {
	var out bytes.Buffer
	if err := (&ConfigCommand{Out: &out}).Run(t.Context(), nil); err != nil {
		t.Fatal(err)
	}
	if got := out.String(); got != daemon.SampleConfig {
		t.Fatalf("config printed something else than the sample")
	}
	for _, bad := range []string{"site: s1", "/var/lib/edgeaudit   #", "8443\" #"} {
		if strings.Contains(out.String(), bad) {
			t.Errorf("the sample still shows %q, which is no default", bad)
		}
	}
	_, config := checkDir(t, []byte("site: radiology-east\nsyslog: {tcp: \"127.0.0.1:5514\"}\nreceive: {password: hunter2}\n"))
	out.Reset()
	if err := (&ConfigCommand{Out: &out}).Run(t.Context(), []string{"-effective", config}); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"site: radiology-east", "max_message_size: 65536", "retention: 168h\n", "idle_timeout: 5m\n",
		"hl7: # off\n  mllp: \"\"", "ntp: # off\n  off: true", "uplink: # off\n  broker: \"\"", "admin: 127.0.0.1:9780"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("-effective lacks %q:\n%s", want, out.String())
		}
	}
	if strings.Contains(out.String(), "hunter2") {
		t.Errorf("-effective prints a password:\n%s", out.String())
	}
	out.Reset()
	if err := (&ConfigCommand{Out: &out}).Run(t.Context(), []string{"-effective"}); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"site: site", "mllp: 127.0.0.1:2575", "http: " + daemon.DefaultFHIRHTTP, "broker: tcp://127.0.0.1:1883", "- pool.ntp.org"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("-effective without a file lacks %q:\n%s", want, out.String())
		}
	}
}

// `run -h` lists every listener of the zero-config daemon with its address, from the
// constants.
func TestRunHelpListsEveryDefaultListener(t *testing.T) {
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	stderr := os.Stderr
	os.Stderr = w
	(&RunCommand{}).Usage()
	os.Stderr = stderr
	w.Close()
	var b bytes.Buffer
	b.ReadFrom(r)
	help := b.String()
	for _, l := range []struct{ key, addr string }{
		{"syslog.udp", daemon.DefaultSyslogUDP}, {"syslog.tcp", daemon.DefaultSyslogTCP},
		{"hl7.mllp", daemon.DefaultHL7MLLP}, {"fhir.http", daemon.DefaultFHIRHTTP}, {"admin", daemon.DefaultAdmin},
	} {
		found := false
		for _, line := range strings.Split(help, "\n") {
			if strings.Contains(line, "("+l.key+")") && strings.HasSuffix(strings.TrimSpace(line), l.addr) {
				found = true
			}
		}
		if !found {
			t.Errorf("run -h does not list %s on %s:\n%s", l.key, l.addr, help)
		}
	}
}
