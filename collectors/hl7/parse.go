package hl7

import (
	"bytes"
	"errors"
	"slices"
	"strings"
	"unicode/utf8"
)

// ParseError is the error Parse returns. Reason is one of ReasonMissingMSH, ReasonBadMSH,
// ReasonInvalidUTF8 or ReasonMalformed; the error never holds message content.
type ParseError struct {
	Reason string
	Detail string // a fixed, content-free hint, e.g. "segment id"
}

func (e *ParseError) Error() string {
	if e.Detail == "" {
		return "hl7: " + e.Reason
	}
	return "hl7: " + e.Reason + ": " + e.Detail
}

func parseErr(reason, detail string) error { return &ParseError{Reason: reason, Detail: detail} }

// ReasonOf returns the reason keyword of a *ParseError or *FrameError, or "malformed".
func ReasonOf(err error) string {
	var pe *ParseError
	if errors.As(err, &pe) {
		return pe.Reason
	}
	var fe *FrameError
	if errors.As(err, &fe) {
		return fe.Reason.Error()
	}
	return ReasonMalformed
}

// Delims are a message's delimiters, from MSH-1 and MSH-2.
type Delims struct {
	Field, Comp, Rep, Esc, Sub byte
	Trunc                      byte // v2.7+ truncation character, 0 when absent
}

// DefaultDelims are the HL7-recommended delimiters |^~\&, used for ACKs to messages
// whose MSH could not be read.
var DefaultDelims = Delims{Field: '|', Comp: '^', Rep: '~', Esc: '\\', Sub: '&'}

// Charsets, as interpreted from MSH-18.
const (
	charsetASCII   = iota // empty or "ASCII"
	charsetLatin1         // "8859/1"
	charsetUTF8           // "UNICODE UTF-8"
	charsetUnknown        // anything else: bytes kept, invalid UTF-8 replaced
)

// Segment is one segment. Fields[0] is the segment id; Fields[n] is field n. For MSH,
// Fields[1] is the field separator and Fields[2] the encoding characters, so that
// MSH-n is Fields[n] as in the standard. Field bytes are raw: not unescaped, not
// converted.
type Segment struct {
	ID     string
	Fields [][]byte
}

// Field returns the raw bytes of field n, or nil.
func (s *Segment) Field(n int) []byte {
	if s == nil || n < 0 || n >= len(s.Fields) {
		return nil
	}
	return s.Fields[n]
}

// Message is one parsed HL7 v2 message. Values are read through its methods, which
// split, unescape and convert to UTF-8.
type Message struct {
	Delims   Delims
	Segments []Segment
	// Charset is MSH-18 as sent; charset is its interpretation.
	Charset string
	charset int
	// CharsetNote is set when the content did not match the declared character set
	// ("utf8_in_8859_1", "non_ascii_in_ascii") or the set is unknown ("unknown").
	CharsetNote string
	// Batch counts the MSH segments when the input was a batch (BHS/FHS), else 0. Parse
	// then holds the first message of the batch; ParseAll returns each.
	Batch int
}

// Parse parses one HL7 v2 message (or the first message of a batch). Segment
// terminators may be CR, CR LF or LF. The returned message refers to raw. On an error
// the message is nil, except when at least the MSH segment and its delimiters could be
// read: then it holds them (and no other segments), so that a rejecting ACK can still
// answer in the sender's own terms.
func Parse(raw []byte) (*Message, error) {
	m := &Message{Segments: make([]Segment, 0, bytes.Count(raw, []byte{'\r'})+1)}
	if err := m.parse(raw); err != nil {
		if len(m.Segments) == 0 {
			return nil, err
		}
		m.Segments = m.Segments[:1]
		return m, err
	}
	return m, nil
}

