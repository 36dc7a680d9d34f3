package daemon

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/edgeaudit/edgeaudit/internal/configerr"
)

// preflight loads body as a config file and returns every problem run would refuse it
// for, one string each.
func preflight(t *testing.T, body string) []string {
	t.Helper()
	c, err := LoadConfig(writeConfig(t, body))
	var p *Problems
	if err != nil && !errors.As(err, &p) {
		return []string{err.Error()}
	}
	c.SetDefaults()
	var out []string
	for _, e := range configerr.Flatten(Preflight(&c)) {
		out = append(out, e.Error())
	}
	return out
}

// Each problem names its line, the key path, the value and what is accepted, in words:
// no Go or YAML type names.
func TestConfigProblemText(t *testing.T) {
	tests := []struct {
		name, body string
		want       string
	}{
		{"did you mean", "site: s1\nsyslog:\n  udp: \"127.0.0.1:5514\"\n  tpc: \"127.0.0.1:5514\"\n",
			`line 4: syslog.tpc: unknown key; did you mean "tcp"?`},
		{"did you mean at the top", "site: s1\ndata_dri: x\n", `line 2: data_dri: unknown key; did you mean "data_dir"?`},
		{"did you mean in an inline section", "site: s1\nsyslog: {relp_windw: 5}\n", `line 2: syslog.relp_windw: unknown key; did you mean "relp_window"?`},
		{"did you mean in a list item", "site: s1\nprivacy:\n  redact_rules:\n    - {name: a, patern: '(x)'}\n",
			`line 4: privacy.redact_rules[0].patern: unknown key; did you mean "pattern"?`},
		{"nothing close: the keys there", "site: s1\nkeys: {zzzzzzzz: 1}\n", `line 2: keys.zzzzzzzz: unknown key; the keys in keys are: pcrs, tpm, tpm_device`},
		{"duration", "site: s1\n\n\n\n\n\nspool:\n  retention: 5x\n", `line 8: spool.retention: "5x" is not a duration (examples: 30s, 5m, 24h)`},
		{"duration without unit", "site: s1\nbatch: {max_age: 2}\n", `line 2: batch.max_age: "2" is not a duration (examples: 30s, 5m, 24h)`},
		{"int", "site: s1\nsyslog: {max_connections: lots}\n", `line 2: syslog.max_connections: "lots" is not a whole number`},
		{"int, not a fraction", "site: s1\nsyslog: {max_connections: 1.5}\n", `line 2: syslog.max_connections: "1.5" is not a whole number`},
		{"bool", "site: s1\nprivacy: {vault: perhaps}\n", `line 2: privacy.vault: "perhaps" is not true or false`},
		{"list", "site: s1\nntp: {servers: pool.ntp.org}\n", `line 2: ntp.servers: "pool.ntp.org" is not a list (write [a, b], or one "- item" per line)`},
		{"list item", "site: s1\nkeys: {pcrs: [7, x]}\n", `line 2: keys.pcrs[1]: "x" is not a whole number`},
		{"string, not a list", "site: [a, b]\n", `line 1: site: a list is not a single value (quote it: "...")`},
		{"section", "site: s1\nbatch: 5\n", `line 2: batch: "5" is not a section of keys`},
		{"twice", "site: s1\nsite: s2\n", `line 2: site: given twice (first on line 1); keep one`},
		{"range with line", "site: s1\nhl7:\n  mllp: \"127.0.0.1:2575\"\n  max_message_size: 10\n", `line 4: hl7.max_message_size: "10": must be between 4096 and 67108864`},
		{"range as written", "site: s1\nshutdown_timeout: 1h\n", `line 2: shutdown_timeout: "1h": must be between 1s and 5m`},
		{"combination at its section", "site: s1\nsyslog:\n  tls: \"127.0.0.1:6514\"\n", `line 2: syslog.tls_cert: required when syslog.tls is set`},
		{"same port twice", "site: s1\nsyslog: {tcp: \"127.0.0.1:2575\"}\nhl7: {mllp: \":2575\"}\n", `line 3: hl7.mllp: ":2575": the same TCP port as syslog.tcp (127.0.0.1:2575): give each listener its own`},
		{"admin address", "site: s1\nadmin: nope\n", `line 2: admin: "nope": missing port in address`},
		{"not yaml", "site: s1\nsyslog:\n\ttcp: x\n", "not valid YAML: found character that cannot start any token (a tab: YAML indents with spaces only)"},
		{"missing site", "device: d1\n", "site: required: the name of this imaging center in every batch header and topic"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := preflight(t, tt.body)
			found := false
			for _, g := range got {
				if strings.HasPrefix(g, tt.want) || strings.HasSuffix(g, tt.want) {
					found = true
				}
				for _, goType := range []string{"time.Duration", ".Config", "!!", "[]int", "unmarshal"} {
					if strings.Contains(g, goType) {
						t.Errorf("%q names a Go or YAML type", g)
					}
				}
			}
			if !found {
				t.Errorf("problems %q, want one %q", got, tt.want)
			}
		})
	}
}

