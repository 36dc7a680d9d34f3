package syslog

// RELP (rsyslog's Reliable Event Logging Protocol, librelp doc/relp.md) gives syslog
// senders what plain TCP lacks: an acknowledgement per message. This listener answers a
// "syslog" command "rsp 200 OK" only after the Sink's done callback reported the commit
// (invariant 1), so everything a sender saw acknowledged survives kill -9, and whatever
// it did not see acknowledged it still holds and sends again after reconnecting (librelp
// keeps its unacked frames and resends them on a new session).

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/edgeaudit/edgeaudit/audit"
	"github.com/edgeaudit/edgeaudit/collectors"
	"github.com/edgeaudit/edgeaudit/internal/connset"
	"github.com/edgeaudit/edgeaudit/internal/listenaddr"
)

// Transport names of RELP events (audit.Event Source.Transport) and reports.
const (
	TransportRELP    = "relp"
	TransportRELPTLS = "relp+tls"
)

// Defaults and bounds of the RELP keys.
const (
	// DefaultRELPWindow is how many commands one session may have unanswered. A slot
	// costs a few dozen bytes (the event itself waits in the spool's bounded queue), and
	// a large window is what makes RELP fast: from omrelp with windowSize 1024, 74k-96k
	// messages/s were committed here with this window, 38k/s with librelp's 128.
	DefaultRELPWindow = 1024
	// MaxRELPWindow bounds relp_window: each slot may hold a frame being committed, and
	// the RELP spec warns that a very large window is a denial-of-service lever.
	MaxRELPWindow = 65536
	// DefaultRELPFullWait is how long a frame waits for a sink that refuses it (spool
	// full) before the session gives up on it. It is below omrelp's default session
	// timeout (90 s), so a waiting sender is answered before it gives up on us.
	DefaultRELPFullWait = 60 * time.Second
)

const (
	// relpWriteTimeout bounds one write of responses: a sender that stops reading them
	// (the "hibernating client" of the spec) is cut off instead of holding the session.
	relpWriteTimeout = 30 * time.Second
	// relpWriteBuffer gathers the responses of a window into few writes.
	relpWriteBuffer = 8 << 10
	// relpVersion is the highest protocol version offered back: librelp's current one.
	relpVersion = 1
)

// Responses. The texts are part of what senders log; keep them short and stable.
const (
	relpOK            = "200 OK"
	relpOversize      = "500 oversize: message over max_message_size"
	relpNotOpen       = "500 session not open"
	relpAlreadyOpen   = "500 protocol error: connection already open"
	relpNoVersion     = "500 relp_version offer missing"
	relpNoSyslog      = "500 required command not supported by client"
	relpNotSupported  = "500 command not supported"
	relpSpoolFull     = "500 spool full"
	relpServerClose   = "serverclose"
	relpSoftwareOffer = "relp_software=edgeaudit"
)

// RELPConfig holds the RELP keys of the syslog config. Config embeds it inline, so the
// keys sit beside udp, tcp and tls (syslog.relp, syslog.relp_tls, ...). RELP uses the
// collector's max_message_size (for DATALEN), max_connections and
// max_connections_per_ip (shared with TCP and TLS), idle_timeout, handshake_timeout,
// drain_timeout (how long a stop waits for commits to answer) and, for relp_tls,
// tls_cert, tls_key and tls_client_ca.
type RELPConfig struct {
	// RELP is the listen address of plain RELP, e.g. "127.0.0.1:2514". Empty disables it.
	RELP string `yaml:"relp"`
	// RELPTLS is the listen address of RELP over TLS (omrelp tls="on"). Empty disables
	// it; when set, tls_cert and tls_key are required.
	RELPTLS string `yaml:"relp_tls"`
	// RELPWindow is how many commands a session may have unanswered before it stops
	// reading (TCP flow control then holds the sender). Zero means DefaultRELPWindow.
	RELPWindow int `yaml:"relp_window"`
	// RELPFullWait is how long a frame that the sink refuses (spool full) is retried
	// before the session ends without answering it, so that the sender resends it
	// later. Zero means DefaultRELPFullWait.
	RELPFullWait time.Duration `yaml:"relp_full_wait"`
}

