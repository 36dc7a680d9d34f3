package syslog

import (
	"errors"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"
)

func TestConfigDefaults(t *testing.T) {
	var c Config
	c.SetDefaults()
	if got, want := c.MaxMessageSize, DefaultMaxMessageSize; got != want {
		t.Errorf("MaxMessageSize = %d, want %d", got, want)
	}
	if got, want := c.MaxConnections, DefaultMaxConnections; got != want {
		t.Errorf("MaxConnections = %d, want %d", got, want)
	}
	if got, want := c.IdleTimeout, DefaultIdleTimeout; got != want {
		t.Errorf("IdleTimeout = %v, want %v", got, want)
	}
	if got, want := c.MaxConnectionsPerIP, DefaultMaxConnections/4; got != want {
		t.Errorf("MaxConnectionsPerIP = %d, want %d", got, want)
	}
	if got, want := c.HandshakeTimeout, DefaultHandshakeTimeout; got != want {
		t.Errorf("HandshakeTimeout = %v, want %v", got, want)
	}
	if got, want := c.DrainTimeout, DefaultDrainTimeout; got != want {
		t.Errorf("DrainTimeout = %v, want %v", got, want)
	}
	small := Config{MaxConnections: 2}
	small.SetDefaults()
	if got, want := small.MaxConnectionsPerIP, 1; got != want {
		t.Errorf("MaxConnectionsPerIP for max_connections 2 = %d, want %d", got, want)
	}
	if got, want := c.UDPReadBuffer, DefaultUDPReadBuffer; got != want {
		t.Errorf("UDPReadBuffer = %d, want %d", got, want)
	}
	if err := c.Validate(); err != nil {
		t.Errorf("defaults do not validate: %v", err)
	}
	if c.Enabled() {
		t.Error("Enabled() = true with no address")
	}
}

func TestConfigYAML(t *testing.T) {
	var c Config
	in := `
udp: ":5514"
tcp: "127.0.0.1:5514"
tls: "[::1]:6514"
tls_cert: /etc/edgeaudit/syslog.pem
tls_key: /etc/edgeaudit/syslog-key.pem
tls_client_ca: /etc/edgeaudit/clients.pem
max_message_size: 131072
max_connections: 10
max_connections_per_ip: 5
handshake_timeout: 5s
drain_timeout: 2s
idle_timeout: 90s
udp_read_buffer: 8388608
rfc3164_timezone: UTC
`
	if err := yaml.Unmarshal([]byte(in), &c); err != nil {
		t.Fatal(err)
	}
	want := Config{
		UDP: ":5514", TCP: "127.0.0.1:5514", TLS: "[::1]:6514",
		TLSCert: "/etc/edgeaudit/syslog.pem", TLSKey: "/etc/edgeaudit/syslog-key.pem", TLSClientCA: "/etc/edgeaudit/clients.pem",
		MaxMessageSize: 131072, MaxConnections: 10, MaxConnectionsPerIP: 5, HandshakeTimeout: 5 * time.Second,
		DrainTimeout: 2 * time.Second, IdleTimeout: 90 * time.Second, UDPReadBuffer: 8 << 20, RFC3164TimeZone: "UTC",
	}
	if c != want {
		t.Fatalf("decoded %+v, want %+v", c, want)
	}
	c.SetDefaults() // the RELP keys (relp_window, relp_full_wait) are left out above
	if err := c.Validate(); err != nil {
		t.Fatalf("Validate: %v", err)
	}
	var r Config
	if err := yaml.Unmarshal([]byte("relp: \"127.0.0.1:2514\"\nrelp_window: 64\n"), &r); err != nil {
		t.Fatal(err)
	}
	if got, want := r.RELPConfig, (RELPConfig{RELP: "127.0.0.1:2514", RELPWindow: 64}); got != want {
		t.Fatalf("RELP keys decoded as %+v, want %+v (inline beside udp, tcp and tls)", got, want)
	}
	if !r.Enabled() {
		t.Error("Enabled() = false with only relp set")
	}
}

