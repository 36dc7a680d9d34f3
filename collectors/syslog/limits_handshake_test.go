package syslog

import (
	"crypto/tls"
	"errors"
	"net"
	"testing"
	"time"

	"github.com/edgeaudit/edgeaudit/internal/connset"
)

// A TLS connection that never sends a ClientHello is closed after handshake_timeout,
// not the idle timeout, and reported as tls_handshake_timeout; a real sender is served.
func TestHandshakeTimeout(t *testing.T) {
	pki := newTestPKI(t)
	sink, rep := &fakeSink{}, &fakeReporter{}
	c := startCollector(t, Config{TLS: "127.0.0.1:0", TLSCert: pki.CertFile, TLSKey: pki.KeyFile,
		HandshakeTimeout: 200 * time.Millisecond}, sink, rep, nil)
	silent, err := net.Dial("tcp", c.TLSAddr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	_ = silent.SetReadDeadline(time.Now().Add(10 * time.Second))
	var ne net.Error
	if _, err := silent.Read(make([]byte, 1)); err == nil || errors.As(err, &ne) && ne.Timeout() {
		t.Fatalf("silent connection: read %v, want it closed by the server", err)
	}
	waitFor(t, "the reject", func() bool { return c.Stats().Rejects[ReasonHandshakeTimeout] == 1 })
	if got := c.Stats().Rejects[ReasonTLSHandshake]; got != 0 {
		t.Errorf("tls_handshake rejects = %d, want 0 (a timeout is its own reason)", got)
	}
	conn, err := tls.Dial("tcp", c.TLSAddr().String(), pki.ClientConfig(false))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	sendAndExpect(t, conn, sink, 3, 3)
}

// An IP at its limit whose connections are all active gets the new one refused (and
// reported); other IPs are not affected.
func TestPerIPRefusesWhenActive(t *testing.T) {
	sink, rep := &fakeSink{}, &fakeReporter{}
	c := startCollector(t, Config{TCP: "127.0.0.1:0", MaxConnectionsPerIP: 1}, sink, rep, nil,
		func(c *Collector) { c.conns = connset.New(connset.Limits{Max: 8, MaxPerIP: 1, MinIdle: time.Hour}) })
	first := dialFrom(t, "127.0.0.1", c.TCPAddr())
	sendAndExpect(t, first, sink, 1, 1)
	second := dialFrom(t, "127.0.0.1", c.TCPAddr())
	_ = second.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := second.Read(make([]byte, 1)); err == nil {
		t.Fatal("second connection from the same IP was not closed")
	}
	waitFor(t, "the refusal", func() bool { return c.Stats().Rejects[ReasonTooManyPerIP] == 1 })
	if got, want := c.Stats().ConnsRefused, uint64(1); got != want {
		t.Errorf("ConnsRefused = %d, want %d", got, want)
	}
	other := dialFrom(t, "127.0.0.2", c.TCPAddr())
	sendAndExpect(t, other, sink, 1, 2)
	sendAndExpect(t, first, sink, 1, 3)
}
