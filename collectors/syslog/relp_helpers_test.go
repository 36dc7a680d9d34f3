package syslog

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/edgeaudit/edgeaudit/audit"
	"github.com/edgeaudit/edgeaudit/collectors"
)

var _ collectors.Sink = (*heldSink)(nil)

// heldSink is a sink whose commits the test controls: each Append is held until the
// test calls commit (or commits at once with auto), and it can refuse appends.
type heldSink struct {
	mu      sync.Mutex
	events  [][]byte
	pending []func(error) // done callbacks not yet called, in Append order
	auto    bool          // call done(nil) at once, from another goroutine
	refuse  int           // refuse this many appends with errFull; -1 refuses all
	refused int
}

func (s *heldSink) Append(ctx context.Context, e *audit.Event, done func(error)) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := ctx.Err(); err != nil {
		return err
	}
	if s.refuse != 0 {
		if s.refuse > 0 {
			s.refuse--
		}
		s.refused++
		return errFull
	}
	if e.ID == "" {
		e.ID = audit.NewID(time.Now())
	}
	s.events = append(s.events, e.AppendJSON(nil))
	if done == nil {
		return nil
	}
	if s.auto {
		go done(nil)
	} else {
		s.pending = append(s.pending, done)
	}
	return nil
}

// commit reports the commit of the held append at index i (in Append order) with err.
// Each index may be committed once.
func (s *heldSink) commit(t testing.TB, i int, err error) {
	t.Helper()
	s.mu.Lock()
	if i >= len(s.pending) || s.pending[i] == nil {
		s.mu.Unlock()
		t.Fatalf("commit %d: not held (held %d)", i, len(s.pending))
	}
	done := s.pending[i]
	s.pending[i] = nil
	s.mu.Unlock()
	done(err)
}

func (s *heldSink) setRefuse(n int) {
	s.mu.Lock()
	s.refuse = n
	s.mu.Unlock()
}

func (s *heldSink) appended() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.events)
}

func (s *heldSink) refusedN() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.refused
}

func (s *heldSink) decoded(t testing.TB) []audit.Event {
	t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]audit.Event, 0, len(s.events))
	for _, b := range s.events {
		e, err := audit.Decode(b)
		if err != nil {
			t.Fatalf("decode event: %v", err)
		}
		out = append(out, e)
	}
	return out
}

// relpOffers is what rsyslog's omrelp (librelp 1.11) offers in its open command.
const relpOffers = "relp_version=0\nrelp_software=librelp,1.11.0,http://librelp.adiscon.com\ncommands=syslog"

// relpPeer is the client end of a RELP session: it writes commands and reads the
// server's frames (rsp and serverclose) with the same framer the server uses.
type relpPeer struct {
	t    testing.TB
	conn net.Conn
	fr   *RELPFramer
	txnr int
}

func newRELPPeer(t testing.TB, conn net.Conn) *relpPeer {
	return &relpPeer{t: t, conn: conn, fr: NewRELPFramer(bufio.NewReader(conn), 1<<20), txnr: 1}
}

// send writes one command with the next TXNR and returns that TXNR.
func (p *relpPeer) send(cmd, data string) int {
	p.t.Helper()
	n := p.txnr
	p.txnr = nextTxnr(p.txnr)
	p.raw(string(AppendRELPFrame(nil, n, cmd, []byte(data))))
	return n
}

func (p *relpPeer) raw(s string) {
	p.t.Helper()
	if _, err := io.WriteString(p.conn, s); err != nil {
		p.t.Fatalf("write %q: %v", s, err)
	}
}

// relpReply is one frame from the server, copied.
type relpReply struct {
	txnr int
	cmd  string
	data string
}

func (r relpReply) String() string { return fmt.Sprintf("%d %s %q", r.txnr, r.cmd, r.data) }

// read returns the next frame from the server, or the read error.
func (p *relpPeer) read() (relpReply, error) {
	f, err := p.fr.Next()
	if err != nil {
		return relpReply{}, err
	}
	return relpReply{f.Txnr, string(f.Command), string(f.Data)}, nil
}

