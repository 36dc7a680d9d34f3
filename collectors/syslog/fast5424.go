package syslog

import (
	"time"
	"unicode/utf8"
)

// fast5424 is an RFC 5424 header read by parseFast5424.
type fast5424 struct {
	facility, severity       uint8
	ts                       time.Time
	host, app, procID, msgID string // "" for the NILVALUE "-"
	msg                      string
	hasMsg                   bool
}

// parseFast5424 reads the common shape of an RFC 5424 message (what loggen, rsyslog's
// RSYSLOG_SyslogProtocol23Format and most senders write) without go-syslog, which costs
// about half of the parse and most of its allocations: one string conversion of the
// message is shared by every field. It reports false for anything else, and the caller
// then uses go-syslog, so it only has to be right where it says yes:
//
//	<PRI>1 SP TIMESTAMP SP HOSTNAME SP APP-NAME SP PROCID SP MSGID SP "-" [SP MSG]
//
// with PRI 0–191 without a leading zero, a full RFC 3339 timestamp (year 2 or later, 1–6 fraction
// digits, "Z" or ±hh:mm, a real calendar date, seconds below 60), header fields of
// PRINTUSASCII within RFC 5424's lengths, no structured data, and a non-empty MSG that
// is valid UTF-8. FuzzParseFast5424 checks that go-syslog reads the same from every
// message it accepts.
func parseFast5424(s string) (f fast5424, ok bool) {
	if len(s) < 2 || s[0] != '<' {
		return f, false
	}
	pri, i := 0, 1
	for ; i < len(s) && i <= 3 && isDigit(s[i]); i++ {
		pri = pri*10 + int(s[i]-'0')
	}
	if i == 1 || i >= len(s) || s[i] != '>' || pri > 191 || (i > 2 && s[1] == '0') {
		return f, false
	}
	f.facility, f.severity = uint8(pri/8), uint8(pri%8)
	s = s[i+1:]
	if len(s) < 2 || s[0] != '1' || s[1] != ' ' {
		return f, false
	}
	s = s[2:]
	var n int
	if f.ts, n, ok = fastTimestamp(s); !ok || n >= len(s) || s[n] != ' ' {
		return f, false
	}
	s = s[n+1:]
	for _, fld := range [...]struct {
		dst *string
		max int
	}{{&f.host, 255}, {&f.app, 48}, {&f.procID, 128}, {&f.msgID, 32}} {
		j := 0
		for j < len(s) && j <= fld.max && s[j] >= 33 && s[j] <= 126 {
			j++
		}
		if j == 0 || j > fld.max || j >= len(s) || s[j] != ' ' {
			return f, false
		}
		if v := s[:j]; v != "-" {
			*fld.dst = v
		}
		s = s[j+1:]
	}
	// structured data: only the NILVALUE
	if len(s) == 0 || s[0] != '-' {
		return f, false
	}
	s = s[1:]
	if len(s) == 0 {
		return f, true
	}
	if s[0] != ' ' || len(s) == 1 || !utf8.ValidString(s[1:]) {
		return f, false
	}
	f.msg, f.hasMsg = s[1:], true
	return f, true
}

// fastTimestamp reads "YYYY-MM-DDThh:mm:ss[.f{1,6}](Z|±hh:mm)" at the start of s.
func fastTimestamp(s string) (time.Time, int, bool) {
	if len(s) < 20 || s[4] != '-' || s[7] != '-' || s[10] != 'T' || s[13] != ':' || s[16] != ':' {
		return time.Time{}, 0, false
	}
	num := func(a, b int) int {
		v := 0
		for k := a; k < b; k++ {
			if !isDigit(s[k]) {
				return -1
			}
			v = v*10 + int(s[k]-'0')
		}
		return v
	}
	year, month, day := num(0, 4), num(5, 7), num(8, 10)
	hour, min, sec := num(11, 13), num(14, 16), num(17, 19)
	// Years 0 and 1 go to go-syslog: the caller reads year 0 in the sender's own offset
	// as "no year" (RFC 3164 style), and a UTC result could move it across year 0.
	if year < 2 || month < 1 || month > 12 || day < 1 || day > 31 || hour < 0 || hour > 23 ||
		min < 0 || min > 59 || sec < 0 || sec > 59 {
		return time.Time{}, 0, false
	}
	i, nsec := 19, 0
	if s[i] == '.' {
		i++
		start := i
		for i < len(s) && isDigit(s[i]) {
			i++
		}
		digits := i - start
		if digits < 1 || digits > 6 {
			return time.Time{}, 0, false
		}
		nsec = num(start, i)
		for range 9 - digits {
			nsec *= 10
		}
	}
	if i >= len(s) {
		return time.Time{}, 0, false
	}
	offset := 0
	switch s[i] {
	case 'Z':
		i++
	case '+', '-':
		if i+6 > len(s) || s[i+3] != ':' {
			return time.Time{}, 0, false
		}
		oh, om := num(i+1, i+3), num(i+4, i+6)
		if oh < 0 || oh > 23 || om < 0 || om > 59 {
			return time.Time{}, 0, false
		}
		offset = oh*3600 + om*60
		if s[i] == '-' {
			offset = -offset
		}
		i += 6
	default:
		return time.Time{}, 0, false
	}
	t := time.Date(year, time.Month(month), day, hour, min, sec, nsec, time.UTC)
	if t.Day() != day { // 31 April, 29 February of a common year
		return time.Time{}, 0, false
	}
	return t.Add(-time.Duration(offset) * time.Second), i, true
}