func (m *Message) parse(raw []byte) error {
	// Skip batch and file headers and blank lines before the MSH.
	rest := raw
	var first []byte
	for len(rest) > 0 {
		first, rest = nextSegment(rest)
		if len(bytes.TrimSpace(first)) == 0 {
			continue
		}
		if hasPrefix3(first, "FHS") || hasPrefix3(first, "BHS") {
			m.Batch = -1
			continue
		}
		break
	}
	if len(first) < 3 || !hasPrefix3(first, "MSH") {
		if len(first) >= 3 && strings.EqualFold(string(first[:3]), "MSH") {
			return parseErr(ReasonBadMSH, "lowercase segment id")
		}
		return parseErr(ReasonMissingMSH, "")
	}
	if len(first) < 8 {
		return parseErr(ReasonBadMSH, "encoding characters missing")
	}
	d := Delims{Field: first[3]}
	enc := first[4:]
	if i := bytes.IndexByte(enc, d.Field); i >= 0 {
		enc = enc[:i]
	} else {
		return parseErr(ReasonBadMSH, "truncated after encoding characters")
	}
	if len(enc) != 4 && len(enc) != 5 {
		return parseErr(ReasonBadMSH, "encoding characters missing")
	}
	d.Comp, d.Rep, d.Esc, d.Sub = enc[0], enc[1], enc[2], enc[3]
	if len(enc) == 5 {
		d.Trunc = enc[4]
	}
	var seen [128]bool
	for _, c := range first[3 : 4+len(enc)] {
		if c < 0x21 || c > 0x7E || c == '.' || seen[c] || isAlnum(c) {
			return parseErr(ReasonBadMSH, "invalid encoding characters")
		}
		seen[c] = true
	}
	m.Delims = d

	msh := Segment{ID: "MSH", Fields: [][]byte{first[:3], first[3:4], enc}}
	msh.Fields = appendFields(msh.Fields, first[5+len(enc):], d.Field)
	m.Segments = append(m.Segments, msh)
	for len(rest) > 0 {
		var seg []byte
		seg, rest = nextSegment(rest)
		if len(seg) == 0 {
			continue
		}
		if len(seg) < 3 || !isSegID(seg[:3]) || (len(seg) > 3 && seg[3] != d.Field) {
			if len(bytes.TrimSpace(seg)) == 0 {
				continue
			}
			return parseErr(ReasonMalformed, "segment id")
		}
		id := string(seg[:3])
		if id == "MSH" {
			if m.Batch == 0 {
				return parseErr(ReasonMalformed, "second MSH outside a batch")
			}
			m.Batch--
			continue // later messages of a batch are counted, not parsed
		}
		if m.Batch < 0 {
			if id == "BTS" || id == "FTS" || id == "BHS" || id == "FHS" {
				continue
			}
			if m.Batch < -1 {
				continue // inside a later message of the batch
			}
		}
		s := Segment{ID: id, Fields: [][]byte{seg[:3]}}
		if len(seg) > 3 {
			s.Fields = appendFields(s.Fields, seg[4:], d.Field)
		}
		m.Segments = append(m.Segments, s)
	}
	if m.Batch < 0 {
		m.Batch = -m.Batch
	}

	// MSH-9 message code and MSH-12 version are required, and say whether this is HL7.
	if code := m.Component(m.Field("MSH", 9), 1); len(code) != 3 || !isSegID([]byte(code)) {
		return parseErr(ReasonBadMSH, "MSH-9 message type")
	}
	if !isVersion(m.Component(m.Field("MSH", 12), 1)) {
		return parseErr(ReasonBadMSH, "MSH-12 version")
	}
	m.Charset = string(bytes.TrimSpace(m.firstRep(m.Field("MSH", 18))))
	switch strings.ToUpper(m.Charset) {
	case "", "ASCII":
		m.charset = charsetASCII
		if !isASCII(raw) {
			// Undeclared non-ASCII: valid UTF-8 is read as UTF-8; bytes with no valid
			// multi-byte sequence at all as ISO-8859-1 (older senders); a mix of both is
			// broken UTF-8 and refused.
			m.CharsetNote = "non_ascii_in_ascii"
			switch {
			case utf8.Valid(raw):
				m.charset = charsetUTF8
			case hasMultibyteUTF8(raw):
				return parseErr(ReasonInvalidUTF8, "undeclared UTF-8 with invalid sequences")
			default:
				m.charset = charsetLatin1
			}
		}
	case "8859/1":
		m.charset = charsetLatin1
		if !isASCII(raw) && utf8.Valid(raw) {
			// Real senders declare 8859/1 and send UTF-8 (dcm4che OMI/OMG samples).
			m.charset = charsetUTF8
			m.CharsetNote = "utf8_in_8859_1"
		}
	case "UNICODE UTF-8":
		m.charset = charsetUTF8
		if !utf8.Valid(raw) {
			return parseErr(ReasonInvalidUTF8, "")
		}
	default:
		m.charset = charsetUnknown
		m.CharsetNote = "unknown"
	}
	return nil
}

