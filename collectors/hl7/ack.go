package hl7

import (
	"strconv"
	"strings"
	"sync/atomic"
	"time"
)

// Acknowledgement codes (HL7 table 0008).
const (
	AckAccept       = "AA"
	AckError        = "AE"
	AckReject       = "AR"
	AckCommitAccept = "CA"
	AckCommitError  = "CE"
	AckCommitReject = "CR"
)

// Texts of MSA-3; they never hold message content.
const (
	textStoreFailed = "cannot store, retry"
	textRejected    = "rejected: "
)

// Acknowledgement conditions of MSH-15 and MSH-16 (HL7 table 0155).
const (
	condAlways  = "AL"
	condNever   = "NE"
	condError   = "ER"
	condSuccess = "SU"
)

// ackCodeFor returns the acknowledgement code answering a message with outcome o under
// the ack mode, and false when no ACK is to be sent. m may be nil (its MSH could not be
// read): that is answered in original mode. At most one ACK answers a message:
//
//   - original mode (ack_mode original, or auto with MSH-15 and MSH-16 both empty):
//     AA/AE/AR, always;
//   - enhanced mode: a commit ACK CA/CE/CR when MSH-15 asks for one (AL always, ER on
//     error, SU on success, NE never; empty or unknown counts as AL, so a sender that
//     waits is answered); else an application ACK AA/AE/AR when MSH-16 asks for one
//     (same conditions; empty counts as NE), since the commit is the whole processing
//     of an audit sink (HL7 v2.5.1 2.9.3: NE/AL is original mode); else none.
func ackCodeFor(mode string, m *Message, o outcome) (string, bool) {
	original := [...]string{AckAccept, AckError, AckReject}
	commit := [...]string{AckCommitAccept, AckCommitError, AckCommitReject}
	if m == nil || mode == ACKModeOriginal {
		return original[o], true
	}
	accept := strings.ToUpper(strings.TrimSpace(m.Component(m.Field("MSH", 15), 1)))
	app := strings.ToUpper(strings.TrimSpace(m.Component(m.Field("MSH", 16), 1)))
	if accept == "" && app == "" && mode != ACKModeEnhanced {
		return original[o], true
	}
	switch accept {
	case condNever, condError, condSuccess:
	default:
		accept = condAlways
	}
	if wanted(accept, o) {
		return commit[o], true
	}
	if wanted(app, o) {
		return original[o], true
	}
	return "", false
}

// wanted reports whether an acknowledgement condition (table 0155) asks for an ACK of
// outcome o. Anything but AL, ER and SU asks for none.
func wanted(cond string, o outcome) bool {
	switch cond {
	case condAlways:
		return true
	case condError:
		return o != outcomeAccepted
	case condSuccess:
		return o == outcomeAccepted
	}
	return false
}

var ackCounter atomic.Uint64

// ackControlID returns a control id for an ACK's MSH-10: 20 characters at most, unique
// within this process and unlikely to repeat across restarts.
func ackControlID(now time.Time) string {
	return "EA" + strconv.FormatInt(now.UnixMilli(), 36) + strconv.FormatUint(ackCounter.Add(1)%(36*36*36*36*36), 36)
}

// errCode maps a reason keyword to an HL7 table 0357 code and its text.
func errCode(reason string) (string, string) {
	switch reason {
	case ReasonMissingMSH, ReasonBadMSH:
		return "100", "Segment sequence error"
	case "":
		return "207", "Application internal error"
	default:
		return "102", "Data type error"
	}
}

