package fhir

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"testing"
	"time"
)

// pastMinIdle is longer than connset's default MinIdle: a connection idle this long may
// be evicted to make room, one that is busy may not.
const pastMinIdle = 1200 * time.Millisecond

// clientFrom is an HTTP client whose connections come from src (an address of
// 127.0.0.0/8), one connection per request.
func clientFrom(src string) *http.Client {
	d := &net.Dialer{Timeout: 5 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}}
	return &http.Client{Timeout: 20 * time.Second, Transport: &http.Transport{
		DialContext:       func(ctx context.Context, n, a string) (net.Conn, error) { return d.DialContext(ctx, n, a) },
		DisableKeepAlives: true,
	}}
}

// refusedAtConnect dials from src and sends a request: a connection the limits refused
// is closed without an HTTP answer.
func refusedAtConnect(t testing.TB, src, addr string) bool {
	t.Helper()
	d := &net.Dialer{Timeout: 5 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}}
	conn, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	_, _ = io.WriteString(conn, "GET /AuditEvent HTTP/1.1\r\nHost: fhir\r\n\r\n")
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err == nil {
		resp.Body.Close()
		t.Logf("answered %d", resp.StatusCode)
		return false
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		t.Fatalf("no answer and no close: %v", err)
	}
	return true
}

// waitReason waits until want rejects of reason were reported, and fails if more were.
func waitReason(t testing.TB, rep *fakeReporter, reason string, want int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for countReason(rep, reason) < want {
		if time.Now().After(deadline) {
			break
		}
		time.Sleep(time.Millisecond)
	}
	if got := countReason(rep, reason); got != want {
		t.Fatalf("%d %s rejects reported, want %d: %+v", got, reason, want, rep.get())
	}
}

func countReason(rep *fakeReporter, reason string) int {
	n := 0
	for _, r := range rep.get() {
		if r.Reason == reason {
			n++
		}
	}
	return n
}

// TestConnectionLimitPerIP: with two requests of 127.0.0.1 waiting for their commits,
// a third connection from that address is refused (and reported), even after the
// eviction grace: a request waiting for its commit is busy, not idle, so it is never
// evicted. Another address still gets in; both waiting requests get their 201.
func TestConnectionLimitPerIP(t *testing.T) {
	hold := make(chan struct{})
	sink := &fakeSink{hold: hold}
	rep := &fakeReporter{}
	c := newTestCollector(t, withLimits(Config{HTTP: "127.0.0.1:0"}, 8, 2), sink, rep)
	startCollector(t, c)
	addr := c.Addr().String()
	url := "http://" + addr + "/AuditEvent"

	statuses := make(chan int, 2)
	for range 2 {
		go func() {
			resp, err := clientFrom("127.0.0.1").Do(newPost(t, url, "application/fhir+json", loginJSON))
			if err != nil {
				statuses <- 0
				return
			}
			resp.Body.Close()
			statuses <- resp.StatusCode
		}()
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		sink.mu.Lock()
		n := sink.n
		sink.mu.Unlock()
		if n == 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of 2 requests appended", n)
		}
		time.Sleep(time.Millisecond)
	}
	time.Sleep(pastMinIdle)
	if !refusedAtConnect(t, "127.0.0.1", addr) {
		t.Fatal("a third connection from 127.0.0.1 was served, want it refused by max_connections_per_ip 2")
	}
	// The listener closes a refused connection first and reports it after.
	waitReason(t, rep, ReasonTooManyPerIP, 1)
	if got := c.Stats().Rejects[ReasonTooManyPerIP]; got != 1 {
		t.Fatalf("Stats.Rejects[%s]=%d, want 1", ReasonTooManyPerIP, got)
	}
	resp, err := clientFrom("127.0.0.2").Get(url)
	if err != nil {
		t.Fatalf("another address was refused: %v", err)
	}
	resp.Body.Close()
	mustStatus(t, resp, http.StatusMethodNotAllowed)
	close(hold)
	for range 2 {
		if st := <-statuses; st != http.StatusCreated {
			t.Fatalf("a request waiting for its commit got %d, want 201 (not evicted)", st)
		}
	}
	if got := countReason(rep, ReasonEvictedIdle); got != 0 {
		t.Fatalf("%d evictions, want 0", got)
	}
}

// TestConnectionLimitEvictsIdle: with the table full of connections that never sent a
// byte, a new sender gets in: the longest-idle connection is closed to make room, and
// the eviction is reported.
func TestConnectionLimitEvictsIdle(t *testing.T) {
	rep := &fakeReporter{}
	c := newTestCollector(t, withLimits(Config{HTTP: "127.0.0.1:0"}, 2, 2), &fakeSink{}, rep)
	startCollector(t, c)
	addr := c.Addr().String()
	var idle []net.Conn
	for range 2 {
		d := &net.Dialer{Timeout: 5 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP("127.0.0.2")}}
		conn, err := d.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close() })
		idle = append(idle, conn)
	}
	deadline := time.Now().Add(10 * time.Second)
	for openConns(c) < 2 {
		if time.Now().After(deadline) {
			t.Fatalf("connections=%d, want 2", openConns(c))
		}
		time.Sleep(time.Millisecond)
	}
	time.Sleep(pastMinIdle)
	resp, err := clientFrom("127.0.0.1").Do(newPost(t, "http://"+addr+"/AuditEvent", "application/fhir+json", loginJSON))
	if err != nil {
		t.Fatalf("new sender locked out: %v", err)
	}
	resp.Body.Close()
	mustStatus(t, resp, http.StatusCreated)
	waitReason(t, rep, ReasonEvictedIdle, 1)
	closed := 0
	for _, conn := range idle {
		_ = conn.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
		if _, err := conn.Read(make([]byte, 1)); err == io.EOF {
			closed++
		}
	}
	if closed != 1 {
		t.Fatalf("%d idle connections closed, want 1", closed)
	}
}

// TestTLSHandshakeTimeout: a client that opens a TLS connection and never sends its
// ClientHello is cut off by the handshake deadline (min(10s, read_timeout)) and
// reported as tls_handshake_timeout, not as a failed handshake.
func TestTLSHandshakeTimeout(t *testing.T) {
	p := newPKI(t)
	rep := &fakeReporter{}
	c := newTestCollector(t, Config{HTTP: "127.0.0.1:0", TLSCert: p.serverCert, TLSKey: p.serverKey, ReadTimeout: time.Second}, &fakeSink{}, rep)
	startCollector(t, c)
	conn, err := net.DialTimeout("tcp", c.Addr().String(), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetReadDeadline(time.Now().Add(20 * time.Second))
	if _, err := io.Copy(io.Discard, conn); err != nil {
		t.Fatalf("silent TLS client: %v, want the server to close the connection", err)
	}
	waitReason(t, rep, "tls_handshake_timeout", 1)
	if got := countReason(rep, ReasonTLSHandshake); got != 0 {
		t.Fatalf("%d %s rejects, want 0", got, ReasonTLSHandshake)
	}
}
