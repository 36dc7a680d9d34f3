package central

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/edgeaudit/edgeaudit/internal/configerr"
)

func writeConfig(t testing.TB, text string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "edgeaudit.yaml")
	if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// TestLoadConfig: the receive: section is read strictly, the rest of an appliance's
// file ignored, relative paths taken from the file's folder.
func TestLoadConfig(t *testing.T) {
	path := writeConfig(t, `site: s1
device: d1
uplink: {broker: "tls://central:8883"}
receive:
  broker: tls://127.0.0.1:8883
  data_dir: central
  store: postgres://edgeaudit@127.0.0.1/edgeaudit
  devices: /etc/edgeaudit/devices
  tls_ca: ca.pem
  trust_on_first_use: true
  retry_max: 5s
  shared_group: g1
`)
	cfg, err := LoadConfig(path)
	if err != nil {
		t.Fatal(err)
	}
	base := filepath.Dir(path)
	for _, tt := range []struct{ name, got, want string }{
		{"broker", cfg.Broker, "tls://127.0.0.1:8883"},
		{"data_dir", cfg.DataDir, filepath.Join(base, "central")},
		{"store (a DSN is not a path)", cfg.Store, "postgres://edgeaudit@127.0.0.1/edgeaudit"},
		{"devices (absolute)", cfg.Devices, "/etc/edgeaudit/devices"},
		{"tls_ca", cfg.TLSCA, filepath.Join(base, "ca.pem")},
		{"shared_group", cfg.SharedGroup, "g1"},
	} {
		if tt.got != tt.want {
			t.Errorf("%s = %q, want %q", tt.name, tt.got, tt.want)
		}
	}
	if !cfg.TrustOnFirstUse || cfg.RetryMax != 5*time.Second {
		t.Errorf("trust_on_first_use %v retry_max %v, want true 5s", cfg.TrustOnFirstUse, cfg.RetryMax)
	}
	cfg.SetDefaults()
	for _, tt := range []struct{ name, got, want string }{
		{"quarantine", cfg.Quarantine, filepath.Join(base, "central", "quarantine")},
		{"key", cfg.Key, filepath.Join(base, "central", "keys", "central.key")},
		{"central.pub", cfg.PublicKeyPath(), filepath.Join(base, "central", "keys", "central.pub")},
		{"audit_site", cfg.AuditSite, DefaultAuditSite},
	} {
		if tt.got != tt.want {
			t.Errorf("default %s = %q, want %q", tt.name, tt.got, tt.want)
		}
	}
	if err := cfg.Validate(); err != nil {
		t.Errorf("Validate: %v", err)
	}
}

func TestLoadConfigErrors(t *testing.T) {
	for _, tt := range []struct{ name, text, want string }{
		{"unknown key inside receive", "receive:\n  brokr: tcp://127.0.0.1:1883\n", `line 2: receive.brokr: unknown key; did you mean "broker"?`},
		{"wrong type", "receive:\n  trust_on_first_use: maybe\n", `line 2: receive.trust_on_first_use: "maybe" is not true or false`},
		{"every problem at once", "receive:\n  brokr: x\n  window: 5x\n  trust_on_first_use: maybe\n", `line 4: receive.trust_on_first_use`},
		{"not YAML", "receive: [\n", "not valid YAML"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, err := LoadConfig(writeConfig(t, tt.text))
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err %v, want it to contain %q", err, tt.want)
			}
			// Never a Go type.
			if strings.Contains(err.Error(), "central.Config") || strings.Contains(err.Error(), "unmarshal") {
				t.Fatalf("err %v names Go types", err)
			}
		})
	}
	if c, err := LoadConfig(writeConfig(t, "")); err != nil || c.Broker != "" {
		t.Errorf("empty file: %+v, %v; want zero config, nil", c, err)
	}
	if c, err := LoadConfig(writeConfig(t, "site: s1\n")); err != nil || c.Broker != "" {
		t.Errorf("file without receive: %+v, %v; want zero config, nil", c, err)
	}
}

