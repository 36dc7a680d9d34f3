package syslog

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"strconv"
	"strings"
	"time"

	gosyslog "github.com/leodido/go-syslog/v4"
	"github.com/leodido/go-syslog/v4/rfc3164"
	"github.com/leodido/go-syslog/v4/rfc5424"

	"github.com/edgeaudit/edgeaudit/audit"
)

var errNoTimestamp = errors.New("rfc3164: no timestamp")

// ActionLog is the taxonomy code of a syslog message that classify cannot place better.
const ActionLog = audit.ActionSystemLog

// facilities are the RFC 5427 keywords, as go-syslog names them (13 is "security", the
// "log audit" facility).
var facilities = [24]string{
	"kern", "user", "mail", "daemon", "auth", "syslog", "lpr", "news",
	"uucp", "cron", "authpriv", "ftp", "ntp", "security", "console", "cron2",
	"local0", "local1", "local2", "local3", "local4", "local5", "local6", "local7",
}

var severities = [8]string{"emerg", "alert", "crit", "err", "warning", "notice", "info", "debug"}

// parser turns frames into events. It owns one go-syslog machine per format; those are
// not safe for concurrent use, so each connection and each UDP reader has its own parser.
type parser struct {
	rfc5424 gosyslog.Machine
	rfc3164 gosyslog.Machine
	loc     *time.Location // the zone RFC 3164 timestamps are read in

	tok      *audit.Tokenizer // for DICOM audit messages (dicom.go); may be nil
	dicomErr string           // reason of the last frame's DICOM failure, "" if none
	redact   *audit.Redactor  // free-text redaction rules; nil = off
}

func newParser(loc *time.Location) *parser {
	if loc == nil {
		loc = time.UTC
	}
	return &parser{
		rfc5424: rfc5424.NewParser(rfc5424.WithBestEffort()),
		rfc3164: rfc3164.NewParser(
			rfc3164.WithBestEffort(),
			// Year 0 marks a BSD timestamp; inferYear places it per message. WithYear
			// alone would fix the year once, when the parser is built, which is wrong
			// for a connection that stays open across New Year.
			rfc3164.WithYear(rfc3164.Year{YYYY: 0}),
			rfc3164.WithRFC3339(),
			rfc3164.WithSecondFractions(),
			rfc3164.WithLenientDay(),
			// Our framing already delimits the message, so an LF inside it is content.
			rfc3164.WithEmbeddedNewlines(),
			rfc3164.WithOptionalPriority(),
		),
		loc: loc,
	}
}

// resetEvent clears ev for the next message, keeping its Detail map to reuse: Sink.Append
// does not keep the event after it returns.
func resetEvent(ev *audit.Event, transport, ip string) {
	d := ev.Detail
	clear(d)
	*ev = audit.Event{Detail: d}
	ev.Source.Kind = audit.KindSyslog
	ev.Source.Transport = transport
	ev.Source.IP = ip
}

