package daemon

import (
	"testing"
	"time"
)

func TestCertChecks(t *testing.T) {
	now := time.Date(2026, 12, 2, 0, 0, 0, 0, time.UTC)
	for _, tt := range []struct {
		name     string
		notAfter time.Time
		err      string
		want     string
	}{
		{"fine", now.Add(90 * 24 * time.Hour), "", CheckOK},
		{"expiring", now.Add(10 * 24 * time.Hour), "", CheckWarning},
		{"at the threshold", now.Add(certWarning), "", CheckOK},
		{"expired", now.Add(-time.Hour), "", CheckFailure},
		{"unreadable", time.Time{}, "no certificate in the file", CheckWarning},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var h Health
			certChecks(&h, []certInfo{{Key: "syslog.tls_cert", Path: "/x.pem", Subject: "CN=x", NotAfter: tt.notAfter, Err: tt.err}}, now)
			if len(h.Checks) != 1 || h.Checks[0].Status != tt.want || h.Checks[0].Name != "cert.syslog.tls_cert" {
				t.Fatalf("checks %+v, want one cert.syslog.tls_cert %s", h.Checks, tt.want)
			}
		})
	}
}

// The overall status is the worst check; a notice never raises it.
func TestHealthStatus(t *testing.T) {
	for _, tt := range []struct {
		statuses []string
		want     string
	}{
		{nil, CheckOK},
		{[]string{CheckOK, CheckNotice}, CheckOK},
		{[]string{CheckNotice, CheckWarning, CheckOK}, CheckWarning},
		{[]string{CheckWarning, CheckFailure, CheckNotice}, CheckFailure},
	} {
		var h Health
		for i, s := range tt.statuses {
			h.add("c", s, "detail %d", i)
		}
		if got := h.status(); got != tt.want {
			t.Errorf("status of %v = %s, want %s", tt.statuses, got, tt.want)
		}
		if n := len(h.Warnings) + len(h.Failures); n != len(tt.statuses)-count(tt.statuses, CheckOK) {
			t.Errorf("%v: %d warnings and failures listed", tt.statuses, n)
		}
	}
}

func count(ss []string, s string) int {
	n := 0
	for _, x := range ss {
		if x == s {
			n++
		}
	}
	return n
}

// The window counts the last hour only, by reason.
func TestRecentWindow(t *testing.T) {
	var r recent
	t0 := time.Date(2026, 12, 2, 10, 0, 0, 0, time.UTC)
	r.addLost(t0, "syslog/udp/kernel_drop", 5)
	r.addReject(t0.Add(30*time.Minute), "syslog/tcp/oversize")
	r.addReject(t0.Add(59*time.Minute), "syslog/tcp/oversize")
	got := r.last(t0.Add(59 * time.Minute))
	if got.Lost != 5 || got.Rejected != 2 || got.ByReject["syslog/tcp/oversize"] != 2 {
		t.Fatalf("within the hour: %+v", got)
	}
	got = r.last(t0.Add(90 * time.Minute))
	if got.Lost != 0 || got.Rejected != 1 {
		t.Fatalf("90 minutes on, want only the reject of minute 59: %+v", got)
	}
	// A bucket reused two hours on holds only the new minute.
	r.addLost(t0.Add(2*time.Hour), "syslog/udp/kernel_drop", 1)
	if got := r.last(t0.Add(2 * time.Hour)); got.Lost != 1 {
		t.Fatalf("reused bucket: %+v", got)
	}
	if got := top(map[string]uint64{"a": 1, "b": 3, "c": 2, "d": 3}, 3); len(got) != 3 || got[0] != "b 3" || got[1] != "d 3" || got[2] != "c 2" {
		t.Fatalf("top=%v", got)
	}
}

func TestBytesHuman(t *testing.T) {
	for _, tt := range []struct {
		n    int64
		want string
	}{{0, "0 B"}, {1023, "1023 B"}, {1024, "1.0 KiB"}, {3 << 20, "3.0 MiB"}, {5 << 40, "5.0 TiB"}} {
		if got := bytesHuman(tt.n); got != tt.want {
			t.Errorf("bytesHuman(%d)=%q, want %q", tt.n, got, tt.want)
		}
	}
}
