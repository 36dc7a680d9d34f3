package syslog

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"hash"
	"io"
	"strconv"
)

// Reject reasons, the stable keywords reported through collectors.Reporter.
const (
	ReasonOversize           = "oversize"
	ReasonBadOctetCount      = "bad_octet_count"
	ReasonTruncated          = "truncated"
	ReasonTooManyConnections = "too_many_connections"
	ReasonTLSHandshake       = "tls_handshake"
)

var (
	// ErrOversize: a frame was longer than the maximum. It was read, hashed and dropped;
	// the stream goes on with the next frame.
	ErrOversize = errors.New(ReasonOversize)
	// ErrBadOctetCount: an octet-counted stream did not start a frame with a valid
	// MSG-LEN. The frame boundaries are lost, so the stream must be closed.
	ErrBadOctetCount = errors.New(ReasonBadOctetCount)
	// ErrTruncated: the stream ended (EOF, timeout, reset) inside an octet-counted frame.
	ErrTruncated = errors.New(ReasonTruncated)
)

// FrameError is the error Framer.Next returns for a frame it could not deliver. It never
// holds the frame's content, only its size and hash, so it is safe to log.
type FrameError struct {
	Reason error  // ErrOversize, ErrBadOctetCount or ErrTruncated
	Size   int64  // bytes refused: discarded or read so far
	SHA256 string // hex SHA-256 of those bytes
	Err    error  // the read error that ended the stream, if any (io.EOF, a timeout)
}

