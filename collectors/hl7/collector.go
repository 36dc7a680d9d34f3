// Package hl7 receives HL7 v2 messages over MLLP (optionally over TLS), turns each into
// a tokenized audit.Event, and acknowledges it only after the sink has committed it.
package hl7

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/edgeaudit/edgeaudit/audit"
	"github.com/edgeaudit/edgeaudit/collectors"
	"github.com/edgeaudit/edgeaudit/internal/connset"
	"github.com/edgeaudit/edgeaudit/internal/ratelog"
	"github.com/edgeaudit/edgeaudit/internal/tlsconf"
)

const (
	// readBufferSize is the bufio buffer of each connection.
	readBufferSize = 64 << 10
	// drainQuiet is how long, after the stop, a read waits for the rest of a message
	// that has begun to arrive.
	drainQuiet = 100 * time.Millisecond
	// maxWrite bounds writing one ACK, so a peer that stops reading cannot hold the
	// connection's goroutine.
	maxWrite = 30 * time.Second
	// Transport names (audit.Source.Transport and Reporter transport).
	transportMLLP    = "mllp"
	transportMLLPTLS = "mllp+tls"
)

// Collector listens for MLLP connections and appends one event per HL7 message to a
// sink. Create it with New and start it with Run.
type Collector struct {
	cfg       Config
	sink      collectors.Sink
	rep       collectors.Reporter
	tok       *audit.Tokenizer
	log       *slog.Logger
	tlsCfg    *tls.Config
	loc       *time.Location
	transport string
	now       func() time.Time // tests pin the clock

	started atomic.Bool
	ready   chan struct{}

	mu    sync.Mutex
	addr  net.Addr
	conns *connset.Set // open TCP/TLS connections, for the limits and for shutdown
	// drain: after the stop, a connection finishes (reads the rest of, commits and
	// acknowledges) the message in hand and reads no more, because an MLLP sender keeps
	// and resends whatever it has no ACK for.
	drain connset.Drain
	// hard is the context of appends: it outlives Run's ctx by DrainTimeout, so the
	// message in hand can still be committed and acknowledged. Tests cancel it.
	hard       context.Context
	hardCancel context.CancelFunc

	stats counters
	limit ratelog.Limiter
}

