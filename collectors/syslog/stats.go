package syslog

import (
	"sync/atomic"

	"github.com/edgeaudit/edgeaudit/internal/connset"
)

type transport uint8

const (
	transportUDP transport = iota
	transportTCP
	transportTLS
	numTransports
)

var transportNames = [numTransports]string{"udp", "tcp", "tls"}

func (t transport) String() string { return transportNames[t] }

// transportOf maps a connset label back to the transport (labels are String values).
func transportOf(label string) transport {
	for i, n := range transportNames {
		if n == label {
			return transport(i)
		}
	}
	return transportTCP
}

// Reject reasons of the connection table and the drain (the framer's are in framer.go).
const (
	// ReasonTooManyPerIP: a connection refused because its IP holds max_connections_per_ip
	// connections and none of them has been idle long enough to be evicted.
	ReasonTooManyPerIP = connset.ReasonTooManyPerIP
	// ReasonEvictedIdle: the longest-idle connection (of the table, or of the IP at its
	// limit) was closed to make room for a new one. Reported with the evicted peer's IP.
	ReasonEvictedIdle = connset.ReasonEvictedIdle
	// ReasonHandshakeTimeout: a TLS connection that did not finish its handshake within
	// handshake_timeout (such as one that never sends a ClientHello).
	ReasonHandshakeTimeout = connset.ReasonHandshakeTimeout
	// ReasonShutdownUnread: bytes a connection had queued when the drain budget was spent;
	// the size is the byte count. The frames are reported as LossShutdownUnread.
	ReasonShutdownUnread = LossShutdownUnread
)

// rejectReasons are the reasons counted in Stats.Rejects, in a fixed order.
var rejectReasons = [...]string{
	ReasonOversize, ReasonBadOctetCount, ReasonTruncated, ReasonTooManyConnections, ReasonTLSHandshake,
	ReasonTooManyPerIP, ReasonEvictedIdle, ReasonHandshakeTimeout, ReasonShutdownUnread,
}

func reasonIndex(reason string) int {
	for i, r := range rejectReasons {
		if r == reason {
			return i
		}
	}
	return -1
}

// Loss reasons, reported through collectors.Reporter.Lost.
const (
	LossKernelDrop = "kernel_drop" // UDP datagrams the kernel dropped (socket buffer full)
	LossSpoolFull  = "spool_full"  // UDP datagrams the sink refused
	LossShutdown   = "shutdown"    // messages read but not appended when the drain budget was spent
	// LossShutdownUnread counts frames (TCP/TLS, a partial last one included) and
	// datagrams (UDP) still queued when the drain budget was spent: read, counted, not kept.
	LossShutdownUnread = "shutdown_unread"
)

// counters are updated on the hot path with atomics; Stats copies them.
type counters struct {
	received   [numTransports]atomic.Uint64
	malformed  atomic.Uint64
	empty      atomic.Uint64
	rejects    [len(rejectReasons)]atomic.Uint64
	kernelDrop atomic.Uint64
	spoolFull  atomic.Uint64
	shutdown   atomic.Uint64
	waits      atomic.Uint64
	accepted   atomic.Uint64
	refused    atomic.Uint64
	evicted    atomic.Uint64
	datagrams  atomic.Uint64
	// The drain at shutdown.
	drained      atomic.Uint64 // events appended after the drain began
	unreadFrames atomic.Uint64
	unreadBytes  atomic.Uint64
}

// Stats is a snapshot of the collector's counters, for metrics and health checks.
type Stats struct {
	// Received counts events the sink accepted, per transport ("udp", "tcp", "tls").
	Received map[string]uint64
	// Malformed counts events marked Malformed (kept although they did not parse).
	Malformed uint64
	// Empty counts frames skipped because they held nothing (blank lines).
	Empty uint64
	// Rejects counts refused input per reason (the Reason* constants).
	Rejects map[string]uint64
	// Lost counts input lost per reason (the Loss* constants).
	Lost map[string]uint64
	// BackpressureWaits counts appends the sink refused and that were retried.
	BackpressureWaits uint64
	// Datagrams counts UDP datagrams read, whatever became of them.
	Datagrams uint64
	// ConnsOpen, ConnsAccepted and ConnsRefused describe TCP and TLS connections;
	// ConnsRefused counts both limits (Rejects tells them apart).
	ConnsOpen     int64
	ConnsAccepted uint64
	ConnsRefused  uint64
	// ConnsEvicted counts idle connections closed to make room for new ones.
	ConnsEvicted uint64
	// Drained counts events appended after the stop began (the drain).
	Drained uint64
	// UnreadFrames and UnreadBytes count what was still queued when the drain budget
	// was spent (LossShutdownUnread).
	UnreadFrames uint64
	UnreadBytes  uint64
}

// Stats returns a snapshot of the counters. It is safe to call at any time.
func (c *Collector) Stats() Stats {
	s := &c.stats
	st := Stats{
		Received:  make(map[string]uint64, numTransports),
		Malformed: s.malformed.Load(),
		Empty:     s.empty.Load(),
		Rejects:   make(map[string]uint64, len(rejectReasons)),
		Lost: map[string]uint64{LossKernelDrop: s.kernelDrop.Load(), LossSpoolFull: s.spoolFull.Load(),
			LossShutdown: s.shutdown.Load(), LossShutdownUnread: s.unreadFrames.Load()},
		BackpressureWaits: s.waits.Load(),
		Datagrams:         s.datagrams.Load(),
		ConnsOpen:         c.conns.Open(),
		ConnsAccepted:     s.accepted.Load(),
		ConnsRefused:      s.refused.Load(),
		ConnsEvicted:      s.evicted.Load(),
		Drained:           s.drained.Load(),
		UnreadFrames:      s.unreadFrames.Load(),
		UnreadBytes:       s.unreadBytes.Load(),
	}
	for i, name := range transportNames {
		st.Received[name] = s.received[i].Load()
	}
	for i, r := range rejectReasons {
		st.Rejects[r] = s.rejects[i].Load()
	}
	return st
}