// SetDefaults fills zero fields with the Default* values.
func (c *RELPConfig) SetDefaults() {
	if c.RELPWindow == 0 {
		c.RELPWindow = DefaultRELPWindow
	}
	if c.RELPFullWait == 0 {
		c.RELPFullWait = DefaultRELPFullWait
	}
}

// RELPEnabled reports whether a RELP listener is configured.
func (c RELPConfig) RELPEnabled() bool { return c.RELP != "" || c.RELPTLS != "" }

// ValidateRELP checks the RELP keys (after SetDefaults); tlsCert and tlsKey are the
// collector's tls_cert and tls_key. It returns each problem as a *ConfigError.
func (c RELPConfig) ValidateRELP(tlsCert, tlsKey string) []error {
	var errs []error
	bad := func(field, value, msg string) {
		errs = append(errs, &ConfigError{Field: "syslog." + field, Value: value, Err: errors.New(msg)})
	}
	for _, a := range []struct{ field, addr string }{{"relp", c.RELP}, {"relp_tls", c.RELPTLS}} {
		if a.addr == "" {
			continue
		}
		if err := listenaddr.Check(a.addr); err != nil {
			errs = append(errs, &ConfigError{Field: "syslog." + a.field, Value: a.addr, Err: err})
		}
	}
	if c.RELPTLS != "" {
		if tlsCert == "" {
			bad("tls_cert", "", "required when syslog.relp_tls is set")
		}
		if tlsKey == "" {
			bad("tls_key", "", "required when syslog.relp_tls is set")
		}
	}
	if c.RELPWindow < 1 || c.RELPWindow > MaxRELPWindow {
		bad("relp_window", strconv.Itoa(c.RELPWindow), "must be between 1 and "+strconv.Itoa(MaxRELPWindow))
	}
	if c.RELPFullWait <= 0 {
		bad("relp_full_wait", c.RELPFullWait.String(), "must be positive")
	}
	return errs
}

// RELPServer is the RELP listener of a Collector: it shares the collector's parser,
// sink, reporter and limits, so that a message sent over RELP becomes exactly the event
// it becomes over TCP, with transport "relp" or "relp+tls".
type RELPServer struct {
	c      *Collector
	cfg    RELPConfig
	tlsCfg *tls.Config
	conns  *connset.Set
	drain  time.Duration // how long a stopping session waits for commits to answer

	mu    sync.Mutex
	addrs [2]net.Addr // plain, TLS

	stats relpCounters
}

type relpCounters struct {
	received  [2]atomic.Uint64 // events committed and answered 200: plain, TLS
	refused   atomic.Uint64    // commands answered 500
	unacked   atomic.Uint64    // appended frames whose session ended before their answer
	waits     atomic.Uint64    // appends the sink refused and that were retried
	accepted  atomic.Uint64
	rejected  atomic.Uint64 // connections refused at the limit
	sessions  atomic.Uint64 // sessions opened (open answered 200)
	srvCloses atomic.Uint64 // serverclose hints sent
}

// RELPStats is a snapshot of the RELP counters. Open connections are counted with the
// collector's (Stats.ConnsOpen): they share its table.
type RELPStats struct {
	// Received and ReceivedTLS count events committed and answered "rsp 200", over
	// "relp" and "relp+tls".
	Received, ReceivedTLS uint64
	// Refused counts commands answered 500 (oversize, protocol errors).
	Refused uint64
	// Unacked counts appended frames whose session ended before their answer (shutdown
	// after the drain, a failed commit, a sender gone): the sender resends them.
	Unacked uint64
	// BackpressureWaits counts appends the sink refused and that were retried.
	BackpressureWaits uint64
	// ConnsAccepted and ConnsRefused count RELP connections admitted and refused.
	ConnsAccepted, ConnsRefused uint64
	// Sessions counts open commands answered 200; ServerCloses the serverclose hints.
	Sessions, ServerCloses uint64
}

