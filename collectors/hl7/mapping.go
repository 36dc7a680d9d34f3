package hl7

import (
	"strconv"
	"strings"
	"time"

	"github.com/edgeaudit/edgeaudit/audit"
)

// Map fills ev from m. It sets Time, Source.Kind/App/Host, Action, ActionCode,
// Outcome, Actor, Patient, PatientAge, Study, Accession, CorrelationID, Object,
// QueryScope, ErrorCode, Count, Codes and Detail; the caller sets Received,
// Source.IP/Transport and RawSHA256. Identifiers are replaced by tokens from tok;
// patients' names, birth dates, addresses, phone numbers, query values, OBX values and
// notes are never read into ev, nor are staff names (only staff IDs). loc is the zone
// of times without an offset.
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
	ev.Object = structure(m, msh)

	ev.Time = received
	if t, ok := parseDTM(m.Component(msh.Field(7), 1), loc); ok {
		ev.Time = t
	}

	// Action, action code, object and who acted, by message type (README "Taxonomy
	// mapping"; docs/taxonomy.md).
	ev.Action = ActionExchange
	ev.Outcome = audit.OutcomeSuccess
	actors := defaultActors
	set := func(a action) { ev.Action, ev.ActionCode = a.name, a.code }
	switch {
	case code == "ADT":
		if a, ok := adtAction(trigger); ok {
			set(a)
			ev.Object = ObjectPatient
		}
		if trigger == "A19" { // QRY^A19 is the query; ADT^A19 (v2.3) is its response
			ev.Object = ObjectPatient
		}
	case code == "SIU" || code == "SRM":
		if a, ok := scheduleAction(trigger); ok {
			set(a)
		}
		ev.Object = ObjectAppointment
		actors = scheduleActors
	case isOrderMessage(code):
		ev.Object = ObjectOrder
		actors = orderActors
		var controls []string
		for _, orc := range m.All("ORC") {
			if c := safeCode(m.Component(orc.Field(1), 1)); c != "" && len(c) <= 2 {
				controls = appendUnique(controls, c)
			}
		}
		first := ""
		if len(controls) > 0 {
			first = controls[0]
		}
		a, failed := orderAction(first)
		set(a)
		if failed {
			ev.Outcome = audit.OutcomeMinorFailure
			ev.ErrorCode = first
		}
		put("order_control", strings.Join(controls, ","))
		// ORC-18 entering device: the terminal or PC the order was entered on.
		ev.Source.Workstation = safeCode(m.Component(m.Field("ORC", 18), 1))
	case code == "ORU" || code == "OUL":
		ev.Object = ObjectResult
		actors = resultActors
		best, bestRank, obx := "", rankNone, false
		var statuses []string
		for _, obr := range m.All("OBR") {
			st := m.Component(obr.Field(25), 1)
			if st == "" {
				continue
			}
			statuses = appendUnique(statuses, safeCode(st))
			if r := resultRank(st, false); r > bestRank {
				best, bestRank = st, r
			}
		}
		if best == "" { // no OBR-25: the observations' OBX-11 say it
			for _, x := range m.All("OBX") {
				st := m.Component(x.Field(11), 1)
				if st == "" {
					continue
				}
				statuses = appendUnique(statuses, safeCode(st))
				if r := resultRank(st, true); r > bestRank {
					best, bestRank, obx = st, r, true
				}
			}
		}
		if a, ok := resultAction(best, obx); ok {
			set(a)
		} else {
			ev.ActionCode = "C"
		}
		put("result_status", strings.Join(statuses, ","))
	case code == "MDM":
		ev.Object = ObjectDocument
		completion := safeCode(m.Component(m.Field("TXA", 17), 1))
		a, signed := documentAction(trigger, completion)
		set(a)
		actors = documentActors
		if signed {
			actors = signActors
		}
		put("completion_status", completion)
		put("document_type", safeCode(m.Component(m.Field("TXA", 2), 1)))
	case code == "QBP" || code == "QRY" || code == "VXQ":
		ev.Action, ev.ActionCode = ActionQuery, "E"
		ev.Object = ObjectPatient
		q := readQuery(m, tok.PatientToken)
		ev.QueryScope = q.scope
		if q.scope == ScopePatient {
			ev.Patient = q.patient[0]
		} else if len(q.patient) > 0 {
			put("patient_ids", strings.Join(q.patient, ","))
		}
		put("query_fields", strings.Join(q.fields, ","))
		put("query_name", q.name)
		put("query_tag", q.tag)
	}

	// Acknowledgements and responses (ACK, RSP, ORR ...): MSA-1 gives the outcome, ERR
	// (or MSA-6) the source's error code.
	if msa := m.Segment("MSA"); msa != nil {
		switch ack := m.Component(msa.Field(1), 1); ack {
		case AckError, AckReject, AckCommitError, AckCommitReject:
			ev.Outcome = audit.OutcomeMinorFailure
			put("ack_code", ack)
			if ec := errorCode(m); ec != "" {
				ev.ErrorCode = ec
			}
		case "":
		default:
			put("ack_code", safeCode(ack))
		}
		put("ack_control_id", safeCode(m.Component(msa.Field(2), 1)))
	}
	if qak := m.Segment("QAK"); qak != nil {
		put("query_tag", safeCode(m.Component(qak.Field(1), 1)))
		put("query_status", safeCode(m.Component(qak.Field(2), 1)))
	}

	if evn := m.Segment("EVN"); evn != nil {
		put("event_type", m.Component(evn.Field(1), 1))
	}
	if id, role, nameOnly := pickActor(m, actors); id != "" {
		ev.Actor.User, ev.Actor.Role = id, role
	} else {
		put("actor_name_only", nameOnly)
	}

	// Patient identifiers: PID-3 of every PID segment (an RSP lists each patient
	// found), every repetition, by ID and assigning authority.
	var pats []string
	pids := m.All("PID")
	for _, pid := range pids {
		for _, rep := range m.Reps(pid.Field(3)) {
			if t := cxToken(m, tok, rep); t != "" {
				pats = appendUnique(pats, t)
			}
		}
	}
	if len(pats) > 0 {
		if ev.Patient == "" {
			ev.Patient = pats[0]
		}
		put("patient_ids", strings.Join(pats, ","))
	}
	if len(pids) > 0 {
		if dob, ok := parseDTM(m.Component(pids[0].Field(7), 1), time.UTC); ok {
			ev.PatientAge = audit.AgeBand(age(dob, ev.Time))
		}
		if code == "RSP" {
			ev.Count = len(pids)
			ev.Object = ObjectPatient
		}
	}
	// Prior identifiers of merges and id changes (A40, A47 ...).
	var prior []string
	for _, mrg := range m.All("MRG") {
		for _, rep := range m.Reps(mrg.Field(1)) {
			if t := cxToken(m, tok, rep); t != "" {
				prior = appendUnique(prior, t)
			}
		}
	}
	put("prior_patient_ids", strings.Join(prior, ","))

	// Placer and filler order numbers: ORC-2/3, OBR-2/3, TXA-14/15 (EI, entity
	// identifier).
	var orders []string
	for i := range m.Segments {
		s := &m.Segments[i]
		var fields []int
		switch s.ID {
		case "ORC", "OBR":
			fields = []int{2, 3}
		case "TXA":
			fields = []int{14, 15}
		case "SCH":
			fields = []int{26, 27} // placer/filler order number of the appointment
		default:
			continue
		}
		for _, n := range fields {
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

// errorCode is the source's own code of a failure answered in m: ERR-3.1 (v2.5+, HL7
// table 0357), else ERR-1.4.1 (v2.3 ELD), else MSA-6.1.
func errorCode(m *Message) string {
	for _, e := range m.All("ERR") {
		if c := safeCode(m.Component(e.Field(3), 1)); c != "" {
			return c
		}
		if c := safeCode(m.SubComponent(e.Field(1), 4, 1)); c != "" {
			return c
		}
	}
	return safeCode(m.Component(m.Field("MSA", 6), 1))
}

// cxToken is the patient token of a CX: CX.1 the ID, CX.4 (an HD, sub-components joined
// by '&') the assigning authority, through Tokenizer.PatientToken so that the same
// patient has the same token from every source.
func cxToken(m *Message, tok *audit.Tokenizer, rep []byte) string {
	id := strings.TrimSpace(m.Component(rep, 1))
	if id == "" {
		return ""
	}
	return tok.PatientToken(id, strings.TrimSpace(m.Component(rep, 4)))
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
