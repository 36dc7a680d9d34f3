package syslog

import (
	"crypto/tls"
	"fmt"
	"net"
	"testing"
	"time"
)

// The lockout tests of issue 6 item 4: idle or silent connections must not keep a new
// sender out. All senders are on loopback; 127.0.0.2 stands for a second sender IP
// (Linux routes all of 127/8 to lo).

// idleConns opens n connections from 127.0.0.1 to addr that never send anything. The
// server may close some of them (refused or evicted); that is what is being tested.
func idleConns(t testing.TB, addr net.Addr, n int) {
	t.Helper()
	for i := range n {
		conn, err := net.DialTimeout("tcp", addr.String(), 5*time.Second)
		if err != nil {
			t.Fatalf("idle connection %d: %v", i, err)
		}
		t.Cleanup(func() { conn.Close() })
	}
}

// dialFrom dials addr from the local IP src.
func dialFrom(t testing.TB, src string, addr net.Addr) net.Conn {
	t.Helper()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}, Timeout: 5 * time.Second}
	conn, err := d.Dial("tcp", addr.String())
	if err != nil {
		t.Fatalf("dial from %s: %v", src, err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// sendAndExpect writes n octet-counted messages on conn and waits until the sink holds
// want events in all.
func sendAndExpect(t testing.TB, conn net.Conn, sink *fakeSink, n, want int) {
	t.Helper()
	for i := range n {
		if _, err := fmt.Fprint(conn, octet(msg5424(i))); err != nil {
			t.Fatalf("write %d: %v", i, err)
		}
	}
	waitFor(t, fmt.Sprintf("%d events", want), func() bool { return sink.len() == want })
}

// 300 idle TCP connections from one IP do not keep a second IP out: the per-IP limit
// (a quarter of max_connections by default) leaves it room. On the old code the first
// 256 took every slot and the second sender was closed at once.
func TestLockoutOneIPCannotTakeAll(t *testing.T) {
	sink, rep := &fakeSink{}, &fakeReporter{}
	c := startCollector(t, Config{TCP: "127.0.0.1:0"}, sink, rep, nil)
	idleConns(t, c.TCPAddr(), 300)
	waitFor(t, "the idle connections handled", func() bool { return c.Stats().ConnsAccepted+c.Stats().ConnsRefused == 300 })
	other := dialFrom(t, "127.0.0.2", c.TCPAddr())
	sendAndExpect(t, other, sink, 10, 10)
	checkPerIPLimited(t, c, rep, "127.0.0.1")
}

// With the per-IP limit as high as the global one, 300 idle connections fill the table;
// a new sender from the same IP then gets in by evicting the longest-idle connection,
// and its messages arrive.
func TestLockoutEvictsIdleTCP(t *testing.T) {
	sink, rep := &fakeSink{}, &fakeReporter{}
	cfg := Config{TCP: "127.0.0.1:0"}
	noPerIPLimit(&cfg)
	c := startCollector(t, cfg, sink, rep, nil)
	idleConns(t, c.TCPAddr(), 300)
	waitFor(t, "the idle connections handled", func() bool { return c.Stats().ConnsAccepted+c.Stats().ConnsRefused == 300 })
	time.Sleep(1100 * time.Millisecond) // let them be idle for longer than connset.DefaultMinIdle
	conn := dialFrom(t, "127.0.0.1", c.TCPAddr())
	sendAndExpect(t, conn, sink, 10, 10)
	checkEvicted(t, c, rep, "tcp")
}

// 300 connections to the TLS port that never send a ClientHello do not keep a real TLS
// sender out.
func TestLockoutSilentTLS(t *testing.T) {
	pki := newTestPKI(t)
	sink, rep := &fakeSink{}, &fakeReporter{}
	cfg := Config{TLS: "127.0.0.1:0", TLSCert: pki.CertFile, TLSKey: pki.KeyFile}
	noPerIPLimit(&cfg)
	c := startCollector(t, cfg, sink, rep, nil)
	idleConns(t, c.TLSAddr(), 300)
	waitFor(t, "the silent connections handled", func() bool { return c.Stats().ConnsAccepted+c.Stats().ConnsRefused == 300 })
	time.Sleep(1100 * time.Millisecond)
	raw := dialFrom(t, "127.0.0.1", c.TLSAddr())
	conn := tls.Client(raw, pki.ClientConfig(false))
	if err := conn.Handshake(); err != nil {
		t.Fatalf("TLS sender's handshake: %v", err)
	}
	sendAndExpect(t, conn, sink, 10, 10)
	checkEvicted(t, c, rep, "tls")
}
