// Package syslog receives syslog messages (RFC 5424 and RFC 3164, over UDP, TCP and TLS)
// and turns each into an audit.Event for the spool.
package syslog

import (
	"bufio"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
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
	// readBufferSize is the bufio buffer of each connection: large enough that a burst of
	// small messages costs one read system call per 64 KiB, and that most ATNA XML
	// messages are framed without a copy.
	readBufferSize = 64 << 10
	// udpBufferSize holds any UDP datagram (the IPv4 payload maximum is 65507 bytes).
	udpBufferSize = 64 << 10
	// drainQuiet is how long a read waits for more bytes once the drain has begun: a
	// sender whose last write returned has all of it in our receive queue or in its send
	// queue, and loopback or LAN delivery of the latter takes microseconds to
	// milliseconds, so a quarter second of silence means there is nothing more.
	drainQuiet = 250 * time.Millisecond
	// discardMax bounds the counting of what is left when the drain budget is spent; a
	// sender that keeps sending would otherwise keep the count going.
	discardMax = 500 * time.Millisecond
	// Backoff while the sink refuses events: short at first, because a full commit
	// queue drains in milliseconds, and capped so a full disk is polled once a second.
	minBackoff = 2 * time.Millisecond
	maxBackoff = time.Second
)

// Collector listens for syslog messages and appends them to a sink. Create it with New
// and start it with Run.
type Collector struct {
	cfg    Config
	sink   collectors.Sink
	rep    collectors.Reporter
	log    *slog.Logger
	tlsCfg *tls.Config
	loc    *time.Location
	now    func() time.Time                // tests pin the clock
	tok    atomic.Pointer[audit.Tokenizer] // SetTokenizer (dicom.go)
	redact atomic.Pointer[audit.Redactor]  // SetRedactor (dicom.go)

	started atomic.Bool
	ready   chan struct{}

	mu    sync.Mutex
	addrs [numTransports]net.Addr
	conns *connset.Set // open TCP/TLS connections, for the limits and for shutdown
	relp  *RELPServer  // nil unless syslog.relp or syslog.relp_tls is set
	drain connset.Drain
	// hard is the context of appends: unlike Run's ctx it stays live through the drain
	// and is cancelled when the drain budget is spent. handleConn tests cancel it.
	hard       context.Context
	hardCancel context.CancelFunc

	stats counters
	limit ratelog.Limiter
}