func TestConfigValidate(t *testing.T) {
	tests := []struct {
		name string
		mod  func(*Config)
		want []string // substrings of the error, each naming field and value
	}{
		{"ok", func(c *Config) { c.UDP, c.TCP = ":514", "localhost:514" }, nil},
		{"ok ipv6", func(c *Config) { c.TCP = "[::1]:514" }, nil},
		{"tls without cert and key", func(c *Config) { c.TLS = ":6514" },
			[]string{"syslog.tls_cert: required when syslog.tls is set", "syslog.tls_key: required when syslog.tls is set"}},
		{"tls without key", func(c *Config) { c.TLS, c.TLSCert = ":6514", "c.pem" }, []string{"syslog.tls_key: required"}},
		{"missing port", func(c *Config) { c.UDP = "127.0.0.1" }, []string{`syslog.udp: "127.0.0.1": missing port in address`}},
		{"port not a number", func(c *Config) { c.TCP = ":syslog" }, []string{`syslog.tcp: ":syslog": port must be a number`}},
		{"port out of range", func(c *Config) { c.TCP = ":70000" }, []string{`syslog.tcp: ":70000": port must be`}},
		{"bad host", func(c *Config) { c.TLS, c.TLSCert, c.TLSKey = "a b:1", "c", "k" }, []string{`syslog.tls: "a b:1": host must be`}},
		{"message size too small", func(c *Config) { c.MaxMessageSize = 1024 }, []string{`syslog.max_message_size: "1024": must be between 2048 and 16777216`}},
		{"message size too large", func(c *Config) { c.MaxMessageSize = 32 << 20 }, []string{`syslog.max_message_size: "33554432"`}},
		{"negative connections", func(c *Config) { c.MaxConnections = -1 }, []string{`syslog.max_connections: "-1"`}},
		{"per-IP over the global limit", func(c *Config) { c.MaxConnections, c.MaxConnectionsPerIP = 8, 9 },
			[]string{`syslog.max_connections_per_ip: "9": must be between 1 and syslog.max_connections (8)`}},
		{"negative per-IP", func(c *Config) { c.MaxConnectionsPerIP = -1 }, []string{`syslog.max_connections_per_ip: "-1"`}},
		{"negative handshake timeout", func(c *Config) { c.HandshakeTimeout = -time.Second }, []string{`syslog.handshake_timeout: "-1s"`}},
		{"drain timeout too long", func(c *Config) { c.DrainTimeout = 2 * time.Minute }, []string{`syslog.drain_timeout: "2m0s": must be positive and at most 1m0s`}},
		{"negative idle timeout", func(c *Config) { c.IdleTimeout = -time.Second }, []string{`syslog.idle_timeout: "-1s"`}},
		{"negative read buffer", func(c *Config) { c.UDPReadBuffer = -1 }, []string{`syslog.udp_read_buffer: "-1"`}},
		{"unknown zone", func(c *Config) { c.RFC3164TimeZone = "Mars/Olympus" }, []string{`syslog.rfc3164_timezone: "Mars/Olympus"`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var c Config
			c.SetDefaults()
			tt.mod(&c)
			err := c.Validate()
			if len(tt.want) == 0 {
				if err != nil {
					t.Fatalf("Validate = %v, want nil", err)
				}
				return
			}
			if err == nil {
				t.Fatal("Validate = nil, want an error")
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
			var ce *ConfigError
			if !errors.As(err, &ce) {
				t.Errorf("error %v holds no *ConfigError", err)
			}
		})
	}
}

func TestNewErrors(t *testing.T) {
	sink, rep := &fakeSink{}, &fakeReporter{}
	if _, err := New(Config{MaxMessageSize: 100}, sink, rep, nil); err == nil {
		t.Error("New accepted an invalid config")
	}
	if _, err := New(Config{}, nil, rep, nil); err == nil {
		t.Error("New accepted a nil sink")
	}
	_, err := New(Config{TLS: "127.0.0.1:0", TLSCert: "/nonexistent/c.pem", TLSKey: "/nonexistent/k.pem"}, sink, rep, nil)
	if err == nil || !strings.Contains(err.Error(), "syslog.tls_cert /nonexistent/c.pem") {
		t.Errorf("New with missing cert files = %v, want an error naming the file", err)
	}
	pki := newTestPKI(t)
	_, err = New(Config{TLS: "127.0.0.1:0", TLSCert: pki.CertFile, TLSKey: pki.KeyFile, TLSClientCA: pki.KeyFile}, sink, rep, nil)
	if err == nil || !strings.Contains(err.Error(), "syslog.tls_client_ca") {
		t.Errorf("New with a client CA file holding no certificate = %v, want an error", err)
	}
}
