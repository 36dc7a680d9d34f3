package syslog

import (
	"bufio"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
)

// Reject reasons of the RELP listener, reported through collectors.Reporter like the
// syslog framer's.
const (
	// ReasonRELPFrame: bytes that do not follow the RELP frame grammar (librelp
	// doc/relp.md, "RELP FRAME"). The frame boundaries are lost: the session ends.
	ReasonRELPFrame = "relp_bad_frame"
	// ReasonRELPTxnr: a command whose TXNR is not the next one of the session.
	ReasonRELPTxnr = "relp_bad_txnr"
	// ReasonRELPCommand: a command the session does not allow (syslog before open, a
	// second open, an unknown command). It is answered rsp 500.
	ReasonRELPCommand = "relp_bad_command"
)

// ErrRELPFrame is the FrameError reason for a broken RELP frame.
var ErrRELPFrame = errors.New(ReasonRELPFrame)

// RELP frame limits, from the grammar: TXNR and DATALEN are 1*9DIGIT, COMMAND 1*32ALPHA.
const (
	relpMaxDigits  = 9
	relpMaxCommand = 32
	// RELPMaxTxnr is the largest TXNR; the next one after it is 1.
	RELPMaxTxnr = 999_999_999
	// relpMaxHeader is TXNR SP COMMAND SP DATALEN SP.
	relpMaxHeader = relpMaxDigits + 1 + relpMaxCommand + 1 + relpMaxDigits + 1
)

// RELPFrame is one frame: HEADER = TXNR SP COMMAND SP DATALEN, then SP DATA when DATALEN
// is not 0, then the LF trailer. Command and Data stay valid only until the next call
// of RELPFramer.Next.
type RELPFrame struct {
	Txnr    int
	Command []byte
	Data    []byte
}

// RELPFramer splits a RELP byte stream into frames. Like Framer it is pure: it reads and
// hashes, it does not report, log or check the session's TXNR sequence.
type RELPFramer struct {
	r       *bufio.Reader
	max     int
	hdr     [relpMaxHeader]byte
	scratch []byte // frames longer than the reader's buffer
	err     error  // sticky after a fatal error
}

// NewRELPFramer returns a framer over r that delivers frames whose DATA is at most
// maxData bytes.
func NewRELPFramer(r *bufio.Reader, maxData int) *RELPFramer {
	return &RELPFramer{r: r, max: maxData}
}

// Next returns the next frame. At the end of the stream at a frame boundary it returns
// io.EOF (or the read error: a timeout, a reset). A frame that cannot be delivered gives
// a *FrameError:
//   - ErrOversize, not fatal: DATALEN was over the maximum; DATA was read, hashed and
//     dropped, and the frame (Txnr and Command, no Data) is returned with the error so
//     that the session can answer it;
//   - ErrRELPFrame, fatal: the header or the trailer broke the grammar;
//   - ErrTruncated, fatal: the stream ended inside a frame.
//
// After a fatal error, Next returns the same error again.
func (f *RELPFramer) Next() (RELPFrame, error) {
	if f.err != nil {
		return RELPFrame{}, f.err
	}
	fr, err := f.next()
	if err != nil {
		var fe *FrameError
		if !errors.As(err, &fe) || fe.Fatal() {
			f.err = err
		}
	}
	return fr, err
}

