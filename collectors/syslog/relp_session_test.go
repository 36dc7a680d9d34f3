package syslog

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"go.uber.org/goleak"

	"github.com/edgeaudit/edgeaudit/internal/connset"
)

// replies reads the server's frames in the background (net.Pipe writes block until
// read), so a synctest bubble can check what was sent after synctest.Wait.
func replies(p *relpPeer) <-chan relpReply {
	ch := make(chan relpReply, 1024)
	go func() {
		defer close(ch)
		for {
			r, err := p.read()
			if err != nil {
				return
			}
			ch <- r
		}
	}()
	return ch
}

// drained returns what arrived so far without waiting; closed reports whether the
// server closed the connection.
func drained(ch <-chan relpReply) (got []relpReply, closed bool) {
	for {
		select {
		case r, ok := <-ch:
			if !ok {
				return got, true
			}
			got = append(got, r)
		default:
			return got, false
		}
	}
}

func syslogMsg(i int) string {
	return fmt.Sprintf("<134>1 2026-03-15T10:00:00Z host app - - - relp message %d", i)
}

// TestRELPAckAfterCommit: a syslog command is answered only once its commit is
// reported, never before (invariant 1).
func TestRELPAckAfterCommit(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		sink, rep := &heldSink{}, &fakeReporter{}
		s := newRELPServer(t, Config{}, RELPConfig{RELP: "127.0.0.1:0"}, sink, rep)
		p, done := pipeSession(t, t.Context(), s)
		p.open()
		ch := replies(p)
		n := p.send("syslog", syslogMsg(1))
		synctest.Wait()
		if got, want := sink.appended(), 1; got != want {
			t.Fatalf("appended = %d, want %d", got, want)
		}
		if got, _ := drained(ch); len(got) != 0 {
			t.Fatalf("answered %v before the commit", got)
		}
		sink.commit(t, 0, nil)
		synctest.Wait()
		got, _ := drained(ch)
		if len(got) != 1 || got[0] != (relpReply{n, "rsp", relpOK}) {
			t.Fatalf("after the commit got %v, want [%d rsp %q]", got, n, relpOK)
		}
		ev := sink.decoded(t)[0]
		if got, want := ev.Source.Transport, TransportRELP; got != want {
			t.Errorf("transport = %q, want %q", got, want)
		}
		if got, want := ev.Message, "relp message 1"; got != want {
			t.Errorf("message = %q, want %q", got, want)
		}
		if got, want := s.Stats().Received, uint64(1); got != want {
			t.Errorf("Stats.Received = %d, want %d", got, want)
		}
		p.conn.Close()
		<-done
	})
}

// TestRELPWindow: with the window full, the session reads no more commands; answers
// go out in TXNR order however the commits complete.
func TestRELPWindow(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const window = 8
		sink, rep := &heldSink{}, &fakeReporter{}
		s := newRELPServer(t, Config{}, RELPConfig{RELP: "127.0.0.1:0", RELPWindow: window}, sink, rep)
		p, done := pipeSession(t, t.Context(), s)
		p.open()
		ch := replies(p)
		var txnrs []int
		for i := range window + 1 {
			txnrs = append(txnrs, p.send("syslog", syslogMsg(i)))
		}
		synctest.Wait()
		if got, want := sink.appended(), window; got != want {
			t.Fatalf("appended = %d with the window full, want %d (the last command waits)", got, want)
		}
		// Commit all but the first, last first: nothing may be answered, since the
		// answer to the first comes first.
		for i := window - 1; i >= 1; i-- {
			sink.commit(t, i, nil)
		}
		synctest.Wait()
		if got, _ := drained(ch); len(got) != 0 {
			t.Fatalf("answered %v before the first command's commit", got)
		}
		sink.commit(t, 0, nil)
		synctest.Wait()
		got, _ := drained(ch)
		if len(got) != window {
			t.Fatalf("got %d answers %v, want %d", len(got), got, window)
		}
		for i, r := range got {
			if r != (relpReply{txnrs[i], "rsp", relpOK}) {
				t.Errorf("answer %d = %v, want %d rsp %q", i, r, txnrs[i], relpOK)
			}
		}
		// The window opened: the waiting command was read and appended.
		if got, want := sink.appended(), window+1; got != want {
			t.Fatalf("appended = %d after the answers, want %d", got, want)
		}
		sink.commit(t, window, nil)
		synctest.Wait()
		if got, _ := drained(ch); len(got) != 1 || got[0].txnr != txnrs[window] {
			t.Fatalf("got %v, want the answer to %d", got, txnrs[window])
		}
		p.conn.Close()
		<-done
	})
}

