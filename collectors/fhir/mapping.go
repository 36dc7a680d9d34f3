package fhir

import (
	"crypto/sha256"
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
	systemDCM           = "http://dicom.nema.org/resources/ontology/DCM"
	systemDCMOID        = "urn:oid:1.2.840.10008.2.16.4"
	systemRESTful       = "http://hl7.org/fhir/restful-interaction"
	systemResourceTypes = "http://hl7.org/fhir/resource-types"
	systemObjectRole    = "http://terminology.hl7.org/CodeSystem/object-role"
	systemV2IDType      = "http://terminology.hl7.org/CodeSystem/v2-0203"
	maxCodes            = 16
	maxCodeLen          = 128
	maxTextLen          = 256
	maxEntities         = 64
	maxDetailsPerEnty   = 16
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
	var h [2 * sha256.Size]byte
	hex.Encode(h[:], s[:])
	return string(h[:])
}

// mapper turns a decoded AuditEvent into a normalized event.
type mapper struct {
	tok    *audit.Tokenizer
	redact *audit.Redactor // for the sender's free text (outcome description); nil = off
}

// kindDigest is the tokenizer namespace of keyed digests of queries and entity details
// (the DICOM collector's namespace too): a plain SHA-256 would give short values away
// to anyone who hashes candidates.
const kindDigest = "dig"

// patientTok is one patient token and how it was found: strong from an identifier (an
// MRN with its system), weak from a Patient resource id, which is often not the MRN.
type patientTok struct {
	token  string
	strong bool
}

func (m mapper) patientToken(value, authority string, strong bool) patientTok {
	return patientTok{m.tok.PatientToken(value, authority), strong}
}

// eventState is what the entities contribute beyond ev's own fields.
type eventState struct {
	detail   map[string]string
	patients []patientTok
	object   string // the first data entity's resource type
	patObj   bool   // object came from a patient entity (a data entity replaces it)
	query    *node  // the first entity with a query
	errCode  string // from a contained OperationOutcome an entity points at
}