// nextSegment splits off one segment ended by CR, CR LF or LF.
func nextSegment(b []byte) (seg, rest []byte) {
	i := bytes.IndexAny(b, "\r\n")
	if i < 0 {
		return b, nil
	}
	seg, rest = b[:i], b[i+1:]
	if b[i] == '\r' && len(rest) > 0 && rest[0] == '\n' {
		rest = rest[1:]
	}
	return seg, rest
}

func appendFields(dst [][]byte, b []byte, sep byte) [][]byte {
	dst = slices.Grow(dst, bytes.Count(b, []byte{sep})+1)
	for {
		i := bytes.IndexByte(b, sep)
		if i < 0 {
			return append(dst, b)
		}
		dst = append(dst, b[:i])
		b = b[i+1:]
	}
}

func hasPrefix3(b []byte, s string) bool { return len(b) >= 3 && string(b[:3]) == s }

func isAlnum(c byte) bool {
	return c >= '0' && c <= '9' || c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z'
}

func isSegID(b []byte) bool {
	if len(b) != 3 {
		return false
	}
	for _, c := range b {
		if !(c >= '0' && c <= '9' || c >= 'A' && c <= 'Z') {
			return false
		}
	}
	return b[0] >= 'A' && b[0] <= 'Z'
}

func isVersion(s string) bool {
	if s == "" || s[0] < '2' || s[0] > '9' {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; !(c >= '0' && c <= '9' || c == '.') {
			return false
		}
	}
	return len(s) <= 10
}

// hasMultibyteUTF8 reports whether b holds at least one valid multi-byte UTF-8 sequence.
func hasMultibyteUTF8(b []byte) bool {
	for len(b) > 0 {
		r, n := utf8.DecodeRune(b)
		if r != utf8.RuneError && n > 1 {
			return true
		}
		b = b[n:]
	}
	return false
}

func isASCII(b []byte) bool {
	for _, c := range b {
		if c >= 0x80 {
			return false
		}
	}
	return true
}

// Segment returns the first segment with id, or nil.
func (m *Message) Segment(id string) *Segment {
	for i := range m.Segments {
		if m.Segments[i].ID == id {
			return &m.Segments[i]
		}
	}
	return nil
}

// All returns every segment with id.
func (m *Message) All(id string) []*Segment {
	var out []*Segment
	for i := range m.Segments {
		if m.Segments[i].ID == id {
			out = append(out, &m.Segments[i])
		}
	}
	return out
}

// Field returns the raw bytes of field n of the first segment id, or nil.
func (m *Message) Field(id string, n int) []byte { return m.Segment(id).Field(n) }

// Reps splits a raw field into its repetitions. MSH-1 and MSH-2 are never split.
func (m *Message) Reps(raw []byte) [][]byte {
	if len(raw) == 0 {
		return nil
	}
	return bytes.Split(raw, []byte{m.Delims.Rep})
}

func (m *Message) firstRep(raw []byte) []byte {
	if i := bytes.IndexByte(raw, m.Delims.Rep); i >= 0 {
		return raw[:i]
	}
	return raw
}

// rawComponent returns component n (1-based) of the first repetition of raw.
func (m *Message) rawComponent(raw []byte, n int) []byte {
	raw = m.firstRep(raw)
	for i := 1; i < n; i++ {
		j := bytes.IndexByte(raw, m.Delims.Comp)
		if j < 0 {
			return nil
		}
		raw = raw[j+1:]
	}
	if j := bytes.IndexByte(raw, m.Delims.Comp); j >= 0 {
		raw = raw[:j]
	}
	return raw
}

// Component returns component n (1-based) of the first repetition of raw, unescaped and
// in UTF-8; the HL7 explicit null `""` reads as empty. Sub-components are kept, joined
// by '&' whatever the message's sub-component separator.
func (m *Message) Component(raw []byte, n int) string {
	return m.Text(m.rawComponent(raw, n))
}

// SubComponent returns sub-component k of component n of the first repetition.
func (m *Message) SubComponent(raw []byte, n, k int) string {
	c := m.rawComponent(raw, n)
	parts := bytes.Split(c, []byte{m.Delims.Sub})
	if k < 1 || k > len(parts) {
		return ""
	}
	return m.Text(parts[k-1])
}

