package timesync

import (
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"time"

	"github.com/edgeaudit/edgeaudit/internal/configerr"
)

// Defaults for zero Config fields.
const (
	DefaultServer          = "pool.ntp.org"
	DefaultPort            = 123
	DefaultInterval        = 64 * time.Second // the NTP pool's minimum poll
	DefaultTimeout         = 5 * time.Second
	DefaultMaxOffset       = 500 * time.Millisecond
	DefaultMaxRootDistance = 1500 * time.Millisecond // RFC 5905 MAXDIST (1 s) plus slack for a pool server far away
	DefaultMaxAgeIntervals = 4                       // max_age defaults to this many intervals
	DefaultStepThreshold   = time.Second
	DefaultSamples         = 1
)

// Limits of the accepted values.
const (
	MinInterval = time.Second
	MaxSamples  = 8
	// maxBackoff bounds how far a server that sent kiss code RATE is pushed back, in
	// intervals.
	maxBackoff = 16
)

// Config is the `ntp:` section.
type Config struct {
	// Servers are host or host:port (port 123 when omitted); an IPv6 literal with a port
	// is [addr]:port. Default [pool.ntp.org]. Every server is queried at each check and
	// the best answer is kept (lowest root distance, then lowest round trip).
	Servers []string `yaml:"servers"`
	// Interval is the time between checks (default 64s, at least 1s). A server that
	// answered kiss code RATE is queried less often (up to 16 intervals).
	Interval time.Duration `yaml:"interval"`
	// Timeout bounds one query (default 5s; less than interval).
	Timeout time.Duration `yaml:"timeout"`
	// MaxOffset is the largest |offset| of the local clock that is still "synced"
	// (default 500ms).
	MaxOffset time.Duration `yaml:"max_offset"`
	// MaxRootDistance rejects answers whose root distance ((root delay + round
	// trip)/2 + root dispersion, a bound on their error) is larger (default 1.5s).
	MaxRootDistance time.Duration `yaml:"max_root_distance"`
	// MaxAge is how long the last good answer counts (default 4 intervals, at least one
	// interval); with no good answer for longer, the state is "unsynced".
	MaxAge time.Duration `yaml:"max_age"`
	// StepThreshold: when the wall clock moved this much more (or less) than the
	// monotonic clock between two checks, the clock was stepped and a step change is
	// reported (default 1s).
	StepThreshold time.Duration `yaml:"step_threshold"`
	// Samples is how many queries each server gets per check; the one with the lowest
	// round trip counts (default 1, at most 8).
	Samples int `yaml:"samples"`
}

// ApplyDefaults fills zero fields.
func (c *Config) ApplyDefaults() {
	if len(c.Servers) == 0 {
		c.Servers = []string{DefaultServer}
	}
	if c.Interval == 0 {
		c.Interval = DefaultInterval
	}
	if c.Timeout == 0 {
		c.Timeout = min(DefaultTimeout, c.Interval/2)
	}
	if c.MaxOffset == 0 {
		c.MaxOffset = DefaultMaxOffset
	}
	if c.MaxRootDistance == 0 {
		c.MaxRootDistance = DefaultMaxRootDistance
	}
	if c.MaxAge == 0 {
		c.MaxAge = DefaultMaxAgeIntervals * c.Interval
	}
	if c.StepThreshold == 0 {
		c.StepThreshold = DefaultStepThreshold
	}
	if c.Samples == 0 {
		c.Samples = DefaultSamples
	}
}

// Validate checks c after ApplyDefaults; errors name the YAML key (ntp.<key>), carry the
// value and say what is accepted. It reports every problem, joined.
func (c *Config) Validate() error {
	var errs []error
	bad := func(field, value string, err error) {
		errs = append(errs, &configerr.Error{Field: "ntp." + field, Value: value, Err: err})
	}
	if len(c.Servers) == 0 {
		bad("servers", "", errors.New("want at least one host or host:port"))
	}
	seen := make(map[string]bool, len(c.Servers))
	for i, s := range c.Servers {
		addr, err := serverAddr(s)
		if err != nil {
			bad(fmt.Sprintf("servers[%d]", i), s, err)
			continue
		}
		if seen[addr] {
			bad(fmt.Sprintf("servers[%d]", i), s, errors.New("listed twice"))
		}
		seen[addr] = true
	}
	if c.Interval < MinInterval {
		bad("interval", c.Interval.String(), fmt.Errorf("must be at least %v", MinInterval))
	}
	if c.Timeout <= 0 || c.Timeout >= c.Interval {
		bad("timeout", c.Timeout.String(), errors.New("must be positive and less than ntp.interval"))
	}
	for _, d := range []struct {
		field string
		v     time.Duration
	}{{"max_offset", c.MaxOffset}, {"max_root_distance", c.MaxRootDistance}, {"step_threshold", c.StepThreshold}} {
		if d.v <= 0 {
			bad(d.field, d.v.String(), errors.New("must be positive"))
		}
	}
	if c.MaxAge < c.Interval {
		bad("max_age", c.MaxAge.String(), errors.New("must be at least ntp.interval"))
	}
	if c.Samples < 1 || c.Samples > MaxSamples {
		bad("samples", strconv.Itoa(c.Samples), fmt.Errorf("must be 1..%d", MaxSamples))
	}
	return errors.Join(errs...)
}

// serverAddr is the host:port a configured server is queried at.
func serverAddr(s string) (string, error) {
	if s == "" || strings.TrimSpace(s) != s || strings.ContainsAny(s, " \t/") {
		return "", errors.New("want host or host:port")
	}
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		// No port: a name, an IPv4 address or a bare IPv6 address.
		if ip := net.ParseIP(s); ip != nil {
			return net.JoinHostPort(s, strconv.Itoa(DefaultPort)), nil
		}
		if strings.ContainsAny(s, ":[]") {
			return "", errors.New("want host, host:port or [ipv6]:port")
		}
		return net.JoinHostPort(s, strconv.Itoa(DefaultPort)), nil
	}
	if host == "" {
		return "", errors.New("host is empty")
	}
	if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
		return "", errors.New("port must be 1..65535")
	}
	return s, nil
}
