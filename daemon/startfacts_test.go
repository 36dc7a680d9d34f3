package daemon

import (
	"testing"

	"go.yaml.in/yaml/v3"
)

// The config hash changes with a value, not with central's section or its lines.
func TestConfigHash(t *testing.T) {
	parse := func(src string) *Config {
		t.Helper()
		var c Config
		if err := yaml.Unmarshal([]byte(src), &c); err != nil {
			t.Fatal(err)
		}
		c.SetDefaults()
		return &c
	}
	base := configHash(parse("site: s1\nsyslog:\n  tcp: 127.0.0.1:5514\n"))
	for _, tt := range []struct {
		name string
		src  string
		same bool
	}{
		{"same", "site: s1\nsyslog:\n  tcp: 127.0.0.1:5514\n", true},
		{"comment and blank lines", "# site\n\nsite: s1\nsyslog:\n  # plain TCP\n  tcp: 127.0.0.1:5514\n", true},
		{"receive section", "site: s1\nsyslog:\n  tcp: 127.0.0.1:5514\nreceive:\n  data_dir: /x\n", true},
		{"changed value", "site: s1\nsyslog:\n  tcp: 127.0.0.1:5515\n", false},
		{"changed site", "site: s2\nsyslog:\n  tcp: 127.0.0.1:5514\n", false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if got := configHash(parse(tt.src)) == base; got != tt.same {
				t.Fatalf("hash equal=%v, want %v", got, tt.same)
			}
		})
	}
}
