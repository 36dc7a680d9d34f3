package syslog

import (
	"cmp"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

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
		m    gosyslog.Message
		err  error
		base *gosyslog.Base
		sd   *map[string]map[string]string
		fb   gosyslog.Base
	)
	if is5424(msg) {
		if f, ok := parseFast5424(string(msg)); ok {
			fb.Facility, fb.Severity, fb.Timestamp = &f.facility, &f.severity, &f.ts
			fb.Hostname, fb.Appname, fb.ProcID, fb.MsgID = optStr(&f.host), optStr(&f.app), optStr(&f.procID), optStr(&f.msgID)
			if f.hasMsg {
				fb.Message = &f.msg
			}
			base = &fb
		} else {
			m, err = p.rfc5424.Parse(msg)
		}
	} else {
		m, err = p.rfc3164.Parse(msg)
	}
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
	var who actorFacts
	if sd != nil && len(*sd) > 0 {
		who = p.structuredData(ev, *sd)
	}
	classify(ev)
	p.parseDICOM(ev)
	if ev.Source.Kind == audit.KindSyslog {
		who.fromMessage(ev.Message)
		who.apply(ev)
	}
	p.redactText(ev)
	if ev.Source.Kind == audit.KindSyslog && ev.Patient == "" {
		ev.Patient = patientInText(ev.Message)
	}
	return true
}

// Actor rules for syslog (issue 7 item 1), in order of precedence:
//  1. sshd's own lines (authRules): the user named there.
//  2. RFC 5424 structured data: the first parameter, by SD-ID then parameter name in
//     byte order, whose name (case-insensitive) is a user parameter (userParams) gives
//     actor.user; role parameters actor.role, session parameters actor.session,
//     workstation parameters source.workstation.
//  3. MSG: key=value or key="value" pairs with the same names (a key is a whole word: the
//     "uid" of "patient_uid=" is not one), the best key in userParams order winning; PAM
//     lines (logname= ... ruser= ... user=) name the requesting user in ruser, else
//     logname, and the target in user, so there ruser/logname win.
//  4. MSG phrases "for user X", "by user X", `user "X"` / `user 'X'`.
//  5. A uid= pair (numeric ids are the weakest hint).
// Patient identifiers are never taken as actors: patient parameters (patientParams) of
// structured data are tokenized instead, and in MSG they are the redactor's.

// userParams are the names of user parameters, best first.
var userParams = []string{"user", "username", "user_name", "userid", "user_id", "usr", "login", "account", "acct"}

var (
	roleParams        = map[string]bool{"role": true, "user_role": true, "userrole": true}
	sessionParams     = map[string]bool{"session": true, "session_id": true, "sessionid": true, "sid": true, "ses": true}
	workstationParams = map[string]bool{"workstation": true, "workstation_id": true, "station": true}
)

// phiParams are structured-data parameter names (lower case) whose values identify a
// patient, with their token kind. Their values are replaced by tokens in detail and
// the first patient id becomes the event's patient. "pid" is not among them: RFC 5424
// senders and journald use it for the process id.
var phiParams = map[string]string{
	"patientid": audit.IDPatient, "patient_id": audit.IDPatient, "patient-id": audit.IDPatient,
	"patid": audit.IDPatient, "pat_id": audit.IDPatient, "mrn": audit.IDPatient, "patient": audit.IDPatient,
	"patientname": audit.IDName, "patient_name": audit.IDName, "patient-name": audit.IDName,
	"dob": audit.IDBirthDate, "birthdate": audit.IDBirthDate, "birth_date": audit.IDBirthDate,
	"patientbirthdate": audit.IDBirthDate,
	"accession":        audit.IDAccession, "accessionnumber": audit.IDAccession,
	"accession_number": audit.IDAccession, "accession-number": audit.IDAccession,
}

// actorFacts collects the actor candidates of one message.
type actorFacts struct {
	user, role, session, workstation string // from structured data
	userRank                         int    // index in userParams of user's parameter
	msgUser, msgRole, msgSession     string
	msgRank                          int
	msgUID                           string
}

// maxActorValue bounds a user, role or session taken from a message.
const maxActorValue = 128

