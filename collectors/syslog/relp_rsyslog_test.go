package syslog

import (
	"bufio"
	"bytes"
	"context"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// These tests run a real rsyslogd (Debian rsyslog + rsyslog-relp) that reads messages
// with imtcp and forwards them with omrelp to the RELP listener running in the test.

// relpPeerMissing fails under CI=true and skips elsewhere.
func relpPeerMissing(t testing.TB, format string, args ...any) {
	t.Helper()
	if os.Getenv("CI") == "true" {
		t.Fatalf("peer missing under CI=true: "+format, args...)
	}
	t.Skipf("peer missing: "+format, args...)
}

// rsyslogdForRELP finds rsyslogd and checks that omrelp is installed.
func rsyslogdForRELP(t testing.TB) string {
	t.Helper()
	bin, err := exec.LookPath("rsyslogd")
	if err != nil {
		bin = "/usr/sbin/rsyslogd"
		if _, err := os.Stat(bin); err != nil {
			relpPeerMissing(t, "rsyslogd not found (package rsyslog)")
		}
	}
	for _, g := range []string{"/usr/lib/*/rsyslog/omrelp.so", "/usr/lib/rsyslog/omrelp.so"} {
		if m, _ := filepath.Glob(g); len(m) > 0 {
			return bin
		}
	}
	relpPeerMissing(t, "rsyslog's omrelp.so not found (package rsyslog-relp)")
	return ""
}

// rsyslogRELP is a running rsyslogd whose imtcp input (LF framing) is forwarded with
// omrelp.
type rsyslogRELP struct {
	input string
	out   *bytes.Buffer
	mu    *sync.Mutex
}

func (r *rsyslogRELP) log() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.out.String()
}

type lockedWriter struct {
	mu *sync.Mutex
	b  *bytes.Buffer
}

func (w lockedWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.Write(p)
}