// TestRELPCommitError: a commit that failed is not answered (librelp would drop a
// frame answered 500); the session ends so that the sender resends it.
func TestRELPCommitError(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		sink, rep := &heldSink{}, &fakeReporter{}
		s := newRELPServer(t, Config{}, RELPConfig{RELP: "127.0.0.1:0"}, sink, rep)
		p, done := pipeSession(t, t.Context(), s)
		p.open()
		ch := replies(p)
		first := p.send("syslog", syslogMsg(1))
		p.send("syslog", syslogMsg(2))
		synctest.Wait()
		sink.commit(t, 0, nil)
		sink.commit(t, 1, errors.New("disk on fire"))
		<-done
		synctest.Wait()
		got, closed := drained(ch)
		if !closed {
			t.Fatal("connection still open after a failed commit")
		}
		if len(got) != 1 || got[0] != (relpReply{first, "rsp", relpOK}) {
			t.Fatalf("got %v, want only the answer to %d", got, first)
		}
		if got, want := s.Stats().Unacked, uint64(1); got != want {
			t.Errorf("Stats.Unacked = %d, want %d", got, want)
		}
	})
}

// TestRELPSpoolFull: while the sink refuses, the session stops reading and retries
// (backpressure); it never answers 500 for a full spool, because librelp drops such a
// frame. If the spool stays full for relp_full_wait, the session ends unanswered and
// the sender resends later.
func TestRELPSpoolFull(t *testing.T) {
	t.Run("recovers", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			sink, rep := &heldSink{auto: true}, &fakeReporter{}
			s := newRELPServer(t, Config{}, RELPConfig{RELP: "127.0.0.1:0"}, sink, rep)
			p, done := pipeSession(t, t.Context(), s)
			p.open()
			sink.setRefuse(5)
			n := p.send("syslog", syslogMsg(1))
			p.expect(n, relpOK)
			if got, want := sink.refusedN(), 5; got != want {
				t.Errorf("refused = %d, want %d", got, want)
			}
			if got, want := s.Stats().BackpressureWaits, uint64(5); got != want {
				t.Errorf("BackpressureWaits = %d, want %d", got, want)
			}
			p.conn.Close()
			<-done
		})
	})
	t.Run("stays-full", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			sink, rep := &heldSink{auto: true}, &fakeReporter{}
			s := newRELPServer(t, Config{}, RELPConfig{RELP: "127.0.0.1:0", RELPFullWait: time.Minute}, sink, rep)
			p, done := pipeSession(t, t.Context(), s)
			p.open()
			first := p.send("syslog", syslogMsg(1))
			p.expect(first, relpOK)
			sink.setRefuse(-1)
			start := time.Now()
			p.send("syslog", syslogMsg(2))
			p.expectServerClose()
			<-done
			if waited := time.Since(start); waited < time.Minute {
				t.Errorf("session ended after %v, want relp_full_wait (1m) of retries", waited)
			}
			if got, want := sink.appended(), 1; got != want {
				t.Errorf("appended = %d, want %d", got, want)
			}
			if got := s.Stats().Refused; got != 0 {
				t.Errorf("Stats.Refused = %d, want 0 (no 500 for a full spool)", got)
			}
		})
	})
}

