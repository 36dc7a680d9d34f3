package hl7

import "strings"

// Query scopes (audit.Event.QueryScope).
const (
	ScopePatient = "patient"
	ScopeBroad   = "broad"
)

// maxQueryFields bounds detail.query_fields.
const maxQueryFields = 16

// queryResult is what a query names, without its values.
type queryResult struct {
	scope   string
	patient []string // tokens of the patient identifiers named
	fields  []string // demographic parameters by field name (PID.5.1.1), never values
	name    string   // QPD-1.1, the query's name (conformance statement), or QRD-9.1
	tag     string   // QPD-2 query tag
}

// readQuery reads a QBP (QPD) or QRY (QRD) query; patientToken is
// Tokenizer.PatientToken. A query that names exactly one
// patient identifier, without wildcards, has scope "patient" and that patient's token;
// any other (demographics only, wildcards, several or no patients) is "broad". Values
// are never kept: identifiers become tokens and demographic parameters (names, birth
// dates, addresses) are named by field only.
//
//   - QPD-3 as QIP repetitions "@PID.3.1^12345" (IHE PDQ ITI-21, QBP^Q22/ZV1): the
//     identifier is @PID.3.1 (or @PID.3, @PID.2.1), its authority @PID.3.4 (or the HD
//     rebuilt from @PID.3.4.1..3, as CX.4 reads: "HOSP&1.2.3&ISO"); every parameter's
//     field name goes to fields.
//   - QPD-3 as a CX "12345^^^AUTH" (IHE PIX ITI-9 QBP^Q23, and Q21 Get Person
//     Demographics): the identifier is the CX.
//   - QRD-8 who subject filter (QRY^A19, QRY^Qnn): XCN.1 is the patient identifier.
func readQuery(m *Message, patientToken func(value, authority string) string) queryResult {
	var q queryResult
	var ids []string
	addID := func(id, auth string) {
		id = strings.TrimSpace(id)
		if id == "" {
			return
		}
		if hasWildcard(id) {
			ids = append(ids, "") // names no one patient
			return
		}
		ids = append(ids, patientToken(id, auth))
	}
	if qpd := m.Segment("QPD"); qpd != nil {
		q.name = safeCode(m.Component(qpd.Field(1), 1))
		q.tag = safeCode(m.Component(qpd.Field(2), 1))
		reps := m.Reps(qpd.Field(3))
		if len(reps) > 0 && strings.HasPrefix(m.Component(reps[0], 1), "@") {
			var idVals []string
			var auth string
			var hd [3]string // @PID.3.4.1..3: the authority's HD, rebuilt as CX.4 reads
			for _, rep := range reps {
				name := strings.TrimPrefix(strings.TrimSpace(m.Component(rep, 1)), "@")
				if !isFieldPath(name) {
					continue
				}
				if len(q.fields) < maxQueryFields {
					q.fields = appendUnique(q.fields, name)
				}
				v := m.Component(rep, 2)
				switch name {
				case "PID.3.1", "PID.3", "PID.2.1", "PID.2":
					idVals = append(idVals, v)
				case "PID.3.4":
					auth = v
				case "PID.3.4.1", "PID.3.4.2", "PID.3.4.3":
					hd[name[len(name)-1]-'1'] = strings.TrimSpace(v)
				}
			}
			if auth == "" {
				auth = strings.TrimRight(strings.Join(hd[:], "&"), "&")
			}
			for _, v := range idVals {
				addID(v, auth)
			}
		} else if trig := m.Component(m.Field("MSH", 9), 2); trig == "Q21" || trig == "Q23" || strings.Contains(strings.ToUpper(q.name), "PIX") {
			for _, rep := range reps {
				addID(m.Component(rep, 1), m.Component(rep, 4))
				break // QPD-3 is not repeating in ITI-9; a second value is not read
			}
		}
	}
	if qrd := m.Segment("QRD"); qrd != nil && len(ids) == 0 {
		if q.name == "" {
			q.name = safeCode(m.Component(qrd.Field(9), 1))
		}
		for _, rep := range m.Reps(qrd.Field(8)) {
			addID(m.Component(rep, 1), m.Component(rep, 9))
		}
	}
	q.scope = ScopeBroad
	if len(ids) == 1 && ids[0] != "" {
		q.scope = ScopePatient
	}
	for _, t := range ids {
		if t != "" {
			q.patient = appendUnique(q.patient, t)
		}
	}
	return q
}

// hasWildcard reports whether an identifier asks for more than one exact value.
func hasWildcard(s string) bool { return strings.ContainsAny(s, "*%?") || strings.EqualFold(s, "ALL") }

// isFieldPath reports whether s is a segment field path such as PID.5.1.1 (so that
// nothing but a field name is ever kept from a query parameter).
func isFieldPath(s string) bool {
	if len(s) < 5 || len(s) > 20 || !isSegID([]byte(s[:3])) || s[3] != '.' {
		return false
	}
	prevDot := true
	for i := 4; i < len(s); i++ {
		switch c := s[i]; {
		case c >= '0' && c <= '9':
			prevDot = false
		case c == '.' && !prevDot:
			prevDot = true
		default:
			return false
		}
	}
	return !prevDot
}

// safeCode keeps a short code (a query name or tag, a completion status) when it holds
// nothing but letters, digits and a few separators; else "".
func safeCode(s string) string {
	s = strings.TrimSpace(s)
	if len(s) > 64 {
		return ""
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; !(isAlnum(c) || c == ' ' || c == '_' || c == '-' || c == '.') {
			return ""
		}
	}
	return s
}