func (f *RELPFramer) next() (RELPFrame, error) {
	var fr RELPFrame
	n := 0 // header bytes read, kept in f.hdr for the hash of a broken frame
	read := func() (byte, error) {
		c, err := f.r.ReadByte()
		if err != nil {
			if n == 0 {
				return 0, err
			}
			return 0, frameErr(ErrTruncated, f.hdr[:n], noEOFUnexpected(err))
		}
		f.hdr[n] = c
		n++
		return c, nil
	}
	bad := func() error { return frameErr(ErrRELPFrame, f.hdr[:n], nil) }

	// TXNR SP
	digits := 0
	for {
		c, err := read()
		if err != nil {
			return fr, err
		}
		if c == ' ' && digits > 0 {
			break
		}
		if !isDigit(c) || digits == relpMaxDigits {
			return fr, bad()
		}
		fr.Txnr = fr.Txnr*10 + int(c-'0')
		digits++
	}
	// COMMAND SP
	start := n
	for {
		c, err := read()
		if err != nil {
			return fr, err
		}
		if c == ' ' && n-1 > start {
			break
		}
		if !isAlpha(c) || n-start > relpMaxCommand {
			return fr, bad()
		}
	}
	fr.Command = f.hdr[start : n-1]
	// DATALEN, then SP (data follows) or LF (DATALEN 0, no data).
	length, digits := 0, 0
	for {
		c, err := read()
		if err != nil {
			return fr, err
		}
		if isDigit(c) && digits < relpMaxDigits {
			length = length*10 + int(c-'0')
			digits++
			continue
		}
		if digits == 0 {
			return fr, bad()
		}
		if length == 0 {
			if c != '\n' {
				return fr, bad()
			}
			return fr, nil
		}
		if c != ' ' {
			return fr, bad()
		}
		break
	}
	if length > f.max {
		h := sha256.New()
		h.Write(f.hdr[:n])
		done, err := discardN(f.r, h, int64(length))
		size := int64(n) + done
		if err == nil {
			var c byte
			if c, err = f.r.ReadByte(); err == nil && c != '\n' {
				h.Write([]byte{c})
				return fr, &FrameError{Reason: ErrRELPFrame, Size: size + 1, SHA256: hex.EncodeToString(h.Sum(nil))}
			}
		}
		if err != nil {
			return fr, &FrameError{Reason: ErrTruncated, Size: size, SHA256: hex.EncodeToString(h.Sum(nil)), Err: noEOFUnexpected(err)}
		}
		return fr, &FrameError{Reason: ErrOversize, Size: int64(length), SHA256: hex.EncodeToString(h.Sum(nil))}
	}
	// DATA LF. Within the reader's buffer, Peek avoids a copy: the slice stays valid
	// until the next read, which is what Next promises.
	var b []byte
	if length+1 <= f.r.Size() {
		p, err := f.r.Peek(length + 1)
		if err != nil {
			return fr, f.truncated(n, p, err)
		}
		_, _ = f.r.Discard(len(p))
		b = p
	} else {
		if cap(f.scratch) < length+1 {
			f.scratch = make([]byte, length+1)
		}
		b = f.scratch[:length+1]
		if got, err := io.ReadFull(f.r, b); err != nil {
			return fr, f.truncated(n, b[:got], err)
		}
	}
	if b[length] != '\n' {
		h := sha256.New()
		h.Write(f.hdr[:n])
		h.Write(b)
		return fr, &FrameError{Reason: ErrRELPFrame, Size: int64(n + len(b)), SHA256: hex.EncodeToString(h.Sum(nil))}
	}
	fr.Data = b[:length]
	return fr, nil
}

// truncated is the error for a stream that ended inside DATA: the hash covers the
// header and the data read.
func (f *RELPFramer) truncated(n int, data []byte, err error) error {
	h := sha256.New()
	h.Write(f.hdr[:n])
	h.Write(data)
	return &FrameError{Reason: ErrTruncated, Size: int64(n + len(data)), SHA256: hex.EncodeToString(h.Sum(nil)), Err: noEOFUnexpected(err)}
}

// discardN reads and hashes n bytes (or until a read error), returning how many it read.
func discardN(r *bufio.Reader, h io.Writer, n int64) (int64, error) {
	var done int64
	for done < n {
		if r.Buffered() == 0 {
			if _, err := r.Peek(1); err != nil {
				return done, err
			}
		}
		k := min(int64(r.Buffered()), n-done)
		b, _ := r.Peek(int(k))
		h.Write(b)
		_, _ = r.Discard(len(b))
		done += int64(len(b))
	}
	return done, nil
}

func isAlpha(c byte) bool { return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' }

// AppendRELPFrame appends one frame to dst: TXNR SP COMMAND SP DATALEN [SP DATA] LF.
func AppendRELPFrame(dst []byte, txnr int, command string, data []byte) []byte {
	dst = appendInt(dst, txnr)
	dst = append(dst, ' ')
	dst = append(dst, command...)
	dst = append(dst, ' ')
	dst = appendInt(dst, len(data))
	if len(data) > 0 {
		dst = append(dst, ' ')
		dst = append(dst, data...)
	}
	return append(dst, '\n')
}

func appendInt(dst []byte, v int) []byte {
	var b [20]byte
	i := len(b)
	for {
		i--
		b[i] = byte('0' + v%10)
		v /= 10
		if v == 0 {
			break
		}
	}
	return append(dst, b[i:]...)
}
