// Package collectors holds what every collector shares: the Sink (and AtomicSink) they
// write events into and the Reporter through which they report input they could not keep.
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

// UrgentSink is a Sink that can commit an event ahead of the bulk queued before it, for
// a sender that waits for each acknowledgement. The spool implements it.
type UrgentSink interface {
	// AppendUrgent is Append, but the event goes to the next commit ahead of events
	// queued by Append: an acknowledging sender must not wait behind a syslog flood.
	// Events of different senders have no order between them; one sender that waits
	// for each commit keeps its own.
	AppendUrgent(ctx context.Context, e *audit.Event, done func(error)) error
}

// AppendSync appends e and waits for its commit: the form for protocols that acknowledge
// each message (MLLP, HTTP). Through an UrgentSink the event goes ahead of bulk ones.
func AppendSync(ctx context.Context, s Sink, e *audit.Event) error {
	if u, ok := s.(UrgentSink); ok {
		return appendWait(ctx, u.AppendUrgent, e)
	}
	return appendWait(ctx, s.Append, e)
}

// AppendInOrder appends e in the sink's ordinary queue and waits for its commit: after
// every event appended before it (the appliance's stop event).
func AppendInOrder(ctx context.Context, s Sink, e *audit.Event) error {
	return appendWait(ctx, s.Append, e)
}

func appendWait(ctx context.Context, appendFn func(context.Context, *audit.Event, func(error)) error, e *audit.Event) error {
	ch := make(chan error, 1)
	if err := appendFn(ctx, e, func(err error) { ch <- err }); err != nil {
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

// AtomicSink is a Sink that can also commit several events as one: all of them or none
// (a FHIR transaction Bundle). The spool implements it.
type AtomicSink interface {
	// AppendAll queues copies of evs to be committed in one transaction. It returns an
	// error, and never calls done, if none was queued (spool full, closed, ctx done);
	// otherwise done is called exactly once, from another goroutine, with nil after the
	// commit that holds all of them is fsync'd, or with the error that kept all of them
	// out. It sets each e.ID that is empty and does not keep evs after it returns.
	AppendAll(ctx context.Context, evs []*audit.Event, done func(error)) error
}

// AppendAllSync appends evs as one commit and waits for it: nil means every one of them
// is committed; an error means none is, except that when ctx ends first the commit may
// still happen (all of them or none, still), and the sender just gets no acknowledgement.
func AppendAllSync(ctx context.Context, s AtomicSink, evs []*audit.Event) error {
	ch := make(chan error, 1)
	if err := s.AppendAll(ctx, evs, func(err error) { ch <- err }); err != nil {
		return err
	}
	select {
	case err := <-ch:
		return err
	case <-ctx.Done():
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