// New validates cfg (after applying defaults), loads the TLS material, and returns a
// collector that has not started anything yet. sink and rep must not be nil. logger may
// be nil to discard logs; the caller tags it (component=collector.syslog), as the daemon
// does for every component.
func New(cfg Config, sink collectors.Sink, rep collectors.Reporter, logger *slog.Logger) (*Collector, error) {
	cfg.SetDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if sink == nil || rep == nil {
		return nil, errors.New("syslog: New needs a sink and a reporter")
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	loc := time.Local
	if cfg.RFC3164TimeZone != "" {
		l, err := time.LoadLocation(cfg.RFC3164TimeZone)
		if err != nil {
			return nil, &ConfigError{Field: "syslog.rfc3164_timezone", Value: cfg.RFC3164TimeZone, Err: err}
		}
		loc = l
	}
	c := &Collector{
		cfg:   cfg,
		sink:  sink,
		rep:   rep,
		log:   logger,
		loc:   loc,
		now:   time.Now,
		ready: make(chan struct{}),
		conns: connset.New(connset.Limits{Max: cfg.MaxConnections, MaxPerIP: cfg.MaxConnectionsPerIP}),
		drain: connset.Drain{Quiet: drainQuiet},
	}
	c.hard, c.hardCancel = context.WithCancel(context.Background())
	if cfg.TLS != "" {
		tc, err := loadTLS(cfg)
		if err != nil {
			return nil, err
		}
		c.tlsCfg = tc
	}
	if cfg.RELPEnabled() {
		r, err := c.NewRELP(cfg.RELPConfig)
		if err != nil {
			return nil, err
		}
		c.relp = r
	}
	return c, nil
}

// RELP returns the RELP listener (for its addresses and Stats), or nil when syslog.relp
// and syslog.relp_tls are empty.
func (c *Collector) RELP() *RELPServer { return c.relp }

func loadTLS(cfg Config) (*tls.Config, error) {
	tc, err := tlsconf.Server("syslog", cfg.TLSCert, cfg.TLSKey, cfg.TLSClientCA)
	if err != nil {
		return nil, err
	}
	// No TLS 1.3 session tickets. A server sends them after the handshake, and a syslog
	// sender never reads: they sit unread in its receive buffer, so its close() becomes a
	// TCP reset, and a reset makes our kernel discard whatever the sender wrote that we
	// had not read yet. loggen -U lost 9k of 20k messages that way; without tickets its
	// close is a FIN and every message arrives. Resumption buys a syslog sender nothing
	// (its connections are long-lived).
	tc.SessionTicketsDisabled = true
	return tc, nil
}

// Ready is closed once Run has bound every configured listener; the addresses are then
// available from UDPAddr, TCPAddr and TLSAddr.
func (c *Collector) Ready() <-chan struct{} { return c.ready }

// UDPAddr returns the bound UDP address, or nil if UDP is disabled or not yet bound.
func (c *Collector) UDPAddr() net.Addr { return c.addr(transportUDP) }

// TCPAddr returns the bound TCP address, or nil if TCP is disabled or not yet bound.
func (c *Collector) TCPAddr() net.Addr { return c.addr(transportTCP) }

// TLSAddr returns the bound TLS address, or nil if TLS is disabled or not yet bound.
func (c *Collector) TLSAddr() net.Addr { return c.addr(transportTLS) }

func (c *Collector) addr(t transport) net.Addr {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.addrs[t]
}

// Run binds the configured listeners and serves them until ctx is done. A bind error is
// returned at once and names the address. Run returns nil after a clean cancellation,
// and only once every goroutine it started has exited, so no Append happens after it
// returns. It may be called once.
//
// When ctx is done, Run drains: it closes the TCP and TLS listeners, then every open
// connection and the UDP socket go on being read and appended (with a context that is
// not ctx) until nothing more is queued or DrainTimeout has passed. What is still
// queued then is read without being parsed, counted (frames and bytes) and reported as
// LossShutdownUnread, so a stop in the middle of a burst loses nothing without saying
// how much. The sink must stay open until Run returns.
func (c *Collector) Run(ctx context.Context) error {
	if !c.started.CompareAndSwap(false, true) {
		return errors.New("syslog: Run called twice")
	}
	if ctx.Err() != nil {
		return nil // cancelled before it started: nothing to bind, nothing to report
	}
	udp, tcpLn, tlsLn, err := c.listen(ctx)
	if err != nil {
		return err
	}
	var relpLns []net.Listener
	if c.relp != nil {
		if relpLns, err = c.relp.Listen(ctx); err != nil {
			// Every configured address or none: close what listen opened.
			if udp != nil {
				udp.Close()
			}
			for _, ln := range []net.Listener{tcpLn, tlsLn} {
				if ln != nil {
					ln.Close()
				}
			}
			return err
		}
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	defer c.hardCancel()

	var (
		wg      sync.WaitGroup
		failMu  sync.Mutex
		failErr error // the first error that ended a serving loop early
	)
	fail := func(err error) {
		if err == nil {
			return
		}
		failMu.Lock()
		if failErr == nil {
			failErr = err
		}
		failMu.Unlock()
		cancel()
	}
	if udp != nil {
		wg.Go(func() { fail(c.serveUDP(ctx, udp)) })
	}
	if tcpLn != nil {
		wg.Go(func() { fail(c.serveStream(ctx, &wg, tcpLn, transportTCP)) })
	}
	if tlsLn != nil {
		wg.Go(func() { fail(c.serveStream(ctx, &wg, tlsLn, transportTLS)) })
	}
	// RELP sessions stop on their own when ctx is done (Serve closes its listener; each
	// session answers what commits within drain_timeout, then sends serverclose).
	for _, ln := range relpLns {
		wg.Go(func() { fail(c.relp.Serve(ctx, &wg, ln)) })
	}
	close(c.ready)

	<-ctx.Done()
	begin := time.Now()
	end := begin.Add(c.cfg.DrainTimeout)
	// Closing the listeners ends the accept loops; the connections and the UDP socket
	// stay open for the drain.
	var errs []error
	for _, ln := range []net.Listener{tcpLn, tlsLn} {
		if ln == nil {
			continue
		}
		if err := ln.Close(); err != nil && !errors.Is(err, net.ErrClosed) {
			errs = append(errs, err)
		}
	}
	before := c.stats.drained.Load()
	conns := c.conns.Shutdown()
	c.drain.Begin(end, conns)
	if udp != nil {
		_ = udp.SetReadDeadline(begin) // wakes the UDP loop into its drain
	}
	spent := time.AfterFunc(c.cfg.DrainTimeout, c.hardCancel)
	// The last resort, if a reader is stuck past its deadlines: closing everything ends
	// every read, so Run returns within the budget plus the counting.
	stuck := time.AfterFunc(c.cfg.DrainTimeout+discardMax+2*drainQuiet, func() {
		c.conns.CloseAll()
		if udp != nil {
			udp.Close()
		}
	})
	wg.Wait()
	spent.Stop()
	stuck.Stop()
	c.conns.CloseAll()
	if udp != nil {
		if err := udp.Close(); err != nil && !errors.Is(err, net.ErrClosed) {
			errs = append(errs, err)
		}
	}
	c.log.Info("drained", attrConns, len(conns), attrCount, c.stats.drained.Load()-before,
		attrUnreadFrames, c.stats.unreadFrames.Load(), attrUnreadBytes, c.stats.unreadBytes.Load(),
		attrDuration, time.Since(begin).Round(time.Millisecond))
	return errors.Join(append([]error{failErr}, errs...)...)
}

// listen binds every configured address, or none: on an error it closes what it opened.
func (c *Collector) listen(ctx context.Context) (udp *net.UDPConn, tcpLn, tlsLn net.Listener, err error) {
	var lc net.ListenConfig
	defer func() {
		if err == nil {
			return
		}
		if udp != nil {
			udp.Close()
		}
		if tcpLn != nil {
			tcpLn.Close()
		}
		if tlsLn != nil {
			tlsLn.Close()
		}
		udp, tcpLn, tlsLn = nil, nil, nil
	}()
	if c.cfg.UDP != "" {
		pc, err := lc.ListenPacket(ctx, "udp", c.cfg.UDP)
		if err != nil {
			return nil, nil, nil, listenErr(transportUDP, c.cfg.UDP, err)
		}
		udp = pc.(*net.UDPConn)
		effective, err := setupUDP(udp, c.cfg.UDPReadBuffer)
		if err != nil {
			return udp, nil, nil, fmt.Errorf("set up udp socket %s: %w", c.cfg.UDP, err)
		}
		if effective < c.cfg.UDPReadBuffer {
			c.log.Warn("udp receive buffer is smaller than configured; raise net.core.rmem_max or run with CAP_NET_ADMIN",
				attrAddr, c.cfg.UDP, attrRequested, c.cfg.UDPReadBuffer, attrEffective, effective)
		}
	}
	if c.cfg.TCP != "" {
		if tcpLn, err = lc.Listen(ctx, "tcp", c.cfg.TCP); err != nil {
			return udp, nil, nil, listenErr(transportTCP, c.cfg.TCP, err)
		}
	}
	if c.cfg.TLS != "" {
		if tlsLn, err = lc.Listen(ctx, "tcp", c.cfg.TLS); err != nil {
			return udp, tcpLn, nil, listenErr(transportTLS, c.cfg.TLS, err)
		}
	}
	c.mu.Lock()
	if udp != nil {
		c.addrs[transportUDP] = udp.LocalAddr()
	}
	if tcpLn != nil {
		c.addrs[transportTCP] = tcpLn.Addr()
	}
	if tlsLn != nil {
		c.addrs[transportTLS] = tlsLn.Addr()
	}
	c.mu.Unlock()
	// One line per listener, naming its transport: UDP and TCP on one port would
	// otherwise read as the same line twice.
	for _, t := range []transport{transportUDP, transportTCP, transportTLS} {
		if a := c.addrs[t]; a != nil {
			c.log.Info("listening", attrTransport, t.String(), attrAddr, a.String())
		}
	}
	return udp, tcpLn, tlsLn, nil
}

// listenErr names the transport and the configured address once: net.OpError would
// repeat the address.
func listenErr(t transport, addr string, err error) error {
	var op *net.OpError
	if errors.As(err, &op) && op.Err != nil {
		err = op.Err
	}
	return fmt.Errorf("listen %s %s: %w", t, addr, err)
}

// serveStream accepts TCP or TLS connections and serves each in its own goroutine,
// counted in wg so that Run waits for it.
func (c *Collector) serveStream(ctx context.Context, wg *sync.WaitGroup, ln net.Listener, t transport) error {
	var delay time.Duration
	for {
		conn, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			if errors.Is(err, net.ErrClosed) {
				return fmt.Errorf("accept %s %s: %w", t, ln.Addr(), err)
			}
			// Out of file descriptors and the like: wait and retry, as net/http does.
			delay = min(max(2*delay, 5*time.Millisecond), maxBackoff)
			if ok, n := c.limit.Allow("accept "+t.String(), time.Now()); ok {
				c.log.Warn("accept failed; retrying", attrTransport, t.String(), attrErr, err, attrSuppressed, n)
			}
			if !sleep(ctx, delay) {
				return nil
			}
			continue
		}
		delay = 0
		ip := peerIP(conn.RemoteAddr())
		tc, adm := c.conns.Track(conn, ip, t.String())
		switch adm.Result {
		case connset.Closing:
			conn.Close()
			return nil
		case connset.Full, connset.FullPerIP:
			// Count before closing: whoever sees the close may look at the counters.
			c.stats.refused.Add(1)
			c.reject(t, ip, adm.Result.Reason(), "", 0)
			conn.Close()
			continue
		}
		if ev := adm.Evicted; ev != nil {
			c.stats.evicted.Add(1)
			// The table is shared with RELP: report the eviction under the evicted
			// connection's own transport.
			if l := ev.Label(); (l == TransportRELP || l == TransportRELPTLS) && c.relp != nil {
				if i := reasonIndex(ReasonEvictedIdle); i >= 0 {
					c.stats.rejects[i].Add(1)
				}
				c.relp.reject(l, ev.IP(), ReasonEvictedIdle, "", 0)
			} else {
				c.reject(transportOf(l), ev.IP(), ReasonEvictedIdle, "", 0)
			}
		}
		c.stats.accepted.Add(1)
		wg.Go(func() {
			defer tc.Close()
			c.handleConn(ctx, tc, t, ip)
		})
	}
}

// handleConn reads frames from one connection until it ends or is rejected; after ctx
// is done it drains (see Run). conn is usually a *connset.Conn, whose idle state it then
// keeps; tests pass a bare net.Pipe end.
func (c *Collector) handleConn(ctx context.Context, conn net.Conn, t transport, ip string) {
	tracked, _ := conn.(*connset.Conn)
	raw := conn
	if tracked != nil {
		raw = tracked.Conn // so that the handshake's reads leave the connection idle
	}
	var rd net.Conn = raw
	if t == transportTLS {
		tc := tls.Server(raw, c.tlsCfg)
		_ = raw.SetDeadline(time.Now().Add(c.cfg.HandshakeTimeout))
		if err := tc.HandshakeContext(ctx); err != nil {
			switch {
			case ctx.Err() != nil, tracked != nil && tracked.Evicted():
				// Stopping, or evicted (reported): nothing was received to drain.
			case isTimeout(err):
				c.reject(t, ip, ReasonHandshakeTimeout, "", 0)
			default:
				// Evidence of a peer that could not authenticate; TLS alerts carry no
				// message content, so the error is safe to log.
				c.reject(t, ip, ReasonTLSHandshake, "", 0)
				c.logConn("tls handshake failed", t, ip, err)
			}
			return
		}
		_ = raw.SetDeadline(time.Time{})
		rd = tc
	}
	cr := &countReader{r: &connset.DeadlineReader{Conn: rd, Timeout: c.cfg.IdleTimeout, Track: tracked, Drain: &c.drain}}
	br := bufio.NewReaderSize(cr, readBufferSize)
	fr := NewFramer(br, c.cfg.MaxMessageSize)
	p := c.newParserFor()
	name := t.String()
	var (
		ev   audit.Event
		kept int64 // stream offset just past the last frame the sink took
	)
	for {
		if c.hard.Err() != nil {
			c.discardRest(fr, cr, t, ip, kept)
			return
		}
		frame, err := fr.Next()
		if err != nil {
			var fe *FrameError
			if errors.As(err, &fe) {
				c.reject(t, ip, fe.Reason.Error(), fe.SHA256, fe.Size)
				if !fe.Fatal() {
					kept = cr.n - int64(br.Buffered())
					continue
				}
				if err = fe.Err; err == nil {
					return // bad octet count: the stream cannot be resynchronized
				}
			}
			switch {
			case err == io.EOF, tracked != nil && tracked.Evicted():
			case c.drain.Draining() && isTimeout(err):
				// Drained: nothing more came within drainQuiet.
			case ctx.Err() == nil:
				c.logConn("connection ended", t, ip, err)
			}
			return
		}
		resetEvent(&ev, name, ip)
		if !p.parse(&ev, frame, c.now().UTC()) {
			c.stats.empty.Add(1)
			kept = cr.n - int64(br.Buffered())
			continue
		}
		if p.dicomErr != "" {
			c.reject(t, ip, p.dicomErr, ev.RawSHA256, int64(len(frame)))
		}
		if ev.Malformed {
			c.stats.malformed.Add(1)
		}
		if err := c.appendStream(c.hard, &ev, t); err != nil {
			c.discardRest(fr, cr, t, ip, kept)
			return
		}
		kept = cr.n - int64(br.Buffered())
		c.stats.received[t].Add(1)
		if c.drain.Draining() {
			c.stats.drained.Add(1)
		}
	}
}

// countReader counts the bytes read from a connection, so that what a stop leaves
// unread can be reported exactly.
type countReader struct {
	r io.Reader
	n int64
}

func (r *countReader) Read(p []byte) (int, error) {
	n, err := r.r.Read(p)
	r.n += int64(n)
	return n, err
}

// discardRest runs when the drain budget is spent: it reads what the connection still
// has queued (the framer's buffer, then the socket until it is quiet or discardMax has
// passed), frames it without parsing, and reports the frames and the bytes that were
// received after kept, the end of the last frame the sink took. The bytes include a
// frame in hand that appendStream already reported as LossShutdown.
func (c *Collector) discardRest(fr *Framer, cr *countReader, t transport, ip string, kept int64) {
	var frames uint64
	stop := time.Now().Add(discardMax)
	for time.Now().Before(stop) {
		_, err := fr.Next()
		if err == nil {
			frames++
			continue
		}
		var fe *FrameError
		if errors.As(err, &fe) {
			frames++ // an oversize frame, or a partial one at the end
			if !fe.Fatal() {
				continue
			}
		}
		break
	}
	bytes := cr.n - kept
	if frames == 0 && bytes == 0 {
		return
	}
	c.stats.unreadFrames.Add(frames)
	c.stats.unreadBytes.Add(uint64(bytes))
	if frames > 0 {
		c.rep.Lost(audit.KindSyslog, t.String(), LossShutdownUnread, frames)
	}
	// One reject per connection carries the byte count and the peer into the chain.
	c.reject(t, ip, ReasonShutdownUnread, "", bytes)
}

// appendStream appends ev, and while the sink refuses, stops reading this connection
// (TCP flow control then slows the sender) and retries: a stream never drops an event.
// The connection counts as busy meanwhile (it is not in Read), so it is never evicted
// as idle. ctx is the
// collector's hard context: it ends only when the drain budget is spent, and then the
// event is reported lost.
func (c *Collector) appendStream(ctx context.Context, ev *audit.Event, t transport) error {
	err := c.sink.Append(ctx, ev, nil)
	if err == nil {
		return nil
	}
	if ctx.Err() != nil {
		c.lost(t, LossShutdown)
		return err
	}
	start := time.Now()
	if ok, n := c.limit.Allow("backpressure", start); ok {
		c.log.Warn("sink refused an event; pausing reads until it accepts", attrTransport, t.String(), attrErr, err, attrSuppressed, n)
	}
	delay := minBackoff
	for tries := 1; ; tries++ {
		c.stats.waits.Add(1)
		if !sleep(ctx, delay) {
			c.lost(t, LossShutdown)
			return ctx.Err()
		}
		if err = c.sink.Append(ctx, ev, nil); err == nil {
			if ok, _ := c.limit.Allow("backpressure end", time.Now()); ok {
				c.log.Info("sink accepts events again", attrTransport, t.String(), attrCount, tries, attrDuration, time.Since(start))
			}
			return nil
		}
		if ctx.Err() != nil {
			c.lost(t, LossShutdown)
			return err
		}
		delay = min(2*delay, maxBackoff)
	}
}

// serveUDP reads datagrams until the socket is closed or, after ctx is done, until the
// drain finds the socket's queue empty (see Run). One goroutine, one parser.
func (c *Collector) serveUDP(ctx context.Context, conn *net.UDPConn) error {
	buf := make([]byte, udpBufferSize)
	oob := make([]byte, oobSize)
	p := c.newParserFor()
	var (
		ev       audit.Event
		drops    uint32
		lastAddr netip.Addr
		lastIP   string
		delay    time.Duration
	)
	for {
		// Outside the drain the socket has no deadline; Run's wake-up deadline can thus
		// never be overwritten, and a timeout on a read begun before the drain is that
		// wake-up, while one begun in the drain means the queue stayed empty for
		// drainQuiet.
		draining := c.drain.Draining()
		if draining {
			if c.hard.Err() != nil {
				c.discardUDP(conn, buf, oob)
				return nil
			}
			_ = conn.SetReadDeadline(time.Now().Add(drainQuiet))
		}
		n, oobn, _, from, err := conn.ReadMsgUDPAddrPort(buf, oob)
		if err != nil {
			if isTimeout(err) && c.drain.Draining() {
				if draining {
					return nil // drained
				}
				continue
			}
			if ctx.Err() != nil {
				return nil
			}
			if errors.Is(err, net.ErrClosed) {
				return fmt.Errorf("read udp %s: %w", conn.LocalAddr(), err)
			}
			delay = min(max(2*delay, 5*time.Millisecond), maxBackoff)
			if ok, k := c.limit.Allow("read udp", time.Now()); ok {
				c.log.Warn("udp read failed; retrying", attrErr, err, attrSuppressed, k)
			}
			if !sleep(ctx, delay) {
				continue // into the drain
			}
			continue
		}
		delay = 0
		c.countKernelDrops(oob[:oobn], &drops)
		c.stats.datagrams.Add(1)
		if a := from.Addr(); a != lastAddr || lastIP == "" {
			lastAddr, lastIP = a, a.Unmap().String()
		}
		if n > c.cfg.MaxMessageSize {
			sum := sha256.Sum256(buf[:n])
			c.reject(transportUDP, lastIP, ReasonOversize, hex.EncodeToString(sum[:]), int64(n))
			continue
		}
		resetEvent(&ev, "udp", lastIP)
		if !p.parse(&ev, buf[:n], c.now().UTC()) {
			c.stats.empty.Add(1)
			continue
		}
		if p.dicomErr != "" {
			c.reject(transportUDP, lastIP, p.dicomErr, ev.RawSHA256, int64(n))
		}
		if ev.Malformed {
			c.stats.malformed.Add(1)
		}
		if err := c.sink.Append(c.hard, &ev, nil); err == nil {
			c.stats.received[transportUDP].Add(1)
			if draining {
				c.stats.drained.Add(1)
			}
		} else {
			if c.hard.Err() != nil {
				c.lost(transportUDP, LossShutdown)
				continue // into the discard
			}
			// UDP cannot push back on the sender: the datagram is lost, and says so.
			c.lost(transportUDP, LossSpoolFull)
			if ok, k := c.limit.Allow("udp spool full", time.Now()); ok {
				c.log.Warn("sink refused a udp message; counted as lost", attrErr, err, attrSuppressed, k)
			}
		}
	}
}

func (c *Collector) countKernelDrops(oob []byte, drops *uint32) {
	if total, ok := kernelDrops(oob); ok && total != *drops {
		// The counter is cumulative per socket; uint32 subtraction survives a wrap.
		d := uint64(total - *drops)
		*drops = total
		c.stats.kernelDrop.Add(d)
		c.rep.Lost(audit.KindSyslog, transportUDP.String(), LossKernelDrop, d)
	}
}

// discardUDP counts the datagrams still queued when the drain budget is spent, reading
// them without parsing until the queue is empty (a read that waits a millisecond finds
// nothing) or discardMax has passed, and reports them as LossShutdownUnread.
func (c *Collector) discardUDP(conn *net.UDPConn, buf, oob []byte) {
	var frames, bytes uint64
	stop := time.Now().Add(discardMax)
	for time.Now().Before(stop) {
		_ = conn.SetReadDeadline(time.Now().Add(time.Millisecond))
		n, _, _, _, err := conn.ReadMsgUDPAddrPort(buf, oob)
		if err != nil {
			break
		}
		frames++
		bytes += uint64(n)
	}
	if frames == 0 {
		return
	}
	c.stats.unreadFrames.Add(frames)
	c.stats.unreadBytes.Add(bytes)
	c.rep.Lost(audit.KindSyslog, transportUDP.String(), LossShutdownUnread, frames)
}

func (c *Collector) lost(t transport, reason string) {
	switch reason {
	case LossSpoolFull:
		c.stats.spoolFull.Add(1)
	case LossShutdown:
		c.stats.shutdown.Add(1)
	}
	c.rep.Lost(audit.KindSyslog, t.String(), reason, 1)
}

// reject counts and reports refused input, and logs it without content, rate-limited
// per reason and peer.
func (c *Collector) reject(t transport, ip, reason, sum string, size int64) {
	if i := reasonIndex(reason); i >= 0 {
		c.stats.rejects[i].Add(1)
	}
	c.rep.Reject(audit.KindSyslog, t.String(), ip, reason, sum, size)
	if ok, n := c.limit.Allow("reject "+reason+" "+ip, time.Now()); ok {
		c.log.Warn("syslog input rejected", attrTransport, t.String(), attrPeer, ip, attrReason, reason, attrSize, size, attrSuppressed, n)
	}
}

func (c *Collector) logConn(msg string, t transport, ip string, err error) {
	level := slog.LevelInfo
	if isTimeout(err) {
		level = slog.LevelDebug // idle senders are normal; they reconnect when needed
	}
	if ok, n := c.limit.Allow(msg+" "+ip, time.Now()); ok {
		c.log.Log(context.Background(), level, msg, attrTransport, t.String(), attrPeer, ip, attrErr, err, attrSuppressed, n)
	}
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

func peerIP(a net.Addr) string {
	switch a := a.(type) {
	case *net.TCPAddr:
		return a.AddrPort().Addr().Unmap().String()
	case *net.UDPAddr:
		return a.AddrPort().Addr().Unmap().String()
	case nil:
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
