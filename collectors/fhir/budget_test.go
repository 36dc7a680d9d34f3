package fhir

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// Sizes of the budget tests: four stalled bodies of stallCL bytes take the whole
// testBudget (each reserves at least one 64 KiB chunk), so a fifth request cannot fit.
const (
	testBudget  = 256 << 10
	testMaxBody = 64 << 10
	stallCL     = 60 << 10
	stallSent   = 30 << 10
	stallers    = 4
)

// budgetConfig is cfg with testBudget and connection limits high enough that the
// tests' quick retries (each refused connection lingers half-open for lingerDelay) never
// meet them.
func budgetConfig(cfg Config) Config {
	return withLimits(withBudget(cfg, testBudget), 1024, 1024)
}

// stallConn opens a raw connection that sends request headers announcing stallCL bytes
// (or chunked, when chunked is set) and stallSent bytes of body, then stalls.
func stallConn(t testing.TB, addr string, chunked bool) net.Conn {
	t.Helper()
	conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	body := `{"resourceType":"AuditEvent","id":"` + strings.Repeat("x", stallSent-35)
	var req string
	if chunked {
		req = fmt.Sprintf("POST /AuditEvent HTTP/1.1\r\nHost: fhir\r\nContent-Type: application/fhir+json\r\nTransfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n", len(body), body)
	} else {
		req = fmt.Sprintf("POST /AuditEvent HTTP/1.1\r\nHost: fhir\r\nContent-Type: application/fhir+json\r\nContent-Length: %d\r\n\r\n%s", stallCL, body)
	}
	_ = conn.SetWriteDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(conn, req); err != nil {
		t.Fatal(err)
	}
	return conn
}

// waitRequests waits until the collector's handlers have seen n requests.
func waitRequests(t testing.TB, c *Collector, n uint64) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for c.Stats().Requests < n {
		if time.Now().After(deadline) {
			t.Fatalf("requests=%d, want %d", c.Stats().Requests, n)
		}
		time.Sleep(time.Millisecond)
	}
}

type answer struct {
	status     int
	retryAfter string
	close      bool // the server said Connection: close
	body       string
}

func postLogin(t testing.TB, addr string) answer {
	t.Helper()
	req := newPost(t, "http://"+addr+"/AuditEvent", "application/fhir+json", loginJSON)
	req.Close = true
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	// net/http moves "Connection: close" into resp.Close.
	return answer{resp.StatusCode, resp.Header.Get("Retry-After"), resp.Close, string(b)}
}

