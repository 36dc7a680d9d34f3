package hl7

import (
	"strconv"
	"strings"
	"time"

	"github.com/edgeaudit/edgeaudit/audit"
)

// Taxonomy actions used by this collector (docs/taxonomy.md).
const (
	ActionExchange    = audit.ActionHL7Exchange
	ActionOrderCreate = audit.ActionOrderCreate
	ActionReportSign  = audit.ActionReportSign
)

// Map fills ev from m. It sets Time, Source.Kind/App/Host, Action, ActionCode,
// Outcome, Actor, Patient, PatientAge, Study, Accession, CorrelationID, Codes and
// Detail; the caller sets Received, Source.IP/Transport and RawSHA256. Identifiers are
// replaced by tokens from tok; names, birth dates, addresses, phone numbers, OBX values
// and notes are never read into ev. loc is the zone of times without an offset.
func Map(ev *audit.Event, m *Message, tok *audit.Tokenizer, loc *time.Location, received time.Time) {
	msh := m.Segment("MSH")
	ev.Source.Kind = audit.KindHL7
	ev.Source.App = m.Component(msh.Field(3), 1)
	ev.Source.Host = m.Component(msh.Field(4), 1)
	detail := map[string]string{}
	put := func(k, v string) {
		if v != "" {
			detail[k] = v
		}
	}
	put("receiving_app", m.Component(msh.Field(5), 1))
	put("receiving_facility", m.Component(msh.Field(6), 1))
	msgType := m.Text(m.firstRep(msh.Field(9)))
	code, trigger := m.Component(msh.Field(9), 1), m.Component(msh.Field(9), 2)
	put("message_type", msgType)
	put("processing_id", m.Component(msh.Field(11), 1))
	put("version", m.Component(msh.Field(12), 1))
	put("charset", m.Charset)
	put("charset_note", m.CharsetNote)
	if m.Batch > 0 {
		put("batch_messages", strconv.Itoa(m.Batch))
	}
	ev.CorrelationID = m.Component(msh.Field(10), 1)
	ev.Codes = append(ev.Codes[:0], audit.Code{System: "HL7", Code: msgType})

	ev.Time = received
	if t, ok := parseDTM(m.Component(msh.Field(7), 1), loc); ok {
		ev.Time = t
	}

	// Action and action code, by message type (README "Taxonomy mapping").
	ev.Action = ActionExchange
	ev.Outcome = audit.OutcomeSuccess
	switch code {
	case "ADT":
		switch trigger {
		case "A01", "A04", "A05", "A28":
			ev.ActionCode = "C"
		case "A08", "A31":
			ev.ActionCode = "U"
		case "A23", "A29":
			ev.ActionCode = "D"
		}
	case "ORM", "OMG", "OMI":
		ev.ActionCode = "C"
		if m.Component(m.Field("ORC", 1), 1) == "NW" {
			ev.Action = ActionOrderCreate
		}
	case "QRY", "QBP":
		ev.ActionCode = "E"
	case "ORU":
		ev.ActionCode = "C"
		for _, obr := range m.All("OBR") {
			if m.Component(obr.Field(25), 1) == "F" {
				ev.Action = ActionReportSign
				break
			}
		}
	case "ACK":
		switch ack := m.Component(m.Field("MSA", 1), 1); ack {
		case "AE", "AR", "CE", "CR":
			ev.Outcome = audit.OutcomeMinorFailure
			put("ack_code", ack)
		case "":
		default:
			put("ack_code", ack)
		}
	}

	if evn := m.Segment("EVN"); evn != nil {
		put("event_type", m.Component(evn.Field(1), 1))
		// EVN-5 is an XCN: only the operator's ID (component 1) is kept, never the name.
		ev.Actor.User = m.Component(evn.Field(5), 1)
	}

	// Patient identifiers: PID-3, every repetition, as ID^^^authority.
	var pats []string
	if pid := m.Segment("PID"); pid != nil {
		for _, rep := range m.Reps(pid.Field(3)) {
			if t := tok.Token(audit.IDPatient, cxValue(m, rep)); t != "" {
				pats = appendUnique(pats, t)
			}
		}
		if len(pats) > 0 {
			ev.Patient = pats[0]
			put("patient_ids", strings.Join(pats, ","))
		}
		if dob, ok := parseDTM(m.Component(pid.Field(7), 1), time.UTC); ok {
			ev.PatientAge = audit.AgeBand(age(dob, ev.Time))
		}
	}
	// Prior identifiers of merges and id changes (A40, A47 ...).
	var prior []string
	for _, mrg := range m.All("MRG") {
		for _, rep := range m.Reps(mrg.Field(1)) {
			if t := tok.Token(audit.IDPatient, cxValue(m, rep)); t != "" {
				prior = appendUnique(prior, t)
			}
		}
	}
	put("prior_patient_ids", strings.Join(prior, ","))

	// Placer and filler order numbers: ORC-2/3, OBR-2/3 (EI, entity identifier).
	var orders []string
	for i := range m.Segments {
		s := &m.Segments[i]
		if s.ID != "ORC" && s.ID != "OBR" {
			continue
		}
		for _, n := range []int{2, 3} {
			if t := tok.Token(audit.IDOrder, m.Component(s.Field(n), 1)); t != "" {
				orders = appendUnique(orders, t)
			}
		}
	}
	put("order", strings.Join(orders, ","))

	// Accession: IPC-1 (v2.5.1+ imaging orders), else OBR-18 (IHE RAD SWF, v2.3.1).
	// Study Instance UID: IPC-3, else ZDS-1.
	var acc string
	var studies []string
	for _, ipc := range m.All("IPC") {
		if acc == "" {
			acc = m.Component(ipc.Field(1), 1)
		}
		if t := tok.Token(audit.IDStudy, m.Component(ipc.Field(3), 1)); t != "" {
			studies = appendUnique(studies, t)
		}
	}
	if acc == "" {
		for _, obr := range m.All("OBR") {
			if acc = m.Component(obr.Field(18), 1); acc != "" {
				break
			}
		}
	}
	ev.Accession = tok.Token(audit.IDAccession, acc)
	for _, zds := range m.All("ZDS") {
		if t := tok.Token(audit.IDStudy, m.Component(zds.Field(1), 1)); t != "" {
			studies = appendUnique(studies, t)
		}
	}
	ev.Study = studies
	if len(detail) > 0 {
		ev.Detail = detail
	}
}