// NewRELP returns the RELP listener for c, configured by cfg (defaults applied here). It
// loads the TLS material when relp_tls is set, and starts nothing.
func (c *Collector) NewRELP(cfg RELPConfig) (*RELPServer, error) {
	cfg.SetDefaults()
	if err := errors.Join(cfg.ValidateRELP(c.cfg.TLSCert, c.cfg.TLSKey)...); err != nil {
		return nil, err
	}
	s := &RELPServer{
		c:   c,
		cfg: cfg,
		// The collector's table: max_connections and max_connections_per_ip bound TCP,
		// TLS and RELP together, so a sender gains nothing by opening both kinds. Its
		// drain only wakes RELP readers early; sessions still stop as relpSession.Read
		// says, and Run's CloseAll comes after they ended.
		conns: c.conns,
		drain: c.cfg.DrainTimeout,
	}
	if cfg.RELPTLS != "" {
		s.tlsCfg = c.tlsCfg
		if s.tlsCfg == nil {
			tc, err := loadTLS(c.cfg)
			if err != nil {
				return nil, err
			}
			s.tlsCfg = tc
		}
	}
	return s, nil
}

// Addr returns the bound plain RELP address, or nil if it is disabled or not yet bound.
func (s *RELPServer) Addr() net.Addr { return s.addr(0) }

// TLSAddr returns the bound RELP-over-TLS address, or nil.
func (s *RELPServer) TLSAddr() net.Addr { return s.addr(1) }

func (s *RELPServer) addr(i int) net.Addr {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.addrs[i]
}

// Stats returns a snapshot of the counters. It is safe to call at any time.
func (s *RELPServer) Stats() RELPStats {
	st := &s.stats
	return RELPStats{
		Received: st.received[0].Load(), ReceivedTLS: st.received[1].Load(),
		Refused: st.refused.Load(), Unacked: st.unacked.Load(), BackpressureWaits: st.waits.Load(),
		ConnsAccepted: st.accepted.Load(), ConnsRefused: st.rejected.Load(),
		Sessions: st.sessions.Load(), ServerCloses: st.srvCloses.Load(),
	}
}

// Listen binds the configured RELP addresses, or none: on an error it closes what it
// opened. The caller passes the listeners to Serve.
func (s *RELPServer) Listen(ctx context.Context) ([]net.Listener, error) {
	var lc net.ListenConfig
	var lns []net.Listener
	addrs := [2]string{s.cfg.RELP, s.cfg.RELPTLS}
	for i, name := range [2]string{TransportRELP, TransportRELPTLS} {
		if addrs[i] == "" {
			continue
		}
		ln, err := lc.Listen(ctx, "tcp", addrs[i])
		if err != nil {
			for _, l := range lns {
				l.Close()
			}
			var op *net.OpError
			if errors.As(err, &op) && op.Err != nil {
				err = op.Err
			}
			return nil, fmt.Errorf("listen %s %s: %w", name, addrs[i], err)
		}
		if i == 1 {
			ln = &relpTLSListener{ln}
		}
		lns = append(lns, ln)
		s.mu.Lock()
		s.addrs[i] = ln.Addr()
		s.mu.Unlock()
		s.c.log.Info("listening", attrTransport, name, attrAddr, ln.Addr().String())
	}
	return lns, nil
}

// relpTLSListener marks the listener whose connections speak TLS; the handshake itself
// happens in the connection's goroutine, under a deadline.
type relpTLSListener struct{ net.Listener }

// Serve accepts connections on ln (from Listen) until ctx is done, serving each in its
// own goroutine counted in wg. It closes ln when ctx is done. Stopping sessions finish
// the answers they can (within a bounded drain), send serverclose and close, all before
// their wg entries are done, so the caller's wg.Wait covers them.
func (s *RELPServer) Serve(ctx context.Context, wg *sync.WaitGroup, ln net.Listener) error {
	_, secure := ln.(*relpTLSListener)
	name := TransportRELP
	if secure {
		name = TransportRELPTLS
	}
	stop := context.AfterFunc(ctx, func() { ln.Close() })
	defer stop()
	var delay time.Duration
	for {
		conn, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			if errors.Is(err, net.ErrClosed) {
				return fmt.Errorf("accept %s %s: %w", name, ln.Addr(), err)
			}
			delay = min(max(2*delay, 5*time.Millisecond), maxBackoff)
			if ok, n := s.c.limit.Allow("accept "+name, time.Now()); ok {
				s.c.log.Warn("accept failed; retrying", attrTransport, name, attrErr, err, attrSuppressed, n)
			}
			if !sleep(ctx, delay) {
				return nil
			}
			continue
		}
		delay = 0
		ip := connset.PeerIP(conn.RemoteAddr())
		tc, adm := s.conns.Track(conn, ip, name)
		if tc == nil {
			conn.Close()
			if adm.Result == connset.Closing {
				return nil
			}
			s.stats.rejected.Add(1)
			s.reject(name, ip, adm.Result.Reason(), "", 0)
			continue
		}
		if ev := adm.Evicted; ev != nil {
			// The table is shared: the evicted one may be a TCP or TLS connection, which
			// the collector's own counters count.
			s.c.stats.evicted.Add(1)
			if l := ev.Label(); l == TransportRELP || l == TransportRELPTLS {
				s.reject(l, ev.IP(), ReasonEvictedIdle, "", 0)
			} else {
				s.c.reject(transportOf(l), ev.IP(), ReasonEvictedIdle, "", 0)
			}
		}
		s.stats.accepted.Add(1)
		wg.Go(func() {
			defer tc.Close()
			s.handleConn(ctx, tc, secure, ip)
		})
	}
}

