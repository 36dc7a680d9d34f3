package fhir

import (
	"errors"
	"sync/atomic"
)

var (
	// errOverBudget: the in-flight budget is held by other requests now; the request may
	// succeed later (503 + Retry-After).
	errOverBudget = errors.New("fhir in-flight byte budget exhausted")
	// errTooBig: the request alone needs more than the whole budget, or its body more
	// than max_body_bytes; it can never succeed (413).
	errTooBig = errors.New("fhir request needs more memory than allowed")
)

const (
	// reserveChunk is how much a reservation grows at a time when the final size is
	// not known up front (chunked bodies, decoded trees): big enough that the shared
	// counter is touched once per 64 KiB, small enough that a stalled chunked body holds
	// little more than it sent.
	reserveChunk = 64 << 10
	// nodeCost is what one decoded node is charged, besides its value's bytes. Measured
	// on the corpus (Go 1.26, amd64): a node with its share of the parent's map and
	// slice holds 180 to 240 bytes of live heap; the rounder upper bound keeps the
	// charge an overestimate, so the budget bounds real memory.
	nodeCost = 256
)

// budget bounds the request bytes the collector holds in memory at once: bodies being
// read and the trees decoded from them, over all requests (fhir.max_inflight_bytes).
// Nothing ever waits for it: a request that cannot get its share is answered at once, so
// a flood of slow senders holds at most the budget, and an ordinary sender gets a 503
// it can retry instead of a hung connection.
type budget struct {
	max  int64
	used atomic.Int64
}

func newBudget(max int64) *budget { return &budget{max: max} }

// tryAcquire takes n bytes if they fit.
func (b *budget) tryAcquire(n int64) bool {
	for {
		u := b.used.Load()
		if u+n > b.max {
			return false
		}
		if b.used.CompareAndSwap(u, u+n) {
			return true
		}
	}
}

func (b *budget) release(n int64) { b.used.Add(-n) }

// inUse is how many bytes are reserved now.
func (b *budget) inUse() int64 { return b.used.Load() }

// reservation is one request's share of the budget. It is used by one goroutine (the
// request's handler); only the budget it draws from is shared. A nil *reservation
// charges nothing (decoding outside a request: tests, fuzzing).
type reservation struct {
	b     *budget
	held  int64 // taken from b
	spent int64 // charged against held
}

func (b *budget) reserve() *reservation { return &reservation{b: b} }

// grow makes sure held covers spent+n, taking at least want more from the budget; it
// does not charge n.
func (r *reservation) grow(n, want int64) error {
	need := r.spent + n - r.held
	if need <= 0 {
		return nil
	}
	if r.spent+n > r.b.max {
		return errTooBig
	}
	take := max(need, want)
	if r.held+take > r.b.max {
		take = need // the chunk would not fit beside what is held, the need might
	}
	if !r.b.tryAcquire(take) {
		return errOverBudget
	}
	r.held += take
	return nil
}

// charge accounts n more bytes, growing the reservation in chunks.
func (r *reservation) charge(n int64) error {
	if r == nil {
		return nil
	}
	if err := r.grow(n, reserveChunk); err != nil {
		return err
	}
	r.spent += n
	return nil
}

// chargeNode charges one decoded node whose value has vlen bytes.
func (r *reservation) chargeNode(vlen int) error {
	if r == nil {
		return nil
	}
	return r.charge(nodeCost + int64(vlen))
}

// releaseAll gives everything back; the reservation may not be used afterwards.
func (r *reservation) releaseAll() {
	if r == nil || r.held == 0 {
		return
	}
	r.b.release(r.held)
	r.held, r.spent = 0, 0
}