// cxValue is the identity of a CX: "ID^^^authority", or "ID" without an authority. The
// authority (an HD) keeps its sub-components joined by '&'.
func cxValue(m *Message, rep []byte) string {
	id := strings.TrimSpace(m.Component(rep, 1))
	if id == "" {
		return ""
	}
	if auth := strings.TrimSpace(m.Component(rep, 4)); auth != "" {
		return id + "^^^" + auth
	}
	return id
}

func appendUnique(list []string, s string) []string {
	for _, x := range list {
		if x == s {
			return list
		}
	}
	return append(list, s)
}

// parseDTM reads an HL7 DTM/TS value YYYY[MM[DD[HH[MM[SS[.S{1,4}]]]]]][+/-ZZZZ]. A value
// without an offset is read in loc. The result is UTC.
func parseDTM(s string, loc *time.Location) (time.Time, bool) {
	s = strings.TrimSpace(s)
	zone := ""
	if i := strings.IndexAny(s, "+-"); i >= 0 {
		s, zone = s[:i], s[i:]
	}
	frac := ""
	if i := strings.IndexByte(s, '.'); i >= 0 {
		s, frac = s[:i], s[i+1:]
	}
	if len(s) < 4 || len(s) > 14 || len(s)%2 != 0 || !digits(s) || len(frac) > 4 || !digits(frac) {
		return time.Time{}, false
	}
	n := func(i, j, def int) int {
		if len(s) < j {
			return def
		}
		v, _ := strconv.Atoi(s[i:j])
		return v
	}
	year, month, day := n(0, 4, 0), n(4, 6, 1), n(6, 8, 1)
	hour, minute, sec := n(8, 10, 0), n(10, 12, 0), n(12, 14, 0)
	if month < 1 || month > 12 || day < 1 || day > 31 || hour > 23 || minute > 59 || sec > 59 {
		return time.Time{}, false
	}
	nsec := 0
	if frac != "" {
		f, _ := strconv.Atoi(frac)
		for i := len(frac); i < 9; i++ {
			f *= 10
		}
		nsec = f
	}
	if zone != "" {
		if len(zone) != 5 || !digits(zone[1:]) {
			return time.Time{}, false
		}
		zh, _ := strconv.Atoi(zone[1:3])
		zm, _ := strconv.Atoi(zone[3:5])
		if zh > 14 || zm > 59 {
			return time.Time{}, false
		}
		off := zh*3600 + zm*60
		if zone[0] == '-' {
			off = -off
		}
		loc = time.FixedZone("", off)
	}
	t := time.Date(year, time.Month(month), day, hour, minute, sec, nsec, loc)
	if t.Day() != day {
		return time.Time{}, false // 31 February and the like
	}
	return t.UTC(), true
}

func digits(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}

// age is the age in whole years at time at of someone born at dob, or -1 when dob is
// after at.
func age(dob, at time.Time) int {
	if dob.After(at) {
		return -1
	}
	y := at.Year() - dob.Year()
	if at.Month() < dob.Month() || at.Month() == dob.Month() && at.Day() < dob.Day() {
		y--
	}
	return y
}