// handleConn serves one RELP connection until it ends, is broken, or ctx is done.
func (s *RELPServer) handleConn(ctx context.Context, tc *connset.Conn, secure bool, ip string) {
	name := TransportRELP
	conn := tc.Conn
	var rw net.Conn = conn
	if secure {
		name = TransportRELPTLS
		tlc := tls.Server(conn, s.tlsCfg)
		_ = conn.SetDeadline(time.Now().Add(s.c.cfg.HandshakeTimeout))
		if err := tlc.HandshakeContext(ctx); err != nil {
			if ctx.Err() == nil && !tc.Evicted() {
				reason := ReasonTLSHandshake
				if isTimeout(err) {
					reason = ReasonHandshakeTimeout
				}
				s.reject(name, ip, reason, "", 0)
				s.logConn("tls handshake failed", name, ip, err)
			}
			return
		}
		_ = conn.SetDeadline(time.Time{})
		rw = tlc
	}
	sess := newRELPSession(s, tc, rw, name, ip)
	sess.run(ctx)
}

// reject counts and reports refused input, and logs it without content, rate-limited
// per reason and peer.
func (s *RELPServer) reject(name, ip, reason, sum string, size int64) {
	s.c.rep.Reject(audit.KindSyslog, name, ip, reason, sum, size)
	if ok, n := s.c.limit.Allow("reject "+reason+" "+ip, time.Now()); ok {
		s.c.log.Warn("relp input rejected", attrTransport, name, attrPeer, ip, attrReason, reason, attrSize, size, attrSuppressed, n)
	}
}

func (s *RELPServer) logConn(msg, name, ip string, err error) {
	level := slog.LevelInfo
	if isTimeout(err) {
		level = slog.LevelDebug // idle senders are normal; they reconnect when needed
	}
	if ok, n := s.c.limit.Allow(msg+" "+ip, time.Now()); ok {
		s.c.log.Log(context.Background(), level, msg, attrTransport, name, attrPeer, ip, attrErr, err, attrSuppressed, n)
	}
}

// relpSlot is one command awaiting its answer. A session has at most window slots, so
// at most window commands are unanswered; slots are reused, not allocated per frame.
type relpSlot struct {
	txnr   int
	commit bool       // the answer waits for res: the sink's done callback
	res    chan error // buffered 1
	done   func(error)
	rsp    string // the answer when not commit (or after a successful one)
	data   []byte // extra response data (open's offers)
	last   bool   // the session ends after this answer (close, fatal refusals)
}

// relpEnd is why a session's reader stopped.
type relpEnd int

const (
	relpEndPeer     relpEnd = iota // EOF, reset, or the writer failed: nothing more to say
	relpEndClose                   // the client sent close: its answer is the last frame
	relpEndStop                    // shutdown or idle timeout: hint serverclose
	relpEndBroken                  // a protocol error: hint serverclose and close
	relpEndRetryLtr                // the sink kept refusing: close so the sender resends
)