// Problems in several sections, of every kind, come in one pass, each once, by line.
func TestConfigEveryProblemInOnePass(t *testing.T) {
	got := preflight(t, `site: s1
syslog:
  tpc: "127.0.0.1:5514"
  max_connections: lots
batch:
  max_events: -5
uplink:
  broker: "tcp://central.example:1883"
  window: 5000
  backoff_min: 1m
  backoff_max: 1s
ntp:
  samples: 99
  timeout: 2m
spool:
  retention: 5x
  scrub_interval: 500ms
`)
	want := []string{
		`line 3: syslog.tpc: unknown key; did you mean "tcp"?`,
		`line 4: syslog.max_connections: "lots" is not a whole number`,
		`line 6: batch.max_events: "-5": must be between 1 and 100000`,
		`line 8: uplink.broker: "tcp://central.example:1883": tcp:// (no TLS) only to a loopback broker; use tls://`,
		`line 9: uplink.window: "5000": must be 1..1024`,
		`line 11: uplink.backoff_max: "1s": must be at least uplink.backoff_min`,
		`line 13: ntp.samples: "99": must be 1..8`,
		`line 14: ntp.timeout: "2m": must be positive and less than ntp.interval`,
		`line 16: spool.retention: "5x" is not a duration (examples: 30s, 5m, 24h)`,
		`line 17: spool.scrub_interval: "500ms": must be at least 1s`,
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("problems:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

// A port in use is named by its key, with what to do; UDP and the admin endpoint too.
func TestProbePortsNamesTheKey(t *testing.T) {
	tcp, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer tcp.Close()
	udp, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer udp.Close()
	c := Config{Admin: tcp.Addr().String()}
	c.Syslog.UDP, c.Syslog.TCP = udp.LocalAddr().String(), "127.0.0.1:0"
	err = probePorts(&c)
	for _, want := range []string{
		fmt.Sprintf("syslog.udp: %s: address already in use (another process listens there; change syslog.udp or stop it)", udp.LocalAddr()),
		fmt.Sprintf("admin: %s: address already in use (another process listens there; change admin or stop it)", tcp.Addr()),
	} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("probePorts: %v, want %q", err, want)
		}
	}
	if strings.Contains(fmt.Sprint(err), "syslog.tcp") {
		t.Errorf("probePorts: %v names the free syslog.tcp", err)
	}
}

// The zero-config FHIR listener is plain HTTP, so not on a port people read as HTTPS;
// plain HTTP there (or HTTPS on an HTTP port) is warned about.
func TestFHIRDefaultPortIsNotHTTPS(t *testing.T) {
	_, port, err := net.SplitHostPort(DefaultFHIRHTTP)
	if err != nil {
		t.Fatal(err)
	}
	if port == "443" || port == "8443" {
		t.Fatalf("DefaultFHIRHTTP %s: plain HTTP on an HTTPS port", DefaultFHIRHTTP)
	}
	d := DefaultConfig()
	for _, l := range d.listeners() {
		if l.key != "fhir.http" && l.network == "tcp" && l.addr == DefaultFHIRHTTP {
			t.Errorf("DefaultFHIRHTTP %s is %s's default too", DefaultFHIRHTTP, l.key)
		}
	}
	d.SetDefaults()
	if w := d.Warnings(); len(w) != 0 {
		t.Errorf("zero config warns: %q", w)
	}
	for _, tt := range []struct {
		http, cert string
		want       string
	}{
		{"127.0.0.1:8443", "", "plain HTTP on port 8443, which senders read as HTTPS"},
		{":443", "", "plain HTTP on port 443"},
		{":8080", "c.pem", "HTTPS (fhir.tls_cert is set) on port 8080"},
		{":8443", "c.pem", ""},
		{DefaultFHIRHTTP, "", ""},
	} {
		c := DefaultConfig()
		c.FHIR.HTTP, c.FHIR.TLSCert, c.FHIR.TLSKey = tt.http, tt.cert, tt.cert
		w := strings.Join(c.Warnings(), "\n")
		if (tt.want == "") != (w == "") || !strings.Contains(w, tt.want) {
			t.Errorf("fhir.http %s tls_cert %q: warnings %q, want %q", tt.http, tt.cert, w, tt.want)
		}
	}
}

// Check reads what run loads before it opens the spool, and names each key: a TLS
// certificate that is missing, CAs that are not PEM, an explicit central key that is not
// there, a data_dir that is a file, keys.tpm: require without the device; a section
// that is off is not read.
func TestCheckNamesTheFiles(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "not-a-folder")
	if err := os.WriteFile(file, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	body := fmt.Sprintf(`site: s1
data_dir: %s
syslog:
  tls: "127.0.0.1:6514"
  tls_cert: nope.pem
  tls_key: nope.key
hl7:
  tls_cert: also-nope.pem
  tls_key: also-nope.key
uplink:
  broker: "tls://central.example:8883"
  ca: not-pem.pem
  central_key: central.pub
keys:
  tpm: require
  tpm_device: /nonexistent/tpm
`, file)
	p := writeConfig(t, body)
	if err := os.WriteFile(filepath.Join(filepath.Dir(p), "not-pem.pem"), []byte("hello"), 0o600); err != nil {
		t.Fatal(err)
	}
	c, err := LoadConfig(p)
	if err != nil {
		t.Fatal(err)
	}
	c.SetDefaults()
	got := configerr.Flatten(c.Check())
	var lines []string
	for _, e := range got {
		lines = append(lines, strings.ReplaceAll(e.Error(), filepath.Dir(p), "$DIR"))
	}
	want := []string{
		`line 5: syslog.tls_cert: "$DIR/nope.pem": no such file`,
		`line 6: syslog.tls_key: "$DIR/nope.key": no such file`,
		`line 12: uplink.ca: "$DIR/not-pem.pem": no PEM certificate found`,
		`line 13: uplink.central_key: "$DIR/central.pub": no such file (central's receipt key, central.pub from ` + "`edgeaudit receive`)",
		`line 2: data_dir: "` + strings.ReplaceAll(file, filepath.Dir(p), "$DIR") + `": is a file, not a folder`,
		`line 16: keys.tpm_device: "/nonexistent/tpm": no such file, and keys.tpm is require: the daemon would not start (keys.tpm: auto falls back to software keys)`,
	}
	if strings.Join(lines, "\n") != strings.Join(want, "\n") {
		t.Errorf("Check:\n%s\nwant:\n%s", strings.Join(lines, "\n"), strings.Join(want, "\n"))
	}
}