// AppendACK appends an MLLP-framed acknowledgement of m (which may be nil when its MSH
// could not be read) to dst. code is one of the Ack* codes; reason, when set, is the
// reject keyword named in MSA-3 and ERR; text replaces the MSA-3 text when set. The ACK
// uses the message's delimiters, version and character set, swaps sender and receiver,
// and carries MSA-2 = MSH-10 of m.
func AppendACK(dst []byte, m *Message, code, reason, text string, now time.Time) []byte {
	d := DefaultDelims
	var msh *Segment
	if m != nil {
		d = m.Delims
		msh = m.Segment("MSH")
	}
	f := func(n int) []byte { return msh.Field(n) }
	sep := d.Field
	dst = append(dst, startBlock)
	dst = append(dst, "MSH"...)
	dst = append(dst, sep, d.Comp, d.Rep, d.Esc, d.Sub)
	if d.Trunc != 0 {
		dst = append(dst, d.Trunc)
	}
	for _, n := range []int{5, 6, 3, 4} { // the receiver becomes the sender
		dst = append(dst, sep)
		dst = append(dst, f(n)...)
	}
	dst = append(dst, sep)
	dst = now.AppendFormat(dst, "20060102150405-0700")
	dst = append(dst, sep, sep)
	dst = append(dst, "ACK"...)
	if trig := m.rawTrigger(); len(trig) > 0 {
		dst = append(dst, d.Comp)
		dst = append(dst, trig...)
		dst = append(dst, d.Comp)
		dst = append(dst, "ACK"...)
	}
	dst = append(dst, sep)
	dst = append(dst, ackControlID(now)...)
	dst = append(dst, sep)
	if p := f(11); len(p) > 0 {
		dst = append(dst, p...)
	} else {
		dst = append(dst, 'P')
	}
	dst = append(dst, sep)
	if v := f(12); msh != nil && isVersion(m.Component(v, 1)) {
		dst = append(dst, v...)
	} else {
		dst = append(dst, "2.5"...)
	}
	if cs := f(18); len(cs) > 0 {
		dst = append(dst, sep, sep, sep, sep, sep, sep)
		dst = append(dst, cs...)
	}
	dst = append(dst, carriage)

	dst = append(dst, "MSA"...)
	dst = append(dst, sep)
	dst = append(dst, code...)
	dst = append(dst, sep)
	if msh != nil {
		dst = append(dst, m.firstRep(f(10))...)
	}
	if text == "" && reason != "" {
		text = textRejected + reason
	}
	if text != "" {
		dst = append(dst, sep)
		dst = appendEscaped(dst, d, text)
	}
	dst = append(dst, carriage)

	if code != AckAccept && code != AckCommitAccept {
		ec, et := errCode(reason)
		// ERR-1 (v2.3 ELD) for old receivers, ERR-3 (HL7 0357), ERR-4 severity,
		// ERR-8 user message (the reason keyword, or the retry hint).
		dst = append(dst, "ERR"...)
		dst = append(dst, sep)
		dst = append(dst, "MSH"...)
		dst = append(dst, d.Comp, '1', d.Comp, d.Comp)
		dst = append(dst, ec...)
		dst = append(dst, d.Sub)
		dst = appendEscaped(dst, d, et)
		dst = append(dst, d.Sub)
		dst = append(dst, "HL70357"...)
		dst = append(dst, sep, sep)
		dst = append(dst, ec...)
		dst = append(dst, d.Comp)
		dst = appendEscaped(dst, d, et)
		dst = append(dst, d.Comp)
		dst = append(dst, "HL70357"...)
		dst = append(dst, sep, 'E', sep, sep, sep, sep)
		if reason != "" {
			dst = appendEscaped(dst, d, reason)
		} else {
			dst = appendEscaped(dst, d, text)
		}
		dst = append(dst, carriage)
	}
	return append(dst, endBlock, carriage)
}

// rawTrigger is MSH-9.2 of m as sent, or nil.
func (m *Message) rawTrigger() []byte {
	if m == nil {
		return nil
	}
	return m.rawComponent(m.Field("MSH", 9), 2)
}

// appendEscaped appends s with the delimiters in it escaped (\F\ \S\ \R\ \E\ \T\).
func appendEscaped(dst []byte, d Delims, s string) []byte {
	for i := 0; i < len(s); i++ {
		c := s[i]
		var e byte
		switch c {
		case d.Field:
			e = 'F'
		case d.Comp:
			e = 'S'
		case d.Rep:
			e = 'R'
		case d.Esc:
			e = 'E'
		case d.Sub:
			e = 'T'
		case '\r', '\n', startBlock, endBlock:
			c = ' '
		}
		if e != 0 {
			dst = append(dst, d.Esc, e, d.Esc)
		} else {
			dst = append(dst, c)
		}
	}
	return dst
}
