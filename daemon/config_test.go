package daemon

import (
	"fmt"
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

// A config file names its site: an empty one (or one without site:) is refused with
// what site is for, and one with only site: is the defaults.
func TestConfigFileNeedsSite(t *testing.T) {
	for _, body := range []string{"", "# nothing yet\n", "device: d1\n"} {
		c, err := LoadConfig(writeConfig(t, body))
		if err != nil {
			t.Fatal(err)
		}
		c.SetDefaults()
		err = Preflight(&c)
		if got, want := fmt.Sprint(err), "site: required: the name of this imaging center in every batch header and topic"; !strings.HasSuffix(got, want) {
			t.Errorf("%q: err=%v, want %q", body, err, want)
		}
	}
	c, err := LoadConfig(writeConfig(t, "site: s1\n"))
	if err != nil {
		t.Fatal(err)
	}
	c.SetDefaults()
	if err := Preflight(&c); err != nil {
		t.Fatal(err)
	}
	// Without a file there is no file to name it: the zero-config daemon's default.
	if d := DefaultConfig(); d.Site != DefaultSite {
		t.Errorf("zero-config site %q, want %q", d.Site, DefaultSite)
	}
}

func TestUplinkConfig(t *testing.T) {
	for _, tc := range []struct {
		name, body string
		enabled    bool
		wantErr    string // substring naming the key; "" = valid
	}{
		{"no section, no uplink", "site: s1\n", false, ""},
		{"the zero config's broker needs a file-less start", "site: s1\nuplink: {}\n", false, ""},
		{"tls broker", "site: s1\nuplink: {broker: \"tls://central.example:8883\", ca: ca.pem}\n", true, ""},
		{"plain tcp off the box", "site: s1\nuplink: {broker: \"tcp://central.example:1883\"}\n", true, "uplink.broker"},
		{"cert without key", "site: s1\nuplink: {broker: \"tls://c:8883\", cert: c.pem}\n", true, "uplink.cert"},
		{"unknown key", "site: s1\nuplink: {broker: \"tls://c:8883\", brokr: x}\n", true, "brokr"},
		{"drain past the budget", "site: s1\nshutdown_timeout: 6s\nuplink: {broker: \"tls://c:8883\", drain_timeout: 2s}\n", true, "uplink.drain_timeout"},
		{"central's section is accepted", "site: s1\nreceive: {store: /srv/central, anything: 1}\n", false, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := writeConfig(t, tc.body)
			c, err := LoadConfig(p)
			if err == nil {
				c.SetDefaults()
				err = c.Validate()
			}
			switch {
			case tc.wantErr == "" && err != nil:
				t.Fatalf("error %v, want none", err)
			case tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)):
				t.Fatalf("error %v, want one naming %q", err, tc.wantErr)
			}
			if err != nil {
				return
			}
			if got := c.uplinkEnabled(); got != tc.enabled {
				t.Errorf("uplink enabled=%v, want %v", got, tc.enabled)
			}
			if c.Uplink.CA != "" && !filepath.IsAbs(c.Uplink.CA) {
				t.Errorf("uplink.ca=%q, want it relative to the config file", c.Uplink.CA)
			}
		})
	}
	d := DefaultConfig()
	if got, want := d.Uplink.Broker, DefaultUplinkBroker; got != want {
		t.Errorf("zero-config broker=%q, want %q", got, want)
	}
	if got, want := d.CentralKeyPath(), filepath.Join(d.DataDir, "keys", "central.pub"); got != want {
		t.Errorf("default central key %q, want %q", got, want)
	}
}

// spool.encrypt is on unless the config turns it off, the spool gets the data key either
// way (what is stored encrypted stays readable), and a value that is not a boolean is
// refused naming the field.
func TestSpoolEncryptConfig(t *testing.T) {
	keys := &Keyring{DataKey: make([]byte, 32)}
	tests := []struct {
		name string
		body string
		want bool
	}{
		{"absent", "site: s1\n", true},
		{"true", "site: s1\nspool: {encrypt: true}\n", true},
		{"false", "site: s1\nspool: {encrypt: false}\n", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := LoadConfig(writeConfig(t, tt.body))
			if err != nil {
				t.Fatal(err)
			}
			c.SetDefaults()
			if err := c.Validate(); err != nil {
				t.Fatal(err)
			}
			o := c.SpoolOptions(keys)
			if got := o.Encrypt; got != tt.want {
				t.Fatalf("Encrypt=%v, want %v", got, tt.want)
			}
			if len(o.DataKey) != 32 {
				t.Fatalf("DataKey is %d bytes, want the keyring's 32", len(o.DataKey))
			}
		})
	}
	_, err := LoadConfig(writeConfig(t, "site: s1\nspool: {encrypt: maybe}\n"))
	if err == nil || !strings.Contains(err.Error(), "spool.encrypt") || !strings.Contains(err.Error(), "maybe") {
		t.Fatalf("encrypt: maybe err=%v, want an error naming the field and the value", err)
	}
}
