package pgstore

import (
	"bytes"
	"encoding/json"
	"unicode/utf8"
)

// eventFields are the fields of an audit event (audit.Event) that get a column of their
// own.
type eventFields struct {
	Time    string `json:"time"`
	Action  string `json:"action"`
	Outcome string `json:"outcome"`
	Patient string `json:"patient"`
	Actor   struct {
		User string `json:"user"`
	} `json:"actor"`
	Study []string `json:"study"`
}

// extractFields decodes the indexed fields of an event, with the result of
// json.Unmarshal into eventFields: ok is false exactly when Unmarshal would fail. A
// scanner of its own reads the events audit's encoder writes (about 10 times faster
// than encoding/json's reflection); anything it is not sure about (escapes or
// non-ASCII in a field it keeps, keys that differ only in case, a repeated key, a type
// other than expected) goes to encoding/json, which decides. FuzzExtractFields holds
// the two to the same answers.
func extractFields(ev []byte) (f eventFields, ok bool) {
	s := fieldScanner{b: ev}
	if s.fast(&f) {
		return f, true
	}
	f = eventFields{}
	if json.Unmarshal(ev, &f) != nil {
		return eventFields{}, false
	}
	return f, true
}

type fieldScanner struct {
	b    []byte
	i    int
	bail bool // not sure: let encoding/json decide
}

// fast scans a whole JSON document that must be an object; it reports false to bail.
func (s *fieldScanner) fast(f *eventFields) bool {
	s.ws()
	if !s.object(f, true) {
		return false
	}
	s.ws()
	return !s.bail && s.i == len(s.b)
}

func (s *fieldScanner) ws() {
	for s.i < len(s.b) {
		switch s.b[s.i] {
		case ' ', '\t', '\n', '\r':
			s.i++
		default:
			return
		}
	}
}

// object scans an object; top says which fields to keep (the event's, or actor's).
func (s *fieldScanner) object(f *eventFields, top bool) bool {
	if s.i >= len(s.b) || s.b[s.i] != '{' {
		return false
	}
	s.i++
	var seen uint8
	s.ws()
	if s.i < len(s.b) && s.b[s.i] == '}' {
		s.i++
		return true
	}
	for {
		s.ws()
		key, plain := s.str()
		if key == nil {
			return false
		}
		if !plain {
			return false // an escaped key might fold to one of ours
		}
		s.ws()
		if s.i >= len(s.b) || s.b[s.i] != ':' {
			return false
		}
		s.i++
		s.ws()
		slot := -1
		if top {
			switch string(key) {
			case "time":
				slot = 0
			case "action":
				slot = 1
			case "outcome":
				slot = 2
			case "patient":
				slot = 3
			case "actor":
				slot = 4
			case "study":
				slot = 5
			default:
				if foldsTo(key, "time", "action", "outcome", "patient", "actor", "study") {
					return false
				}
			}
		} else {
			if string(key) == "user" {
				slot = 0
			} else if foldsTo(key, "user") {
				return false
			}
		}
		if slot >= 0 {
			if seen&(1<<slot) != 0 {
				return false // a repeated key: encoding/json's rules for those, not ours
			}
			seen |= 1 << slot
			if !s.field(f, top, slot) {
				return false
			}
		} else if !s.skip(0) {
			return false
		}
		s.ws()
		if s.i >= len(s.b) {
			return false
		}
		switch s.b[s.i] {
		case ',':
			s.i++
		case '}':
			s.i++
			return true
		default:
			return false
		}
	}
}

// field scans the value of one kept field into f.
func (s *fieldScanner) field(f *eventFields, top bool, slot int) bool {
	if s.literal("null") {
		return true // leaves the field as it is, as encoding/json does
	}
	if top && slot == 4 {
		return s.object(f, false)
	}
	if top && slot == 5 {
		return s.strings(&f.Study)
	}
	v, ok := s.value()
	if !ok {
		return false
	}
	switch {
	case !top:
		f.Actor.User = v
	case slot == 0:
		f.Time = v
	case slot == 1:
		f.Action = v
	case slot == 2:
		f.Outcome = v
	case slot == 3:
		f.Patient = v
	}
	return true
}

// value scans a kept string value: plain ASCII or valid UTF-8 without escapes.
func (s *fieldScanner) value() (string, bool) {
	v, plain := s.str()
	if v == nil || !plain || !utf8.Valid(v) {
		return "", false
	}
	return string(v), true
}