type relpSession struct {
	s        *RELPServer
	ti       int           // 0 plain, 1 TLS: the index of the per-transport counters
	tc       *connset.Conn // the tracked socket: idle state, eviction
	conn     net.Conn      // the socket, for deadlines
	rw       net.Conn      // what is read and written (conn or its TLS layer)
	name, ip string

	free  chan *relpSlot // slots not in use
	made  int            // slots allocated so far (by the reader), at most the window
	queue chan *relpSlot // slots in TXNR order, for the writer

	stopping atomic.Bool   // set when ctx is done or the writer failed; reads fail at once
	abandon  chan struct{} // closed when the drain after shutdown is over
	wfail    chan struct{} // closed when the writer failed
	failOnce sync.Once
	cancel   context.CancelFunc // ends the appends of a session whose writer failed
}

func newRELPSession(s *RELPServer, tc *connset.Conn, rw net.Conn, name, ip string) *relpSession {
	w := s.cfg.RELPWindow
	sess := &relpSession{
		s: s, tc: tc, conn: tc.Conn, rw: rw, name: name, ip: ip, ti: boolInt(name == TransportRELPTLS),
		free:    make(chan *relpSlot, w),
		queue:   make(chan *relpSlot, w),
		abandon: make(chan struct{}),
		wfail:   make(chan struct{}),
	}
	return sess
}

// Read is the reader under the framer: an idle timeout and the idle state for
// eviction, as connset.DeadlineReader keeps them, and a stop that cannot be lost
// between setting the deadline and reading (halt sets stopping, then a past deadline).
// RELP does not use connset.Drain: a frame it did not answer, the sender still holds
// and resends, so a stopping session reads nothing more and spends the shutdown budget
// on answering what it has.
func (sess *relpSession) Read(p []byte) (int, error) {
	if sess.stopping.Load() {
		return 0, errRELPStopping
	}
	if err := sess.conn.SetReadDeadline(time.Now().Add(sess.s.c.cfg.IdleTimeout)); err != nil {
		return 0, err
	}
	if sess.stopping.Load() {
		return 0, errRELPStopping
	}
	sess.tc.Waiting()
	n, err := sess.rw.Read(p)
	if n > 0 {
		sess.tc.Busy()
	}
	return n, err
}

var errRELPStopping = errors.New("relp: stopping")

// halt makes the reader stop: at once if it is in Read, or at its next Read.
func (sess *relpSession) halt() {
	sess.stopping.Store(true)
	_ = sess.conn.SetReadDeadline(time.Unix(1, 0))
}

// fail is called once the writer cannot deliver answers any more: the reader stops,
// and appends in progress are abandoned (they stay unacked; the sender resends them).
func (sess *relpSession) fail() {
	sess.failOnce.Do(func() {
		close(sess.wfail)
		sess.cancel()
		sess.halt()
	})
}

func (sess *relpSession) run(ctx context.Context) {
	// The reader stops at shutdown but the writer goes on, so that commits already
	// under way are still acknowledged; appends use sctx, which also ends when the
	// writer fails (nobody could be told about the commit anyway).
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	sess.cancel = cancel
	stopRead := context.AfterFunc(ctx, func() {
		sess.halt()
		time.AfterFunc(sess.s.drain, func() { close(sess.abandon) })
	})
	defer stopRead()

	var wg sync.WaitGroup
	var wrote bool // the writer delivered everything it was given
	wg.Go(func() { wrote = sess.write() })
	end := sess.read(sctx)
	close(sess.queue)
	wg.Wait()
	if !wrote {
		return
	}
	if end == relpEndPeer && ctx.Err() != nil {
		end = relpEndStop // an append that saw the cancellation before the reader did
	}
	switch end {
	case relpEndStop, relpEndBroken, relpEndRetryLtr:
		// A hint only: the sender must cope with a bare close too (spec, "serverclose").
		_ = sess.conn.SetWriteDeadline(time.Now().Add(time.Second))
		if _, err := sess.rw.Write(AppendRELPFrame(nil, 0, relpServerClose, nil)); err == nil {
			sess.s.stats.srvCloses.Add(1)
		}
	}
}

