package daemon

import (
	"log/slog"
	"math"
	"runtime/debug"
	"strings"
	"testing"

	"github.com/edgeaudit/edgeaudit/internal/configerr"
)

func TestMemoryLimitConfig(t *testing.T) {
	tests := []struct {
		name    string
		yaml    string // the memory_limit line, "" for none
		want    int64  // after SetDefaults
		limit   int64  // what ApplyMemoryLimit sets
		invalid bool
	}{
		{name: "default", yaml: "", want: DefaultMemoryLimit, limit: DefaultMemoryLimit},
		{name: "zero is the default", yaml: "memory_limit: 0", want: DefaultMemoryLimit, limit: DefaultMemoryLimit},
		{name: "none", yaml: "memory_limit: -1", want: -1, limit: math.MaxInt64},
		{name: "set", yaml: "memory_limit: 100663296", want: 96 << 20, limit: 96 << 20},
		{name: "lowest", yaml: "memory_limit: 16777216", want: 16 << 20, limit: 16 << 20},
		{name: "too low", yaml: "memory_limit: 1048576", want: 1 << 20, invalid: true},
		{name: "negative", yaml: "memory_limit: -2", want: -2, invalid: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := LoadConfig(writeConfig(t, "site: s1\ndevice: d1\n"+tt.yaml+"\n"))
			if err != nil {
				t.Fatal(err)
			}
			c.SetDefaults()
			if got := c.MemoryLimit; got != tt.want {
				t.Fatalf("memory_limit=%d, want %d", got, tt.want)
			}
			err = c.Validate()
			var bad bool
			for _, e := range configerr.Flatten(err) {
				if configerr.FieldOf(e) == "memory_limit" {
					bad = true
				}
			}
			if bad != tt.invalid {
				t.Fatalf("memory_limit refused=%v, want %v (%v)", bad, tt.invalid, err)
			}
			if tt.invalid {
				if !strings.Contains(err.Error(), "memory_limit") {
					t.Errorf("error %q does not name memory_limit", err)
				}
				return
			}
			defer debug.SetMemoryLimit(debug.SetMemoryLimit(-1))
			t.Setenv("GOMEMLIMIT", "")
			if got := ApplyMemoryLimit(&c, slog.New(slog.DiscardHandler)); got != tt.limit {
				t.Errorf("ApplyMemoryLimit=%d, want %d", got, tt.limit)
			}
			if got := debug.SetMemoryLimit(-1); got != tt.limit {
				t.Errorf("runtime memory limit=%d, want %d", got, tt.limit)
			}
		})
	}
}

// GOMEMLIMIT, read by the runtime at start, wins over the file: ApplyMemoryLimit leaves
// the limit as it is.
func TestMemoryLimitEnvironmentWins(t *testing.T) {
	prev := debug.SetMemoryLimit(-1)
	defer debug.SetMemoryLimit(prev)
	const envLimit = 123 << 20
	debug.SetMemoryLimit(envLimit) // as the runtime did from the environment
	t.Setenv("GOMEMLIMIT", "123MiB")
	c := Config{MemoryLimit: 64 << 20}
	if got := ApplyMemoryLimit(&c, slog.New(slog.DiscardHandler)); got != envLimit {
		t.Errorf("ApplyMemoryLimit=%d, want %d (GOMEMLIMIT's)", got, envLimit)
	}
	if got := debug.SetMemoryLimit(-1); got != envLimit {
		t.Errorf("runtime memory limit=%d, want %d", got, envLimit)
	}
}
