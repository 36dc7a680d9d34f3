package syslog

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/edgeaudit/edgeaudit/internal/connset"
	"go.uber.org/goleak"
)

func msg5424(i int) string {
	return fmt.Sprintf("<134>1 2026-03-15T10:00:00Z host app - - - message %d", i)
}

func octet(s string) string { return fmt.Sprintf("%d %s", len(s), s) }

// TestLifecycle starts every transport with open connections, cancels, and checks that
// Run returns promptly with nil and leaves no goroutine behind.
func TestLifecycle(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	pki := newTestPKI(t)
	cfg := Config{UDP: "127.0.0.1:0", TCP: "127.0.0.1:0", TLS: "127.0.0.1:0", TLSCert: pki.CertFile, TLSKey: pki.KeyFile, RFC3164TimeZone: "UTC"}
	sink, rep := &fakeSink{}, &fakeReporter{}
	c, err := New(cfg, sink, rep, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	errc := make(chan error, 1)
	go func() { errc <- c.Run(ctx) }()
	<-c.Ready()
	if c.UDPAddr() == nil || c.TCPAddr() == nil || c.TLSAddr() == nil {
		t.Fatal("an address is nil after Ready")
	}

	tcp, err := net.Dial("tcp", c.TCPAddr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer tcp.Close()
	fmt.Fprintf(tcp, "%s\n", msg5424(1))
	tlsConn, err := tls.Dial("tcp", c.TLSAddr().String(), pki.ClientConfig(false))
	if err != nil {
		t.Fatal(err)
	}
	defer tlsConn.Close()
	fmt.Fprint(tlsConn, octet(msg5424(2)))
	udp, err := net.Dial("udp", c.UDPAddr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer udp.Close()
	fmt.Fprint(udp, msg5424(3))
	// A connection that sent nothing at all, and one stuck in the middle of a frame.
	idle, err := net.Dial("tcp", c.TCPAddr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer idle.Close()
	half, err := net.Dial("tcp", c.TCPAddr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer half.Close()
	fmt.Fprint(half, "100 <13>1 partial")

	waitFor(t, "three events", func() bool { return sink.len() == 3 })
	waitFor(t, "four connections", func() bool { return c.Stats().ConnsOpen == 4 })

	cancel()
	select {
	case err := <-errc:
		if err != nil {
			t.Fatalf("Run = %v, want nil", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not return within 5s of cancel")
	}
	if got := c.Stats().ConnsOpen; got != 0 {
		t.Errorf("ConnsOpen after Run = %d, want 0", got)
	}
	s := c.Stats()
	if got, want := s.Received["udp"]+s.Received["tcp"]+s.Received["tls"], uint64(3); got != want {
		t.Errorf("received = %d, want %d", got, want)
	}
	if err := c.Run(t.Context()); err == nil {
		t.Error("second Run = nil, want an error")
	}
}

func TestBindError(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	addr := ln.Addr().String()
	// UDP binds first and must be released when TCP fails.
	c, err := New(Config{UDP: "127.0.0.1:0", TCP: addr}, &fakeSink{}, &fakeReporter{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	err = c.Run(t.Context())
	if err == nil {
		t.Fatal("Run on a busy port = nil, want an error")
	}
	if want := "listen tcp " + addr + ": "; !strings.HasPrefix(err.Error(), want) {
		t.Errorf("error %q does not start with %q", err, want)
	}
	if !errors.Is(err, syscall.EADDRINUSE) {
		t.Errorf("error %v is not EADDRINUSE", err)
	}
	if strings.Count(err.Error(), addr) != 1 {
		t.Errorf("error %q repeats the address", err)
	}
}

func TestDisabledRunsUntilCancel(t *testing.T) {
	c, err := New(Config{}, &fakeSink{}, &fakeReporter{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 50*time.Millisecond)
	defer cancel()
	if err := c.Run(ctx); err != nil {
		t.Fatalf("Run = %v, want nil", err)
	}
}

func TestTCPManyMessagesInOrder(t *testing.T) {
	sink, rep := &fakeSink{}, &fakeReporter{}
	c := startCollector(t, Config{TCP: "127.0.0.1:0"}, sink, rep, nil)
	for _, framing := range []string{"octet", "lf"} {
		t.Run(framing, func(t *testing.T) {
			before := sink.len()
			conn, err := net.Dial("tcp", c.TCPAddr().String())
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			w := bufio.NewWriter(conn)
			const n = 5000
			for i := range n {
				if framing == "octet" {
					w.WriteString(octet(msg5424(i)))
				} else {
					w.WriteString(msg5424(i) + "\n")
				}
			}
			if err := w.Flush(); err != nil {
				t.Fatal(err)
			}
			waitFor(t, "all events", func() bool { return sink.len() == before+n })
			evs := sink.decoded(t)[before:]
			for i, ev := range evs {
				if got, want := ev.Message, fmt.Sprintf("message %d", i); got != want {
					t.Fatalf("event %d message = %q, want %q", i, got, want)
				}
				if got, want := ev.Source.IP, "127.0.0.1"; got != want {
					t.Fatalf("source.ip = %q, want %q", got, want)
				}
			}
		})
	}
}

// TestBackpressure refuses appends for a while: the TCP stream must pause and deliver
// everything in order, and UDP must count refused datagrams as lost.
func TestBackpressure(t *testing.T) {
	t.Run("tcp", func(t *testing.T) {
		sink, rep := &fakeSink{refuse: 5}, &fakeReporter{}
		c := startCollector(t, Config{TCP: "127.0.0.1:0"}, sink, rep, nil)
		conn, err := net.Dial("tcp", c.TCPAddr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		for i := range 20 {
			fmt.Fprint(conn, octet(msg5424(i)))
		}
		waitFor(t, "20 events", func() bool { return sink.len() == 20 })
		for i, ev := range sink.decoded(t) {
			if got, want := ev.Message, fmt.Sprintf("message %d", i); got != want {
				t.Fatalf("event %d = %q, want %q", i, got, want)
			}
		}
		if got := c.Stats().BackpressureWaits; got < 5 {
			t.Errorf("BackpressureWaits = %d, want >= 5", got)
		}
	})
	t.Run("tcp refused until shutdown", func(t *testing.T) {
		sink, rep := &fakeSink{refuseAll: true}, &fakeReporter{}
		c, err := New(Config{TCP: "127.0.0.1:0"}, sink, rep, nil)
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(t.Context())
		errc := make(chan error, 1)
		go func() { errc <- c.Run(ctx) }()
		<-c.Ready()
		conn, err := net.Dial("tcp", c.TCPAddr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		fmt.Fprint(conn, octet(msg5424(1)))
		waitFor(t, "retries", func() bool { return c.Stats().BackpressureWaits >= 2 })
		cancel()
		if err := <-errc; err != nil {
			t.Fatalf("Run = %v", err)
		}
		if got, want := rep.getLost("tcp/"+LossShutdown), uint64(1); got != want {
			t.Errorf("lost tcp/shutdown = %d, want %d", got, want)
		}
	})
	t.Run("udp", func(t *testing.T) {
		sink, rep := &fakeSink{refuseAll: true}, &fakeReporter{}
		c := startCollector(t, Config{UDP: "127.0.0.1:0"}, sink, rep, nil)
		conn, err := net.Dial("udp", c.UDPAddr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		for i := range 3 {
			fmt.Fprint(conn, msg5424(i))
		}
		waitFor(t, "3 datagrams lost", func() bool { return rep.getLost("udp/"+LossSpoolFull) == 3 })
		if got, want := c.Stats().Lost[LossSpoolFull], uint64(3); got != want {
			t.Errorf("Stats.Lost[spool_full] = %d, want %d", got, want)
		}
	})
}

// TestUDPKernelDrops stalls the reader with a blocking sink and a small socket buffer,
// so the kernel drops datagrams, and checks that the drops are reported, and that every
// datagram sent is either received or reported lost.
func TestUDPKernelDrops(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("SO_RXQ_OVFL is Linux only")
	}
	block := make(chan struct{})
	sink, rep := &fakeSink{}, &fakeReporter{}
	sink.setBlock(block)
	c := startCollector(t, Config{UDP: "127.0.0.1:0", UDPReadBuffer: 4096}, sink, rep, nil)
	conn, err := net.Dial("udp", c.UDPAddr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	const sent = 500
	for i := range sent {
		fmt.Fprint(conn, msg5424(i))
	}
	sink.setBlock(nil)
	close(block)
	// One more datagram after the drops carries the kernel's counter.
	waitFor(t, "drops reported", func() bool {
		fmt.Fprint(conn, msg5424(sent))
		time.Sleep(5 * time.Millisecond)
		return rep.getLost("udp/"+LossKernelDrop) > 0
	})
	lost := rep.getLost("udp/" + LossKernelDrop)
	s := c.Stats()
	t.Logf("sent %d, read %d, kernel dropped %d", sent, s.Datagrams, lost)
	if got := s.Lost[LossKernelDrop]; got != lost {
		t.Errorf("Stats.Lost[kernel_drop] = %d, reported %d", got, lost)
	}
	// Every datagram of the burst is accounted for (the probes after it may add a few).
	if got := s.Datagrams + lost; got < sent {
		t.Errorf("received %d + lost %d = %d, want >= %d", s.Datagrams, lost, got, sent)
	}
}

func TestConnectionLimit(t *testing.T) {
	sink, rep := &fakeSink{}, &fakeReporter{}
	// No eviction (nothing is idle for an hour) and no separate per-IP limit: this is
	// the refusal path; limits_*_test.go has the others.
	c := startCollector(t, Config{TCP: "127.0.0.1:0", MaxConnections: 2, MaxConnectionsPerIP: 2}, sink, rep, nil,
		func(c *Collector) { c.conns = connset.New(connset.Limits{Max: 2, MinIdle: time.Hour}) })
	var conns []net.Conn
	for range 2 {
		conn, err := net.Dial("tcp", c.TCPAddr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		conns = append(conns, conn)
	}
	waitFor(t, "two open connections", func() bool { return c.Stats().ConnsOpen == 2 })
	third, err := net.Dial("tcp", c.TCPAddr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer third.Close()
	_ = third.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := third.Read(make([]byte, 1)); err == nil {
		t.Fatal("third connection was not closed")
	}
	if got, want := c.Stats().ConnsRefused, uint64(1); got != want {
		t.Errorf("ConnsRefused = %d, want %d", got, want)
	}
	rj := rep.getRejects()
	if len(rj) != 1 || rj[0].Reason != ReasonTooManyConnections || rj[0].IP != "127.0.0.1" {
		t.Errorf("rejects = %+v, want one too_many_connections from 127.0.0.1", rj)
	}
	// The admitted connections still work, and a slot frees when one closes.
	fmt.Fprintf(conns[0], "%s\n", msg5424(1))
	waitFor(t, "event on an admitted connection", func() bool { return sink.len() == 1 })
	conns[1].Close()
	waitFor(t, "slot freed", func() bool { return c.Stats().ConnsOpen == 1 })
	fourth, err := net.Dial("tcp", c.TCPAddr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer fourth.Close()
	fmt.Fprintf(fourth, "%s\n", msg5424(2))
	waitFor(t, "event on the new connection", func() bool { return sink.len() == 2 })
}

func TestIdleTimeout(t *testing.T) {
	sink, rep := &fakeSink{}, &fakeReporter{}
	c := startCollector(t, Config{TCP: "127.0.0.1:0", IdleTimeout: 100 * time.Millisecond}, sink, rep, nil)
	conn, err := net.Dial("tcp", c.TCPAddr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	fmt.Fprint(conn, "50 <13>1 partial")
	start := time.Now()
	_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.Copy(io.Discard, conn); err != nil {
		t.Fatalf("read: %v (want the server to close)", err)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("closed after %v, want about 100ms", d)
	}
	waitFor(t, "the reject", func() bool { return len(rep.getRejects()) == 1 })
	if got := rep.getRejects()[0].Reason; got != ReasonTruncated {
		t.Errorf("reason = %q, want %q", got, ReasonTruncated)
	}
}

// TestOneBadSender checks that a sender whose stream is broken is cut off without
// disturbing a well-behaved one.
func TestOneBadSender(t *testing.T) {
	sink, rep := &fakeSink{}, &fakeReporter{}
	c := startCollector(t, Config{TCP: "127.0.0.1:0"}, sink, rep, nil)
	good, err := net.Dial("tcp", c.TCPAddr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer good.Close()
	bad, err := net.Dial("tcp", c.TCPAddr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer bad.Close()
	fmt.Fprint(good, octet(msg5424(0)))
	fmt.Fprint(bad, octet(msg5424(100))+"xx garbage")
	_ = bad.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.Copy(io.Discard, bad); err != nil {
		t.Fatalf("bad sender not closed: %v", err)
	}
	fmt.Fprint(good, octet(msg5424(1)))
	waitFor(t, "3 events", func() bool { return sink.len() == 3 })
	if got := c.Stats().Rejects[ReasonBadOctetCount]; got != 1 {
		t.Errorf("bad_octet_count rejects = %d, want 1", got)
	}
}

func TestTLS(t *testing.T) {
	pki := newTestPKI(t)
	t.Run("no client CA", func(t *testing.T) {
		sink, rep := &fakeSink{}, &fakeReporter{}
		c := startCollector(t, Config{TLS: "127.0.0.1:0", TLSCert: pki.CertFile, TLSKey: pki.KeyFile}, sink, rep, nil)
		conn, err := tls.Dial("tcp", c.TLSAddr().String(), pki.ClientConfig(false))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		fmt.Fprint(conn, octet(msg5424(1)))
		waitFor(t, "event", func() bool { return sink.len() == 1 })
		if got, want := sink.decoded(t)[0].Source.Transport, "tls"; got != want {
			t.Errorf("transport = %q, want %q", got, want)
		}
	})
	t.Run("client CA required", func(t *testing.T) {
		sink, rep := &fakeSink{}, &fakeReporter{}
		c := startCollector(t, Config{TLS: "127.0.0.1:0", TLSCert: pki.CertFile, TLSKey: pki.KeyFile, TLSClientCA: pki.CAFile}, sink, rep, nil)

		// Without a certificate: refused. Under TLS 1.3 the client learns it on its
		// first read, after its handshake already returned.
		conn, err := tls.Dial("tcp", c.TLSAddr().String(), pki.ClientConfig(false))
		if err == nil {
			fmt.Fprint(conn, octet(msg5424(1)))
			_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
			_, err = conn.Read(make([]byte, 1))
			conn.Close()
		}
		if err == nil {
			t.Fatalf("client without certificate: err = %v, want a TLS failure", err)
		}
		waitFor(t, "handshake reject", func() bool { return c.Stats().Rejects[ReasonTLSHandshake] == 1 })

		// With a certificate: accepted.
		conn, err = tls.Dial("tcp", c.TLSAddr().String(), pki.ClientConfig(true))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		fmt.Fprint(conn, octet(msg5424(2)))
		waitFor(t, "event", func() bool { return sink.len() == 1 })
		if got, want := sink.decoded(t)[0].Message, "message 2"; got != want {
			t.Errorf("message = %q, want %q", got, want)
		}
		rj := rep.getRejects()
		if len(rj) != 1 || rj[0].Transport != "tls" || rj[0].Reason != ReasonTLSHandshake {
			t.Errorf("rejects = %+v, want one tls_handshake", rj)
		}
	})
	t.Run("plain TCP to the TLS port", func(t *testing.T) {
		sink, rep := &fakeSink{}, &fakeReporter{}
		c := startCollector(t, Config{TLS: "127.0.0.1:0", TLSCert: pki.CertFile, TLSKey: pki.KeyFile}, sink, rep, nil)
		conn, err := net.Dial("tcp", c.TLSAddr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		fmt.Fprintf(conn, "%s\n", msg5424(1))
		_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
		_, _ = io.Copy(io.Discard, conn)
		waitFor(t, "handshake reject", func() bool { return c.Stats().Rejects[ReasonTLSHandshake] == 1 })
		if got := sink.len(); got != 0 {
			t.Errorf("events = %d, want 0", got)
		}
	})
}

func TestUDPOversize(t *testing.T) {
	sink, rep := &fakeSink{}, &fakeReporter{}
	c := startCollector(t, Config{UDP: "127.0.0.1:0", MaxMessageSize: 2048}, sink, rep, nil)
	conn, err := net.Dial("udp", c.UDPAddr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	fmt.Fprint(conn, "<13>1 - - - - - - "+strings.Repeat("x", 3000))
	fmt.Fprint(conn, msg5424(1))
	waitFor(t, "event", func() bool { return sink.len() == 1 })
	rj := rep.getRejects()
	if len(rj) != 1 || rj[0].Reason != ReasonOversize || rj[0].Size != 3018 || rj[0].Transport != "udp" {
		t.Errorf("rejects = %+v, want one udp oversize of 3018 bytes", rj)
	}
}

func TestEmptyFramesCounted(t *testing.T) {
	sink, rep := &fakeSink{}, &fakeReporter{}
	c := startCollector(t, Config{TCP: "127.0.0.1:0"}, sink, rep, nil)
	conn, err := net.Dial("tcp", c.TCPAddr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	fmt.Fprintf(conn, "\n\r\n  \n%s\n", msg5424(1))
	waitFor(t, "event", func() bool { return sink.len() == 1 })
	if got, want := c.Stats().Empty, uint64(3); got != want {
		t.Errorf("Empty = %d, want %d", got, want)
	}
}