// New validates cfg (after applying defaults), loads the TLS material, and returns a
// collector that has not started anything yet. sink, rep and tok must not be nil. logger
// may be nil to discard logs; the caller tags it (component=collector.hl7).
func New(cfg Config, sink collectors.Sink, rep collectors.Reporter, tok *audit.Tokenizer, logger *slog.Logger) (*Collector, error) {
	cfg.SetDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if sink == nil || rep == nil || tok == nil {
		return nil, errors.New("hl7: New needs a sink, a reporter and a tokenizer")
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	loc := time.Local
	if cfg.Timezone != "" {
		l, err := time.LoadLocation(cfg.Timezone)
		if err != nil {
			return nil, &ConfigError{Field: "hl7.timezone", Value: cfg.Timezone, Err: err}
		}
		loc = l
	}
	c := &Collector{
		cfg:       cfg,
		sink:      sink,
		rep:       rep,
		tok:       tok,
		log:       logger,
		loc:       loc,
		transport: transportMLLP,
		now:       time.Now,
		ready:     make(chan struct{}),
		conns:     connset.New(connset.Limits{Max: cfg.MaxConnections, MaxPerIP: cfg.MaxConnectionsPerIP}),
		drain:     connset.Drain{Quiet: drainQuiet},
	}
	c.hard, c.hardCancel = context.WithCancel(context.Background())
	if cfg.TLS() {
		tc, err := loadTLS(cfg)
		if err != nil {
			return nil, err
		}
		c.tlsCfg = tc
		c.transport = transportMLLPTLS
	}
	return c, nil
}

func loadTLS(cfg Config) (*tls.Config, error) {
	return tlsconf.Server("hl7", cfg.TLSCert, cfg.TLSKey, cfg.TLSClientCA)
}

// Ready is closed once Run has bound the listener; Addr is then set.
func (c *Collector) Ready() <-chan struct{} { return c.ready }

// Addr returns the bound listen address, or nil before Run has bound it.
func (c *Collector) Addr() net.Addr {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.addr
}

// Run binds the listener and serves it until ctx is done. A bind error is returned at
// once and names the address. Run returns nil after a clean cancellation, and only once
// every goroutine it started has exited, so no Append happens after it returns. With an
// empty listen address it just waits for ctx. It may be called once.
//
// When ctx is done, Run stops accepting, and each connection finishes the message it is
// handling: the commit may take up to DrainTimeout and is then acknowledged. Messages
// not yet read (or read into the buffer but not begun) get no ACK, which MLLP senders
// answer by resending them after the restart, so they are neither lost nor counted.
func (c *Collector) Run(ctx context.Context) error {
	if !c.started.CompareAndSwap(false, true) {
		return errors.New("hl7: Run called twice")
	}
	if ctx.Err() != nil {
		return nil
	}
	if c.cfg.MLLP == "" {
		close(c.ready)
		<-ctx.Done()
		return nil
	}
	var lc net.ListenConfig
	ln, err := lc.Listen(ctx, "tcp", c.cfg.MLLP)
	if err != nil {
		var op *net.OpError
		if errors.As(err, &op) && op.Err != nil {
			err = op.Err
		}
		return fmt.Errorf("listen %s %s: %w", c.transport, c.cfg.MLLP, err)
	}
	c.mu.Lock()
	c.addr = ln.Addr()
	c.mu.Unlock()
	c.log.Info("listening", attrTransport, c.transport, attrAddr, ln.Addr().String())

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	defer c.hardCancel()
	var (
		wg      sync.WaitGroup
		failErr error
	)
	wg.Go(func() {
		if err := c.serve(ctx, &wg, ln); err != nil {
			failErr = err
			cancel()
		}
	})
	close(c.ready)

	<-ctx.Done()
	var errs []error
	if err := ln.Close(); err != nil && !errors.Is(err, net.ErrClosed) {
		errs = append(errs, err)
	}
	// Wake every reader; those waiting for a message end, those with one in hand
	// finish it. When the budget is spent, the commit wait is abandoned (no ACK) and the
	// connections close, which also ends an ACK write to a peer that stopped reading.
	c.drain.Begin(time.Now().Add(c.cfg.DrainTimeout), c.conns.Shutdown())
	spent := time.AfterFunc(c.cfg.DrainTimeout, func() {
		c.hardCancel()
		c.conns.CloseAll()
	})
	wg.Wait()
	spent.Stop()
	c.conns.CloseAll()
	return errors.Join(append([]error{failErr}, errs...)...)
}

// serve accepts connections and serves each in its own goroutine, counted in wg.
func (c *Collector) serve(ctx context.Context, wg *sync.WaitGroup, ln net.Listener) error {
	var delay time.Duration
	for {
		conn, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			if errors.Is(err, net.ErrClosed) {
				return fmt.Errorf("accept %s %s: %w", c.transport, ln.Addr(), err)
			}
			delay = min(max(2*delay, 5*time.Millisecond), time.Second)
			if ok, n := c.limit.Allow("accept", time.Now()); ok {
				c.log.Warn("accept failed; retrying", attrTransport, c.transport, attrErr, err, attrSuppressed, n)
			}
			if !sleep(ctx, delay) {
				return nil
			}
			continue
		}
		delay = 0
		ip := peerIP(conn.RemoteAddr())
		tc, adm := c.conns.Track(conn, ip, c.transport)
		switch adm.Result {
		case connset.Closing:
			conn.Close()
			return nil
		case connset.Full, connset.FullPerIP:
			// Count before closing: whoever sees the close may look at the counters.
			c.stats.refused.Add(1)
			c.reject(ip, adm.Result.Reason(), "", 0)
			conn.Close()
			continue
		}
		if ev := adm.Evicted; ev != nil {
			c.stats.evicted.Add(1)
			c.reject(ev.IP(), ReasonEvictedIdle, "", 0)
		}
		c.stats.accepted.Add(1)
		wg.Go(func() {
			defer tc.Close()
			c.handleConn(ctx, tc, ip)
		})
	}
}