// Text unescapes and converts one raw value (a field, component or sub-component) to
// UTF-8. Component and sub-component separators in it are normalized to '^' and '&'.
func (m *Message) Text(raw []byte) string {
	if len(raw) == 0 || string(raw) == `""` {
		return ""
	}
	d := m.Delims
	var out []byte
	plain := true
	for _, c := range raw {
		if c == d.Esc || c >= 0x80 || (c == d.Comp && c != '^') || (c == d.Sub && c != '&') {
			plain = false
			break
		}
	}
	if plain {
		return string(raw)
	}
	out = make([]byte, 0, len(raw))
	for i := 0; i < len(raw); i++ {
		c := raw[i]
		switch {
		case c == d.Esc:
			end := bytes.IndexByte(raw[i+1:], d.Esc)
			if end < 0 {
				out = append(out, raw[i:]...) // unterminated: kept literally
				i = len(raw)
				continue
			}
			out = m.unescape(out, raw[i+1:i+1+end])
			i += end + 1
		case c == d.Comp:
			out = append(out, '^')
		case c == d.Sub:
			out = append(out, '&')
		default:
			out = append(out, c)
		}
	}
	return m.toUTF8(out)
}

// unescape appends the meaning of one escape sequence (without its delimiters).
func (m *Message) unescape(out, seq []byte) []byte {
	d := m.Delims
	if len(seq) == 0 {
		return out
	}
	switch seq[0] {
	case 'F':
		if len(seq) == 1 {
			return append(out, d.Field)
		}
	case 'S':
		if len(seq) == 1 {
			return append(out, d.Comp)
		}
	case 'T':
		if len(seq) == 1 {
			return append(out, d.Sub)
		}
	case 'R':
		if len(seq) == 1 {
			return append(out, d.Rep)
		}
	case 'E':
		if len(seq) == 1 {
			return append(out, d.Esc)
		}
	case 'P':
		if len(seq) == 1 && d.Trunc != 0 {
			return append(out, d.Trunc)
		}
	case 'X':
		hex := seq[1:]
		if len(hex)%2 != 0 {
			return out
		}
		for j := 0; j+1 < len(hex); j += 2 {
			hi, ok1 := unhex(hex[j])
			lo, ok2 := unhex(hex[j+1])
			if !ok1 || !ok2 {
				return out
			}
			out = append(out, hi<<4|lo)
		}
		return out
	}
	// \H\ \N\ (highlighting), \.br\ and other formatting, \C..\ \M..\ \Z..\: dropped.
	return out
}

func unhex(c byte) (byte, bool) {
	switch {
	case c >= '0' && c <= '9':
		return c - '0', true
	case c >= 'a' && c <= 'f':
		return c - 'a' + 10, true
	case c >= 'A' && c <= 'F':
		return c - 'A' + 10, true
	}
	return 0, false
}

// toUTF8 converts bytes in the message's character set to a valid UTF-8 string.
func (m *Message) toUTF8(b []byte) string {
	switch m.charset {
	case charsetLatin1:
		if isASCII(b) {
			return string(b)
		}
		out := make([]rune, 0, len(b))
		for _, c := range b {
			out = append(out, rune(c))
		}
		return string(out)
	default:
		return strings.ToValidUTF8(string(b), "\uFFFD")
	}
}

// ParseAll parses a block that holds one message or a batch (FHS/BHS … BTS/FTS) and
// returns every message in it, each with Batch set to their number in a batch. A batch
// is refused as a whole when one of its messages fails. On an error it returns a
// one-element slice with what Parse gave for the failing message (possibly nil), for the
// rejecting ACK.
func ParseAll(raw []byte) ([]*Message, error) {
	first, err := Parse(raw)
	if err != nil || first.Batch <= 1 {
		return []*Message{first}, err
	}
	// Split at every segment that starts with MSH; the headers before the first one
	// were checked by Parse, the trailer (BTS/FTS) stays with the last message.
	var starts []int
	for off := 0; off < len(raw); {
		seg, rest := nextSegment(raw[off:])
		if hasPrefix3(seg, "MSH") {
			starts = append(starts, off)
		}
		off = len(raw) - len(rest)
		if rest == nil {
			break
		}
	}
	msgs := make([]*Message, 0, len(starts))
	for i, s := range starts {
		end := len(raw)
		if i+1 < len(starts) {
			end = starts[i+1]
		}
		m, err := Parse(raw[s:end])
		if err != nil {
			return []*Message{m}, err
		}
		m.Batch = len(starts)
		msgs = append(msgs, m)
	}
	return msgs, nil
}
