package hl7

import (
	"sync/atomic"

	"github.com/edgeaudit/edgeaudit/internal/connset"
)

// Reject reasons of the connection table (the framer's and parser's are in framer.go).
const (
	// ReasonTooManyPerIP: a connection refused because its IP holds max_connections_per_ip
	// connections and none of them has been idle long enough to be evicted.
	ReasonTooManyPerIP = connset.ReasonTooManyPerIP
	// ReasonEvictedIdle: the longest-idle connection (of the table, or of the IP at its
	// limit) was closed to make room for a new one. Reported with the evicted peer's IP.
	ReasonEvictedIdle = connset.ReasonEvictedIdle
	// ReasonHandshakeTimeout: a TLS connection that did not finish its handshake within
	// handshake_timeout.
	ReasonHandshakeTimeout = connset.ReasonHandshakeTimeout
)

// rejectReasons are the reasons counted in Stats.Rejects, in a fixed order.
var rejectReasons = [...]string{
	ReasonOversize, ReasonNoStartBlock, ReasonTruncated, ReasonMissingMSH, ReasonBadMSH,
	ReasonInvalidUTF8, ReasonMalformed, ReasonTooManyConnections, ReasonTLSHandshake,
	ReasonTooManyPerIP, ReasonEvictedIdle, ReasonHandshakeTimeout,
}

func reasonIndex(reason string) int {
	for i, r := range rejectReasons {
		if r == reason {
			return i
		}
	}
	return -1
}

// LossShutdown is the loss reason (collectors.Reporter.Lost) for messages read but not
// confirmed as committed when the drain budget ran out; they were not acknowledged, so
// senders resend them.
const LossShutdown = "shutdown"

// LossStoreNoACK is the loss reason for messages the sink refused (spool full, failed
// commit) whose sender asked, in MSH-15/MSH-16, for no error acknowledgement (NE, SU):
// nobody will resend them.
const LossStoreNoACK = "store_failed_no_ack"

type counters struct {
	received    atomic.Uint64
	rejects     [len(rejectReasons)]atomic.Uint64
	storeErrors atomic.Uint64
	shutdown    atomic.Uint64
	acks        atomic.Uint64
	noACK       atomic.Uint64
	accepted    atomic.Uint64
	refused     atomic.Uint64
	evicted     atomic.Uint64
}

// Stats is a snapshot of the collector's counters, for metrics and health checks.
type Stats struct {
	// Received counts messages committed by the sink (and then acknowledged).
	Received uint64
	// Rejects counts refused input per reason (the Reason* constants).
	Rejects map[string]uint64
	// StoreErrors counts messages answered with AE/CE because the sink refused them or
	// the commit failed.
	StoreErrors uint64
	// Shutdown counts messages left unacknowledged because Run stopped.
	Shutdown uint64
	// ACKs counts acknowledgements written.
	ACKs uint64
	// NotAcknowledged counts messages answered with nothing because MSH-15/MSH-16 asked
	// for no acknowledgement of that outcome (enhanced mode: NE, ER on success, SU on
	// failure). A sender that times out although its events are stored shows here.
	NotAcknowledged uint64
	// ConnsOpen, ConnsAccepted and ConnsRefused describe connections; ConnsRefused
	// counts both limits (Rejects tells them apart).
	ConnsOpen     int64
	ConnsAccepted uint64
	ConnsRefused  uint64
	// ConnsEvicted counts idle connections closed to make room for new ones.
	ConnsEvicted uint64
}

// Stats returns a snapshot of the counters. It is safe to call at any time.
func (c *Collector) Stats() Stats {
	s := &c.stats
	st := Stats{
		Received:        s.received.Load(),
		Rejects:         make(map[string]uint64, len(rejectReasons)),
		StoreErrors:     s.storeErrors.Load(),
		Shutdown:        s.shutdown.Load(),
		ACKs:            s.acks.Load(),
		NotAcknowledged: s.noACK.Load(),
		ConnsOpen:       c.conns.Open(),
		ConnsAccepted:   s.accepted.Load(),
		ConnsRefused:    s.refused.Load(),
		ConnsEvicted:    s.evicted.Load(),
	}
	for i, r := range rejectReasons {
		st.Rejects[r] = s.rejects[i].Load()
	}
	return st
}