// handleConn serves one connection: for each block, in order, frame → parse → append
// and wait for the commit → ACK. It returns when the connection ends, or after ctx is
// done once the message in hand is answered. conn is usually a *connset.Conn, whose
// idle state it then keeps; tests pass a bare net.Pipe end.
func (c *Collector) handleConn(ctx context.Context, conn net.Conn, ip string) {
	tracked, _ := conn.(*connset.Conn)
	raw := conn
	if tracked != nil {
		raw = tracked.Conn // so that the handshake's reads leave the connection idle
	}
	var rw net.Conn = raw
	if c.tlsCfg != nil {
		tc := tls.Server(raw, c.tlsCfg)
		_ = raw.SetDeadline(time.Now().Add(c.cfg.HandshakeTimeout))
		if err := tc.HandshakeContext(ctx); err != nil {
			switch {
			case ctx.Err() != nil, tracked != nil && tracked.Evicted():
			case isTimeout(err):
				c.reject(ip, ReasonHandshakeTimeout, "", 0)
			default:
				c.reject(ip, ReasonTLSHandshake, "", 0)
				c.logConn("tls handshake failed", ip, err)
			}
			return
		}
		_ = raw.SetDeadline(time.Time{})
		rw = tc
	}
	br := bufio.NewReaderSize(&connset.DeadlineReader{Conn: rw, Timeout: c.cfg.IdleTimeout, Track: tracked, Drain: &c.drain}, readBufferSize)
	fr := NewFramer(br, c.cfg.MaxMessageSize)
	var ack []byte
	for ctx.Err() == nil {
		block, err := fr.Next()
		if err != nil {
			var fe *FrameError
			if !errors.As(err, &fe) {
				if err != io.EOF && ctx.Err() == nil && (tracked == nil || !tracked.Evicted()) {
					c.logConn("connection ended", ip, err)
				}
				return
			}
			reason := fe.Reason.Error()
			c.reject(ip, reason, fe.SHA256, fe.Size)
			if fe.Fatal() {
				if !errors.Is(fe.Err, io.EOF) && ctx.Err() == nil {
					c.logConn("connection ended", ip, fe.Err)
				}
				return
			}
			if fe.Reason == ErrNoStartBlock {
				continue // not a message: nobody waits for an answer
			}
			// An oversize or truncated block was a message the sender waits on.
			ack = c.ackFor(ack[:0], nil, outcomeRejected, reason)
			if !c.writeACK(rw, ack, ip) {
				return
			}
			continue
		}
		ack, err = c.handleMessage(ctx, ack[:0], block, ip)
		if err != nil {
			return // shutting down: no ACK, the sender resends
		}
		if len(ack) > 0 && !c.writeACK(rw, ack, ip) {
			return
		}
	}
}

type outcome int

const (
	outcomeAccepted outcome = iota
	outcomeStoreFailed
	outcomeRejected
)

