package syslog

import "testing"

// The parts of the lockout tests that name the new config keys and counters, apart so
// that limits_lockout_test.go also builds against the code before them (to see it fail).

func noPerIPLimit(cfg *Config) { cfg.MaxConnectionsPerIP = DefaultMaxConnections }

func checkPerIPLimited(t *testing.T, c *Collector, rep *fakeReporter, ip string) {
	t.Helper()
	st := c.Stats()
	if got := st.Rejects[ReasonTooManyPerIP]; got == 0 {
		t.Errorf("too_many_connections_per_ip rejects = 0, want some (stats %+v)", st)
	}
	if got, want := st.ConnsOpen, int64(DefaultMaxConnections/4+1); got != want {
		t.Errorf("open connections = %d, want %d (one IP's quarter, and the other sender)", got, want)
	}
	for _, r := range rep.getRejects() {
		if r.Reason == ReasonTooManyPerIP && r.IP != ip {
			t.Errorf("per-IP reject for %s, want only %s", r.IP, ip)
		}
	}
}

func checkEvicted(t *testing.T, c *Collector, rep *fakeReporter, transport string) {
	t.Helper()
	if got := c.Stats().ConnsEvicted; got == 0 {
		t.Errorf("ConnsEvicted = 0, want at least 1")
	}
	found := false
	for _, r := range rep.getRejects() {
		if r.Reason == ReasonEvictedIdle {
			found = true
			if r.Transport != transport || r.IP != "127.0.0.1" {
				t.Errorf("eviction reported as %+v from %s, want transport %s from 127.0.0.1", r, r.IP, transport)
			}
		}
	}
	if !found {
		t.Errorf("no %s reject reported", ReasonEvictedIdle)
	}
}