// TestRELPShutdown: at shutdown the session reads nothing more, answers the commits
// reported within the drain, then sends serverclose and closes; what is not committed
// by then stays unanswered.
func TestRELPShutdown(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		sink, rep := &heldSink{}, &fakeReporter{}
		s := newRELPServer(t, Config{}, RELPConfig{RELP: "127.0.0.1:0"}, sink, rep)
		ctx, cancel := context.WithCancel(t.Context())
		p, done := pipeSession(t, ctx, s)
		p.open()
		ch := replies(p)
		a := p.send("syslog", syslogMsg(1))
		p.send("syslog", syslogMsg(2))
		synctest.Wait()
		cancel()
		synctest.Wait()
		sink.commit(t, 0, nil) // within the drain; the second never commits
		<-done
		synctest.Wait()
		got, closed := drained(ch)
		want := []relpReply{{a, "rsp", relpOK}, {0, relpServerClose, ""}}
		if !closed || fmt.Sprint(got) != fmt.Sprint(want) {
			t.Fatalf("got %v (closed %v), want %v and the close", got, closed, want)
		}
		st := s.Stats()
		if st.Unacked != 1 || st.ServerCloses != 1 {
			t.Errorf("Stats = %+v, want Unacked 1, ServerCloses 1", st)
		}
	})
}

// TestRELPIdleTimeout: an idle session gets serverclose, then the close.
func TestRELPIdleTimeout(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		s := newRELPServer(t, Config{IdleTimeout: time.Minute}, RELPConfig{RELP: "127.0.0.1:0"}, &heldSink{auto: true}, &fakeReporter{})
		p, done := pipeSession(t, t.Context(), s)
		p.open()
		start := time.Now()
		p.expectServerClose()
		<-done
		if d := time.Since(start); d < time.Minute {
			t.Errorf("closed after %v, want the idle timeout (1m)", d)
		}
	})
}

// TestRELPProtocol covers the commands and errors of a session, one exchange each.
func TestRELPProtocol(t *testing.T) {
	tests := []struct {
		name   string
		run    func(t *testing.T, p *relpPeer)
		reject string // the reason reported, "" for none
	}{
		{"close", func(t *testing.T, p *relpPeer) {
			p.open()
			n := p.send("syslog", syslogMsg(1))
			c := p.send("close", "")
			p.expect(n, relpOK)
			p.expect(c, relpOK)
			p.expectEOF() // no serverclose after close: the client asked
		}, ""},
		{"syslog-before-open", func(t *testing.T, p *relpPeer) {
			n := p.send("syslog", syslogMsg(1))
			p.expect(n, relpNotOpen)
			p.expectServerClose()
		}, ReasonRELPCommand},
		{"second-open", func(t *testing.T, p *relpPeer) {
			p.open()
			n := p.send("open", relpOffers)
			p.expect(n, relpAlreadyOpen)
			p.expectServerClose()
		}, ReasonRELPCommand},
		{"open-without-version", func(t *testing.T, p *relpPeer) {
			n := p.send("open", "commands=syslog")
			p.expect(n, relpNoVersion)
			p.expectServerClose()
		}, ReasonRELPCommand},
		{"open-without-syslog", func(t *testing.T, p *relpPeer) {
			n := p.send("open", "relp_version=0\ncommands=eventlog")
			p.expect(n, relpNoSyslog)
			p.expectServerClose()
		}, ReasonRELPCommand},
		{"unknown-command", func(t *testing.T, p *relpPeer) {
			p.open()
			n := p.send("starttls", "")
			p.expect(n, relpNotSupported)
			m := p.send("syslog", syslogMsg(1)) // the session goes on
			p.expect(m, relpOK)
		}, ReasonRELPCommand},
		{"oversize", func(t *testing.T, p *relpPeer) {
			p.open()
			n := p.send("syslog", "<13>"+strings.Repeat("x", 3000))
			m := p.send("syslog", syslogMsg(1))
			p.expect(n, relpOversize)
			p.expect(m, relpOK) // the session goes on
		}, ReasonOversize},
		{"bad-txnr", func(t *testing.T, p *relpPeer) {
			p.open()
			p.txnr = 5 // skips 2..4
			p.send("syslog", syslogMsg(1))
			p.expectServerClose()
		}, ReasonRELPTxnr},
		{"bad-frame", func(t *testing.T, p *relpPeer) {
			p.open()
			p.raw("2 syslog x\n")
			p.expectServerClose()
		}, ReasonRELPFrame},
		{"missing-trailer", func(t *testing.T, p *relpPeer) {
			p.open()
			p.raw("2 syslog 3 abcd")
			p.expectServerClose()
		}, ReasonRELPFrame},
		{"client-hint-ignored", func(t *testing.T, p *relpPeer) {
			p.open()
			p.raw("0 hint 0\n")
			n := p.send("syslog", syslogMsg(1))
			p.expect(n, relpOK)
		}, ""},
		{"blank-message", func(t *testing.T, p *relpPeer) {
			p.open()
			n := p.send("syslog", "\r\n")
			p.expect(n, relpOK) // nothing to keep, nothing to wait for
		}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rep := &fakeReporter{}
			s := newRELPServer(t, Config{MaxMessageSize: 2048}, RELPConfig{RELP: "127.0.0.1:0"}, &heldSink{auto: true}, rep)
			serveRELP(t, s)
			p := dialRELP(t, s.Addr())
			tt.run(t, p)
			rejects := rep.getRejects()
			if tt.reject == "" {
				if len(rejects) != 0 {
					t.Errorf("rejects = %+v, want none", rejects)
				}
				return
			}
			if len(rejects) != 1 || rejects[0].Reason != tt.reject || rejects[0].Transport != TransportRELP || rejects[0].IP != "127.0.0.1" {
				t.Errorf("rejects = %+v, want one %q from 127.0.0.1 over relp", rejects, tt.reject)
			}
		})
	}
}

