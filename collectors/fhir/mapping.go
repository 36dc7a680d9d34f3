package fhir

import (
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"strconv"
	"strings"
	"time"

	"github.com/edgeaudit/edgeaudit/audit"
)

// Taxonomy actions (docs/taxonomy.md, audit/taxonomy.go). DICOM codes in type/subtype
// or category/code are mapped by audit.DICOMAction, exactly as in DICOM audit XML.
const (
	ActionLogin         = audit.ActionLogin
	ActionLogout        = audit.ActionLogout
	ActionPHIView       = audit.ActionPHIView
	ActionPHIExport     = audit.ActionPHIExport
	ActionDICOMQuery    = audit.ActionDICOMQuery
	ActionDICOMStore    = audit.ActionDICOMStore
	ActionDICOMMove     = audit.ActionDICOMMove
	ActionOrderCreate   = audit.ActionOrderCreate
	ActionRBACChange    = audit.ActionRBACChange
	ActionSecurityAlert = audit.ActionSecurityAlert
	ActionOther         = audit.ActionFHIROther
	ActionPHICreate     = audit.ActionPHICreate
	ActionPHIUpdate     = audit.ActionPHIUpdate
	ActionPHIDelete     = audit.ActionPHIDelete
	ActionPHIImport     = audit.ActionPHIImport
	ActionAppStart      = audit.ActionAppStart
	ActionAppStop       = audit.ActionAppStop
)

// Code systems recognized by the mapping.
const (
	systemDCM         = "http://dicom.nema.org/resources/ontology/DCM"
	systemDCMOID      = "urn:oid:1.2.840.10008.2.16.4"
	systemRESTful     = "http://hl7.org/fhir/restful-interaction"
	systemObjectRole  = "http://terminology.hl7.org/CodeSystem/object-role"
	systemV2IDType    = "http://terminology.hl7.org/CodeSystem/v2-0203"
	maxCodes          = 16
	maxCodeLen        = 128
	maxTextLen        = 256
	maxEntities       = 64
	maxDetailsPerEnty = 16
)

// severities maps R5 AuditEvent.severity (audit-event-severity) to syslog keywords.
var severities = map[string]string{
	"emergency": "emerg", "alert": "alert", "critical": "crit", "error": "err",
	"warning": "warning", "notice": "notice", "informational": "info", "debug": "debug",
}

type coding struct{ system, code, display string }

// codings returns the Codings of n, which may be a Coding or a CodeableConcept.
func codings(n *node) []coding {
	if n == nil {
		return nil
	}
	if cs := n.all("coding"); len(cs) > 0 {
		out := make([]coding, 0, len(cs))
		for _, c := range cs {
			out = append(out, coding{c.str("system"), c.str("code"), c.str("display")})
		}
		return out
	}
	if n.get("code") != nil || n.get("system") != nil {
		return []coding{{n.str("system"), n.str("code"), n.str("display")}}
	}
	return nil
}

// conceptText is the text of a Coding or CodeableConcept: text, else the first
// display, else the first code.
func conceptText(n *node) string {
	if t := n.str("text"); t != "" {
		return t
	}
	for _, c := range codings(n) {
		if c.display != "" {
			return c.display
		}
	}
	for _, c := range codings(n) {
		if c.code != "" {
			return c.code
		}
	}
	return ""
}

func isDCM(system string) bool {
	return system == systemDCM || system == systemDCMOID || system == "DCM"
}

// shortSystem is the system as stored in ev.Codes: "DCM" for DICOM, so FHIR and DICOM
// audit events carry the same code pairs.
func shortSystem(system string) string {
	if isDCM(system) {
		return "DCM"
	}
	return clip(system, maxCodeLen)
}

func clip(s string, n int) string {
	if len(s) <= n {
		return s
	}
	// Cut on a rune boundary.
	for n > 0 && n < len(s) && s[n]&0xC0 == 0x80 {
		n--
	}
	return s[:n]
}

