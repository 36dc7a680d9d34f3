// Package connset is the connection table shared by the stream listeners (syslog TCP,
// TLS and RELP, HL7 MLLP, and the FHIR http.Server through Listener): a global limit, a
// per-IP limit, eviction of the longest-idle connection when the table is full, and the
// shutdown hooks that let a collector drain its connections before Run returns.
//
// # Admission
//
// Track(conn, ip, label) admits a connection or says why not:
//
//   - When ip already holds Limits.MaxPerIP connections, that IP's own longest-idle
//     connection is closed to make room (Admission.Evicted), so a sender is never locked
//     out by its own stale connections and can never push out anyone else's. If none of
//     its connections has been idle for MinIdle, the new one is refused (FullPerIP).
//   - Otherwise, when the table holds Limits.Max connections, the longest-idle
//     connection of any IP is closed to make room; if every connection was active within
//     MinIdle, the new one is refused (Full).
//
// MinIdle keeps a burst of new connections from closing connections that are in use: a
// connection that received bytes or was busy with them (parsing, waiting for the sink)
// within MinIdle is never evicted.
//
// # Idle time
//
// A tracked connection is idle while it waits for its peer: from accept until its first
// byte (a TLS connection that never sends a ClientHello is idle since accept), and from
// the start of each Read that finds nothing to read. It is busy, not idle, while its
// goroutine works on what it read, so a connection that is stalled by backpressure is
// never evicted. DeadlineReader (for collectors that read through TLS or a bufio.Reader)
// and (*Conn).Read (for net/http through Listener) keep that state with two atomic stores
// per read.
//
// Every refusal and eviction has a stable reason keyword (the Reason* constants) that the
// caller counts and reports through collectors.Reporter; the set itself neither logs nor
// reports.
//
// # Shutdown
//
// Shutdown refuses new connections and returns the tracked ones without closing them;
// Drain.Begin then wakes their readers, which, reading through a DeadlineReader with that
// Drain, wait at most Drain.Quiet for more bytes instead of the idle timeout. The
// collector decides what a drain means for its protocol (syslog: read and append what is
// queued, count what is left; MLLP: finish the message in hand) and ends with CloseAll.
package connset

