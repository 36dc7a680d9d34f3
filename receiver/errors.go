package receiver

import (
	"errors"
	"fmt"
)

// Why a batch is refused. Each *RefusedError wraps exactly one of these.
var (
	// ErrMalformed: the payload is not one wire batch with a version 1 header, or the
	// topic's site and device differ from the header's.
	ErrMalformed = errors.New("malformed batch")
	// ErrUnknownDevice: no key is enrolled for the site and device.
	ErrUnknownDevice = errors.New("unknown device")
	// ErrBadSignature: the header's key_id is not the enrolled key's, or the signature
	// does not verify over the header bytes.
	ErrBadSignature = errors.New("bad signature")
	// ErrTampered: the signed header is intact but the events are not the ones it
	// covers (count or Merkle root).
	ErrTampered = errors.New("events do not match the signed header")
	// ErrFork: a batch at a stored seq with another header, or a next batch whose prev
	// is not the stored head (two appliances from one data folder, a rolled-back spool).
	ErrFork = errors.New("fork")
	// ErrOtherChain: the batch belongs to another chain id than the device's stored one
	// (the appliance quarantined its spool and started a new chain).
	ErrOtherChain = errors.New("another chain")
)

// ErrHeadMoved is returned (wrapped) by a Store's Append when the device's stored head
// is no longer the one the entry was verified against: another receiver (or central's
// own audit trail writer in another process) appended first. Nothing was written; the
// caller reloads the head and decides again. It is not a refusal.
var ErrHeadMoved = errors.New("stored head moved")

// Reasons, one per sentinel, for logs, metrics and quarantine file names.
const (
	ReasonMalformed = "malformed"
	ReasonUnknown   = "unknown_device"
	ReasonSignature = "signature"
	ReasonTampered  = "tampered"
	ReasonFork      = "fork"
	ReasonChain     = "other_chain"
)

var reasonOf = map[error]string{
	ErrMalformed:     ReasonMalformed,
	ErrUnknownDevice: ReasonUnknown,
	ErrBadSignature:  ReasonSignature,
	ErrTampered:      ReasonTampered,
	ErrFork:          ReasonFork,
	ErrOtherChain:    ReasonChain,
}

// RefusedError is a batch the receiver refused: it is never stored or receipted, and
// its bytes were kept in the quarantine folder (Quarantined names the file; empty when
// the quarantine budget was used up or writing failed, see QuarantineErr).
type RefusedError struct {
	Site, Device  string
	Seq           uint64 // from the header, 0 when it did not parse
	Err           error  // one of the sentinels above
	Detail        string
	Hint          string // what an operator can do, when a human must act
	Quarantined   string
	QuarantineErr error
}

func (e *RefusedError) Error() string {
	s := fmt.Sprintf("refuse batch %s/%s seq %d: %v: %s", e.Site, e.Device, e.Seq, e.Err, e.Detail)
	if e.Hint != "" {
		s += " (" + e.Hint + ")"
	}
	return s
}

func (e *RefusedError) Unwrap() error { return e.Err }

// Reason is the short name of the refusal (ReasonFork, …).
func (e *RefusedError) Reason() string { return reasonOf[e.Err] }