func (s *fieldScanner) strings(dst *[]string) bool {
	if s.i >= len(s.b) || s.b[s.i] != '[' {
		return false
	}
	s.i++
	out := []string{}
	s.ws()
	if s.i < len(s.b) && s.b[s.i] == ']' {
		s.i++
		*dst = out
		return true
	}
	for {
		s.ws()
		if s.literal("null") {
			out = append(out, "")
		} else {
			v, ok := s.value()
			if !ok {
				return false
			}
			out = append(out, v)
		}
		s.ws()
		if s.i >= len(s.b) {
			return false
		}
		switch s.b[s.i] {
		case ',':
			s.i++
		case ']':
			s.i++
			*dst = out
			return true
		default:
			return false
		}
	}
}

// str scans a string and returns its raw contents (nil if it is not a valid string)
// and whether it has no escapes.
func (s *fieldScanner) str() ([]byte, bool) {
	if s.i >= len(s.b) || s.b[s.i] != '"' {
		return nil, false
	}
	start := s.i + 1
	plain := true
	for j := start; j < len(s.b); j++ {
		c := s.b[j]
		switch {
		case c == '"':
			s.i = j + 1
			return s.b[start:j:j], plain
		case c == '\\':
			plain = false
			j++
			if j >= len(s.b) {
				return nil, false
			}
			switch s.b[j] {
			case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
			case 'u':
				if j+4 >= len(s.b) {
					return nil, false
				}
				for k := j + 1; k <= j+4; k++ {
					if !isHexDigit(s.b[k]) {
						return nil, false
					}
				}
				j += 4
			default:
				return nil, false
			}
		case c < 0x20:
			return nil, false
		}
	}
	return nil, false
}

func isHexDigit(c byte) bool {
	return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F'
}

func (s *fieldScanner) literal(lit string) bool {
	if bytes.HasPrefix(s.b[s.i:], []byte(lit)) {
		s.i += len(lit)
		return true
	}
	return false
}

// skip scans any value, which it checks and drops.
func (s *fieldScanner) skip(depth int) bool {
	if depth > 1000 {
		return false
	}
	if s.i >= len(s.b) {
		return false
	}
	switch c := s.b[s.i]; {
	case c == '"':
		v, _ := s.str()
		return v != nil
	case c == '{' || c == '[':
		end := byte('}')
		if c == '[' {
			end = ']'
		}
		s.i++
		s.ws()
		if s.i < len(s.b) && s.b[s.i] == end {
			s.i++
			return true
		}
		for {
			s.ws()
			if c == '{' {
				if k, _ := s.str(); k == nil {
					return false
				}
				s.ws()
				if s.i >= len(s.b) || s.b[s.i] != ':' {
					return false
				}
				s.i++
				s.ws()
			}
			if !s.skip(depth + 1) {
				return false
			}
			s.ws()
			if s.i >= len(s.b) {
				return false
			}
			if s.b[s.i] == ',' {
				s.i++
				continue
			}
			if s.b[s.i] == end {
				s.i++
				return true
			}
			return false
		}
	case c == 't':
		return s.literal("true")
	case c == 'f':
		return s.literal("false")
	case c == 'n':
		return s.literal("null")
	default:
		return s.number()
	}
}

// number scans -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?
func (s *fieldScanner) number() bool {
	b, i := s.b, s.i
	if i < len(b) && b[i] == '-' {
		i++
	}
	digits := func() bool {
		st := i
		for i < len(b) && '0' <= b[i] && b[i] <= '9' {
			i++
		}
		return i > st
	}
	switch {
	case i < len(b) && b[i] == '0':
		i++
	case i < len(b) && '1' <= b[i] && b[i] <= '9':
		digits()
	default:
		return false
	}
	if i < len(b) && b[i] == '.' {
		i++
		if !digits() {
			return false
		}
	}
	if i < len(b) && (b[i] == 'e' || b[i] == 'E') {
		i++
		if i < len(b) && (b[i] == '+' || b[i] == '-') {
			i++
		}
		if !digits() {
			return false
		}
	}
	s.i = i
	return true
}

// foldsTo reports whether key equals one of names under encoding/json's case folding
// (Unicode simple folding, which maps K to the Kelvin sign and s to the long s too): a
// key that might is left to encoding/json.
func foldsTo(key []byte, names ...string) bool {
	for _, n := range names {
		if bytes.EqualFold(key, []byte(n)) {
			return true
		}
	}
	// Non-ASCII keys may fold to ASCII names (U+212A KELVIN SIGN is k, U+017F is s).
	for _, c := range key {
		if c >= 0x80 {
			return true
		}
	}
	return false
}
