package daemon

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func writeConfig(t *testing.T, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "edgeaudit.yaml")
	if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestLoadConfigMinimalShape(t *testing.T) {
	// The shape that tests outside the project use (issue 2).
	p := writeConfig(t, `
site: s1
device: d1
data_dir: /var/lib/edgeaudit
syslog: {udp: "127.0.0.1:5514", tcp: "127.0.0.1:5514", tls: "127.0.0.1:6514",
         tls_cert: cert.pem, tls_key: key.pem, tls_client_ca: ""}
batch: {max_events: 1000, max_age: 2s}
`)
	c, err := LoadConfig(p)
	if err != nil {
		t.Fatal(err)
	}
	c.SetDefaults()
	if err := c.Validate(); err != nil {
		t.Fatalf("validate: %v", err)
	}
	if got, want := c.Syslog.TLSCert, filepath.Join(filepath.Dir(p), "cert.pem"); got != want {
		t.Errorf("tls_cert=%q, want %q (relative to the config file)", got, want)
	}
	if got, want := c.DataDir, "/var/lib/edgeaudit"; got != want {
		t.Errorf("data_dir=%q, want %q", got, want)
	}
	if got, want := c.SpoolConfig().MaxEvents, 1000; got != want {
		t.Errorf("max_events=%d, want %d", got, want)
	}
}

func TestLoadConfigSyslogSectionReplacesDefaults(t *testing.T) {
	c, err := LoadConfig(writeConfig(t, "site: s1\nsyslog: {udp: \"127.0.0.1:1514\"}\n"))
	if err != nil {
		t.Fatal(err)
	}
	if c.Syslog.TCP != "" {
		t.Errorf("tcp=%q, want empty: a syslog section the admin wrote must not gain listeners", c.Syslog.TCP)
	}
	c, err = LoadConfig(writeConfig(t, "site: s1\n"))
	if err != nil {
		t.Fatal(err)
	}
	if c.Syslog.TCP != DefaultSyslogTCP || c.Admin != DefaultAdmin {
		t.Errorf("without a syslog section tcp=%q admin=%q, want the defaults", c.Syslog.TCP, c.Admin)
	}
}

func TestConfigErrorsNameTheField(t *testing.T) {
	tests := []struct {
		name, body, want string
	}{
		{"unknown key", "site: s1\nsyslgo: {}\n", "syslgo"},
		{"bad site", "site: \"a b\"\n", "site"},
		{"tls without cert", "site: s1\nsyslog: {tls: \"127.0.0.1:6514\"}\n", "syslog.tls_cert"},
		{"bad address", "site: s1\nsyslog: {tcp: \"nope\"}\n", "syslog.tcp"},
		{"bad batch", "site: s1\nbatch: {max_events: -5}\n", "batch.max_events"},
		{"bad duration", "site: s1\nbatch: {max_age: soon}\n", "max_age"},
		{"bad log level", "site: s1\nlog_level: loud\n", "log_level"},
		{"bad shutdown", "site: s1\nshutdown_timeout: 1h\n", "shutdown_timeout"},
		{"drain past the shutdown budget", "site: s1\nshutdown_timeout: 5s\nsyslog: {tcp: \"127.0.0.1:5514\", drain_timeout: 4s}\n", "syslog.drain_timeout"},
		{"bad evidence reserve", "site: s1\nspool: {evidence_reserve_bytes: 10}\n", "spool.evidence_reserve_bytes"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := LoadConfig(writeConfig(t, tt.body))
			if err == nil {
				c.SetDefaults()
				err = c.Validate()
			}
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err=%v, want one naming %q", err, tt.want)
			}
		})
	}
}

func TestEmptyConfigFileIsDefaults(t *testing.T) {
	c, err := LoadConfig(writeConfig(t, ""))
	if err != nil {
		t.Fatal(err)
	}
	c.SetDefaults()
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
}

func TestSampleConfigIsValid(t *testing.T) {
	c, err := LoadConfig(writeConfig(t, SampleConfig))
	if err != nil {
		t.Fatal(err)
	}
	c.SetDefaults()
	if err := c.Validate(); err != nil {
		t.Fatalf("sample.yaml does not validate: %v", err)
	}
	var ce *ConfigError
	_ = errors.As(err, &ce)
}