import (
	"errors"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// Reasons for refusals and evictions, the keywords collectors report through
// collectors.Reporter.Reject.
const (
	ReasonTooManyConnections = "too_many_connections"        // table full, nothing idle enough to evict
	ReasonTooManyPerIP       = "too_many_connections_per_ip" // the IP's share full, nothing of its own idle enough
	ReasonEvictedIdle        = "evicted_idle"                // closed to make room for a new connection
	ReasonHandshakeTimeout   = "tls_handshake_timeout"       // the TLS handshake did not finish in time
)

// DefaultMinIdle is the MinIdle used when Limits.MinIdle is zero.
const DefaultMinIdle = time.Second

// Result of Track.
type Result int

// Track results.
const (
	OK        Result = iota // tracked; close the *Conn when done
	Full                    // the global limit is reached and nothing can be evicted; close the connection
	FullPerIP               // the IP's limit is reached and none of its own can be evicted; close it
	Closing                 // shutdown has begun; close the connection
)

// Reason is the Reason* keyword of a refusal, or "" for OK and Closing (a shutdown
// refusal is not the sender's doing and is not reported).
func (r Result) Reason() string {
	switch r {
	case Full:
		return ReasonTooManyConnections
	case FullPerIP:
		return ReasonTooManyPerIP
	}
	return ""
}

func (r Result) String() string {
	switch r {
	case OK:
		return "ok"
	case Full:
		return "full"
	case FullPerIP:
		return "full_per_ip"
	case Closing:
		return "closing"
	}
	return "unknown"
}

// Limits configure a Set.
type Limits struct {
	// Max bounds the connections tracked at once. It must be at least 1.
	Max int
	// MaxPerIP bounds the connections of one peer IP. Zero or more than Max means Max
	// (no separate per-IP limit).
	MaxPerIP int
	// MinIdle is how long a connection must have been idle before it may be evicted.
	// Zero means DefaultMinIdle; a negative value means any idle time (tests).
	MinIdle time.Duration
}

// Admission is what Track decided.
type Admission struct {
	Result Result
	// Evicted is the connection that was closed to make room for this one, or nil. Its
	// IP and Idle say whose it was and for how long it had been idle; report it with
	// ReasonEvictedIdle. Its own goroutine sees its reads fail and (*Conn).Evicted true.
	Evicted *Conn
	// EvictedIdle is how long Evicted had been idle when it was closed.
	EvictedIdle time.Duration
}

// Set is a bounded table of connections. Its zero value is not usable; use New.
type Set struct {
	lim     Limits
	mu      sync.Mutex
	conns   map[*Conn]struct{}
	perIP   map[string]int
	closing bool
	open    atomic.Int64
}

// New returns a set with the given limits (Max below 1 is taken as 1).
func New(lim Limits) *Set {
	lim.Max = max(lim.Max, 1)
	if lim.MaxPerIP <= 0 || lim.MaxPerIP > lim.Max {
		lim.MaxPerIP = lim.Max
	}
	if lim.MinIdle == 0 {
		lim.MinIdle = DefaultMinIdle
	}
	return &Set{lim: lim, conns: make(map[*Conn]struct{}), perIP: make(map[string]int)}
}

// Limits returns the limits in effect (after New's defaults).
func (s *Set) Limits() Limits { return s.lim }

// Track admits conn from peer ip (see the package doc). label is the caller's own tag
// (e.g. the transport), returned by Label, so that a listener that shares one set
// between transports can report an eviction under the evicted connection's transport. With Result OK the returned *Conn
// is tracked until its Close; otherwise it is nil and the caller closes conn and, unless
// Result is Closing, counts and reports Result.Reason(). Track never blocks on I/O: an
// evicted connection is closed, which only wakes its reader.
func (s *Set) Track(conn net.Conn, ip, label string) (*Conn, Admission) {
	now := time.Now()
	s.mu.Lock()
	if s.closing {
		s.mu.Unlock()
		return nil, Admission{Result: Closing}
	}
	var victim *Conn
	var idle time.Duration
	switch {
	case s.lim.MaxPerIP < s.lim.Max && s.perIP[ip] >= s.lim.MaxPerIP:
		victim, idle = s.longestIdle(now, ip, true)
		if victim == nil {
			s.mu.Unlock()
			return nil, Admission{Result: FullPerIP}
		}
	case len(s.conns) >= s.lim.Max:
		victim, idle = s.longestIdle(now, "", false)
		if victim == nil {
			s.mu.Unlock()
			return nil, Admission{Result: Full}
		}
	}
	if victim != nil {
		victim.evicted.Store(true)
		s.removeLocked(victim)
	}
	c := &Conn{Conn: conn, ip: ip, label: label, set: s}
	c.waitSince.Store(now.UnixNano())
	s.conns[c] = struct{}{}
	s.perIP[ip]++
	s.open.Add(1)
	s.mu.Unlock()
	if victim != nil {
		victim.Conn.Close()
	}
	return c, Admission{Result: OK, Evicted: victim, EvictedIdle: idle}
}

// longestIdle finds the connection idle the longest (of ip only, when onlyIP), if it has
// been idle at least MinIdle. The scan is linear, which is fine: it runs only when the
// table or an IP's share is full, and tables hold hundreds of entries, not millions.
func (s *Set) longestIdle(now time.Time, ip string, onlyIP bool) (*Conn, time.Duration) {
	var best *Conn
	var bestIdle time.Duration
	for c := range s.conns {
		if onlyIP && c.ip != ip {
			continue
		}
		if d := c.idle(now); d > bestIdle { // busy connections have 0 and never win
			best, bestIdle = c, d
		}
	}
	if best == nil || bestIdle < s.lim.MinIdle {
		return nil, 0
	}
	return best, bestIdle
}

func (s *Set) removeLocked(c *Conn) bool {
	if _, ok := s.conns[c]; !ok {
		return false
	}
	delete(s.conns, c)
	if n := s.perIP[c.ip] - 1; n > 0 {
		s.perIP[c.ip] = n
	} else {
		delete(s.perIP, c.ip)
	}
	s.open.Add(-1)
	return true
}

// Shutdown makes Track refuse every new connection (Closing) and returns the tracked
// ones, so that the caller can drain them (set their read deadlines, let their
// goroutines read what is queued) before closing them with CloseAll.
func (s *Set) Shutdown() []*Conn {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closing = true
	out := make([]*Conn, 0, len(s.conns))
	for c := range s.conns {
		out = append(out, c)
	}
	return out
}

// CloseAll refuses new connections and closes the tracked ones, which ends their reads.
// Their goroutines still Close their *Conn, which is then a no-op for the set.
func (s *Set) CloseAll() {
	for _, c := range s.Shutdown() {
		c.Conn.Close()
	}
}

// Open is the number of tracked connections.
func (s *Set) Open() int64 { return s.open.Load() }

// Conn is a tracked connection. It is a net.Conn whose Read keeps the idle state and
// whose Close removes it from the set; the goroutine that serves it must Close it.
type Conn struct {
	net.Conn // the accepted connection, for deadlines, TLS and raw syscalls
	ip       string
	label    string
	set      *Set
	// waitSince is the UnixNano time since which the connection has been waiting for its
	// peer, or 0 while it is busy with what it read.
	waitSince atomic.Int64
	evicted   atomic.Bool
	closed    atomic.Bool
}

// IP is the peer IP the connection was tracked under.
func (c *Conn) IP() string { return c.ip }

// Label is the label the connection was tracked with.
func (c *Conn) Label() string { return c.label }

// Evicted reports whether the set closed the connection to make room for another. The
// serving goroutine checks it when a read fails, to end quietly.
func (c *Conn) Evicted() bool { return c.evicted.Load() }

// Idle is how long the connection has been waiting for its peer (0 while busy).
func (c *Conn) Idle() time.Duration { return c.idle(time.Now()) }

func (c *Conn) idle(now time.Time) time.Duration {
	w := c.waitSince.Load()
	if w == 0 {
		return 0
	}
	return max(now.Sub(time.Unix(0, w)), time.Nanosecond)
}

// Waiting marks the connection idle from now on (about to block reading its peer).
func (c *Conn) Waiting() { c.waitSince.Store(time.Now().UnixNano()) }

// Busy marks the connection as working on what it read; it is not evicted while busy.
func (c *Conn) Busy() { c.waitSince.Store(0) }

// Read reads from the connection, idle while it waits and busy once bytes arrived. A
// read that ends in an error leaves the connection idle.
func (c *Conn) Read(p []byte) (int, error) {
	c.Waiting()
	n, err := c.Conn.Read(p)
	if n > 0 {
		c.Busy()
	}
	return n, err
}

// Close removes the connection from the set and closes it. It is safe to call more
// than once and after an eviction or CloseAll.
func (c *Conn) Close() error {
	if c.closed.Swap(true) {
		return nil
	}
	c.set.mu.Lock()
	c.set.removeLocked(c)
	c.set.mu.Unlock()
	err := c.Conn.Close()
	if errors.Is(err, net.ErrClosed) {
		err = nil // evicted or closed by CloseAll first
	}
	return err
}

// DeadlineReader renews the read deadline before each read, which makes the timeout an
// idle timeout: a slow sender that keeps sending is never cut off, a silent one is. With
// Track set, it also keeps that connection's idle state (Waiting before each read, Busy
// after bytes arrive), which is how a collector that reads through tls.Conn makes the
// time spent in the TLS handshake count as idle and the time after it count as traffic.
//
// With Drain set, a read during shutdown uses Drain's short deadline instead of Timeout
// (see Drain).
type DeadlineReader struct {
	Conn    net.Conn
	Timeout time.Duration
	Track   *Conn  // may be nil
	Drain   *Drain // may be nil
}

func (d *DeadlineReader) Read(p []byte) (int, error) {
	for {
		now := time.Now()
		dl, draining := d.Drain.deadline(now)
		if !draining {
			dl = now.Add(d.Timeout)
		}
		if err := d.Conn.SetReadDeadline(dl); err != nil {
			return 0, err
		}
		// Drain.Begin may have run between the check and SetReadDeadline, and its own
		// SetReadDeadline before ours: look again so a drain never waits a whole Timeout.
		if !draining {
			if dl2, ok := d.Drain.deadline(time.Now()); ok {
				if err := d.Conn.SetReadDeadline(dl2); err != nil {
					return 0, err
				}
				draining = true
			}
		}
		if d.Track != nil {
			d.Track.Waiting()
		}
		n, err := d.Conn.Read(p)
		if n > 0 && d.Track != nil {
			d.Track.Busy()
		}
		if n == 0 && !draining && d.Drain.Draining() && isTimeout(err) {
			// Begin woke this read: read again with the drain's deadline, so the caller
			// (a framer, for which errors are final) sees only a real end of data.
			continue
		}
		return n, err
	}
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// Drain is the shutdown phase of a stream collector: after Begin, readers stop waiting
// a full idle timeout and wait at most Quiet for more bytes, so a read that times out
// means the sender has nothing more queued. Reads are not cut at End: a read that has
// bytes returns them within Quiet, and the collector checks Over between frames, so that
// when the budget is spent it stops at a frame boundary and can count what is left. A
// Quiet of zero makes every read after Begin fail at once (MLLP: finish the message in
// hand, read no more). It is safe for concurrent use; the zero value has not begun.
type Drain struct {
	// Quiet is how long a read waits for more bytes during the drain.
	Quiet time.Duration
	end   atomic.Int64 // UnixNano of the drain's end; 0 before Begin
}

// Begin starts the drain, which ends at end, and wakes the readers of conns (their
// current Read returns a timeout and the next one uses the drain deadline).
func (d *Drain) Begin(end time.Time, conns []*Conn) {
	d.end.Store(end.UnixNano())
	now := time.Now()
	for _, c := range conns {
		_ = c.Conn.SetReadDeadline(now)
	}
}

// Draining reports whether Begin has run.
func (d *Drain) Draining() bool { return d != nil && d.end.Load() != 0 }

// End is the drain's end, or the zero time before Begin.
func (d *Drain) End() time.Time {
	if !d.Draining() {
		return time.Time{}
	}
	return time.Unix(0, d.end.Load())
}

// Over reports whether the drain has begun and its end has passed.
func (d *Drain) Over(now time.Time) bool {
	return d.Draining() && !now.Before(time.Unix(0, d.end.Load()))
}

// deadline is the read deadline during the drain: now+Quiet.
func (d *Drain) deadline(now time.Time) (time.Time, bool) {
	if !d.Draining() {
		return time.Time{}, false
	}
	return now.Add(d.Quiet), true
}

// Listener wraps ln so that every accepted connection is tracked in s; it is how a
// net/http server gets the same limits and eviction as the collectors. Accept returns
// *Conn values. A connection over a limit is closed at once and reported to refused
// (which may be nil) with its peer IP and reason, and Accept goes on to the next one; an
// eviction is reported the same way with the evicted connection's IP and
// ReasonEvictedIdle. refused is called on the accepting goroutine and must not block.
// After s.Shutdown or s.CloseAll, new connections are closed silently.
func Listener(ln net.Listener, s *Set, refused func(ip, reason string)) net.Listener {
	return &listener{Listener: ln, set: s, refused: refused}
}

type listener struct {
	net.Listener
	set     *Set
	refused func(ip, reason string)
}

func (l *listener) Accept() (net.Conn, error) {
	for {
		conn, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		ip := PeerIP(conn.RemoteAddr())
		c, adm := l.set.Track(conn, ip, "")
		if c == nil {
			conn.Close()
			if r := adm.Result.Reason(); r != "" && l.refused != nil {
				l.refused(ip, r)
			}
			continue
		}
		if adm.Evicted != nil && l.refused != nil {
			l.refused(adm.Evicted.IP(), ReasonEvictedIdle)
		}
		return c, nil
	}
}

// PeerIP is the IP of a remote address as the limits count it: IPv4-mapped IPv6
// addresses are unmapped, so a dual-stack listener counts a sender once.
func PeerIP(a net.Addr) string {
	switch a := a.(type) {
	case *net.TCPAddr:
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