// parse fills ev (already reset) from one frame. It reports false for a frame that is
// empty once trailers are trimmed; such frames are skipped, not kept.
func (p *parser) parse(ev *audit.Event, frame []byte, recv time.Time) bool {
	p.dicomErr = ""
	msg := trimFrame(frame)
	if len(msg) == 0 {
		return false
	}
	sum := sha256.Sum256(frame)
	ev.RawSHA256 = hex.EncodeToString(sum[:])
	ev.Received = recv
	ev.Time = recv
	ev.Outcome = audit.OutcomeUnknown

	var (
		m   gosyslog.Message
		err error
	)
	if is5424(msg) {
		m, err = p.rfc5424.Parse(msg)
	} else {
		m, err = p.rfc3164.Parse(msg)
	}
	var base *gosyslog.Base
	var sd *map[string]map[string]string
	switch m := m.(type) {
	case *rfc5424.SyslogMessage:
		if m != nil {
			base, sd = &m.Base, m.StructuredData
		}
	case *rfc3164.SyslogMessage:
		if m != nil {
			base = &m.Base
			if base.Timestamp == nil && err == nil {
				// go-syslog accepts some inputs ("<181>00", "<0>1990 Oct ...") as valid
				// while recovering nothing after the PRI. A BSD header always has a
				// timestamp, so without one the frame is kept whole as malformed.
				err = errNoTimestamp
			}
		}
	}
	if base != nil && err != nil && !validPRI(msg) {
		// A best-effort parse of a broken PRI ("<19000021>") reads a wrong one; keep
		// nothing it recovered rather than a misleading facility.
		base = nil
	}
	if base != nil {
		src := &ev.Source
		if base.Facility != nil && int(*base.Facility) < len(facilities) {
			src.Facility = facilities[*base.Facility]
		}
		if base.Severity != nil && int(*base.Severity) < len(severities) {
			src.Severity = severities[*base.Severity]
		}
		src.Host = deref(base.Hostname)
		src.App = deref(base.Appname)
		src.ProcID = deref(base.ProcID)
		src.MsgID = deref(base.MsgID)
	}
	if base == nil || err != nil {
		// Not valid RFC 5424/3164, but kept: whatever header fields the best-effort parse
		// recovered help to find the sender, and the whole frame is the message so that
		// nothing is lost. The time is ours, since the sender's could not be read.
		ev.Malformed = true
		ev.Message = string(msg)
		classify(ev)
		p.redactMalformedDICOM(ev, msg)
		p.redactText(ev)
		return true
	}
	if base.Timestamp != nil {
		ts := *base.Timestamp
		if ts.Year() == 0 {
			ts = inferYear(ts, recv, p.loc)
		}
		ev.Time = ts.UTC()
	}
	if base.Message != nil {
		ev.Message = strings.TrimPrefix(*base.Message, "\uFEFF")
	}
	if sd != nil && len(*sd) > 0 {
		if ev.Detail == nil {
			ev.Detail = make(map[string]string, 4)
		}
		for id, params := range *sd {
			if len(params) == 0 {
				ev.Detail["sd."+id] = "" // the element's presence is information too
				continue
			}
			for k, v := range params {
				ev.Detail["sd."+id+"."+k] = v
			}
		}
	}
	classify(ev)
	p.parseDICOM(ev)
	p.redactText(ev)
	return true
}

// classify sets the taxonomy code. Every syslog message is system.log for now; the
// mapping of known senders and message IDs to finer codes belongs here, in one place.
func classify(ev *audit.Event) {
	ev.Action = ActionLog
	if ev.Malformed {
		return
	}
	for _, r := range authRules {
		if ev.Source.App != r.app {
			continue
		}
		if strings.HasPrefix(ev.Message, r.prefix) {
			ev.Action, ev.ActionCode, ev.Outcome = r.action, "E", r.outcome
			if user := wordAfter(ev.Message, r.userAfter); user != "" {
				ev.Actor.User = user
			}
			return
		}
	}
}

// authRule classifies OpenSSH's login and logout lines, so that a login (or a failed
// one) gets the same action as a DICOM 110114/110122 or a FHIR login event. The rest of
// syslog stays system.log with its text as evidence.
type authRule struct {
	app       string // program (APP-NAME / TAG)
	prefix    string // start of the message
	action    string
	outcome   string
	userAfter string // the user name is the word after this
}

var authRules = []authRule{
	{app: "sshd", prefix: "Accepted ", action: audit.ActionLogin, outcome: audit.OutcomeSuccess, userAfter: " for "},
	{app: "sshd", prefix: "Failed password for ", action: audit.ActionLogin, outcome: audit.OutcomeMinorFailure, userAfter: " for "},
	{app: "sshd", prefix: "Invalid user ", action: audit.ActionLogin, outcome: audit.OutcomeMinorFailure, userAfter: "Invalid user "},
	{app: "sshd", prefix: "Disconnected from user ", action: audit.ActionLogout, outcome: audit.OutcomeSuccess, userAfter: "from user "},
}

// wordAfter returns the word following marker in s ("" when absent).
func wordAfter(s, marker string) string {
	if marker == "" {
		return ""
	}
	i := strings.Index(s, marker)
	if i < 0 {
		return ""
	}
	rest := s[i+len(marker):]
	rest = strings.TrimPrefix(rest, "invalid user ")
	if j := strings.IndexByte(rest, ' '); j >= 0 {
		rest = rest[:j]
	}
	return rest
}