// read frames commands until the session ends, and queues one slot per command in
// TXNR order.
func (sess *relpSession) read(ctx context.Context) relpEnd {
	s, c := sess.s, sess.s.c
	br := bufio.NewReaderSize(sess, readBufferSize)
	fr := NewRELPFramer(br, c.cfg.MaxMessageSize)
	p := c.newParserFor()
	var (
		ev     audit.Event
		expect = 1
		open   bool
	)
	for {
		f, err := fr.Next()
		var fe *FrameError
		if err != nil && !(errors.As(err, &fe) && !fe.Fatal()) {
			select {
			case <-sess.wfail:
				return relpEndPeer
			default:
			}
			if sess.stopping.Load() {
				// Shutdown, maybe inside a frame: what was not answered is resent.
				return relpEndStop
			}
			if sess.tc.Evicted() {
				return relpEndPeer // closed to make room (reported by Serve): nothing to say
			}
			if fe != nil {
				s.reject(sess.name, sess.ip, fe.Reason.Error(), fe.SHA256, fe.Size)
				if fe.Reason == ErrRELPFrame {
					return relpEndBroken
				}
				err = fe.Err
			}
			if isTimeout(err) {
				return relpEndStop // idle: tell the sender why the session goes away
			}
			if err != nil && err != io.EOF {
				s.logConn("relp connection ended", sess.name, sess.ip, err)
			}
			return relpEndPeer
		}
		if f.Txnr == 0 {
			continue // a client hint; none is defined, and hints get no answer
		}
		if f.Txnr != expect {
			s.reject(sess.name, sess.ip, ReasonRELPTxnr, "", 0)
			return relpEndBroken
		}
		expect = nextTxnr(expect)
		if fe != nil { // oversize: DATA was dropped and hashed, the session goes on
			s.reject(sess.name, sess.ip, ReasonOversize, fe.SHA256, fe.Size)
			if !sess.answer(ctx, f.Txnr, relpOversize, nil, false) {
				return relpEndPeer
			}
			continue
		}
		switch string(f.Command) {
		case "syslog":
			if !open {
				s.reject(sess.name, sess.ip, ReasonRELPCommand, "", 0)
				sess.answer(ctx, f.Txnr, relpNotOpen, nil, true)
				return relpEndBroken
			}
			if end, ok := sess.syslog(ctx, p, &ev, f); !ok {
				return end
			}
		case "open":
			if open {
				s.reject(sess.name, sess.ip, ReasonRELPCommand, "", 0)
				sess.answer(ctx, f.Txnr, relpAlreadyOpen, nil, true)
				return relpEndBroken
			}
			rsp, offers := openResponse(f.Data)
			if offers == nil {
				s.reject(sess.name, sess.ip, ReasonRELPCommand, "", 0)
				sess.answer(ctx, f.Txnr, rsp, nil, true)
				return relpEndBroken
			}
			if !sess.answer(ctx, f.Txnr, rsp, offers, false) {
				return relpEndPeer
			}
			open = true
			s.stats.sessions.Add(1)
		case "close":
			// Its answer follows every earlier one; the client then closes, and so do we.
			sess.answer(ctx, f.Txnr, relpOK, nil, true)
			return relpEndClose
		default:
			s.reject(sess.name, sess.ip, ReasonRELPCommand, "", 0)
			if !sess.answer(ctx, f.Txnr, relpNotSupported, nil, false) {
				return relpEndPeer
			}
		}
	}
}

// syslog turns one syslog command into an event and appends it; its slot is answered
// when the commit is reported. ok is false when the session must end.
func (sess *relpSession) syslog(ctx context.Context, p *parser, ev *audit.Event, f RELPFrame) (end relpEnd, ok bool) {
	c := sess.s.c
	resetEvent(ev, sess.name, sess.ip)
	if !p.parse(ev, f.Data, c.now().UTC()) {
		// Nothing to keep (blank), so nothing to wait for: the same as over TCP.
		c.stats.empty.Add(1)
		return relpEndPeer, sess.answer(ctx, f.Txnr, relpOK, nil, false)
	}
	if p.dicomErr != "" {
		sess.s.reject(sess.name, sess.ip, p.dicomErr, ev.RawSHA256, int64(len(f.Data)))
	}
	if ev.Malformed {
		c.stats.malformed.Add(1)
	}
	sl := sess.slot(ctx)
	if sl == nil {
		return relpEndPeer, false
	}
	sl.txnr, sl.commit, sl.rsp, sl.data, sl.last = f.Txnr, true, relpOK, nil, false
	if err := sess.appendRELP(ctx, ev, sl.done); err != nil {
		sess.free <- sl
		if errors.Is(err, errRELPFull) {
			return relpEndRetryLtr, false
		}
		if sess.stopping.Load() {
			return relpEndStop, false
		}
		return relpEndPeer, false
	}
	sess.queue <- sl
	return relpEndPeer, true
}