// handleMessage parses block, appends its event and waits for the commit, and returns
// the ACK to send (empty when the sender asked for none). It returns an error only when
// the drain budget ended before the commit was confirmed: then nothing may be
// acknowledged. ctx is not used for the commit wait: a stop lets the message in hand
// finish.
func (c *Collector) handleMessage(ctx context.Context, dst, block []byte, ip string) ([]byte, error) {
	received := c.now()
	sha := sum(block)
	msgs, err := ParseAll(block)
	if err != nil {
		reason := ReasonOf(err)
		c.reject(ip, reason, sha, int64(len(block)))
		return c.ackFor(dst, msgs[0], outcomeRejected, reason), nil
	}
	// A batch is acknowledged once, after the last of its events is committed; if one
	// cannot be stored the sender resends the whole batch (duplicates, never losses).
	for i, m := range msgs {
		ev := audit.Event{Received: received.UTC(), RawSHA256: sha}
		Map(&ev, m, c.tok, c.loc, ev.Received)
		ev.Source.IP = ip
		ev.Source.Transport = c.transport
		if err := collectors.AppendSync(c.hard, c.sink, &ev); err != nil {
			if c.hard.Err() != nil {
				n := uint64(len(msgs) - i)
				c.stats.shutdown.Add(n)
				c.rep.Lost(audit.KindHL7, c.transport, LossShutdown, n)
				return nil, err
			}
			// Spool full, closed or a failed commit: the sender keeps the message and
			// retries, so nothing is lost; it is counted and logged, rate-limited.
			c.stats.storeErrors.Add(1)
			if ok, n := c.limit.Allow("store", time.Now()); ok {
				c.log.Warn("sink refused an hl7 message; answered with an error ACK so the sender retries",
					attrTransport, c.transport, attrPeer, ip, attrErr, err, attrSuppressed, n)
			}
			ack := c.ackFor(dst, msgs[0], outcomeStoreFailed, "")
			if len(ack) == len(dst) {
				// The sender asked for no error ACK (MSH-15/16 NE or SU): it will not
				// resend, so what was not stored is lost, and recorded as such.
				n := uint64(len(msgs) - i)
				c.rep.Lost(audit.KindHL7, c.transport, LossStoreNoACK, n)
			}
			return ack, nil
		}
		c.stats.received.Add(1)
	}
	return c.ackFor(dst, msgs[0], outcomeAccepted, ""), nil
}

// ackFor builds the ACK for an outcome as the ack mode and the message's MSH-15/MSH-16
// ask (ackCodeFor). It returns dst unchanged when no ACK is to be sent.
func (c *Collector) ackFor(dst []byte, m *Message, o outcome, reason string) []byte {
	code, ok := ackCodeFor(c.cfg.ACKMode, m, o)
	if !ok {
		c.stats.noACK.Add(1)
		return dst
	}
	text := ""
	if o == outcomeStoreFailed {
		text = textStoreFailed
	}
	return AppendACK(dst, m, code, reason, text, c.now())
}

func (c *Collector) writeACK(w net.Conn, ack []byte, ip string) bool {
	_ = w.SetWriteDeadline(time.Now().Add(min(c.cfg.IdleTimeout, maxWrite)))
	if _, err := w.Write(ack); err != nil {
		c.logConn("write ack failed", ip, err)
		return false
	}
	c.stats.acks.Add(1)
	return true
}

// reject counts and reports refused input, and logs it without content, rate-limited
// per reason and peer.
func (c *Collector) reject(ip, reason, sha string, size int64) {
	if i := reasonIndex(reason); i >= 0 {
		c.stats.rejects[i].Add(1)
	}
	c.rep.Reject(audit.KindHL7, c.transport, ip, reason, sha, size)
	if ok, n := c.limit.Allow("reject "+reason+" "+ip, time.Now()); ok {
		c.log.Warn("hl7 input rejected", attrTransport, c.transport, attrPeer, ip, attrReason, reason, attrSize, size, attrSuppressed, n)
	}
}

func (c *Collector) logConn(msg, ip string, err error) {
	level := slog.LevelInfo
	if isTimeout(err) {
		level = slog.LevelDebug
	}
	if ok, n := c.limit.Allow(msg+" "+ip, time.Now()); ok {
		c.log.Log(context.Background(), level, msg, attrTransport, c.transport, attrPeer, ip, attrErr, err, attrSuppressed, n)
	}
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

func peerIP(a net.Addr) string {
	if a, ok := a.(*net.TCPAddr); ok {
		return a.AddrPort().Addr().Unmap().String()
	}
	if a == nil {
		return ""
	}
	host, _, err := net.SplitHostPort(a.String())
	if err != nil {
		return a.String()
	}
	return host
}

// sleep waits d or until ctx is done; it reports whether the full wait happened.
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
