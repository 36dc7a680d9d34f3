// Package collectors holds what every collector shares: the Sink they write events into
// and the Rejects counter through which they report input they could not keep.
package collectors

import (
	"context"

	"github.com/edgeaudit/edgeaudit/audit"
)

// Sink takes normalized events for durable storage. The spool implements it; collectors
// never import the spool.
type Sink interface {
	// Append queues a copy of e for a group commit. It returns once the event is
	// queued, not committed: done (which may be nil) is then called exactly once, from
	// another goroutine, with nil after the transaction holding the event is fsync'd, or
	// with the error that kept it out. Acknowledgements to senders belong in done.
	// Append blocks while the commit queue is full (backpressure) until ctx is done. When it
	// returns an error (spool full, closed, ctx done), the event was not queued and done is
	// never called. Append does not keep e after it returns; it sets e.ID if empty.
	Append(ctx context.Context, e *audit.Event, done func(error)) error
}

// AppendSync appends e and waits for its commit: the form for protocols that acknowledge
// each message (MLLP, HTTP).
func AppendSync(ctx context.Context, s Sink, e *audit.Event) error {
	ch := make(chan error, 1)
	if err := s.Append(ctx, e, func(err error) { ch <- err }); err != nil {
		return err
	}
	select {
	case err := <-ch:
		return err
	case <-ctx.Done():
		// The commit may still happen; the sender just gets no acknowledgement, which is
		// safe (it resends, and duplicates are cheaper than losses).
		return ctx.Err()
	}
}

// Reporter receives what a collector could not keep, so the daemon can count it and write
// it into the chain as a self-audit event (invariant 3, "loss is evidence").
type Reporter interface {
	// Reject reports one input that was refused. reason is a short stable keyword
	// ("oversize", "bad_octet_count", ...); sha256 is the hex SHA-256 of the refused bytes
	// (or of the part that was read); size is how many bytes were refused. It must not block.
	Reject(kind, transport, peerIP, reason, sha256 string, size int64)
	// Lost reports n inputs lost without being seen, such as UDP datagrams the kernel
	// dropped. It must not block.
	Lost(kind, transport, reason string, n uint64)
}