var errRELPFull = errors.New("relp: sink refused the event for relp_full_wait")

// appendRELP appends ev and, while the sink refuses (spool full), stops reading this
// session and retries, for at most relp_full_wait. It does not answer 500: librelp
// drops a frame answered 500 for good, while it keeps and resends a frame whose
// session ended unanswered, which is what a full spool needs (invariant 2).
func (sess *relpSession) appendRELP(ctx context.Context, ev *audit.Event, done func(error)) error {
	c := sess.s.c
	// Each frame is answered once it is durable, and the sender stops at its window
	// (omrelp's default: 128 frames): a RELP sender waits for acknowledgements as an
	// HL7 one does, so its events take the urgent lane (the journal's one fdatasync)
	// rather than wait for a bulk commit.
	appendFn := c.sink.Append
	if u, ok := c.sink.(collectors.UrgentSink); ok {
		appendFn = u.AppendUrgent
	}
	err := appendFn(ctx, ev, done)
	if err == nil || ctx.Err() != nil {
		return err
	}
	start := time.Now()
	if ok, n := c.limit.Allow("relp backpressure", start); ok {
		c.log.Warn("sink refused an event; pausing the relp session until it accepts", attrTransport, sess.name, attrPeer, sess.ip, attrErr, err, attrSuppressed, n)
	}
	delay := minBackoff
	for tries := 1; ; tries++ {
		sess.s.stats.waits.Add(1)
		if time.Since(start) >= sess.s.cfg.RELPFullWait {
			if ok, n := c.limit.Allow("relp full wait", time.Now()); ok {
				c.log.Warn("sink still refuses; closing the relp session so the sender resends later",
					attrTransport, sess.name, attrPeer, sess.ip, attrDuration, time.Since(start), attrSuppressed, n)
			}
			return errRELPFull
		}
		if !sleep(ctx, delay) {
			return ctx.Err()
		}
		if err = appendFn(ctx, ev, done); err == nil {
			if ok, _ := c.limit.Allow("relp backpressure end", time.Now()); ok {
				c.log.Info("sink accepts events again", attrTransport, sess.name, attrCount, tries, attrDuration, time.Since(start))
			}
			return nil
		}
		if ctx.Err() != nil {
			return err
		}
		delay = min(2*delay, maxBackoff)
	}
}

// slot waits for a free slot (the window) or the end of the session. Slots are made
// as the window fills, so an idle or slow session costs only the slots it used.
func (sess *relpSession) slot(ctx context.Context) *relpSlot {
	select {
	case sl := <-sess.free:
		return sl
	default:
	}
	if sess.made < cap(sess.free) {
		sess.made++
		sl := &relpSlot{res: make(chan error, 1)}
		sl.done = func(err error) { sl.res <- err }
		return sl
	}
	select {
	case sl := <-sess.free:
		return sl
	case <-ctx.Done():
		return nil
	case <-sess.wfail:
		return nil
	}
}

// answer queues a response that needs no commit. It reports false if the session
// ended first.
func (sess *relpSession) answer(ctx context.Context, txnr int, rsp string, data []byte, last bool) bool {
	sl := sess.slot(ctx)
	if sl == nil {
		return false
	}
	sl.txnr, sl.commit, sl.rsp, sl.data, sl.last = txnr, false, rsp, data, last
	sess.queue <- sl
	return true
}