// expect reads one frame and checks it is the rsp to txnr whose data starts with want.
func (p *relpPeer) expect(txnr int, want string) relpReply {
	p.t.Helper()
	r, err := p.read()
	if err != nil {
		p.t.Fatalf("read the rsp to %d: %v", txnr, err)
	}
	if r.txnr != txnr || r.cmd != "rsp" || !strings.HasPrefix(r.data, want) {
		p.t.Fatalf("got %v, want %d rsp %q...", r, txnr, want)
	}
	return r
}

// expectServerClose reads the serverclose hint and then the end of the connection.
func (p *relpPeer) expectServerClose() {
	p.t.Helper()
	r, err := p.read()
	if err != nil {
		p.t.Fatalf("read serverclose: %v", err)
	}
	if r.txnr != 0 || r.cmd != "serverclose" {
		p.t.Fatalf("got %v, want 0 serverclose", r)
	}
	p.expectEOF()
}

func (p *relpPeer) expectEOF() {
	p.t.Helper()
	if r, err := p.read(); err == nil {
		p.t.Fatalf("got %v, want the connection closed", r)
	}
}

// open sends open with omrelp's offers and checks the 200 answer.
func (p *relpPeer) open() {
	p.t.Helper()
	n := p.send("open", relpOffers)
	r := p.expect(n, relpOK)
	if !strings.Contains(r.data, "\ncommands=syslog") || !strings.Contains(r.data, "\nrelp_version=0") {
		p.t.Fatalf("open answer %q lacks relp_version=0 or commands=syslog", r.data)
	}
}

// newRELPServer builds a collector and its RELP server without running anything.
func newRELPServer(t testing.TB, cfg Config, rcfg RELPConfig, sink collectors.Sink, rep collectors.Reporter) *RELPServer {
	t.Helper()
	c, err := New(cfg, sink, rep, nil)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	c.now = func() time.Time { return fixedNow }
	s, err := c.NewRELP(rcfg)
	if err != nil {
		t.Fatalf("NewRELP: %v", err)
	}
	return s
}

// pipeSession serves one RELP session over net.Pipe (whose deadlines follow
// synctest's clock) and returns the client end; done is closed when the session ended.
func pipeSession(t testing.TB, ctx context.Context, s *RELPServer) (client *relpPeer, done chan struct{}) {
	t.Helper()
	server, cl := net.Pipe()
	t.Cleanup(func() { cl.Close() })
	tc, adm := s.conns.Track(server, "192.0.2.1", TransportRELP)
	if tc == nil {
		t.Fatalf("Track: %v", adm.Result)
	}
	done = make(chan struct{})
	go func() {
		defer close(done)
		defer tc.Close()
		s.handleConn(ctx, tc, false, "192.0.2.1")
	}()
	return newRELPPeer(t, cl), done
}

// serveRELP binds the server's listeners on 127.0.0.1 and serves them until the test
// ends; the cleanup checks that Serve returned nil and every session ended.
func serveRELP(t testing.TB, s *RELPServer) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	lns, err := s.Listen(ctx)
	if err != nil {
		cancel()
		t.Fatalf("Listen: %v", err)
	}
	var wg sync.WaitGroup
	errs := make(chan error, len(lns))
	for _, ln := range lns {
		wg.Go(func() { errs <- s.Serve(ctx, &wg, ln) })
	}
	t.Cleanup(func() {
		cancel()
		finished := make(chan struct{})
		go func() { wg.Wait(); close(finished) }()
		select {
		case <-finished:
		case <-time.After(10 * time.Second):
			t.Error("RELP sessions still running 10s after cancel")
			return
		}
		close(errs)
		for err := range errs {
			if err != nil {
				t.Errorf("Serve returned %v, want nil", err)
			}
		}
	})
}

// dialRELP connects to addr with a deadline that keeps a broken test from hanging.
func dialRELP(t testing.TB, addr net.Addr) *relpPeer {
	t.Helper()
	conn, err := net.DialTimeout("tcp", addr.String(), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	_ = conn.SetDeadline(time.Now().Add(30 * time.Second))
	return newRELPPeer(t, conn)
}
