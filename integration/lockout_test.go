package integration

import (
	"net"
	"testing"
	"time"
)

// TestLockoutIdleConnections (issue 6 item 4) against the real daemon with its default
// limits: 300 idle TCP connections from 127.0.0.1 cannot keep another sender out, the
// other sender's messages reach the chain, and the refusals are recorded in it. Before
// the per-IP limit, the first 256 took every slot and the other sender was closed at
// once, its messages lost.
func TestLockoutIdleConnections(t *testing.T) {
	t.Parallel()
	d := startDaemon(t, daemonConfig{})
	for i := range 300 {
		conn, err := net.DialTimeout("tcp", d.tcp, 5*time.Second)
		if err != nil {
			t.Fatalf("idle connection %d: %v", i, err)
		}
		defer conn.Close()
	}
	// 127.0.0.2 is another sender IP on the same loopback interface.
	dialer := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP("127.0.0.2")}, Timeout: 5 * time.Second}
	conn, err := dialer.Dial("tcp", d.tcp)
	if err != nil {
		t.Fatal(err)
	}
	want := markers("lockout", 20)
	var buf []byte
	for _, m := range want {
		buf = append(buf, octetFrame(rfc5424(m))...)
	}
	if _, err := conn.Write(buf); err != nil {
		t.Fatal(err)
	}
	conn.Close()
	d.waitMetric(t, float64(len(want)), "edgeaudit_syslog_received_total", "transport", "tcp")
	d.stop(t)

	evs := exportEvents(t, d.dataDir, true)
	byMsg := syslogByMessage(evs)
	for _, m := range want {
		if n := len(byMsg[m]); n != 1 {
			t.Errorf("message %q is in the chain %d times, want once", m, n)
			continue
		}
		if ip := byMsg[m][0].Source.IP; ip != "127.0.0.2" {
			t.Errorf("message %q from %q, want 127.0.0.2", m, ip)
		}
	}
	var refusals int
	for _, e := range selfEvents(evs, "audit.input_rejected") {
		if e.Reason == "too_many_connections_per_ip" {
			refusals++
			if e.Source.IP != "127.0.0.1" {
				t.Errorf("per-IP refusal recorded for %q, want 127.0.0.1", e.Source.IP)
			}
		}
	}
	if refusals == 0 {
		t.Error("no too_many_connections_per_ip refusal recorded in the chain")
	}
}