func sha256Hex(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// mapper turns a decoded AuditEvent into a normalized event.
type mapper struct {
	tok    *audit.Tokenizer
	redact *audit.Redactor // for the sender's free text (outcome description); nil = off
}

// event fills ev from the AuditEvent r. It never copies a patient identifier, name or
// birth date into ev: patients become tokens, entity queries and details become hashes.
// The caller sets Received, Source.IP, Source.Transport and RawSHA256.
func (m mapper) event(r *node, ev *audit.Event) {
	ev.Source.Kind = audit.KindFHIR
	detail := make(map[string]string)
	r5 := isR5(r)
	if r5 {
		detail["fhir.version"] = "R5"
	} else {
		detail["fhir.version"] = "R4"
	}
	if id := r.str("id"); id != "" {
		detail["fhir.id"] = clip(id, 64)
	}

	// Event codes: R4 type/subtype, R5 category/code. Both are read whatever the version,
	// since real senders mix them and R5's own examples swap category and code.
	var evCodes, subCodes []coding
	evCodes = append(evCodes, codings(r.get("type"))...)
	for _, c := range r.all("category") {
		evCodes = append(evCodes, codings(c)...)
	}
	for _, c := range r.all("subtype") {
		subCodes = append(subCodes, codings(c)...)
	}
	for _, c := range r.all("code") {
		subCodes = append(subCodes, codings(c)...)
	}
	for _, c := range append(append([]coding(nil), evCodes...), subCodes...) {
		if c.code == "" || len(ev.Codes) >= maxCodes {
			continue
		}
		ev.Codes = append(ev.Codes, audit.Code{System: shortSystem(c.system), Code: clip(c.code, maxCodeLen), Text: clip(c.display, maxTextLen)})
	}
	switch a := r.str("action"); a {
	case "C", "R", "U", "D", "E":
		ev.ActionCode = a
	}
	action, defCode := classify(evCodes, subCodes, ev.ActionCode)
	ev.Action = action
	if ev.ActionCode == "" {
		ev.ActionCode = defCode
	}

	// R5 severity is the syslog severity spelled out; keep the syslog keyword.
	ev.Source.Severity = severities[r.str("severity")]

	// Outcome.
	out := r.get("outcome")
	var oc, reason string
	if out != nil && out.get("code") != nil { // R5 backbone
		if cs := codings(out.get("code")); len(cs) > 0 {
			oc = cs[0].code
		}
		for _, d := range out.all("detail") {
			if reason = conceptText(d); reason != "" {
				break
			}
		}
	} else if out != nil {
		oc = out.val
		reason = r.str("outcomeDesc")
	}
	ev.Outcome = mapOutcome(oc)
	ev.Reason = clip(strings.TrimSpace(reason), maxTextLen)
	if m.redact != nil && ev.Reason != "" {
		// The outcome description is the sender's free text: it may name a patient.
		ev.Reason, _ = m.redact.Redact(ev.Reason)
	}

	// Time: when it happened, else when it was recorded.
	for _, s := range []string{
		r.get("period").str("start"), r.get("occurredPeriod").str("start"),
		r.str("occurredDateTime"), r.str("recorded"),
	} {
		if t, ok := parseInstant(s); ok {
			ev.Time = t
			break
		}
	}

	// Patient: R5 AuditEvent.patient, then patient entities.
	var patients []string
	if p := m.patientFromReference(r, r.get("patient")); p != "" {
		patients = append(patients, p)
	}

	// Agents: the requestor is the actor; without one, the first agent (Actor.Requestor
	// then stays false).
	agents := r.all("agent")
	var actor *node
	for _, a := range agents {
		if a.str("requestor") == "true" {
			actor = a
			break
		}
	}
	if actor == nil && len(agents) > 0 {
		actor = agents[0]
	}
	if a := actor; a != nil {
		who := a.get("who")
		if refType(who) == "Patient" {
			// A patient acting (portal access): the patient is tokenized, never the actor.
			if p := m.patientFromReference(r, who); p != "" {
				patients = append(patients, p)
			}
			ev.Actor.Role = "patient"
		} else {
			ev.Actor.User = clip(firstNonEmpty(who.get("identifier").str("value"), who.str("display"), who.str("reference")), maxTextLen)
		}
		ev.Actor.Requestor = a.str("requestor") == "true"
		if ev.Actor.Role == "" {
			for _, rl := range a.all("role") {
				if ev.Actor.Role = conceptText(rl); ev.Actor.Role != "" {
					break
				}
			}
		}
		if ev.Actor.Role == "" {
			ev.Actor.Role = conceptText(a.get("type"))
		}
		ev.Actor.Role = clip(ev.Actor.Role, maxTextLen)
		if nw := firstNonEmpty(a.get("network").str("address"), a.str("networkString"), a.str("networkUri"),
			a.get("networkReference").str("display")); nw != "" {
			detail["actor.network"] = clip(nw, maxTextLen)
		}
	}

	// Source.
	src := r.get("source")
	obs := src.get("observer")
	ev.Source.App = clip(firstNonEmpty(obs.str("display"), obs.get("identifier").str("value"), obs.str("reference")), maxTextLen)
	if o := firstNonEmpty(obs.get("identifier").str("value"), obs.str("reference")); o != "" && o != ev.Source.App {
		detail["source.observer"] = clip(o, maxTextLen)
	}
	if site := src.get("site"); site != nil {
		ev.Source.Host = clip(firstNonEmpty(site.val, site.str("display"), site.get("identifier").str("value"), site.str("reference")), maxTextLen)
	}

	// Entities.
	for i, e := range r.all("entity") {
		if i >= maxEntities {
			detail["entity.dropped"] = strconv.Itoa(len(r.all("entity")) - maxEntities)
			break
		}
		m.entity(r, e, i, ev, detail, &patients)
	}
	if len(patients) > 0 {
		ev.Patient = patients[0]
		if n := countDistinct(patients); n > 1 {
			detail["patient.count"] = strconv.Itoa(n)
		}
	}
	if len(detail) > 0 {
		ev.Detail = detail
	}
}

func (m mapper) entity(r, e *node, i int, ev *audit.Event, detail map[string]string, patients *[]string) {
	pre := "entity." + strconv.Itoa(i)
	what := e.get("what")
	rtype := refType(what)
	ident := what.get("identifier")
	var idTypes []string
	for _, c := range codings(ident.get("type")) {
		idTypes = append(idTypes, c.code)
	}
	var roles, types []string
	for _, rl := range e.all("role") {
		for _, c := range codings(rl) {
			if c.system == "" || c.system == systemObjectRole {
				roles = append(roles, c.code)
			}
		}
	}
	for _, c := range codings(e.get("type")) {
		types = append(types, c.code)
	}
	if rtype != "" {
		detail[pre+".what"] = clip(rtype, 64)
	}
	switch {
	case rtype == "Patient" || has(idTypes, "MR", "PI", "PT") || (has(roles, "1") && (len(types) == 0 || has(types, "1"))):
		if p := m.patientFromReference(r, what); p != "" {
			*patients = append(*patients, p)
		}
	case rtype == "ImagingStudy" || has(idTypes, "110180"):
		if uid := studyUID(ident.str("value")); uid != "" {
			t := m.tok.Token(audit.IDStudy, uid)
			if !has(ev.Study, t) {
				ev.Study = append(ev.Study, t)
			}
		}
	}
	if has(idTypes, "ACSN") && ev.Accession == "" {
		ev.Accession = m.tok.Token(audit.IDAccession, ident.str("value"))
	}
	if q := e.str("query"); q != "" {
		raw, err := base64.StdEncoding.DecodeString(q)
		if err != nil {
			raw = []byte(q)
		}
		detail[pre+".query_sha256"] = sha256Hex(raw)
	}
	for j, d := range e.all("detail") {
		if j >= maxDetailsPerEnty {
			break
		}
		typ := d.str("type")
		if typ == "" {
			typ = conceptText(d.get("type"))
		}
		k := pre + ".detail." + strconv.Itoa(j)
		if typ != "" {
			detail[k+".type"] = clip(typ, 64)
		}
		for name, vs := range d.kids {
			if strings.HasPrefix(name, "value") && len(vs) > 0 && vs[0].val != "" {
				v := []byte(vs[0].val)
				if name == "valueBase64Binary" {
					if raw, err := base64.StdEncoding.DecodeString(vs[0].val); err == nil {
						v = raw
					}
				}
				detail[k+".sha256"] = sha256Hex(v)
				break
			}
		}
	}
}

// patientFromReference tokenizes the patient a Reference points at: the logical id of
// "Patient/<id>" (absolute or relative, _history stripped), the identifier of a
// contained Patient ("#ref"), or the Reference's identifier as system|value.
func (m mapper) patientFromReference(r, ref *node) string {
	if ref == nil {
		return ""
	}
	s := ref.str("reference")
	if strings.HasPrefix(s, "#") {
		for _, c := range r.all("contained") {
			if c.str("resourceType") == "Patient" && c.str("id") == s[1:] {
				if id := c.get("identifier"); id != nil {
					return m.tok.Token(audit.IDPatient, systemValue(id))
				}
			}
		}
	} else if id := refID(s, "Patient"); id != "" {
		return m.tok.Token(audit.IDPatient, id)
	}
	if id := ref.get("identifier"); id != nil && id.str("value") != "" {
		return m.tok.Token(audit.IDPatient, systemValue(id))
	}
	return ""
}

func systemValue(id *node) string {
	v := id.str("value")
	if v == "" {
		return ""
	}
	if s := id.str("system"); s != "" {
		return s + "|" + v
	}
	return v
}

// refType is the resource type a Reference points at: from reference ("Patient/1",
// "https://x/fhir/Patient/1/_history/2") or, failing that, its type element.
func refType(ref *node) string {
	if ref == nil {
		return ""
	}
	s := ref.str("reference")
	if i := strings.IndexAny(s, "?#"); i >= 0 {
		s = s[:i]
	}
	parts := strings.Split(s, "/")
	if len(parts) >= 4 && parts[len(parts)-2] == "_history" {
		parts = parts[:len(parts)-2]
	}
	if len(parts) >= 2 && isResourceName(parts[len(parts)-2]) {
		return parts[len(parts)-2]
	}
	t := ref.str("type")
	if i := strings.LastIndexByte(t, '/'); i >= 0 { // canonical URL of the type
		t = t[i+1:]
	}
	return t
}

// refID is the logical id of a reference to a resource of type typ, or "".
func refID(s, typ string) string {
	if i := strings.IndexAny(s, "?#"); i >= 0 {
		s = s[:i]
	}
	parts := strings.Split(s, "/")
	if len(parts) >= 4 && parts[len(parts)-2] == "_history" {
		parts = parts[:len(parts)-2]
	}
	if len(parts) >= 2 && parts[len(parts)-2] == typ {
		return parts[len(parts)-1]
	}
	return ""
}

func isResourceName(s string) bool {
	if s == "" || s[0] < 'A' || s[0] > 'Z' {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9') {
			return false
		}
	}
	return true
}