// eventuallyStatus posts loginJSON until it gets want (bounded), and returns the answer.
func eventuallyStatus(t testing.TB, addr string, want int) answer {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		a := postLogin(t, addr)
		if a.status == want {
			return a
		}
		if time.Now().After(deadline) {
			t.Fatalf("status=%d, want %d: %s", a.status, want, a.body)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestBudgetStalledBodies fills the in-flight budget with stalled bodies, announced by
// Content-Length or chunked: the next request gets 503 with Retry-After and an
// OperationOutcome at once; when the stalled senders go away, the budget comes back and
// a request gets 201.
func TestBudgetStalledBodies(t *testing.T) {
	for _, chunked := range []bool{false, true} {
		t.Run(fmt.Sprintf("chunked=%v", chunked), func(t *testing.T) {
			rep := &fakeReporter{}
			sink := &fakeSink{}
			c := newTestCollector(t, budgetConfig(Config{HTTP: "127.0.0.1:0", MaxBodyBytes: testMaxBody}), sink, rep)
			startCollector(t, c)
			addr := c.Addr().String()
			var conns []net.Conn
			for range stallers {
				conns = append(conns, stallConn(t, addr, chunked))
			}
			waitRequests(t, c, stallers)
			a := eventuallyStatus(t, addr, http.StatusServiceUnavailable)
			if a.retryAfter == "" || !strings.Contains(a.body, `"OperationOutcome"`) || !strings.Contains(a.body, "transient") {
				t.Fatalf("503 without Retry-After or a transient OperationOutcome: Retry-After=%q %s", a.retryAfter, a.body)
			}
			if !a.close {
				t.Fatal("no Connection: close on a 503 before the body was read")
			}
			found := false
			for _, r := range rep.get() {
				found = found || r.Reason == "overloaded"
			}
			if !found {
				t.Fatalf("no overloaded reject reported: %+v", rep.get())
			}
			for _, conn := range conns {
				conn.Close()
			}
			eventuallyStatus(t, addr, http.StatusCreated)
		})
	}
}

// TestBudgetReleasedByReadTimeout leaves the stalled senders connected: read_timeout
// ends their requests, which releases the budget without their help.
func TestBudgetReleasedByReadTimeout(t *testing.T) {
	c := newTestCollector(t, budgetConfig(Config{HTTP: "127.0.0.1:0", MaxBodyBytes: testMaxBody, ReadTimeout: time.Second}), &fakeSink{}, &fakeReporter{})
	startCollector(t, c)
	addr := c.Addr().String()
	var conns []net.Conn
	for range stallers {
		conns = append(conns, stallConn(t, addr, false))
	}
	waitRequests(t, c, stallers)
	eventuallyStatus(t, addr, http.StatusServiceUnavailable)
	eventuallyStatus(t, addr, http.StatusCreated)
	// The stalled senders were cut off by the server, not by the test.
	for i, conn := range conns {
		_ = conn.SetReadDeadline(time.Now().Add(20 * time.Second))
		if _, err := io.Copy(io.Discard, conn); err != nil {
			t.Fatalf("staller %d: %v, want the server to close the connection", i, err)
		}
	}
}

// countingListener counts the bytes the server reads from its connections and notes
// when it closes them.
type countingListener struct {
	net.Listener
	read   atomic.Int64
	mu     sync.Mutex
	closed int
}

func (l *countingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return &countingConn{Conn: c, l: l}, nil
}

type countingConn struct {
	net.Conn
	l    *countingListener
	once sync.Once
}

func (c *countingConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	c.l.read.Add(int64(n))
	return n, err
}

func (c *countingConn) Close() error {
	c.once.Do(func() {
		c.l.mu.Lock()
		c.l.closed++
		c.l.mu.Unlock()
	})
	return c.Conn.Close()
}

// TestUnauthorizedBodyUnread sends a request without a valid bearer token whose body
// (200 KiB, under net/http's 256 KiB post-handler drain) follows the headers at once:
// the answer is 401 with Connection: close, the server closes the connection, and it
// reads nothing beyond the first read that brought the headers.
func TestUnauthorizedBodyUnread(t *testing.T) {
	path := filepath.Join(t.TempDir(), "tokens")
	if err := os.WriteFile(path, []byte("secret-one\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	c := newTestCollector(t, Config{BearerTokensFile: path}, &fakeSink{}, &fakeReporter{})
	srv := httptest.NewUnstartedServer(c.Handler())
	cl := &countingListener{Listener: srv.Listener}
	srv.Listener = cl
	srv.Start()
	t.Cleanup(srv.Close)

	const bodySize = 200 << 10
	conn, err := net.DialTimeout("tcp", srv.Listener.Addr().String(), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	head := fmt.Sprintf("POST /AuditEvent HTTP/1.1\r\nHost: fhir\r\nContent-Type: application/fhir+json\r\nAuthorization: Bearer wrong\r\nContent-Length: %d\r\n\r\n", bodySize)
	_ = conn.SetDeadline(time.Now().Add(20 * time.Second))
	if _, err := io.WriteString(conn, head); err != nil {
		t.Fatal(err)
	}
	wrote := make(chan struct{})
	go func() {
		defer close(wrote)
		// May fail once the server closed the connection; that is the point.
		_, _ = conn.Write([]byte(strings.Repeat("x", bodySize)))
	}()
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	mustStatus(t, resp, http.StatusUnauthorized)
	if !resp.Close {
		t.Fatal("no Connection: close on the 401")
	}
	<-wrote
	deadline := time.Now().Add(10 * time.Second)
	for {
		cl.mu.Lock()
		closed := cl.closed
		cl.mu.Unlock()
		if closed > 0 || cl.read.Load() >= bodySize {
			break
		}
		if time.Now().After(deadline) {
			break
		}
		time.Sleep(time.Millisecond)
	}
	cl.mu.Lock()
	closed := cl.closed
	cl.mu.Unlock()
	// The first read may bring a few body bytes along with the headers (bufio reads 4 KiB).
	if got, most := cl.read.Load(), int64(len(head)+4096); closed == 0 || got > most {
		t.Fatalf("server read %d bytes (at most %d expected) and closed %d connections (want 1)", got, most, closed)
	}
}

// TestBudgetTreeBomb posts a small body that decodes into a tree many times its size
// (300,000 one-byte numbers): the decoded nodes are charged to the budget, so a body
// that alone would need more than all of it is refused with 413 too_complex, the budget
// comes back whole, and an ordinary request is still accepted.
func TestBudgetTreeBomb(t *testing.T) {
	rep := &fakeReporter{}
	c := newTestCollector(t, withBudget(Config{MaxBodyBytes: 1 << 20}, 1<<20), &fakeSink{}, rep)
	bomb := `{"resourceType":"AuditEvent","a":[` + strings.Repeat("1,", 300000) + `1]}`
	rec := post(t, c.Handler(), "/AuditEvent", "application/fhir+json", []byte(bomb))
	if rec.Code != http.StatusRequestEntityTooLarge || !strings.Contains(rec.Body.String(), "OperationOutcome") {
		t.Fatalf("status=%d %s, want 413 with an OperationOutcome", rec.Code, rec.Body)
	}
	if rj := rep.get(); len(rj) != 1 || rj[0].Reason != "too_complex" || rj[0].Size != int64(len(bomb)) {
		t.Fatalf("rejects=%+v, want one too_complex of %d bytes", rj, len(bomb))
	}
	if got := inflightBytes(c); got != 0 {
		t.Fatalf("%d bytes of the budget still held after the request", got)
	}
	if rec := post(t, c.Handler(), "/AuditEvent", "application/fhir+json", []byte(loginJSON)); rec.Code != http.StatusCreated {
		t.Fatalf("ordinary request after the bomb: status=%d %s", rec.Code, rec.Body)
	}
}

// TestRefusalReachesEagerSender: a sender that writes a large body right after its
// headers, without waiting, still reads its 401, although the collector leaves the body
// unread and closes. (Closing a socket with unread data sends a RST, which on some
// stacks destroys the answer in the sender's kernel; closeUnread sends FIN first and
// lingers, as net/http does. Linux loopback keeps the answer even without that, so here
// this guards the answer, not the linger.)
func TestRefusalReachesEagerSender(t *testing.T) {
	path := filepath.Join(t.TempDir(), "tokens")
	if err := os.WriteFile(path, []byte("secret-one\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	c := newTestCollector(t, Config{HTTP: "127.0.0.1:0", BearerTokensFile: path}, &fakeSink{}, &fakeReporter{})
	startCollector(t, c)
	const bodySize = 4 << 20
	body := []byte(strings.Repeat("x", bodySize))
	for i := range 5 {
		conn, err := net.DialTimeout("tcp", c.Addr().String(), 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		_ = conn.SetDeadline(time.Now().Add(20 * time.Second))
		head := fmt.Sprintf("POST /AuditEvent HTTP/1.1\r\nHost: fhir\r\nContent-Type: application/fhir+json\r\nContent-Length: %d\r\n\r\n", bodySize)
		wrote := make(chan struct{})
		go func() {
			defer close(wrote)
			_, _ = conn.Write(append([]byte(head), body...)) // fails once the server closes
		}()
		// Let the body fill the socket buffers before reading, as a sender busy
		// writing would.
		time.Sleep(50 * time.Millisecond)
		resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
		if err != nil {
			conn.Close()
			t.Fatalf("attempt %d: no answer: %v", i, err)
		}
		resp.Body.Close()
		conn.Close()
		<-wrote
		mustStatus(t, resp, http.StatusUnauthorized)
	}
}
