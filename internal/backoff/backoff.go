// Package backoff is the jittered, capped exponential backoff every retry loop shares
// (STYLE 10): the shape of Tailscale's BackOff(ctx, err), 0.5–1.5× jitter, a cap, a reset
// on success, and every sleep a select on ctx.Done().
package backoff

import (
	"context"
	"math/rand/v2"
	"time"
)

// Defaults for a zero Min or Max.
const (
	DefaultMin = time.Second
	DefaultMax = 5 * time.Minute
)

// Backoff computes and sleeps retry delays. It is not safe for concurrent use: each retry
// loop owns one.
type Backoff struct {
	// Min is the first delay before jitter (default DefaultMin).
	Min time.Duration
	// Max caps every delay, jitter included (default DefaultMax).
	Max time.Duration
	// Rand returns a number in [0, 1); nil uses math/rand/v2. Tests set it.
	Rand func() float64

	failures int
}

// New returns a backoff from min to max.
func New(min, max time.Duration) *Backoff { return &Backoff{Min: min, Max: max} }

// Failures is the number of consecutive failures since the last Reset.
func (b *Backoff) Failures() int { return b.failures }

// Reset forgets the failures: the next delay is Min again.
func (b *Backoff) Reset() { b.failures = 0 }

// Next counts one more failure and returns the delay to wait before the next attempt:
// Min·2^(failures-1), times a jitter factor in [0.5, 1.5), capped at Max.
func (b *Backoff) Next() time.Duration {
	lo, hi := b.Min, b.Max
	if lo <= 0 {
		lo = DefaultMin
	}
	if hi <= 0 {
		hi = DefaultMax
	}
	hi = max(hi, lo)
	d := lo
	for i := 0; i < b.failures && d < hi; i++ {
		d *= 2
	}
	b.failures++
	r := rand.Float64
	if b.Rand != nil {
		r = b.Rand
	}
	d = time.Duration(float64(min(d, hi)) * (0.5 + r()))
	return min(d, hi)
}

// BackOff resets on a nil err; otherwise it sleeps Next() or until ctx is done, and
// returns ctx.Err() in that case (nil after a full sleep).
func (b *Backoff) BackOff(ctx context.Context, err error) error {
	if err == nil {
		b.Reset()
		return nil
	}
	t := time.NewTimer(b.Next())
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