func (e *FrameError) Error() string {
	s := "syslog frame: " + e.Reason.Error() + " (" + strconv.FormatInt(e.Size, 10) + " bytes)"
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

// Fatal reports whether the stream cannot go on after this error: only an oversize frame
// that was fully skipped leaves the stream at a frame boundary.
func (e *FrameError) Fatal() bool { return e.Reason != ErrOversize || e.Err != nil }

type framing uint8

const (
	framingUnknown framing = iota
	framingOctet           // RFC 5425 / RFC 6587 §3.4.1: MSG-LEN SP SYSLOG-MSG
	framingLF              // RFC 6587 §3.4.2: SYSLOG-MSG TRAILER (LF, also NUL)
)

// maxLenDigits bounds MSG-LEN: ten digits are more than any sane frame, and the limit
// keeps a garbage stream of digits from being read forever as a length.
const maxLenDigits = 10

// Framer splits a syslog byte stream into frames. The first byte of the stream picks the
// framing, as RFC 6587 §3.4 suggests: a digit means octet counting, anything else means
// LF (non-transparent) framing. It is pure: it reads, it does not report or log.
type Framer struct {
	r       *bufio.Reader
	max     int
	mode    framing
	scratch []byte // frames longer than the reader's buffer
	err     error  // sticky: returned by every Next after the stream ended
	skipLF  bool   // the last frame ended in NUL at the end of the buffer; skip an LF next
}

// NewFramer returns a Framer over r that delivers frames of at most maxSize bytes.
func NewFramer(r *bufio.Reader, maxSize int) *Framer {
	return &Framer{r: r, max: maxSize}
}

// OctetCounting reports whether the stream was detected as octet-counted. It is false
// until the first Next.
func (f *Framer) OctetCounting() bool { return f.mode == framingOctet }

// Next returns the next frame: for octet counting exactly MSG-LEN bytes, for LF framing
// the bytes before the LF or NUL trailer (a CR before it stays in the frame, callers
// trim). The frame may be empty. It stays valid only until the next call.
//
// At the end of the stream Next returns io.EOF, or the read error (a timeout, a reset).
// A frame that cannot be delivered gives a *FrameError; after one whose Fatal is true,
// Next returns that same error again.
func (f *Framer) Next() ([]byte, error) {
	if f.err != nil {
		return nil, f.err
	}
	if f.mode == framingUnknown {
		b, err := f.r.Peek(1)
		if err != nil {
			f.err = err
			return nil, err
		}
		if isDigit(b[0]) {
			f.mode = framingOctet
		} else {
			f.mode = framingLF
		}
	}
	var frame []byte
	var err error
	if f.mode == framingOctet {
		frame, err = f.nextCounted()
	} else {
		frame, err = f.nextLine()
	}
	if err != nil {
		var fe *FrameError
		if !errors.As(err, &fe) || fe.Fatal() {
			f.err = err
		}
	}
	return frame, err
}

func (f *Framer) nextCounted() ([]byte, error) {
	var hdr [maxLenDigits + 1]byte
	n := 0
	var length int64
	for {
		c, err := f.r.ReadByte()
		if err != nil {
			if n == 0 {
				return nil, err
			}
			return nil, frameErr(ErrTruncated, hdr[:n], err)
		}
		if n == 0 && (c == '\n' || c == '\r' || c == 0) {
			// Tolerated between frames: some senders end octet-counted frames with a
			// trailer anyway, and it can never be the start of a MSG-LEN.
			continue
		}
		if c == ' ' && n > 0 {
			break
		}
		if !isDigit(c) || n == maxLenDigits || (n == 0 && c == '0') {
			hdr[n] = c
			return nil, frameErr(ErrBadOctetCount, hdr[:n+1], nil)
		}
		hdr[n] = c
		n++
		length = length*10 + int64(c-'0')
	}
	if length > int64(f.max) {
		h := sha256.New()
		done, err := f.discard(h, length)
		return nil, &FrameError{Reason: ErrOversize, Size: done, SHA256: hex.EncodeToString(h.Sum(nil)), Err: err}
	}
	size := int(length)
	if size <= f.r.Size() {
		b, err := f.r.Peek(size)
		// Discard of buffered bytes only moves the read index, so b stays valid until
		// the next read: no copy on the hot path.
		_, _ = f.r.Discard(len(b))
		if err != nil {
			return nil, frameErr(ErrTruncated, b, noEOFUnexpected(err))
		}
		return b, nil
	}
	if cap(f.scratch) < size {
		f.scratch = make([]byte, size)
	}
	b := f.scratch[:size]
	got, err := io.ReadFull(f.r, b)
	if err != nil {
		return nil, frameErr(ErrTruncated, b[:got], noEOFUnexpected(err))
	}
	return b, nil
}

// discard reads and hashes n bytes (or until a read error), returning how many it read.
func (f *Framer) discard(h hash.Hash, n int64) (int64, error) {
	var done int64
	for done < n {
		if f.r.Buffered() == 0 {
			if _, err := f.r.Peek(1); err != nil {
				return done, err
			}
		}
		k := int64(f.r.Buffered())
		if k > n-done {
			k = n - done
		}
		b, _ := f.r.Peek(int(k))
		h.Write(b)
		_, _ = f.r.Discard(len(b))
		done += int64(len(b))
	}
	return done, nil
}

// nextLine returns the bytes up to the next LF or NUL. A line longer than max is hashed
// and discarded up to its trailer.
func (f *Framer) nextLine() ([]byte, error) {
	var (
		acc     = f.scratch[:0] // the line so far, once it outgrew the buffered window
		spilled bool            // acc holds the start of the line
		over    hash.Hash       // non-nil once the line is known to be oversize
		overN   int64
		scanned int // bytes of the buffered window already searched for a trailer
	)
	if f.skipLF {
		f.skipLF = false
		if b, err := f.r.Peek(1); err == nil && b[0] == '\n' {
			_, _ = f.r.Discard(1)
		}
	}
	for {
		if f.r.Buffered() == 0 {
			if _, err := f.r.Peek(1); err != nil {
				return f.endLine(acc, spilled, over, overN, err)
			}
		}
		n := f.r.Buffered()
		buf, _ := f.r.Peek(n)
		if i := indexTrailer(buf[scanned:]); i >= 0 {
			i += scanned
			line := buf[:i]
			skip := i + 1
			if buf[i] == 0 {
				if skip < n && buf[skip] == '\n' {
					skip++ // NUL LF is one trailer
				} else if skip == n {
					f.skipLF = true // decide when the next byte comes, not wait for it now
				}
			}
			switch {
			case over != nil:
				over.Write(line)
				overN += int64(len(line))
				_, _ = f.r.Discard(skip)
				return nil, &FrameError{Reason: ErrOversize, Size: overN, SHA256: hex.EncodeToString(over.Sum(nil))}
			case spilled:
				if len(acc)+len(line) > f.max {
					over = sha256.New()
					over.Write(acc)
					over.Write(line)
					overN = int64(len(acc) + len(line))
					f.scratch = acc[:0]
					_, _ = f.r.Discard(skip)
					return nil, &FrameError{Reason: ErrOversize, Size: overN, SHA256: hex.EncodeToString(over.Sum(nil))}
				}
				acc = append(acc, line...)
				f.scratch = acc
				_, _ = f.r.Discard(skip)
				return acc, nil
			case len(line) > f.max:
				sum := sha256.Sum256(line)
				_, _ = f.r.Discard(skip)
				return nil, &FrameError{Reason: ErrOversize, Size: int64(len(line)), SHA256: hex.EncodeToString(sum[:])}
			default:
				_, _ = f.r.Discard(skip)
				return line, nil
			}
		}
		// No trailer in the window.
		switch {
		case over != nil:
			over.Write(buf)
			overN += int64(n)
			_, _ = f.r.Discard(n)
			scanned = 0
		case len(acc)+n > f.max:
			over = sha256.New()
			over.Write(acc)
			over.Write(buf)
			overN = int64(len(acc) + n)
			acc, spilled = acc[:0], false
			_, _ = f.r.Discard(n)
			scanned = 0
		case n < f.r.Size() && !spilled:
			// Wait for more bytes in place rather than copying: the common case of a
			// line split over two TCP segments.
			scanned = n
			if _, err := f.r.Peek(n + 1); err != nil {
				// Peek returned fewer bytes: the window is still buf.
				return f.endLine(acc, spilled, over, overN, err)
			}
		default:
			acc = append(acc, buf...)
			f.scratch = acc
			spilled = true
			_, _ = f.r.Discard(n)
			scanned = 0
		}
	}
}

// endLine handles a read error in the middle of LF framing: what was read is the last
// frame (senders often omit the final LF), and the error comes with the next call.
func (f *Framer) endLine(acc []byte, spilled bool, over hash.Hash, overN int64, err error) ([]byte, error) {
	if over != nil {
		return nil, &FrameError{Reason: ErrOversize, Size: overN, SHA256: hex.EncodeToString(over.Sum(nil)), Err: err}
	}
	if n := f.r.Buffered(); n > 0 {
		buf, _ := f.r.Peek(n)
		if spilled {
			acc = append(acc, buf...)
			f.scratch = acc
		} else {
			acc = buf
		}
		if len(acc) > f.max {
			sum := sha256.Sum256(acc)
			_, _ = f.r.Discard(n)
			return nil, &FrameError{Reason: ErrOversize, Size: int64(len(acc)), SHA256: hex.EncodeToString(sum[:]), Err: err}
		}
		_, _ = f.r.Discard(n)
		f.err = err
		return acc, nil
	}
	if spilled {
		f.err = err
		return acc, nil
	}
	return nil, err
}

func indexTrailer(b []byte) int {
	i := bytes.IndexByte(b, '\n')
	if i < 0 {
		i = len(b)
	}
	if j := bytes.IndexByte(b[:i], 0); j >= 0 {
		return j
	}
	if i == len(b) {
		return -1
	}
	return i
}

func frameErr(reason error, read []byte, err error) *FrameError {
	sum := sha256.Sum256(read)
	return &FrameError{Reason: reason, Size: int64(len(read)), SHA256: hex.EncodeToString(sum[:]), Err: err}
}

// noEOFUnexpected maps io.ErrUnexpectedEOF back to io.EOF: the reason already says the
// frame was cut short.
func noEOFUnexpected(err error) error {
	if err == io.ErrUnexpectedEOF {
		return io.EOF
	}
	return err
}

func isDigit(c byte) bool { return c >= '0' && c <= '9' }