// structuredData copies the structured data into detail as sd.<id>.<param>, tokenizing
// patient parameters, and returns the actor candidates it names. Where two parameters
// compete, the better user name wins, then the smaller SD-ID and parameter name, so the
// choice does not depend on map order.
func (p *parser) structuredData(ev *audit.Event, sd map[string]map[string]string) actorFacts {
	if ev.Detail == nil {
		ev.Detail = make(map[string]string, 4)
	}
	who := actorFacts{userRank: len(userParams) + 1}
	var userAt, roleAt, sessionAt, wsAt [2]string // SD-ID and parameter of each choice
	better := func(at *[2]string, have bool, id, k string) bool {
		if have && (id > at[0] || id == at[0] && k > at[1]) {
			return false
		}
		*at = [2]string{id, k}
		return true
	}
	for id, params := range sd {
		if len(params) == 0 {
			ev.Detail["sd."+id] = "" // the element's presence is information too
			continue
		}
		for k, v := range params {
			lk := strings.ToLower(k)
			if kind, ok := phiParams[lk]; ok {
				if t := p.phiToken(kind, v); t != "" {
					ev.Detail["sd."+id+"."+k] = t
				} // else no tokenizer: the value is not kept
				continue
			}
			ev.Detail["sd."+id+"."+k] = v
			v = actorValue(v)
			if v == "" {
				continue
			}
			if r := sdUserRank(lk); r >= 0 && (r < who.userRank || r == who.userRank && better(&userAt, true, id, k)) {
				who.user, who.userRank, userAt = v, r, [2]string{id, k}
			}
			switch {
			case roleParams[lk] && better(&roleAt, who.role != "", id, k):
				who.role = v
			case sessionParams[lk] && better(&sessionAt, who.session != "", id, k):
				who.session = v
			case workstationParams[lk] && better(&wsAt, who.workstation != "", id, k):
				who.workstation = v
			}
		}
	}
	// The patient and accession tokens: the first parameter in SD-ID and name order.
	var patAt, accAt [2]string
	for id, params := range sd {
		for k := range params {
			kind, ok := phiParams[strings.ToLower(k)]
			if !ok || (kind != audit.IDPatient && kind != audit.IDAccession) {
				continue
			}
			t := ev.Detail["sd."+id+"."+k]
			if t == "" {
				continue
			}
			switch {
			case kind == audit.IDPatient && better(&patAt, ev.Patient != "", id, k):
				ev.Patient = t
			case kind == audit.IDAccession && better(&accAt, ev.Accession != "", id, k):
				ev.Accession = t
			}
		}
	}
	return who
}

// sdUserRank is the rank of a structured-data user parameter (userParams order, then
// uid), -1 for other names.
func sdUserRank(lk string) int {
	if lk == "uid" {
		return len(userParams)
	}
	return slices.Index(userParams, lk)
}

// phiToken tokenizes a patient parameter; "" without a tokenizer or value.
func (p *parser) phiToken(kind, v string) string {
	if p.tok == nil {
		return ""
	}
	if kind == audit.IDPatient {
		return p.tok.PatientToken(strings.TrimSpace(v), "")
	}
	return p.tok.Token(kind, v)
}

// actorValue cleans a candidate user, role or session: trimmed, bounded, and "" for
// the placeholders senders write when there is none.
func actorValue(v string) string {
	v = strings.TrimSpace(v)
	switch v {
	case "-", "(null)", "(none)", "?", `""`:
		return ""
	}
	if len(v) > maxActorValue {
		v = v[:maxActorValue]
		for len(v) > 0 && !utf8.ValidString(v) {
			v = v[:len(v)-1]
		}
	}
	return v
}

// fromMessage finds user, role and session pairs and user phrases in MSG.
func (w *actorFacts) fromMessage(msg string) {
	w.msgRank = len(userParams)
	if msg == "" || len(msg) > 8192 {
		return
	}
	var ruser, logname string
	for i := strings.IndexByte(msg, '='); i >= 0; {
		key, val, next := pairAt(msg, i)
		if lk := strings.ToLower(key); lk != "" {
			if val = actorValue(val); val != "" {
				if r := slices.Index(userParams, lk); r >= 0 && r < w.msgRank {
					w.msgUser, w.msgRank = val, r
				}
				switch {
				case lk == "ruser" && ruser == "":
					ruser = val
				case lk == "logname" && logname == "":
					logname = val
				case lk == "uid" && w.msgUID == "":
					w.msgUID = val
				case roleParams[lk] && w.msgRole == "":
					w.msgRole = val
				case sessionParams[lk] && w.msgSession == "":
					w.msgSession = val
				}
			}
		}
		if next >= len(msg) {
			break
		}
		j := strings.IndexByte(msg[next:], '=')
		if j < 0 {
			break
		}
		i = next + j
	}
	switch {
	case ruser != "":
		w.msgUser = ruser
	case logname != "":
		w.msgUser = logname
	case w.msgUser == "":
		w.msgUser = userPhrase(msg)
	}
}