// startRsyslogRELP runs rsyslogd in the foreground with its own config, work folder and
// pid file; omrelpOpts are extra omrelp action parameters (TLS). It returns once imtcp
// accepts connections; the cleanup kills it.
func startRsyslogRELP(t testing.TB, target net.Addr, omrelpOpts string) *rsyslogRELP {
	t.Helper()
	bin := rsyslogdForRELP(t)
	dir := t.TempDir()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	input := ln.Addr().String()
	ln.Close()
	_, inPort, _ := net.SplitHostPort(input)
	host, port, _ := net.SplitHostPort(target.String())
	// No imuxsock or imklog: this rsyslogd must not touch the machine's /dev/log. The
	// input is bound to its own ruleset, so rsyslogd's own messages are not forwarded.
	// One action worker, so the order of the input is the order on the wire.
	conf := fmt.Sprintf(`global(workDirectory=%q)
module(load="imtcp")
module(load="omrelp")
input(type="imtcp" address="127.0.0.1" port=%q ruleset="fwd")
ruleset(name="fwd") {
  action(type="omrelp" target=%q port=%q template="RSYSLOG_SyslogProtocol23Format"
         windowSize="128" timeout="30"
         action.resumeRetryCount="-1" action.resumeInterval="1" %s)
}
`, dir, inPort, host, port, omrelpOpts)
	confPath := filepath.Join(dir, "rsyslog.conf")
	if err := os.WriteFile(confPath, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.CommandContext(t.Context(), bin, "-N1", "-f", confPath).CombinedOutput(); err != nil {
		t.Fatalf("rsyslogd -N1 (config check): %v\n%s\n%s", err, out, conf)
	}
	r := &rsyslogRELP{input: input, out: &bytes.Buffer{}, mu: &sync.Mutex{}}
	cmd := exec.Command(bin, "-n", "-f", confPath, "-i", filepath.Join(dir, "rsyslogd.pid"))
	cmd.Stdout = lockedWriter{r.mu, r.out}
	cmd.Stderr = cmd.Stdout
	if err := cmd.Start(); err != nil {
		t.Fatalf("start rsyslogd: %v", err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-exited
		if t.Failed() {
			t.Logf("rsyslogd output:\n%s", r.log())
		}
	})
	deadline := time.Now().Add(15 * time.Second)
	for {
		select {
		case <-exited:
			t.Fatalf("rsyslogd exited:\n%s", r.log())
		default:
		}
		c, err := net.DialTimeout("tcp", input, time.Second)
		if err == nil {
			c.Close()
			return r
		}
		if time.Now().After(deadline) {
			t.Fatalf("rsyslogd imtcp %s not ready: %v\n%s", input, err, r.log())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// feed sends markers tag-1..tag-n to rsyslogd's imtcp input, LF framed.
func (r *rsyslogRELP) feed(t testing.TB, tag string, from, to int) {
	t.Helper()
	c, err := net.DialTimeout("tcp", r.input, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetWriteDeadline(time.Now().Add(30 * time.Second))
	var b []byte
	for i := from; i <= to; i++ {
		b = fmt.Appendf(b, "<134>1 2026-03-15T10:00:00Z host relp-it - - - %s-%d\n", tag, i)
	}
	if _, err := c.Write(b); err != nil {
		t.Fatalf("write to rsyslogd: %v", err)
	}
}

var markerRE = regexp.MustCompile(`^([a-z-]+)-(\d+)$`)

// markerIndexes returns the marker numbers of the events, in order.
func markerIndexes(t testing.TB, sink *heldSink, tag string, transport string) []int {
	t.Helper()
	var out []int
	for _, e := range sink.decoded(t) {
		m := markerRE.FindStringSubmatch(strings.TrimSpace(e.Message))
		if m == nil || m[1] != tag {
			t.Fatalf("unexpected event message %q", e.Message)
		}
		if e.Source.Transport != transport || e.Source.App != "relp-it" || e.Malformed {
			t.Fatalf("event %+v: want transport %s, app relp-it, well-formed", e.Source, transport)
		}
		n, _ := strconv.Atoi(m[2])
		out = append(out, n)
	}
	return out
}

// waitAppended waits (at most 60 s) for n appends.
func waitAppended(t testing.TB, sink *heldSink, n int, rs *rsyslogRELP) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for sink.appended() < n {
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d messages arrived within 60s\nrsyslogd:\n%s", sink.appended(), n, rs.log())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestRELPRsyslog: every message rsyslogd forwards with omrelp arrives once, in order,
// and is acknowledged.
func TestRELPRsyslog(t *testing.T) {
	const n = 2000
	sink, rep := &heldSink{auto: true}, &fakeReporter{}
	s := newRELPServer(t, Config{}, RELPConfig{RELP: "127.0.0.1:0"}, sink, rep)
	serveRELP(t, s)
	rs := startRsyslogRELP(t, s.Addr(), "")
	rs.feed(t, "rsyslog-relp", 1, n)
	waitAppended(t, sink, n, rs)
	got := markerIndexes(t, sink, "rsyslog-relp", TransportRELP)
	for i, m := range got {
		if m != i+1 {
			t.Fatalf("event %d is marker %d, want %d (every message once, in order)", i, m, i+1)
		}
	}
	// rsyslogd reads the last answers asynchronously; the counter says they were sent.
	deadline := time.Now().Add(10 * time.Second)
	for s.Stats().Received < n && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if st := s.Stats(); st.Received != n || st.Refused != 0 || st.Sessions < 1 {
		t.Errorf("Stats = %+v, want %d received, none refused, a session", st, n)
	}
	if r := rep.getRejects(); len(r) != 0 {
		t.Errorf("rejects = %+v, want none", r)
	}
}

// TestRELPRsyslogResend stops the listener while frames are appended but not
// committed, then starts a new one on the same port: rsyslogd resends what was not
// acknowledged, so every message is committed at least once.
func TestRELPRsyslogResend(t *testing.T) {
	const n, hold = 600, 250
	rep := &fakeReporter{}
	first := &heldSink{auto: true}
	s1 := newRELPServer(t, Config{}, RELPConfig{RELP: "127.0.0.1:0"}, first, rep)
	s1.drain = 50 * time.Millisecond
	ctx1, stop1 := context.WithCancel(context.Background())
	lns, err := s1.Listen(ctx1)
	if err != nil {
		t.Fatal(err)
	}
	addr := s1.Addr()
	var wg1 sync.WaitGroup
	wg1.Go(func() { _ = s1.Serve(ctx1, &wg1, lns[0]) })
	defer func() { stop1(); wg1.Wait() }()

	rs := startRsyslogRELP(t, addr, "")
	// The first hold messages are committed and acknowledged; the next ones are
	// appended and never committed by this listener.
	first.mu.Lock()
	first.auto = true
	first.mu.Unlock()
	rs.feed(t, "resend", 1, hold)
	waitAppended(t, first, hold, rs)
	first.mu.Lock()
	first.auto = false
	first.mu.Unlock()
	rs.feed(t, "resend", hold+1, n)
	waitAppended(t, first, hold+1, rs)
	stop1()
	wg1.Wait()
	acked := s1.Stats().Received
	if acked < hold {
		t.Fatalf("first listener acknowledged %d, want at least %d", acked, hold)
	}

	second := &heldSink{auto: true}
	c2 := newRELPServer(t, Config{}, RELPConfig{RELP: addr.String()}, second, rep)
	serveRELP(t, c2)
	// Everything not acknowledged by the first listener comes again.
	want := n - int(acked)
	waitAppended(t, second, want, rs)
	seen := make(map[int]int)
	for _, m := range markerIndexes(t, first, "resend", TransportRELP)[:acked] {
		seen[m]++
	}
	for _, m := range markerIndexes(t, second, "resend", TransportRELP) {
		seen[m]++
	}
	for i := 1; i <= n; i++ {
		if seen[i] == 0 {
			t.Errorf("marker %d never committed", i)
		}
	}
	dups := 0
	for _, k := range seen {
		dups += k - 1
	}
	t.Logf("first listener acknowledged %d of %d; second received %d; duplicates %d; serverclose sent %d",
		acked, n, second.appended(), dups, s1.Stats().ServerCloses)
	if s1.Stats().ServerCloses < 1 {
		t.Errorf("first listener sent no serverclose at shutdown")
	}
}

// TestRELPRsyslogTLS: omrelp with tls="on" verifying the server certificate against
// the test CA, into relp_tls.
func TestRELPRsyslogTLS(t *testing.T) {
	const n = 300
	pki := newTestPKI(t)
	sink, rep := &heldSink{auto: true}, &fakeReporter{}
	s := newRELPServer(t, Config{TLSCert: pki.CertFile, TLSKey: pki.KeyFile, TLSClientCA: pki.CAFile},
		RELPConfig{RELPTLS: "127.0.0.1:0"}, sink, rep)
	serveRELP(t, s)
	cert, key := writeClientPEM(t, pki)
	rs := startRsyslogRELP(t, s.TLSAddr(), fmt.Sprintf(
		`tls="on" tls.caCert=%q tls.myCert=%q tls.myPrivKey=%q tls.authMode="certvalid"`,
		pki.CAFile, cert, key))
	rs.feed(t, "rsyslog-relp-tls", 1, n)
	waitAppended(t, sink, n, rs)
	for i, m := range markerIndexes(t, sink, "rsyslog-relp-tls", TransportRELPTLS) {
		if m != i+1 {
			t.Fatalf("event %d is marker %d, want %d", i, m, i+1)
		}
	}
	deadline := time.Now().Add(10 * time.Second)
	for s.Stats().ReceivedTLS < n && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if st := s.Stats(); st.ReceivedTLS != n || st.Received != 0 {
		t.Errorf("Stats = %+v, want %d received over relp+tls, none over relp", st, n)
	}
	if r := rep.getRejects(); len(r) != 0 {
		t.Errorf("rejects = %+v, want none", r)
	}
}

// writeClientPEM writes the test PKI's client certificate and key as PEM files, for
// rsyslogd.
func writeClientPEM(t testing.TB, p *testPKI) (cert, key string) {
	t.Helper()
	dir := t.TempDir()
	cert, key = filepath.Join(dir, "client.pem"), filepath.Join(dir, "client-key.pem")
	var cb []byte
	for _, der := range p.Client.Certificate {
		cb = append(cb, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})...)
	}
	kder, err := x509.MarshalPKCS8PrivateKey(p.Client.PrivateKey)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(cert, cb, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(key, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder}), 0o600); err != nil {
		t.Fatal(err)
	}
	return cert, key
}

// TestRsyslogRELP500IsFinal pins the librelp behaviour that the listener's handling of
// a full spool rests on: omrelp drops a message answered "rsp 500" for good (it logs
// "peer sent error response" and goes on with the next one), while a message whose
// session ends unanswered is resent on the next session. So the listener answers 500
// only for input that no resend can fix (oversize, protocol errors), and for a full
// spool holds the session and then closes it unanswered. A responder in the test
// answers the third message with 500 or closes the connection instead.
func TestRsyslogRELP500IsFinal(t *testing.T) {
	tests := []struct {
		mode  string
		want3 int // how often marker 3 reaches the server
	}{
		{"500", 1},   // answered 500: never sent again
		{"close", 2}, // unanswered: sent again after the reconnect
	}
	for _, tt := range tests {
		t.Run(tt.mode, func(t *testing.T) {
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			var (
				mu      sync.Mutex
				got     []string
				tripped bool
				wg      sync.WaitGroup
			)
			t.Cleanup(func() { ln.Close(); wg.Wait() })
			serve := func(conn net.Conn) {
				defer conn.Close()
				fr := NewRELPFramer(bufio.NewReader(conn), 1<<20)
				for {
					f, err := fr.Next()
					if err != nil {
						return
					}
					rsp, data := relpOK, []byte(nil)
					switch string(f.Command) {
					case "open":
						rsp, data = openResponse(f.Data)
					case "syslog":
						var m []string // the marker is the message's last word
						if w := strings.Fields(string(f.Data)); len(w) > 0 {
							m = markerRE.FindStringSubmatch(w[len(w)-1])
						}
						mu.Lock()
						if m != nil {
							got = append(got, m[2])
						}
						trip := m != nil && m[2] == "3" && !tripped
						tripped = tripped || trip
						mu.Unlock()
						if trip && tt.mode == "close" {
							return
						}
						if trip {
							rsp = relpSpoolFull
						}
					}
					if _, err := conn.Write(appendRSP(nil, f.Txnr, rsp, data)); err != nil {
						return
					}
				}
			}
			wg.Go(func() {
				for {
					conn, err := ln.Accept()
					if err != nil {
						return
					}
					wg.Go(func() { serve(conn) })
				}
			})
			seen := func(marker string) bool {
				mu.Lock()
				defer mu.Unlock()
				return slices.Contains(got, marker)
			}
			rs := startRsyslogRELP(t, ln.Addr(), "")
			rs.feed(t, "final", 1, 3)
			waitFor(t, "marker 3", func() bool { return seen("3") })
			rs.feed(t, "final", 4, 6)
			// rsyslogd sends in order: a resend of 3 comes before 6.
			waitFor(t, "marker 6", func() bool { return seen("6") })
			mu.Lock()
			defer mu.Unlock()
			n := 0
			for _, m := range got {
				if m == "3" {
					n++
				}
			}
			if n != tt.want3 {
				t.Errorf("marker 3 reached the server %d times (all: %v), want %d", n, got, tt.want3)
			}
		})
	}
}