// is5424 reports whether b starts like RFC 5424: "<PRI>" then a VERSION of 1–3 digits
// and a space. Anything else goes to the RFC 3164 parser, which also takes the
// PRI-less, RFC 3339-stamped and Cisco variants seen in the field.
func is5424(b []byte) bool {
	if len(b) < 5 || b[0] != '<' {
		return false
	}
	i := 1
	for i < len(b) && i <= 3 && isDigit(b[i]) {
		i++
	}
	if i == 1 || i >= len(b) || b[i] != '>' {
		return false
	}
	i++
	start := i
	for i < len(b) && i-start < 3 && isDigit(b[i]) {
		i++
	}
	return i > start && i < len(b) && b[i] == ' '
}

// validPRI reports whether b starts with "<PRI>", PRI 0–191 without leading zeros.
func validPRI(b []byte) bool {
	if len(b) < 3 || b[0] != '<' {
		return false
	}
	v, i := 0, 1
	for ; i < len(b) && i <= 3 && isDigit(b[i]); i++ {
		v = v*10 + int(b[i]-'0')
	}
	return i > 1 && i < len(b) && b[i] == '>' && v <= 191 && (i == 2 || b[1] != '0')
}

// trimFrame drops trailing CR, LF and NUL (trailers some senders add inside the frame)
// and the 1–3 spaces some senders put before "<PRI>" on LF-framed streams. A frame of
// nothing but blanks is empty.
func trimFrame(b []byte) []byte {
	for len(b) > 0 {
		switch b[len(b)-1] {
		case '\n', '\r', 0:
			b = b[:len(b)-1]
			continue
		}
		break
	}
	i := 0
	for i < len(b) && (b[i] == ' ' || b[i] == '\t') {
		i++
	}
	if i == len(b) {
		return b[:0]
	}
	if i > 0 && b[i] == '<' {
		b = b[i:]
	}
	return b
}

// inferYear places a BSD timestamp, which has no year or zone, in loc and in the latest
// year that does not put it more than a day after now: usually the current year, the
// previous one for a December message read in January, the next one for a sender whose
// clock passed New Year's midnight before ours.
func inferYear(ts, now time.Time, loc *time.Location) time.Time {
	limit := now.Add(24 * time.Hour)
	y := now.In(loc).Year()
	for year := y + 1; year >= y-8; year-- {
		t := time.Date(year, ts.Month(), ts.Day(), ts.Hour(), ts.Minute(), ts.Second(), ts.Nanosecond(), loc)
		if t.Day() != ts.Day() {
			continue // Feb 29 outside a leap year
		}
		if !t.After(limit) {
			return t
		}
	}
	return time.Date(y, ts.Month(), ts.Day(), ts.Hour(), ts.Minute(), ts.Second(), ts.Nanosecond(), loc)
}

func deref(s *string) string {
	if s == nil {
		return ""
	}
	return *s
}

// DetailRedacted counts the identifiers that redaction replaced by tokens in Message.
const DetailRedacted = "redacted"

// redactText runs the site's redaction rules over the text of a syslog event: generic
// syslog text is evidence and stays, but identifiers in it become tokens before the
// event is stored.
func (p *parser) redactText(ev *audit.Event) {
	if p.redact == nil {
		return
	}
	if ev.Source.Kind == audit.KindDICOM && ev.Reason != "" {
		// EventOutcomeDescription is the sender's free text: it may name a patient.
		ev.Reason, _ = p.redact.Redact(ev.Reason)
		return
	}
	if ev.Source.Kind != audit.KindSyslog || ev.Message == "" {
		return
	}
	msg, n := p.redact.Redact(ev.Message)
	if n == 0 {
		return
	}
	ev.Message = msg
	if ev.Detail == nil {
		ev.Detail = make(map[string]string, 1)
	}
	ev.Detail[DetailRedacted] = strconv.Itoa(n)
}