// event fills ev from the AuditEvent r. It never copies a patient identifier, name or
// birth date into ev: patients become tokens, entity queries and details keyed digests.
// The caller sets Received, Source.IP, Source.Transport and RawSHA256.
func (m mapper) event(r *node, ev *audit.Event) {
	ev.Source.Kind = audit.KindFHIR
	// 8: one map group, which holds the details of a typical event without growing.
	st := &eventState{detail: make(map[string]string, 8)}
	detail := st.detail
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
	for _, list := range [2][]coding{evCodes, subCodes} {
		for _, c := range list {
			if c.code == "" || len(ev.Codes) >= maxCodes {
				continue
			}
			ev.Codes = append(ev.Codes, audit.Code{System: shortSystem(c.system), Code: clip(c.code, maxCodeLen), Text: clip(c.display, maxTextLen)})
		}
	}
	switch a := r.str("action"); a {
	case "C", "R", "U", "D", "E":
		ev.ActionCode = a
	}
	action, defCode := classify(evCodes, subCodes, ev.ActionCode)
	interaction := restInteraction(evCodes, subCodes)

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
		for _, d := range out.all("detail") {
			if cs := codings(d); len(cs) > 0 && cs[0].code != "" {
				st.errCode = cs[0].code
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

	// Patient: R5 AuditEvent.patient, then patient agents and entities.
	if p := m.patientFromReference(r, r.get("patient")); p.token != "" {
		st.patients = append(st.patients, p)
	}
	m.actor(r, ev, detail, &st.patients)

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
		m.entity(r, e, i, ev, st)
	}

	// A search is a query: phi.query, unless a DICOM event code says otherwise (110112
	// stays dicom.query). A REST event with a query entity and no interaction is one too.
	if action == ActionOther && st.query != nil {
		action, defCode = audit.ActionPHIQuery, "E"
	}
	ev.Action = action
	if ev.ActionCode == "" {
		ev.ActionCode = defCode
	}
	ev.Object = st.object
	ev.Method = interactionMethod(interaction)
	ev.Endpoint = interactionEndpoint(interaction, st.object)
	if action == audit.ActionPHIQuery || action == audit.ActionDICOMQuery {
		m.queryScope(ev, st)
	}

	if len(st.patients) > 0 {
		ev.Patient, detail["patient.count"] = choosePatient(st.patients)
		if detail["patient.count"] == "" {
			delete(detail, "patient.count")
		}
	}
	if ev.Outcome != audit.OutcomeSuccess && st.errCode != "" {
		ev.ErrorCode = clip(st.errCode, maxCodeLen)
	}
	m.purpose(r, ev)
	if len(detail) > 0 {
		ev.Detail = detail
	}
}

// queryScope reads the query entity of a search: method and endpoint (identifiers
// replaced, parameter names only), the searched type as the object, the patients its
// parameters name (first, before the entities' patients), and the scope: "patient" when
// the query names one (or looks one up by name or birth date and the event names the
// patient found), "broad" otherwise. A query that cannot be read (HL7 v2, XML)
// is "patient" when a patient entity is present, "broad" when none is.
func (m mapper) queryScope(ev *audit.Event, st *eventState) {
	var qi queryInfo
	if st.query != nil {
		qi = m.parseQuery(decodeQuery(st.query.str("query")))
	}
	if !qi.parsed {
		if hasToken(st.patients) {
			ev.QueryScope = "patient"
		} else {
			ev.QueryScope = "broad"
		}
		return
	}
	ev.Method = qi.method
	if ev.Method == "" {
		ev.Method = "GET" // a bare URL
	}
	ev.Endpoint = qi.endpoint
	if qi.rtype != "" {
		ev.Object = qi.rtype
	}
	switch {
	case hasToken(qi.patients):
		ev.QueryScope = "patient"
		st.patients = append(qi.patients, st.patients...)
	case qi.demographic && hasToken(st.patients):
		// A demographics lookup (PDQm) with the patient it found as an entity.
		ev.QueryScope = "patient"
	default:
		ev.QueryScope = "broad"
	}
}

func hasToken(ps []patientTok) bool {
	for _, p := range ps {
		if p.token != "" {
			return true
		}
	}
	return false
}

// choosePatient is the event's patient: the first token found from an identifier, else
// the first from a resource id; and the number of distinct patients of that kind when
// more than one ("" otherwise). Tokens of the other kind are not counted: a resource id
// and an MRN of one patient give two tokens.
func choosePatient(ps []patientTok) (string, string) {
	strong := false
	for _, p := range ps {
		if p.token != "" && p.strong {
			strong = true
			break
		}
	}
	first := ""
	seen := make(map[string]struct{})
	for _, p := range ps {
		if p.token == "" || p.strong != strong {
			continue
		}
		if first == "" {
			first = p.token
		}
		seen[p.token] = struct{}{}
	}
	if len(seen) > 1 {
		return first, strconv.Itoa(len(seen))
	}
	return first, ""
}

// Purposes of use that mean emergency access (HL7 v3 ActReason): ETREAT emergency
// treatment, BTG break the glass; and DICOM 110127 Emergency Override Started.
var breakGlassCodes = map[string]bool{"ETREAT": true, "BTG": true}

// purpose sets ev.Purpose from R4 purposeOfEvent / R5 authorization and the agents'
// R4 purposeOfUse / R5 authorization (distinct codes, comma-separated, at most 4), and
// ev.BreakGlass when one of them, a security label of the event or an entity, or the
// event code (110127) says emergency access.
func (m mapper) purpose(r *node, ev *audit.Event) {
	var codes []string
	add := func(ns []*node) {
		for _, n := range ns {
			for _, c := range codings(n) {
				if c.code != "" && !has(codes, c.code) && len(codes) < 4 {
					codes = append(codes, clip(c.code, 32))
				}
				if breakGlassCodes[c.code] {
					ev.BreakGlass = true
				}
			}
		}
	}
	add(r.all("purposeOfEvent"))
	add(r.all("authorization"))
	for _, a := range r.all("agent") {
		add(a.all("purposeOfUse"))
		add(a.all("authorization"))
	}
	ev.Purpose = strings.Join(codes, ",")
	labels := r.get("meta").all("security")
	for _, e := range r.all("entity") {
		labels = append(labels, e.all("securityLabel")...)
	}
	for _, l := range labels {
		for _, c := range codings(l) {
			if breakGlassCodes[c.code] {
				ev.BreakGlass = true
			}
		}
	}
	for _, c := range ev.Codes {
		if c.System == "DCM" && c.Code == "110127" {
			ev.BreakGlass = true
		}
	}
}

// restInteraction is the first restful-interaction code of the event, or "".
func restInteraction(evCodes, subCodes []coding) string {
	for _, list := range [][]coding{subCodes, evCodes} {
		for _, c := range list {
			if c.system == systemRESTful && c.code != "" {
				return c.code
			}
		}
	}
	return ""
}

// Codes that mark an entity as the transport's request id (IHE BALP BasicAuditEntityType
// XrequestId), and identifier type texts that mean the same (R5's example-rest-create-traceid).
var requestIDTypes = map[string]bool{"XrequestId": true, "TraceID": true, "traceparent": true, "X-Request-Id": true}

func (m mapper) entity(r, e *node, i int, ev *audit.Event, st *eventState) {
	detail := st.detail
	pre := "entity." + strconv.Itoa(i)
	what := e.get("what")
	rtype := refType(what)
	ident := what.get("identifier")
	var idTypes []string
	for _, c := range codings(ident.get("type")) {
		idTypes = append(idTypes, c.code)
	}
	if t := ident.get("type").str("text"); t != "" {
		idTypes = append(idTypes, t)
	}
	var roles, types []string
	var resTypes []string
	for _, rl := range e.all("role") {
		for _, c := range codings(rl) {
			if c.system == "" || c.system == systemObjectRole {
				roles = append(roles, c.code)
			}
		}
	}
	for _, c := range codings(e.get("type")) {
		types = append(types, c.code)
		if c.system == systemResourceTypes {
			resTypes = append(resTypes, c.code)
		}
	}
	if rtype != "" {
		detail[pre+".what"] = clip(rtype, 64)
	}

	isRequestID := false
	for _, t := range append(append([]string(nil), types...), idTypes...) {
		isRequestID = isRequestID || requestIDTypes[t]
	}
	isQuery := has(roles, "24") || e.str("query") != ""
	isPatient := rtype == "Patient" || has(idTypes, "MR", "PI", "PT") || (has(roles, "1") && (len(types) == 0 || has(types, "1")))
	switch {
	case isRequestID:
		if v := strings.TrimSpace(ident.str("value")); v != "" && ev.CorrelationID == "" {
			ev.CorrelationID = clip(v, maxCodeLen)
		}
	case isPatient:
		if p := m.patientFromReference(r, what); p.token != "" {
			st.patients = append(st.patients, p)
		}
	case rtype == "ImagingStudy" || has(idTypes, "110180"):
		addStudy(m.tok, ev, studyUID(ident.str("value")))
	}
	if has(idTypes, "ACSN") && ev.Accession == "" {
		ev.Accession = m.tok.Token(audit.IDAccession, ident.str("value"))
	}
	m.entityExtensions(e, pre, ev, detail)

	// Object: the resource type of the first data entity (not the query, the request id
	// or an OperationOutcome); a patient entity's only until a data entity comes.
	if !isQuery && !isRequestID {
		typ := rtype
		if typ == "" && len(resTypes) > 0 && isResourceName(resTypes[0]) {
			typ = resTypes[0]
		}
		if typ == "" && has(idTypes, "110180") {
			typ = "ImagingStudy"
		}
		if typ == "" && isPatient {
			typ = "Patient"
		}
		if typ != "" && typ != "OperationOutcome" && (st.object == "" || (st.patObj && !isPatient)) {
			st.object, st.patObj = clip(typ, 64), isPatient
		}
	}
	if st.errCode == "" {
		st.errCode = containedIssueCode(r, what)
	}

	if q := e.str("query"); q != "" {
		if st.query == nil {
			st.query = e
		}
		detail[pre+".query_digest"] = m.tok.Token(kindDigest, string(decodeQuery(q)))
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
		if name := valueKey(d); name != "" && d.get(name).val != "" {
			v := d.get(name).val
			if name == "valueBase64Binary" {
				v = string(decodeQuery(v))
			}
			detail[k+".digest"] = m.tok.Token(kindDigest, v)
		}
	}
}

// containedIssueCode is the code of the first issue of a contained OperationOutcome
// that ref ("#id") points at: its details coding, else its IssueType code.
func containedIssueCode(r, ref *node) string {
	s := ref.str("reference")
	if !strings.HasPrefix(s, "#") {
		return ""
	}
	for _, c := range r.all("contained") {
		if c.str("resourceType") != "OperationOutcome" || c.str("id") != s[1:] {
			continue
		}
		for _, is := range c.all("issue") {
			for _, cd := range codings(is.get("details")) {
				if cd.code != "" {
					return cd.code
				}
			}
			if v := is.str("code"); v != "" {
				return v
			}
		}
	}
	return ""
}

// patientFromReference tokenizes the patient a Reference points at, with
// Tokenizer.PatientToken so that one MRN gets one token from every source. Preferred,
// because a Patient resource id is often not the MRN: the Reference's identifier (value
// and system); then a contained Patient ("#ref"): its MR identifier, else its first;
// then the logical id of "Patient/<id>" (absolute or relative, _history stripped).
func (m mapper) patientFromReference(r, ref *node) patientTok {
	if ref == nil {
		return patientTok{}
	}
	if id := ref.get("identifier"); id != nil && strings.TrimSpace(id.str("value")) != "" {
		return m.patientToken(id.str("value"), id.str("system"), true)
	}
	s := ref.str("reference")
	if strings.HasPrefix(s, "#") {
		for _, c := range r.all("contained") {
			if c.str("resourceType") != "Patient" || c.str("id") != s[1:] {
				continue
			}
			ids := c.all("identifier")
			for _, id := range ids {
				for _, cd := range codings(id.get("type")) {
					if cd.code == "MR" && id.str("value") != "" {
						return m.patientToken(id.str("value"), id.str("system"), true)
					}
				}
			}
			for _, id := range ids {
				if id.str("value") != "" {
					return m.patientToken(id.str("value"), id.str("system"), true)
				}
			}
		}
		return patientTok{}
	}
	if id := refID(s, "Patient"); id != "" {
		return m.patientToken(id, "", false)
	}
	return patientTok{}
}

// refType is the resource type a Reference points at: from reference ("Patient/1",
// "https://x/fhir/Patient/1/_history/2") or, failing that, its type element.
func refType(ref *node) string {
	if ref == nil {
		return ""
	}
	if typ, _, ok := refTail(ref.str("reference")); ok && isResourceName(typ) {
		return typ
	}
	t := ref.str("type")
	if i := strings.LastIndexByte(t, '/'); i >= 0 { // canonical URL of the type
		t = t[i+1:]
	}
	return t
}

// refID is the logical id of a reference to a resource of type typ, or "".
func refID(s, typ string) string {
	if t, id, ok := refTail(s); ok && t == typ {
		return id
	}
	return ""
}

// refTail splits a reference, without its query or fragment, into its last two path
// segments ("Patient", "1"), those before "_history/<v>" when it has four or more;
// ok is false for a single segment. (It slices s: no allocation, as strings.Split
// would make for every reference of every event.)
func refTail(s string) (typ, id string, ok bool) {
	if i := strings.IndexAny(s, "?#"); i >= 0 {
		s = s[:i]
	}
	segs := strings.Count(s, "/") + 1
	if segs >= 4 {
		i := strings.LastIndexByte(s, '/')
		j := strings.LastIndexByte(s[:i], '/')
		if s[j+1:i] == "_history" {
			s = s[:j]
			segs -= 2
		}
	}
	if segs < 2 {
		return "", "", false
	}
	i := strings.LastIndexByte(s, '/')
	j := strings.LastIndexByte(s[:i], '/') // -1: the first segment
	return s[j+1 : i], s[i+1:], true
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
			return audit.ActionPHIQuery, "E"
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
