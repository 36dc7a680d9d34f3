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

// TestLockoutIdleMLLP (issue 6 item 4) against the real daemon with its default limits:
// 64 idle MLLP connections (every slot, before the per-IP limit) do not keep a new MLLP
// client out, even from the same IP: after a second of idleness the client's own
// longest-idle connection makes room, and it gets its AA. Evictions are in the chain.
func TestLockoutIdleMLLP(t *testing.T) {
	t.Parallel()
	d := startClinical(t, clinicalConfig{HL7: true})
	for i := range 64 {
		conn, err := net.DialTimeout("tcp", d.mllp, 5*time.Second)
		if err != nil {
			t.Fatalf("idle connection %d: %v", i, err)
		}
		defer conn.Close()
	}
	time.Sleep(1500 * time.Millisecond) // idle for longer than the table's one-second minimum
	cl, err := dialMLLP(d.mllp)
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	msg := "MSH|^~\\&|RIS|SITE|EDGEAUDIT|SITE|20261127080000||ADT^A01^ADT_A01|LOCKOUT-1|P|2.5\rEVN|A01|20261127080000\rPID|1||123456^^^HOSP^MR||DOE^JANE\r"
	ack, err := cl.exchange([]byte(msg), 10*time.Second)
	if err != nil {
		t.Fatalf("MLLP client after 64 idle connections: %v", err)
	}
	if code, ctrl, _, err := ackMSA(ack); err != nil || code != "AA" || ctrl != "LOCKOUT-1" {
		t.Fatalf("ACK %q (%v), want AA for LOCKOUT-1", ack, err)
	}
	cl.Close()
	d.stop(t)

	evs := exportClinical(t, d.dataDir, true)
	var hl7Events, evictions int
	for _, e := range evs {
		switch {
		case e.Source.Kind == "hl7" && e.CorrelationID == "LOCKOUT-1":
			hl7Events++
		case e.Source.Kind == "self" && e.Action == "audit.input_rejected" && e.Reason == "evicted_idle" && e.Detail["collector"] == "hl7":
			evictions++
		}
	}
	if hl7Events != 1 {
		t.Errorf("LOCKOUT-1 is in the chain %d times, want once", hl7Events)
	}
	if evictions == 0 {
		t.Error("no evicted_idle reject of the hl7 collector in the chain")
	}
}
