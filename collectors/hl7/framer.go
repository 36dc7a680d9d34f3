package hl7

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"hash"
	"strconv"
)

// MLLP block characters (HL7 v2 MLLP Release 1).
const (
	startBlock = 0x0B // VT
	endBlock   = 0x1C // FS
	carriage   = 0x0D // CR, after the end block
)

// Reject reasons, the stable keywords reported through collectors.Reporter and named in
// the MSA-3 / ERR text of rejecting ACKs.
const (
	ReasonOversize           = "oversize"
	ReasonNoStartBlock       = "no_start_block"
	ReasonTruncated          = "truncated"
	ReasonMissingMSH         = "missing_msh"
	ReasonBadMSH             = "bad_msh"
	ReasonInvalidUTF8        = "invalid_utf8"
	ReasonMalformed          = "malformed"
	ReasonTooManyConnections = "too_many_connections"
	ReasonTLSHandshake       = "tls_handshake"
)

var (
	// ErrOversize: a block was longer than the maximum. It was read to its end block,
	// hashed and dropped; the stream goes on with the next block.
	ErrOversize = errors.New(ReasonOversize)
	// ErrNoStartBlock: bytes arrived outside a block. They were skipped up to the next
	// start block (or end of stream) and hashed.
	ErrNoStartBlock = errors.New(ReasonNoStartBlock)
	// ErrTruncated: a block ended without its end block, either because the stream ended
	// inside it or because a new start block began before it was closed.
	ErrTruncated = errors.New(ReasonTruncated)
)

// FrameError is the error Framer.Next returns for input it could not deliver as a block.
// It never holds content, only its size and hash, so it is safe to log.
type FrameError struct {
	Reason error  // ErrOversize, ErrNoStartBlock or ErrTruncated
	Size   int64  // bytes refused: discarded or read so far
	SHA256 string // hex SHA-256 of those bytes
	Err    error  // the read error that ended the stream, if any (io.EOF, a timeout)
}

func (e *FrameError) Error() string {
	s := "mllp frame: " + e.Reason.Error() + " (" + strconv.FormatInt(e.Size, 10) + " bytes)"
	if e.Err != nil {
		s += ": " + e.Err.Error()
	}
	return s
}

// Unwrap lets errors.Is match both the reason and the read error.
func (e *FrameError) Unwrap() []error {
	if e.Err == nil {
		return []error{e.Reason}
	}
	return []error{e.Reason, e.Err}
}

// Fatal reports whether the stream ended with this error.
func (e *FrameError) Fatal() bool { return e.Err != nil }

// Framer splits an MLLP byte stream into blocks (<VT> message <FS><CR>). It is pure: it
// reads, it does not report or log. The CR after FS is optional: it is dropped when it
// is the next byte, but never waited for, so a sender that omits it still gets its ACK.
// Whitespace (CR, LF, space, tab) between blocks is ignored silently.
type Framer struct {
	r       *bufio.Reader
	max     int
	buf     []byte
	pending []byte // a block found behind a stray start block, returned by the next call
	inBlock bool   // a start block was read but its content not yet
	skipCR  bool   // the previous block ended; drop one CR if it comes next
}

// NewFramer returns a framer reading r that refuses blocks longer than max bytes.
func NewFramer(r *bufio.Reader, max int) *Framer {
	return &Framer{r: r, max: max}
}

// Next returns the content of the next block, without the block characters. The slice
// is valid until the next call. At a clean end of stream (between blocks) it returns the
// reader's error (io.EOF). Input it cannot deliver gives a *FrameError; unless
// FrameError.Fatal, the caller may call Next again.
func (f *Framer) Next() ([]byte, error) {
	if p := f.pending; p != nil {
		f.pending = nil
		return p, nil
	}
	if !f.inBlock {
		if err := f.skipToStart(); err != nil {
			return nil, err
		}
	}
	f.inBlock = false
	f.buf = f.buf[:0]
	var (
		size int64
		h    hash.Hash // set once the block is over the limit
	)
	for {
		chunk, err := f.r.ReadSlice(endBlock)
		content := chunk
		if err == nil {
			content = chunk[:len(chunk)-1]
		}
		size += int64(len(content))
		if h == nil && len(f.buf)+len(content) > f.max {
			h = sha256.New()
			h.Write(f.buf)
			f.buf = f.buf[:0]
		}
		if h != nil {
			h.Write(content)
		} else {
			f.buf = append(f.buf, content...)
		}
		if err == bufio.ErrBufferFull {
			continue
		}
		if err != nil {
			if h != nil {
				return nil, &FrameError{Reason: ErrOversize, Size: size, SHA256: hex.EncodeToString(h.Sum(nil)), Err: err}
			}
			return nil, &FrameError{Reason: ErrTruncated, Size: size, SHA256: sum(f.buf), Err: err}
		}
		break
	}
	f.skipCR = true
	if h != nil {
		return nil, &FrameError{Reason: ErrOversize, Size: size, SHA256: hex.EncodeToString(h.Sum(nil))}
	}
	block := f.buf
	// A start block inside a block means the sender lost the end block of an earlier
	// message and began a new one: the part before it is truncated, the rest is a block.
	if i := bytes.LastIndexByte(block, startBlock); i >= 0 {
		f.pending = block[i+1:]
		return nil, &FrameError{Reason: ErrTruncated, Size: int64(i), SHA256: sum(block[:i])}
	}
	return block, nil
}

// skipToStart reads up to and including the next start block. Non-whitespace bytes
// before it are reported as ErrNoStartBlock (at most max bytes per report), after which
// the next call of Next reads the block that follows.
func (f *Framer) skipToStart() error {
	if f.skipCR {
		f.skipCR = false
		if b, err := f.r.Peek(1); err == nil && b[0] == carriage {
			_, _ = f.r.Discard(1)
		}
	}
	var (
		h     hash.Hash
		junk  int64
		noise bool // a byte other than whitespace was skipped
	)
	report := func(err error) error {
		return &FrameError{Reason: ErrNoStartBlock, Size: junk, SHA256: hex.EncodeToString(h.Sum(nil)), Err: err}
	}
	for {
		b, err := f.r.ReadByte()
		if err != nil {
			if noise {
				return report(err)
			}
			return err
		}
		if b == startBlock {
			if noise {
				f.inBlock = true
				return report(nil)
			}
			return nil
		}
		if h == nil {
			h = sha256.New()
		}
		h.Write([]byte{b})
		junk++
		switch b {
		case '\r', '\n', ' ', '\t':
		default:
			noise = true
		}
		if noise && junk >= int64(f.max) {
			return report(nil)
		}
	}
}

func sum(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}
