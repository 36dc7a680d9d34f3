package receiver

import (
	"context"
	"time"
)

// Query selects stored events. Zero fields match everything; set fields must all
// match (AND). Strings compare exactly, against the event's JSON fields.
type Query struct {
	Site, Device string
	Patient      string    // event "patient" (a token)
	User         string    // event "actor.user"
	Action       string    // event "action"; a trailing ".*" matches the prefix ("phi.*")
	Outcome      string    // event "outcome"
	Study        string    // one of the event's "study" tokens
	From, To     time.Time // event "time" in [From, To); zero is open
	// Limit stops after this many matches (0: no limit).
	Limit int
}

// Match is one stored event that a Query selected, with where it is stored: enough to
// fetch its batch (Batches) and build its inclusion proof.
type Match struct {
	Site, Device, Chain string
	Seq                 uint64 // the batch's seq
	Index               int    // the event's index in the batch, from 0
	Event               []byte // the event's exact bytes as sealed (JSON)
}

// Querier answers queries over a store. Both stores implement it.
type Querier interface {
	// Query calls fn for each match, ordered by site, device, chain and seq, then
	// index, and stops at the first error fn returns (returning it).
	Query(ctx context.Context, q Query, fn func(Match) error) error
	// Batch returns the stored batch seq of the device's chain in the wire format, and
	// an error wrapping os.ErrNotExist when it is not stored.
	Batch(ctx context.Context, site, device, chain string, seq uint64) ([]byte, error)
}
