package hl7

import (
	"context"
	"crypto/tls"
	"net"
	"testing"
	"time"

	"github.com/edgeaudit/edgeaudit/internal/connset"
)

// The lockout tests of issue 6 item 4 for MLLP. All senders are on loopback;
// 127.0.0.2 stands for a second sender IP (Linux routes all of 127/8 to lo).

func idleMLLP(t testing.TB, addr net.Addr, n int) {
	t.Helper()
	for i := range n {
		conn, err := net.DialTimeout("tcp", addr.String(), 5*time.Second)
		if err != nil {
			t.Fatalf("idle connection %d: %v", i, err)
		}
		t.Cleanup(func() { conn.Close() })
	}
}

func dialMLLPFrom(t testing.TB, src string, addr net.Addr) *mllpClient {
	t.Helper()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}, Timeout: 5 * time.Second}
	conn, err := d.Dial("tcp", addr.String())
	if err != nil {
		t.Fatalf("dial from %s: %v", src, err)
	}
	t.Cleanup(func() { conn.Close() })
	return newClient(conn)
}

// 64 idle MLLP connections from one IP do not keep another sender out: the per-IP limit
// (16 by default) leaves room. On the old code the 64 took every slot.
func TestLockoutIdleMLLPOtherIP(t *testing.T) {
	rep := &fakeReporter{}
	c := startCollector(t, Config{}, &fakeSink{}, rep)
	idleMLLP(t, c.Addr(), DefaultMaxConnections)
	waitFor(t, "the idle connections handled", func() bool {
		return c.Stats().ConnsAccepted+c.Stats().ConnsRefused == DefaultMaxConnections
	})
	cl := dialMLLPFrom(t, "127.0.0.2", c.Addr())
	cl.send(t, adt("L1"))
	if got := ackCode(cl.readACK(t)); got != AckAccept {
		t.Fatalf("ACK = %q, want %q", got, AckAccept)
	}
	if got := c.Stats().Rejects[ReasonTooManyPerIP]; got == 0 {
		t.Errorf("too_many_connections_per_ip rejects = 0, want some")
	}
	if got, want := c.Stats().ConnsOpen, int64(DefaultMaxConnections/4+1); got != want {
		t.Errorf("open connections = %d, want %d", got, want)
	}
}

// With the per-IP limit at the global one, 64 idle connections fill the table; a new
// client from the same IP evicts the longest-idle one and gets its AA.
func TestLockoutIdleMLLPEvicts(t *testing.T) {
	rep := &fakeReporter{}
	c := startCollector(t, Config{MaxConnectionsPerIP: DefaultMaxConnections}, &fakeSink{}, rep)
	idleMLLP(t, c.Addr(), DefaultMaxConnections)
	waitFor(t, "the idle connections open", func() bool { return c.Stats().ConnsOpen == DefaultMaxConnections })
	time.Sleep(1100 * time.Millisecond) // idle for longer than connset.DefaultMinIdle
	cl := dialMLLP(t, c.Addr())
	cl.send(t, adt("L2"))
	if got := ackCode(cl.readACK(t)); got != AckAccept {
		t.Fatalf("ACK = %q, want %q", got, AckAccept)
	}
	if got, want := c.Stats().ConnsEvicted, uint64(1); got != want {
		t.Errorf("ConnsEvicted = %d, want %d", got, want)
	}
	var evicted int
	for _, r := range rep.getRejects() {
		if r.Reason == ReasonEvictedIdle {
			evicted++
		}
	}
	if evicted != 1 {
		t.Errorf("evicted_idle rejects = %d, want 1", evicted)
	}
}

// An IP at its limit whose connections are all active gets the new one refused, and
// the refusal is reported as too_many_connections_per_ip.
func TestPerIPRefusesWhenActive(t *testing.T) {
	rep := &fakeReporter{}
	c, err := New(Config{MLLP: "127.0.0.1:0", Timezone: "UTC", MaxConnectionsPerIP: 1}, &fakeSink{}, rep, testTokenizer(t), nil)
	if err != nil {
		t.Fatal(err)
	}
	c.conns = connset.New(connset.Limits{Max: DefaultMaxConnections, MaxPerIP: 1, MinIdle: time.Hour})
	runCollector(t, c)
	first := dialMLLP(t, c.Addr())
	first.send(t, adt("P1"))
	first.readACK(t)
	second := dialMLLP(t, c.Addr())
	second.expectClosed(t)
	waitFor(t, "the refusal", func() bool { return c.Stats().Rejects[ReasonTooManyPerIP] == 1 })
	rj := rep.getRejects()
	if len(rj) != 1 || rj[0].IP != "127.0.0.1" {
		t.Errorf("rejects = %+v, want one from 127.0.0.1", rj)
	}
	// The admitted connection still works.
	first.send(t, adt("P2"))
	if got := ackCode(first.readACK(t)); got != AckAccept {
		t.Fatalf("ACK = %q, want %q", got, AckAccept)
	}
}

// A TLS connection that never sends a ClientHello is closed after handshake_timeout
// (not the ten-minute idle timeout) and reported as tls_handshake_timeout.
func TestHandshakeTimeout(t *testing.T) {
	pki := newTestPKI(t)
	rep := &fakeReporter{}
	c := startCollector(t, Config{TLSCert: pki.CertFile, TLSKey: pki.KeyFile, HandshakeTimeout: 200 * time.Millisecond}, &fakeSink{}, rep)
	silent, err := net.Dial("tcp", c.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	_ = silent.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := silent.Read(make([]byte, 1)); err == nil {
		t.Fatal("silent connection got data, want a close")
	} else if ne, ok := err.(net.Error); ok && ne.Timeout() {
		t.Fatal("silent connection still open after 10s")
	}
	waitFor(t, "the reject", func() bool { return c.Stats().Rejects[ReasonHandshakeTimeout] == 1 })
	if got := c.Stats().Rejects[ReasonTLSHandshake]; got != 0 {
		t.Errorf("tls_handshake rejects = %d, want 0 (a timeout is its own reason)", got)
	}
	// A real client is still served.
	conn, err := tls.Dial("tcp", c.Addr().String(), pki.ClientConfig(false))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	cl := newClient(conn)
	cl.send(t, adt("H1"))
	if got := ackCode(cl.readACK(t)); got != AckAccept {
		t.Fatalf("ACK = %q, want %q", got, AckAccept)
	}
}

// runCollector runs an already built collector until the test ends (startCollector
// builds its own, which leaves no room to swap the connection table).
func runCollector(t *testing.T, c *Collector) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- c.Run(ctx) }()
	<-c.Ready()
	t.Cleanup(func() {
		cancel()
		if err := <-errc; err != nil {
			t.Errorf("Run returned %v, want nil", err)
		}
	})
}