// write sends the answers in TXNR order, each commit's only after its done callback
// reported nil. It gathers the answers that are ready into one write. It returns false
// if it could not deliver everything it was given.
func (sess *relpSession) write() bool {
	s := sess.s
	bw := bufio.NewWriterSize(sess.rw, relpWriteBuffer)
	var buf []byte
	flush := func() bool {
		if bw.Buffered() == 0 {
			return true
		}
		d := relpWriteTimeout
		if sess.stopping.Load() {
			d = time.Second // a stop must not wait on a sender that does not read
		}
		_ = sess.conn.SetWriteDeadline(time.Now().Add(d))
		if err := bw.Flush(); err != nil {
			s.logConn("relp write failed", sess.name, sess.ip, err)
			return false
		}
		return true
	}
	ok := true
	stop := func() {
		ok = false
		sess.fail()
	}
	skip := false // the drain is over: answer nothing more
	for sl := range sess.queue {
		if !ok || skip {
			// Nothing more reaches the sender; what it sent stays unacked on its side.
			if sl.commit {
				s.stats.unacked.Add(1)
			}
			continue
		}
		if sl.commit {
			var err error
			select {
			case err = <-sl.res:
			default:
				if !flush() {
					stop()
					s.stats.unacked.Add(1)
					continue
				}
				select {
				case err = <-sl.res:
				case <-sess.abandon:
					// Shutdown and the commit is still not reported: leave it and every
					// later command unanswered (answers go in TXNR order; the sender
					// resends them), and do not reuse the slot, whose done may still be
					// called. The connection is fine: serverclose can still go out.
					skip = true
					s.stats.unacked.Add(1)
					continue
				}
			}
			if err != nil {
				// The sink could not keep it. Answering 500 would make librelp drop the
				// message; ending the session unanswered makes it resend.
				if lim, n := s.c.limit.Allow("relp commit failed", time.Now()); lim {
					s.c.log.Warn("commit failed; closing the relp session so the sender resends",
						attrTransport, sess.name, attrPeer, sess.ip, attrErr, err, attrSuppressed, n)
				}
				flush()
				stop()
				s.stats.unacked.Add(1)
				continue
			}
			s.stats.received[sess.ti].Add(1)
		} else if len(sl.rsp) >= 3 && sl.rsp[0] == '5' {
			s.stats.refused.Add(1)
		}
		buf = appendRSP(buf[:0], sl.txnr, sl.rsp, sl.data)
		_, _ = bw.Write(buf) // errors surface at Flush
		last := sl.last
		sl.data = nil
		sess.free <- sl
		if (last || len(sess.queue) == 0) && !flush() {
			stop()
		}
	}
	if ok && !flush() {
		stop()
	}
	return ok
}

// appendRSP appends "TXNR rsp DATALEN RSP[\nDATA]\n".
func appendRSP(dst []byte, txnr int, rsp string, data []byte) []byte {
	n := len(rsp)
	if len(data) > 0 {
		n += 1 + len(data)
	}
	dst = appendInt(dst, txnr)
	dst = append(dst, " rsp "...)
	dst = appendInt(dst, n)
	dst = append(dst, ' ')
	dst = append(dst, rsp...)
	if len(data) > 0 {
		dst = append(dst, '\n')
		dst = append(dst, data...)
	}
	return append(dst, '\n')
}

// openResponse answers the offers of an open command (lines "name=value,value"). It
// returns the response line and the offers to send back, or a 500 line and nil offers
// when the client's offers cannot make a session: relp_version must be there, and the
// client must offer the syslog command, the only one this server implements.
func openResponse(data []byte) (string, []byte) {
	version := -1
	syslogCmd := false
	for line := range bytes.SplitSeq(data, []byte{'\n'}) {
		name, value, _ := bytes.Cut(bytes.TrimRight(line, "\r"), []byte{'='})
		switch string(name) {
		case "relp_version":
			if v, err := strconv.Atoi(string(value)); err == nil && v >= 0 {
				version = v
			}
		case "commands":
			for cmd := range bytes.SplitSeq(value, []byte{','}) {
				if string(cmd) == "syslog" {
					syslogCmd = true
				}
			}
		}
	}
	switch {
	case version < 0:
		return relpNoVersion, nil
	case !syslogCmd:
		return relpNoSyslog, nil
	}
	offers := make([]byte, 0, 64)
	offers = append(offers, "relp_version="...)
	offers = appendInt(offers, min(version, relpVersion))
	offers = append(offers, '\n')
	offers = append(offers, relpSoftwareOffer...)
	offers = append(offers, "\ncommands=syslog"...)
	return relpOK, offers
}

// nextTxnr is the TXNR after t: it counts to RELPMaxTxnr and starts again at 1.
func nextTxnr(t int) int {
	if t >= RELPMaxTxnr {
		return 1
	}
	return t + 1
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}