func TestRELPOpenResponse(t *testing.T) {
	tests := []struct {
		name, offers string
		rsp, data    string
	}{
		{"omrelp", relpOffers, relpOK, "relp_version=0\nrelp_software=edgeaudit\ncommands=syslog"},
		{"newer-version", "relp_version=7\ncommands=syslog,eventlog", relpOK, "relp_version=1\nrelp_software=edgeaudit\ncommands=syslog"},
		{"crlf", "relp_version=1\r\ncommands=syslog\r\n", relpOK, "relp_version=1\nrelp_software=edgeaudit\ncommands=syslog"},
		{"no-version", "commands=syslog", relpNoVersion, ""},
		{"bad-version", "relp_version=x\ncommands=syslog", relpNoVersion, ""},
		{"no-commands", "relp_version=0", relpNoSyslog, ""},
		{"empty", "", relpNoVersion, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rsp, data := openResponse([]byte(tt.offers))
			if rsp != tt.rsp || string(data) != tt.data {
				t.Errorf("openResponse = %q, %q; want %q, %q", rsp, data, tt.rsp, tt.data)
			}
		})
	}
}

func TestRELPConfig(t *testing.T) {
	tests := []struct {
		name      string
		cfg       RELPConfig
		cert, key string
		fields    []string // the fields named by the errors
	}{
		{"defaults", RELPConfig{RELP: "127.0.0.1:2514"}, "", "", nil},
		{"tls", RELPConfig{RELPTLS: "127.0.0.1:2515"}, "c.pem", "k.pem", nil},
		{"tls-without-cert", RELPConfig{RELPTLS: "127.0.0.1:2515"}, "", "", []string{"syslog.tls_cert", "syslog.tls_key"}},
		{"bad-addr", RELPConfig{RELP: "nowhere"}, "", "", []string{"syslog.relp"}},
		{"window-too-big", RELPConfig{RELP: "127.0.0.1:2514", RELPWindow: MaxRELPWindow + 1}, "", "", []string{"syslog.relp_window"}},
		{"window-negative", RELPConfig{RELP: "127.0.0.1:2514", RELPWindow: -1}, "", "", []string{"syslog.relp_window"}},
		{"full-wait-negative", RELPConfig{RELP: "127.0.0.1:2514", RELPFullWait: -time.Second}, "", "", []string{"syslog.relp_full_wait"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := tt.cfg
			cfg.SetDefaults()
			errs := cfg.ValidateRELP(tt.cert, tt.key)
			var fields []string
			for _, err := range errs {
				var ce *ConfigError
				if !errors.As(err, &ce) {
					t.Fatalf("error %v is not a *ConfigError", err)
				}
				fields = append(fields, ce.Field)
			}
			if fmt.Sprint(fields) != fmt.Sprint(tt.fields) {
				t.Errorf("errors name %v, want %v (%v)", fields, tt.fields, errs)
			}
		})
	}
	var c RELPConfig
	c.SetDefaults()
	if c.RELPWindow != DefaultRELPWindow || c.RELPFullWait != DefaultRELPFullWait || c.RELPEnabled() {
		t.Errorf("defaults = %+v, want window %d, full wait %v, disabled", c, DefaultRELPWindow, DefaultRELPFullWait)
	}
}