// TestValidate: each bad value is named by its receive.<key>.
func TestValidate(t *testing.T) {
	for _, tt := range []struct {
		name  string
		edit  func(*Config)
		field string
	}{
		{"plain tcp to a remote broker", func(c *Config) { c.Broker = "tcp://10.0.0.1:1883" }, "receive.broker"},
		{"broker without port", func(c *Config) { c.Broker = "tls://central" }, "receive.broker"},
		{"broker and embedded broker", func(c *Config) {
			c.EmbeddedBroker, c.EmbeddedBrokerPasswords = "127.0.0.1:1883", "pw"
		}, "receive.broker"},
		{"embedded broker without TLS on a public address", func(c *Config) {
			c.Broker, c.EmbeddedBroker, c.EmbeddedBrokerPasswords = "", ":1883", "pw"
		}, "receive.embedded_broker"},
		{"embedded broker without any authentication", func(c *Config) {
			c.Broker, c.EmbeddedBroker = "", "127.0.0.1:1883"
		}, "receive.embedded_broker_passwords"},
		{"client CA without a server certificate", func(c *Config) {
			c.Broker, c.EmbeddedBroker, c.EmbeddedBrokerTLSClientCA = "", "127.0.0.1:1883", "ca.pem"
		}, "receive.embedded_broker_tls_client_ca"},
		{"embedded TLS key without cert", func(c *Config) {
			c.Broker, c.EmbeddedBroker, c.EmbeddedBrokerPasswords, c.EmbeddedBrokerTLSKey = "", "127.0.0.1:1883", "pw", "k.pem"
		}, "receive.embedded_broker_tls_cert"},
		{"broker login with the embedded broker", func(c *Config) {
			c.Broker, c.EmbeddedBroker, c.EmbeddedBrokerPasswords, c.Username = "", "127.0.0.1:1883", "pw", "central"
		}, "receive.username"},
		{"embedded option without embedded broker", func(c *Config) { c.EmbeddedBrokerPasswords = "pw" }, "receive.embedded_broker_passwords"},
		{"tls cert without key", func(c *Config) { c.Broker, c.TLSCert = "tls://127.0.0.1:8883", "c.pem" }, "receive.tls_cert"},
		{"prefix with a slash", func(c *Config) { c.Prefix = "a/b" }, "receive.prefix"},
		{"shared group with a wildcard", func(c *Config) { c.SharedGroup = "g+" }, "receive.shared_group"},
		{"audit device not a name", func(c *Config) { c.AuditDevice = "host name" }, "receive.audit_device"},
		{"alerts per minute negative", func(c *Config) { c.AlertsPerMinute = -1 }, "receive.alerts_per_minute"},
		{"password without user", func(c *Config) { c.Password = "x" }, "receive.username"},
		{"log level", func(c *Config) { c.LogLevel = "loud" }, "receive.log_level"},
		{"negative limit", func(c *Config) { c.MaxHeld = -1 }, "receive.max_held"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			c := Config{DataDir: t.TempDir()}
			c.SetDefaults()
			tt.edit(&c)
			err := c.Validate()
			var ce *configerr.Error
			if !errors.As(err, &ce) {
				t.Fatalf("Validate = %v, want a configerr.Error", err)
			}
			if !strings.Contains(err.Error(), tt.field+":") {
				t.Fatalf("Validate = %v, want it to name %s", err, tt.field)
			}
		})
	}
	var c Config
	c.SetDefaults()
	if err := c.Validate(); err != nil {
		t.Errorf("defaults: %v", err)
	}
	if c.Broker != DefaultBroker || c.Store != filepath.Join(DefaultDataDir, "store") {
		t.Errorf("defaults broker %q store %q", c.Broker, c.Store)
	}
}

// TestOpenStoreFolder: the default store is a folder, created 0700, that answers.
func TestOpenStoreFolder(t *testing.T) {
	c := Config{DataDir: t.TempDir()}
	c.SetDefaults()
	s, closeFn, err := OpenStore(t.Context(), c, testLogger())
	if err != nil {
		t.Fatal(err)
	}
	defer closeFn()
	if _, err := s.Head(t.Context(), "s1", "d1"); err != nil {
		t.Fatalf("Head on a new store: %v", err)
	}
	fi, err := os.Stat(c.Store)
	if err != nil || fi.Mode().Perm() != 0o700 {
		t.Fatalf("store folder %v mode %v, want 0700", err, fi.Mode().Perm())
	}
}

// TestNewErrors: files that cannot be loaded are errors from New naming their key, and
// a central key that does not parse is never replaced.
func TestNewErrors(t *testing.T) {
	dir := t.TempDir()
	junk := filepath.Join(dir, "junk.pem")
	if err := os.WriteFile(junk, []byte("not pem"), 0o600); err != nil {
		t.Fatal(err)
	}
	missing := filepath.Join(dir, "missing.pem")
	p := newPKI(t)
	for _, tt := range []struct {
		name string
		cfg  Config
		want string
	}{
		{"tls_ca missing", Config{Broker: "tls://127.0.0.1:8883", TLSCA: missing}, "receive.tls_ca"},
		{"tls_ca not PEM", Config{Broker: "tls://127.0.0.1:8883", TLSCA: junk}, "receive.tls_ca"},
		{"tls_cert missing", Config{Broker: "tls://127.0.0.1:8883", TLSCert: missing, TLSKey: missing}, "receive.tls_cert"},
		{"embedded cert missing", Config{EmbeddedBroker: "127.0.0.1:0", EmbeddedBrokerPasswords: junk,
			EmbeddedBrokerTLSCert: missing, EmbeddedBrokerTLSKey: missing}, "receive.embedded_broker_tls_cert"},
		{"embedded client CA not PEM", Config{EmbeddedBroker: "127.0.0.1:0", EmbeddedBrokerTLSCert: p.CertFile,
			EmbeddedBrokerTLSKey: p.KeyFile, EmbeddedBrokerTLSClientCA: junk}, "receive.embedded_broker_tls_client_ca"},
		{"passwords missing", Config{EmbeddedBroker: "127.0.0.1:0", EmbeddedBrokerPasswords: missing}, "receive.embedded_broker_passwords"},
		{"central key not a key", Config{Key: junk}, "receive.key"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			tt.cfg.DataDir = t.TempDir()
			_, err := New(tt.cfg, testLogger())
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("New: %v, want an error naming %s", err, tt.want)
			}
		})
	}
	if b, _ := os.ReadFile(junk); string(b) != "not pem" {
		t.Errorf("the unparsable central key was replaced")
	}
}
