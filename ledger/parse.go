package ledger

import (
	"encoding/binary"
	"fmt"
)

// ParseBatch decodes the wire batch at the start of b without copying, and returns it
// and the bytes after it: the returned Header, Signature and Events are slices of b,
// which the caller must not change while it uses them. It applies the limits of
// Reader.Next, and its errors wrap ErrFormat. It is the receiver's decode of an MQTT
// payload (one batch, nothing after it); Reader is for streams and files.
func ParseBatch(b []byte) (*Batch, []byte, error) {
	if len(b) < len(Magic) || string(b[:len(Magic)]) != Magic {
		if len(b) < len(Magic) {
			return nil, nil, fmt.Errorf("%w: magic: unexpected EOF", ErrFormat)
		}
		return nil, nil, fmt.Errorf("%w: magic %q", ErrFormat, b[:len(Magic)])
	}
	p := b[len(Magic):]
	take := func(n int, what string) ([]byte, error) {
		if n > len(p) {
			return nil, fmt.Errorf("%w: %s: unexpected EOF", ErrFormat, what)
		}
		out := p[:n:n]
		p = p[n:]
		return out, nil
	}
	u32 := func(what string) (uint32, error) {
		v, err := take(4, what)
		if err != nil {
			return 0, err
		}
		return binary.BigEndian.Uint32(v), nil
	}
	var bt Batch
	n, err := u32("header length")
	if err != nil {
		return nil, nil, err
	}
	if n == 0 || n > MaxHeaderSize {
		return nil, nil, fmt.Errorf("%w: header length %d", ErrFormat, n)
	}
	if bt.Header, err = take(int(n), "header"); err != nil {
		return nil, nil, err
	}
	sl, err := take(2, "signature length")
	if err != nil {
		return nil, nil, err
	}
	if n := binary.BigEndian.Uint16(sl); n > MaxSigSize {
		return nil, nil, fmt.Errorf("%w: signature length %d", ErrFormat, n)
	} else if bt.Signature, err = take(int(n), "signature"); err != nil {
		return nil, nil, err
	}
	count, err := u32("event count")
	if err != nil {
		return nil, nil, err
	}
	if count > MaxBatchEvents {
		return nil, nil, fmt.Errorf("%w: event count %d", ErrFormat, count)
	}
	// Each event takes at least its 4-byte length, so count is bounded by what is left.
	if int64(count) > int64(len(p))/4 {
		return nil, nil, fmt.Errorf("%w: event count %d: unexpected EOF", ErrFormat, count)
	}
	bt.Events = make([][]byte, count)
	for i := range bt.Events {
		n, err := u32("event length")
		if err != nil {
			return nil, nil, err
		}
		if n > MaxEventSize {
			return nil, nil, fmt.Errorf("%w: event %d length %d", ErrFormat, i, n)
		}
		if bt.Events[i], err = take(int(n), "event"); err != nil {
			return nil, nil, err
		}
	}
	return &bt, p, nil
}