// TestRELPSameEventAsTCP: a message sent over RELP becomes exactly the event it becomes
// over TCP, but for the transport.
func TestRELPSameEventAsTCP(t *testing.T) {
	msgs := []string{
		"<134>1 2026-03-15T10:00:00.123456Z host app 42 ID7 [ex@32473 k=\"v\"] \ufeffhello over both",
		"<38>Mar 15 10:00:01 host sshd[42]: Accepted publickey for alice from 192.0.2.7 port 52113 ssh2",
		"not syslog at all",
	}
	sink, rep := &fakeSink{}, &fakeReporter{}
	var c *Collector
	startCollector(t, Config{TCP: "127.0.0.1:0"}, sink, rep, func() time.Time { return fixedNow },
		func(col *Collector) { c = col })
	s, err := c.NewRELP(RELPConfig{RELP: "127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	serveRELP(t, s)

	tcp, err := net.Dial("tcp", c.TCPAddr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer tcp.Close()
	for _, m := range msgs {
		fmt.Fprint(tcp, octet(m))
	}
	waitFor(t, "tcp events", func() bool { return sink.len() == len(msgs) })
	p := dialRELP(t, s.Addr())
	p.open()
	for _, m := range msgs {
		p.expect(p.send("syslog", m+"\n"), relpOK) // omrelp's template ends in LF
	}
	evs := sink.decoded(t)
	if len(evs) != 2*len(msgs) {
		t.Fatalf("%d events, want %d", len(evs), 2*len(msgs))
	}
	for i := range msgs {
		a, b := evs[i], evs[len(msgs)+i]
		if a.Source.Transport != "tcp" || b.Source.Transport != TransportRELP {
			t.Fatalf("transports %q, %q; want tcp, relp", a.Source.Transport, b.Source.Transport)
		}
		a.ID, b.ID = "", ""
		a.Source.Transport, b.Source.Transport = "", ""
		// The hash covers the frame as received; the RELP frame has omrelp's LF.
		if a.RawSHA256 == "" || b.RawSHA256 == "" {
			t.Errorf("message %d: raw_sha256 missing", i)
		}
		a.RawSHA256, b.RawSHA256 = "", ""
		ja, jb := string(a.AppendJSON(nil)), string(b.AppendJSON(nil))
		if ja != jb {
			t.Errorf("message %d:\n tcp  %s\n relp %s", i, ja, jb)
		}
	}
}

// TestRELPLifecycle: Serve returns nil after cancel, with sessions open (one waiting for
// a commit that never comes), and leaves no goroutine behind.
func TestRELPLifecycle(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	pki := newTestPKI(t)
	sink := &heldSink{}
	s := newRELPServer(t, Config{TLSCert: pki.CertFile, TLSKey: pki.KeyFile},
		RELPConfig{RELP: "127.0.0.1:0", RELPTLS: "127.0.0.1:0"}, sink, &fakeReporter{})
	s.drain = 50 * time.Millisecond
	ctx, cancel := context.WithCancel(context.Background())
	lns, err := s.Listen(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	errs := make(chan error, len(lns))
	for _, ln := range lns {
		wg.Go(func() { errs <- s.Serve(ctx, &wg, ln) })
	}
	plain := dialRELP(t, s.Addr())
	plain.open()
	plain.send("syslog", syslogMsg(1)) // held: never committed
	tc, err := tls.Dial("tcp", s.TLSAddr().String(), pki.ClientConfig(false))
	if err != nil {
		t.Fatal(err)
	}
	defer tc.Close()
	secure := newRELPPeer(t, tc)
	secure.open()
	waitFor(t, "the held append", func() bool { return sink.appended() == 1 })
	cancel()
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Errorf("Serve = %v, want nil", err)
		}
	}
	plain.expectServerClose()
	secure.expectServerClose()
	if got := s.conns.Open(); got != 0 {
		t.Errorf("ConnsOpen = %d after Serve returned, want 0", got)
	}
}

// TestRELPEviction: with the table full, a new sender's connection closes the
// longest-idle session (reported as evicted_idle) instead of being refused.
func TestRELPEviction(t *testing.T) {
	rep := &fakeReporter{}
	s := newRELPServer(t, Config{MaxConnections: 1, MaxConnectionsPerIP: 1}, RELPConfig{RELP: "127.0.0.1:0"}, &heldSink{auto: true}, rep)
	serveRELP(t, s)
	idle := dialRELP(t, s.Addr())
	idle.open()
	time.Sleep(connset.DefaultMinIdle + 500*time.Millisecond) // idle long enough to be evicted
	fresh := dialRELP(t, s.Addr())
	fresh.open()
	fresh.expect(fresh.send("syslog", syslogMsg(1)), relpOK)
	idle.expectEOF()
	rejects := rep.getRejects()
	if len(rejects) != 1 || rejects[0].Reason != ReasonEvictedIdle || rejects[0].Transport != TransportRELP {
		t.Errorf("rejects = %+v, want one evicted_idle over relp", rejects)
	}
}

// TestRELPInRun: the collector's Run serves syslog.relp beside TCP and, when stopped,
// its sessions still get serverclose (the TCP drain of the shared connection table
// does not cut them short), and Run returns nil after they ended.
func TestRELPInRun(t *testing.T) {
	sink, rep := &fakeSink{}, &fakeReporter{}
	c, err := New(Config{TCP: "127.0.0.1:0", RELPConfig: RELPConfig{RELP: "127.0.0.1:0"}}, sink, rep, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	errc := make(chan error, 1)
	go func() { errc <- c.Run(ctx) }()
	select {
	case <-c.Ready():
	case err := <-errc:
		t.Fatalf("Run: %v", err)
	}
	if c.RELP() == nil || c.RELP().Addr() == nil {
		t.Fatal("syslog.relp is set but no RELP listener is bound")
	}
	p := dialRELP(t, c.RELP().Addr())
	p.open()
	p.expect(p.send("syslog", syslogMsg(1)), relpOK)
	cancel()
	p.expectServerClose()
	if err := <-errc; err != nil {
		t.Errorf("Run = %v, want nil", err)
	}
	if got, want := sink.len(), 1; got != want {
		t.Errorf("events = %d, want %d", got, want)
	}
}

// TestRELPSharesConnectionTable: TCP and RELP share max_connections; a RELP sender
// evicts an idle TCP connection (reported under "tcp"), and the other way round.
func TestRELPSharesConnectionTable(t *testing.T) {
	rep := &fakeReporter{}
	var c *Collector
	startCollector(t, Config{TCP: "127.0.0.1:0", MaxConnections: 1, MaxConnectionsPerIP: 1,
		RELPConfig: RELPConfig{RELP: "127.0.0.1:0"}}, &fakeSink{}, rep, nil, func(col *Collector) { c = col })
	tcp, err := net.Dial("tcp", c.TCPAddr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer tcp.Close()
	waitFor(t, "the tcp connection", func() bool { return c.Stats().ConnsOpen == 1 })
	time.Sleep(connset.DefaultMinIdle + 500*time.Millisecond)
	p := dialRELP(t, c.RELP().Addr())
	p.open()
	if _, err := tcp.Read(make([]byte, 1)); err == nil {
		t.Fatal("the idle tcp connection is still open, want it evicted")
	}
	time.Sleep(connset.DefaultMinIdle + 500*time.Millisecond)
	tcp2, err := net.Dial("tcp", c.TCPAddr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer tcp2.Close()
	p.expectEOF()
	// The eviction closes the session inside Track, before the accept loop reports it.
	waitFor(t, "the second eviction's report", func() bool { return len(rep.getRejects()) >= 2 })
	var got []string
	for _, r := range rep.getRejects() {
		got = append(got, r.Transport+"/"+r.Reason)
	}
	// The second eviction is reported by the TCP accept loop under the evicted
	// connection's own transport.
	if len(got) != 2 || got[0] != "tcp/"+ReasonEvictedIdle || got[1] != TransportRELP+"/"+ReasonEvictedIdle {
		t.Errorf("rejects = %v, want tcp/%s then an %s of the relp session", got, ReasonEvictedIdle, ReasonEvictedIdle)
	}
	if got, want := c.Stats().Rejects[ReasonEvictedIdle], uint64(2); got != want {
		t.Errorf("Stats.Rejects[evicted_idle] = %d, want %d", got, want)
	}
}