// pairAt reads the key=value pair whose '=' is at msg[i]: the key is the whole word
// before it (letters, digits, '_', '-', '.'), the value a quoted string or the text up
// to a blank or one of ,;)]}>&. The scan goes on right after the '=', so pairs inside a
// quoted value (auditd's msg='op=login acct="jdoe" ...') are found too.
func pairAt(msg string, i int) (key, val string, next int) {
	k := i
	for k > 0 && isKeyByte(msg[k-1]) {
		k--
	}
	key = msg[k:i]
	j := i + 1
	if j < len(msg) && (msg[j] == '"' || msg[j] == '\'') {
		q := msg[j]
		end := strings.IndexByte(msg[j+1:], q)
		if end < 0 {
			return key, "", j
		}
		return key, msg[j+1 : j+1+end], j
	}
	end := j
	for end < len(msg) && !strings.ContainsRune(" \t\r\n,;)]}>&", rune(msg[end])) {
		end++
	}
	return key, strings.TrimRight(msg[j:end], "."), j
}

func isKeyByte(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-' || c == '.'
}

// userPhrase finds "for user X", "by user X" or `user "X"` in msg.
func userPhrase(msg string) string {
	for _, marker := range []string{"for user ", "by user ", "user \"", "user '"} {
		i := strings.Index(msg, marker)
		if i < 0 || (i > 0 && isKeyByte(msg[i-1])) {
			continue
		}
		rest := msg[i+len(marker):]
		q := marker[len(marker)-1]
		if q != '"' && q != '\'' && rest != "" && (rest[0] == '"' || rest[0] == '\'') {
			q, rest = rest[0], rest[1:]
		}
		var v string
		if q == '"' || q == '\'' {
			if end := strings.IndexByte(rest, q); end >= 0 {
				v = actorValue(rest[:end])
			}
		} else {
			end := 0
			for end < len(rest) && (isKeyByte(rest[end]) || rest[end] == '@' || rest[end] == '\\') {
				end++
			}
			v = actorValue(strings.TrimRight(rest[:end], "."))
		}
		if v != "" {
			return v
		}
	}
	return ""
}

// apply sets the actor by the precedence above; what sshd's rule set stays.
func (w *actorFacts) apply(ev *audit.Event) {
	if ev.Actor.User == "" {
		switch {
		case w.user != "":
			ev.Actor.User = w.user
		case w.msgUser != "":
			ev.Actor.User = w.msgUser
		default:
			ev.Actor.User = w.msgUID
		}
	}
	if ev.Actor.Role == "" {
		ev.Actor.Role = cmp.Or(w.role, w.msgRole)
	}
	if ev.Actor.Session == "" {
		ev.Actor.Session = cmp.Or(w.session, w.msgSession)
	}
	if ev.Source.Workstation == "" {
		ev.Source.Workstation = w.workstation
	}
}

// patientInText returns the first patient token that redaction put into msg: the
// redactor tokenizes "PatientID=..." and its kin, so the event carries the same patient
// token as the HL7, DICOM and FHIR events of that patient.
func patientInText(msg string) string {
	const prefix = audit.IDPatient + "_"
	for off := 0; off < len(msg); {
		i := strings.Index(msg[off:], prefix)
		if i < 0 {
			return ""
		}
		i += off
		end := i + len(prefix) + audit.TokenLen
		if end <= len(msg) && (i == 0 || !isKeyByte(msg[i-1])) && (end == len(msg) || !isKeyByte(msg[end])) &&
			audit.IsToken(audit.IDPatient, msg[i:end]) {
			return msg[i:end]
		}
		off = i + len(prefix)
	}
	return ""
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

// optStr is s, or nil for "" (a NILVALUE field, as go-syslog gives it).
func optStr(s *string) *string {
	if *s == "" {
		return nil
	}
	return s
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