// studyUID strips the URI forms of a DICOM UID.
func studyUID(v string) string {
	v = strings.TrimSpace(v)
	for _, p := range []string{"urn:oid:", "urn:dicom:uid:"} {
		if strings.HasPrefix(strings.ToLower(v), p) {
			return v[len(p):]
		}
	}
	return v
}

func isR5(r *node) bool {
	if r.get("category") != nil || r.get("code") != nil || r.get("occurredDateTime") != nil || r.get("occurredPeriod") != nil {
		return true
	}
	if o := r.get("outcome"); o != nil && o.get("code") != nil {
		return true
	}
	return false
}

// mapOutcome maps audit-event-outcome (0/4/8/12, also spelled success/minor/serious/
// major) and, as R5's own example does, issue-severity codes.
func mapOutcome(code string) string {
	switch strings.ToLower(code) {
	case "0", "success", "information":
		return audit.OutcomeSuccess
	case "4", "minor", "warning":
		return audit.OutcomeMinorFailure
	case "8", "serious", "error":
		return audit.OutcomeSeriousFailure
	case "12", "major", "fatal":
		return audit.OutcomeMajorFailure
	}
	return audit.OutcomeUnknown
}

// classify returns the taxonomy action and the action code to use when the event has
// none. DICOM event IDs win (R4 type codes are DICOM EventIDs); then RESTful
// interaction codes; everything else is fhir.other.
func classify(evCodes, subCodes []coding, action string) (string, string) {
	all := append(append([]coding(nil), evCodes...), subCodes...)
	dcmEvent := ""
	for _, list := range [][]coding{evCodes, subCodes} {
		for _, c := range list {
			if isDCM(c.system) && dicomEvent(c.code) {
				dcmEvent = c.code
				break
			}
		}
		if dcmEvent != "" {
			break
		}
	}
	if dcmEvent != "" {
		var types []string
		for _, c := range all {
			if isDCM(c.system) && c.code != dcmEvent {
				types = append(types, c.code)
			}
		}
		return audit.DICOMAction(dcmEvent, types, action), audit.DICOMActionCode(dcmEvent, action)
	}
	for _, c := range all {
		if c.system != systemRESTful {
			continue
		}
		switch c.code {
		case "read", "vread", "history-instance":
			return ActionPHIView, "R"
		case "search", "search-type", "search-system", "search-compartment":
			return ActionPHIView, "E"
		case "create":
			return ActionPHICreate, "C"
		case "update", "patch":
			return ActionPHIUpdate, "U"
		case "delete":
			return ActionPHIDelete, "D"
		}
	}
	return ActionOther, ""
}

func dicomEvent(code string) bool {
	if code == "110122" || code == "110123" {
		return true // type codes used as EventID, seen in the wild
	}
	n, err := strconv.Atoi(code)
	return err == nil && n >= 110100 && n <= 110114
}

// parseInstant reads a FHIR instant or a dateTime with at least a time of day; partial
// dates ("2013", "2013-06") are not precise enough to be an event time.
func parseInstant(s string) (time.Time, bool) {
	if len(s) < len("2006-01-02T15:04:05Z") {
		return time.Time{}, false
	}
	t, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		return time.Time{}, false
	}
	return t.UTC(), true
}

func firstNonEmpty(s ...string) string {
	for _, v := range s {
		if v = strings.TrimSpace(v); v != "" {
			return v
		}
	}
	return ""
}

func has(list []string, want ...string) bool {
	for _, s := range list {
		for _, w := range want {
			if s == w {
				return true
			}
		}
	}
	return false
}

func countDistinct(s []string) int {
	seen := make(map[string]struct{}, len(s))
	for _, v := range s {
		seen[v] = struct{}{}
	}
	return len(seen)
}
