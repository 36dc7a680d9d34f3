package timesync

import (
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/edgeaudit/edgeaudit/internal/configerr"
)

func TestConfigDefaults(t *testing.T) {
	var c Config
	c.ApplyDefaults()
	if err := c.Validate(); err != nil {
		t.Fatalf("defaults do not validate: %v", err)
	}
	for _, tt := range []struct {
		name      string
		got, want any
	}{
		{"servers", strings.Join(c.Servers, ","), "pool.ntp.org"},
		{"interval", c.Interval, 64 * time.Second},
		{"timeout", c.Timeout, 5 * time.Second},
		{"max_offset", c.MaxOffset, 500 * time.Millisecond},
		{"max_root_distance", c.MaxRootDistance, 1500 * time.Millisecond},
		{"max_age", c.MaxAge, 256 * time.Second},
		{"step_threshold", c.StepThreshold, time.Second},
		{"samples", c.Samples, 1},
	} {
		if tt.got != tt.want {
			t.Errorf("%s=%v, want %v", tt.name, tt.got, tt.want)
		}
	}
	short := Config{Interval: 2 * time.Second}
	short.ApplyDefaults()
	if got, want := short.Timeout, time.Second; got != want {
		t.Errorf("timeout with a 2s interval=%v, want %v (half the interval)", got, want)
	}
}

func TestConfigValidate(t *testing.T) {
	for _, tt := range []struct {
		name   string
		mod    func(*Config)
		field  string // "" means valid
		value  string
		reason string
	}{
		{"defaults", func(*Config) {}, "", "", ""},
		{"host:port", func(c *Config) { c.Servers = []string{"127.0.0.1:11123", "ntp.example", "[::1]:123", "2001:db8::1"} }, "", "", ""},
		{"empty server", func(c *Config) { c.Servers = []string{"a", ""} }, "ntp.servers[1]", "", "host or host:port"},
		{"space", func(c *Config) { c.Servers = []string{"ntp example"} }, "ntp.servers[0]", "ntp example", "host or host:port"},
		{"url", func(c *Config) { c.Servers = []string{"udp://ntp.example"} }, "ntp.servers[0]", "udp://ntp.example", "host"},
		{"port zero", func(c *Config) { c.Servers = []string{"ntp.example:0"} }, "ntp.servers[0]", "ntp.example:0", "1..65535"},
		{"port name", func(c *Config) { c.Servers = []string{"ntp.example:ntp"} }, "ntp.servers[0]", "ntp.example:ntp", "1..65535"},
		{"no host", func(c *Config) { c.Servers = []string{":123"} }, "ntp.servers[0]", ":123", "host is empty"},
		{"twice", func(c *Config) { c.Servers = []string{"ntp.example", "ntp.example:123"} }, "ntp.servers[1]", "ntp.example:123", "listed twice"},
		{"interval", func(c *Config) { c.Interval = 500 * time.Millisecond }, "ntp.interval", "500ms", "at least 1s"},
		{"timeout", func(c *Config) { c.Timeout = c.Interval }, "ntp.timeout", "1m4s", "less than ntp.interval"},
		{"negative timeout", func(c *Config) { c.Timeout = -time.Second }, "ntp.timeout", "-1s", "positive"},
		{"max_offset", func(c *Config) { c.MaxOffset = -1 }, "ntp.max_offset", "-1ns", "positive"},
		{"max_root_distance", func(c *Config) { c.MaxRootDistance = -1 }, "ntp.max_root_distance", "-1ns", "positive"},
		{"step_threshold", func(c *Config) { c.StepThreshold = -1 }, "ntp.step_threshold", "-1ns", "positive"},
		{"max_age", func(c *Config) { c.MaxAge = time.Second }, "ntp.max_age", "1s", "at least ntp.interval"},
		{"samples", func(c *Config) { c.Samples = 9 }, "ntp.samples", "9", "1..8"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var c Config
			c.ApplyDefaults()
			tt.mod(&c)
			err := c.Validate()
			if tt.field == "" {
				if err != nil {
					t.Fatalf("Validate()=%v, want nil", err)
				}
				return
			}
			var ce *configerr.Error
			if !errors.As(err, &ce) {
				t.Fatalf("Validate()=%v, want a *configerr.Error", err)
			}
			if got, want := ce.Field, tt.field; got != want {
				t.Errorf("field=%q, want %q", got, want)
			}
			if got, want := ce.Value, tt.value; got != want {
				t.Errorf("value=%q, want %q", got, want)
			}
			if !strings.Contains(err.Error(), tt.reason) {
				t.Errorf("error %q does not say %q", err, tt.reason)
			}
		})
	}
}

func TestNewKeepsCallersServers(t *testing.T) {
	servers := []string{"127.0.0.1:1", "127.0.0.1:2"}
	c, err := New(Config{Servers: servers}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	servers[0] = "changed"
	if got, want := c.Config().Servers, []string{"127.0.0.1:1", "127.0.0.1:2"}; !slices.Equal(got, want) {
		t.Fatalf("servers=%v, want %v", got, want)
	}
	if _, err := New(Config{Interval: time.Millisecond}, nil, nil); err == nil {
		t.Fatal("New accepted a 1ms interval")
	}
	if got, want := c.State().State, StateUnknown; got != want {
		t.Fatalf("state before Run=%q, want %q", got, want)
	}
	if c.Synced() {
		t.Fatal("Synced before Run")
	}
}
