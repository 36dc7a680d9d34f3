package dicom

import (
	"bytes"
	"encoding/base64"
	"fmt"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/edgeaudit/edgeaudit/audit"
)

// Actions this package produces: the shared taxonomy (audit/taxonomy.go), so that a
// DICOM code means the same whether it came as DICOM XML or in a FHIR AuditEvent.
const (
	ActionAppStart       = audit.ActionAppStart
	ActionAppStop        = audit.ActionAppStop
	ActionAppActivity    = audit.ActionAppActivity
	ActionAuditLogUsed   = audit.ActionAuditLogUsed
	ActionStore          = audit.ActionDICOMStore
	ActionMove           = audit.ActionDICOMMove
	ActionPHIView        = audit.ActionPHIView
	ActionPHICreate      = audit.ActionPHICreate
	ActionPHIUpdate      = audit.ActionPHIUpdate
	ActionPHIDelete      = audit.ActionPHIDelete
	ActionStudyDelete    = audit.ActionDICOMDelete
	ActionExport         = audit.ActionPHIExport
	ActionImport         = audit.ActionPHIImport
	ActionNetworkAttach  = audit.ActionNetworkAttach
	ActionNetworkDetach  = audit.ActionNetworkDetach
	ActionNetworkEntry   = audit.ActionNetworkEntry
	ActionOrderCreate    = audit.ActionOrderCreate
	ActionOrderView      = audit.ActionOrderView
	ActionOrderUpdate    = audit.ActionOrderUpdate
	ActionOrderDelete    = audit.ActionOrderDelete
	ActionOrderRecord    = audit.ActionOrderRecord
	ActionPatientRecord  = audit.ActionPatientRecord
	ActionProcedure      = audit.ActionProcedureRecord
	ActionQuery          = audit.ActionDICOMQuery
	ActionSecurityAlert  = audit.ActionSecurityAlert
	ActionRBACChange     = audit.ActionRBACChange
	ActionLogin          = audit.ActionLogin
	ActionLogout         = audit.ActionLogout
	ActionAuthentication = audit.ActionAuthenticate
	ActionOther          = audit.ActionDICOMOther
)

// MaxReason is the most bytes of EventOutcomeDescription kept in Event.Reason.
const MaxReason = 256

// Bounds on what one document can put into an event; a document over them is still
// parsed, the rest is left out and detail "dicom.truncated" is "true".
const (
	maxKeyPart     = 64  // sender-chosen strings inside Detail keys (detail types, SOP class UIDs)
	maxValue       = 256 // any other sender string kept (user ids, code texts, ...)
	maxParticipant = 32  // participants listed in Detail
	maxObjects     = 64  // participant objects listed in Detail
	maxObjDetails  = 16  // ParticipantObjectDetail digests per object
	maxList        = 64  // codes, study tokens
)

// Parse fills ev from one DICOM audit message. ev keeps what the caller set (transport,
// peer, syslog header, received time, raw_sha256); Parse sets Source.Kind to "dicom", the
// taxonomy fields, tokens and details, and clears Message (the XML is never stored). On
// error ev is left untouched; Reason(err) gives the reject keyword. tok must not be nil.
func Parse(xmlBytes []byte, tok *audit.Tokenizer, ev *audit.Event) error {
	if tok == nil {
		return fmt.Errorf("parse dicom audit: %w", ErrNoTokenizer)
	}
	root, err := readTree(xmlBytes)
	if err != nil {
		return err
	}
	m := mapper{tok: tok, outcome: audit.OutcomeUnknown, detail: make(map[string]string, 16)}
	m.run(root)
	m.apply(ev)
	return nil
}

// coded is a DICOM coded value in either attribute style.
type coded struct{ system, code, text string }

func codedOf(n *node) coded {
	if n == nil {
		return coded{}
	}
	c := coded{
		system: clip(n.attr("codeSystemName")),
		code:   clip(n.attr("csd-code")),
		text:   clip(n.attr("originalText")),
	}
	if c.code == "" {
		c.code = clip(n.attr("code")) // RFC 3881 / Supplement 95 style
	}
	if c.text == "" {
		c.text = clip(n.attr("displayName"))
	}
	return c
}

func (c coded) toCode() audit.Code {
	sys := c.system
	if sys == "" {
		sys = "DCM"
	}
	return audit.Code{System: sys, Code: c.code, Text: c.text}
}

type participant struct {
	user, alt, nap, role, roleCode string
	requestor                      bool
	aeTitleType                    bool   // UserIDTypeCode 110119 Station AE Title
	idTypeCode                     string // UserIDTypeCode (110119, 110182, 113871, ...)
	userType                       string // UserTypeCode: 1 person, 2 process
	hasName                        bool   // a UserName is given (it is not stored)
	media                          string // MediaType code (CID 405) of a media participant
}

// mapper collects the facts of one document, then writes them into an event.
type mapper struct {
	tok *audit.Tokenizer

	eventID    coded
	types      []coded
	actionCode string
	outcome    string
	when       time.Time
	timeBad    bool
	reason     string
	codes      []audit.Code

	parts     []participant
	truncated bool

	patient    string
	patients   []string // distinct patient tokens (a few), to tell one patient from several
	study      []string
	accession  string
	count      int
	sopClasses int
	detail     map[string]string

	purposes   []string // PurposeOfUse codes
	breakGlass bool
	vendorCode string // first EventTypeCode of a vendor system (an error code on failures)

	// What was acted on, for Event.Object and the query and commit rules.
	queryClass string     // SOP class UID of the query model (ID type 110181 on a query object)
	query      *queryInfo // the first query object's decoded identifier
	sopUIDs    []string   // distinct SOP class UIDs in object descriptions
	hasStudy   bool
	hasPatient bool
	firstRole  string // ParticipantObjectTypeCodeRole of the first object
	commit     bool   // a Storage Commitment SOP class is named
}

func (m *mapper) run(root *node) {
	var objects int
	for _, n := range root.children {
		switch n.name {
		case "EventIdentification":
			m.event(n)
		case "ActiveParticipant":
			m.participant(n)
		case "AuditSourceIdentification":
			m.source(n)
		case "ParticipantObjectIdentification":
			m.object(n, objects)
			objects++
		}
	}
}

func (m *mapper) event(n *node) {
	switch ac := strings.TrimSpace(n.attr("EventActionCode")); ac {
	case "C", "R", "U", "D", "E":
		m.actionCode = ac
	}
	switch strings.TrimSpace(n.attr("EventOutcomeIndicator")) {
	case "0":
		m.outcome = audit.OutcomeSuccess
	case "4":
		m.outcome = audit.OutcomeMinorFailure
	case "8":
		m.outcome = audit.OutcomeSeriousFailure
	case "12":
		m.outcome = audit.OutcomeMajorFailure
	default:
		m.outcome = audit.OutcomeUnknown
	}
	if s := strings.TrimSpace(n.attr("EventDateTime")); s != "" {
		if t, ok := parseDateTime(s); ok {
			m.when = t
		} else {
			m.timeBad = true
		}
	}
	for _, c := range n.children {
		switch c.name {
		case "EventID":
			m.eventID = codedOf(c)
		case "EventTypeCode":
			tc := codedOf(c)
			if len(m.types) < maxList {
				m.types = append(m.types, tc)
			} else {
				m.truncated = true
			}
			switch {
			case tc.code == "110127" && isDCM(tc.system): // Emergency Override Started
				m.breakGlass = true
			case m.vendorCode == "" && tc.code != "" && isVendorSystem(tc.system):
				m.vendorCode = limit(tc.code)
			}
		case "EventOutcomeDescription":
			m.reason = truncate(strings.TrimSpace(string(c.text)), MaxReason)
		case "PurposeOfUse":
			if pc := codedOf(c); pc.code != "" {
				m.addCode(pc.toCode())
				if len(m.purposes) < 8 {
					m.purposes = append(m.purposes, limit(pc.code))
				}
				if breakGlassPurposes[strings.ToUpper(pc.code)] {
					m.breakGlass = true
				}
			}
		}
	}
}

// parseDateTime reads xsd:dateTime; without a zone the time is taken as UTC.
func parseDateTime(s string) (time.Time, bool) {
	for _, layout := range []string{time.RFC3339Nano, "2006-01-02T15:04:05.999999999Z0700", "2006-01-02T15:04:05.999999999"} {
		if t, err := time.Parse(layout, s); err == nil {
			return t.UTC(), true
		}
	}
	return time.Time{}, false
}

func (m *mapper) participant(n *node) {
	p := participant{
		user:      clip(stripQuery(strings.TrimSpace(n.attr("UserID")))),
		alt:       clip(n.attr("AlternativeUserID")),
		nap:       clip(stripQuery(strings.TrimSpace(n.attr("NetworkAccessPointID")))),
		requestor: strings.EqualFold(strings.TrimSpace(n.attr("UserIsRequestor")), "true"),
	}
	for _, c := range n.children {
		switch c.name {
		case "RoleIDCode":
			if p.role == "" {
				rc := codedOf(c)
				p.roleCode = rc.code
				p.role = rc.text
				if p.role == "" {
					p.role = rc.code
				}
			}
		case "MediaType":
			p.media = codedOf(c).code
		case "UserIDTypeCode":
			p.idTypeCode = codedOf(c).code
			if p.idTypeCode == "110119" {
				p.aeTitleType = true
			}
		}
	}
	p.userType = strings.TrimSpace(n.attr("UserTypeCode"))
	p.hasName = strings.TrimSpace(n.attr("UserName")) != ""
	if len(m.parts) >= maxParticipant {
		// Not listed, but kept (a few) as candidate requestor / source AE title.
		m.truncated = true
		if (p.requestor || p.roleCode == "110153") && len(m.parts) < maxParticipant+4 {
			m.parts = append(m.parts, p)
		}
		return
	}
	i := strconv.Itoa(len(m.parts))
	m.setDetail("participant."+i+".user", p.user)
	m.setDetail("participant."+i+".nap", p.nap)
	m.setDetail("participant."+i+".role", p.role)
	m.detail["participant."+i+".requestor"] = strconv.FormatBool(p.requestor)
	m.parts = append(m.parts, p)
}

// idSegments are URL path segments (lower case) followed by that many identifier
// segments: DICOMweb, dcm4chee REST and FHIR paths put patient ids, Study/Series/SOP
// Instance UIDs and worklist ids there.
var idSegments = map[string]int{
	"patients": 1, "patient": 1, "studies": 1, "series": 1, "instances": 1, "frames": 1,
	"mwlitems": 2, "workitems": 1, "mpps": 1, "imagingstudy": 1, "servicerequest": 1,
	"documentreference": 1, "accessions": 1,
}

// stripQuery cleans a URL-like id (a participant's UserID or network access point):
// it drops the query and fragment (REST and WADO URLs carry patient ids and accession
// numbers there), user:password@ in the authority, and replaces identifier path
// segments (after "patients", "studies", ...) by "*". Other values are returned as is.
func stripQuery(s string) string {
	if !strings.Contains(s, "://") && !strings.HasPrefix(s, "/") {
		return s
	}
	if i := strings.IndexAny(s, "?#"); i >= 0 {
		s = s[:i]
	}
	prefix, rest := "", s
	if i := strings.Index(s, "://"); i >= 0 {
		prefix, rest = s[:i+3], s[i+3:]
		auth, path, hasPath := strings.Cut(rest, "/")
		if at := strings.LastIndexByte(auth, '@'); at >= 0 {
			auth = auth[at+1:]
		}
		if !hasPath {
			return prefix + auth
		}
		prefix, rest = prefix+auth+"/", path
	}
	segs := strings.Split(rest, "/")
	for i := 0; i < len(segs); i++ {
		n := idSegments[strings.ToLower(segs[i])]
		for ; n > 0 && i+1 < len(segs); n-- {
			i++
			if segs[i] != "" {
				segs[i] = "*"
			}
		}
	}
	return prefix + strings.Join(segs, "/")
}

// aeTitle returns the AE title a participant names: "AETITLE=X" or "AETITLES=X;Y" in
// AlternativeUserID, or the UserID when its type is Station AE Title.
func (p participant) aeTitle() string {
	for _, pre := range []string{"AETITLE=", "AETITLES="} {
		if rest, ok := strings.CutPrefix(p.alt, pre); ok {
			rest, _, _ = strings.Cut(rest, ";")
			return strings.TrimSpace(rest)
		}
	}
	if p.aeTitleType {
		return p.user
	}
	return ""
}

func (m *mapper) source(n *node) {
	if _, ok := m.detail["audit_source.id"]; ok {
		return // the first one names the source
	}
	m.detail["audit_source.id"] = clip(n.attr("AuditSourceID"))
	m.setDetail("audit_source.site", clip(n.attr("AuditEnterpriseSiteID")))
	typ := codedOf(n.child("AuditSourceTypeCode")).code
	if typ == "" {
		typ = clip(n.attr("code")) // non-schema attribute seen in the wild
	}
	m.setDetail("audit_source.type", typ)
}

func (m *mapper) object(n *node, idx int) {
	id := strings.TrimSpace(n.attr("ParticipantObjectID"))
	typ := clip(n.attr("ParticipantObjectTypeCode"))
	role := clip(n.attr("ParticipantObjectTypeCodeRole"))
	idType := codedOf(n.child("ParticipantObjectIDTypeCode"))
	listed := idx < maxObjects
	if !listed {
		m.truncated = true
	}
	pre := "object." + strconv.Itoa(idx) + "."
	if idx == 0 {
		m.firstRole = role
	}
	if listed {
		m.setDetail(pre+"type", typ)
		m.setDetail(pre+"role", role)
		m.setDetail(pre+"id_type", idType.code)
		m.setDetail(pre+"lifecycle", clip(n.attr("ParticipantObjectDataLifeCycle")))
	}
	if strings.EqualFold(idType.system, "IHE Transactions") && idType.code != "" {
		m.addCode(idType.toCode())
	}

	// Patient: person/patient, or an RFC 3881 patient number or medical record number.
	rfc3881 := idType.system == "" || strings.EqualFold(idType.system, "RFC-3881")
	isPatient := (typ == "1" && role == "1") ||
		(rfc3881 && (idType.code == "1" || idType.code == "2")) ||
		strings.EqualFold(idType.text, "Patient Number")
	if id == sopStgCmtPush || id == sopStgCmtPushI {
		m.commit = true
	}
	query := n.child("ParticipantObjectQuery")
	switch {
	case isPatient:
		m.hasPatient = true
		if t := m.patientToken(id); t != "" {
			if m.patient == "" {
				m.patient = t
			} else if t != m.patient && listed {
				m.detail[pre+"patient"] = t
			}
		}
		// ParticipantObjectName (the patient's name) is not stored, not even as a token.
	case idType.code == "110180":
		m.hasStudy = true
		m.addStudy(id)
	case role == "24" || query != nil:
		if idType.code == "110181" {
			m.setDetail("query.sop_class", limit(id))
			if m.queryClass == "" {
				m.queryClass = limit(id)
			}
		}
		if query != nil {
			if _, ok := m.detail["query.digest"]; !ok {
				m.setDetail("query.digest", m.digest(query.text))
			}
			if m.query == nil {
				q := readQuery(decodeBase64(query.text), transferSyntaxOf(n))
				m.query = &q
			}
		} else if m.query == nil && role == "24" {
			m.query = &queryInfo{format: formatUnknown}
		}
	}

	details := 0
	var walk func(n *node, depth int)
	walk = func(n *node, depth int) {
		for _, c := range n.children {
			switch c.name {
			case "ParticipantObjectDetail":
				if depth == 0 && listed && details >= maxObjDetails {
					m.truncated = true
				} else if depth == 0 && listed {
					k := pre + "detail." + strconv.Itoa(details) + "."
					m.setDetail(k+"type", limit(strings.TrimSpace(c.attr("type"))))
					m.setDetail(k+"digest", m.digest([]byte(c.attr("value"))))
					details++
				}
			case "Accession":
				if t := m.tok.Token(audit.IDAccession, c.attr("Number")); t != "" {
					if m.accession == "" {
						m.accession = t
					} else if t != m.accession && listed {
						m.detail[pre+"accession"] = t
					}
				}
			case "SOPClass":
				uid := limit(strings.TrimSpace(c.attr("UID")))
				m.addSOPClass(uid)
				n, err := strconv.Atoi(strings.TrimSpace(c.attr("NumberOfInstances")))
				if err != nil || n <= 0 || n > 1<<30 || uid == "" {
					break
				}
				m.count = min(m.count+n, 1<<30)
				if prev, ok := m.detail["sop_class."+uid]; ok || m.sopClasses < maxList {
					if !ok {
						m.sopClasses++
					}
					p, _ := strconv.Atoi(prev)
					m.detail["sop_class."+uid] = strconv.Itoa(min(p+n, 1<<30))
				} else {
					m.truncated = true
				}
			case "StudyIDs":
				m.addStudy(c.attr("UID"))
			case "ParticipantObjectDescription", "ParticipantObjectContainsStudy":
				walk(c, depth+1)
			}
		}
	}
	walk(n, 0)
}

// patientToken is the token of a patient ParticipantObjectID, an HL7 CX
// "ID^^^AUTHORITY&OID&ISO": the ID and its assigning authority go to
// Tokenizer.PatientToken, so that the same MRN gives the same token from HL7, FHIR and
// syslog. dcm4chee's "<none>" (no patient ID) is no patient.
func (m *mapper) patientToken(cx string) string {
	value, authority := splitCX(cx)
	if value == "" || value == "<none>" {
		return ""
	}
	t := m.tok.PatientToken(value, authority)
	if t != "" && len(m.patients) < 4 && !contains(m.patients, t) {
		m.patients = append(m.patients, t)
	}
	return t
}

// splitCX returns CX.1 and the assigning authority (CX.4: its namespace ID, else its
// universal ID) of an HL7 CX.
func splitCX(cx string) (value, authority string) {
	cx = strings.TrimSpace(cx)
	parts := strings.SplitN(cx, "^", 5)
	value = strings.TrimSpace(parts[0])
	if len(parts) > 3 {
		sub := strings.Split(parts[3], "&")
		authority = strings.TrimSpace(sub[0])
		if authority == "" && len(sub) > 1 {
			authority = strings.TrimSpace(sub[1])
		}
	}
	return value, authority
}

func contains(list []string, s string) bool {
	for _, have := range list {
		if have == s {
			return true
		}
	}
	return false
}

func (m *mapper) addSOPClass(uid string) {
	if uid == sopStgCmtPush || uid == sopStgCmtPushI {
		m.commit = true
	}
	if uid != "" && len(m.sopUIDs) < 2 && !contains(m.sopUIDs, uid) {
		m.sopUIDs = append(m.sopUIDs, uid)
	}
}

// transferSyntaxOf is the TransferSyntax ParticipantObjectDetail of a query object.
func transferSyntaxOf(n *node) string {
	for _, c := range n.children {
		if c.name == "ParticipantObjectDetail" && strings.EqualFold(strings.TrimSpace(c.attr("type")), "TransferSyntax") {
			return string(decodeBase64([]byte(c.attr("value"))))
		}
	}
	return ""
}

func (m *mapper) addStudy(uid string) {
	t := m.tok.Token(audit.IDStudy, uid)
	if t == "" {
		return
	}
	for _, s := range m.study {
		if s == t {
			return
		}
	}
	if len(m.study) >= maxList {
		m.truncated = true
		return
	}
	m.study = append(m.study, t)
}

func (m *mapper) addCode(c audit.Code) {
	for _, have := range m.codes {
		if have.System == c.System && have.Code == c.Code {
			return
		}
	}
	if len(m.codes) >= maxList {
		m.truncated = true
		return
	}
	m.codes = append(m.codes, c)
}

func (m *mapper) setDetail(k, v string) {
	if v != "" {
		m.detail[k] = v
	}
}

// KindDigest is the tokenizer namespace of the digests of query and detail values.
const KindDigest = "dig"

// digest returns a keyed digest of a base64 value (white space ignored; the raw text when
// it is not base64): the Tokenizer's HMAC-SHA-256 under the site data key. A plain
// SHA-256 would give away short values (study dates, message ids, patient ids in a
// query) to anyone who hashes candidates.
func (m *mapper) digest(b []byte) string {
	return m.tok.Token(KindDigest, string(decodeBase64(b)))
}

// decodeBase64 decodes a base64 value, white space ignored; it returns the raw text
// when it is not base64.
func decodeBase64(b []byte) []byte {
	clean := bytes.Map(func(r rune) rune {
		if r == ' ' || r == '\t' || r == '\r' || r == '\n' {
			return -1
		}
		return r
	}, b)
	if dec, err := base64.StdEncoding.DecodeString(string(clean)); err == nil {
		return dec
	} else if dec, err := base64.RawStdEncoding.DecodeString(string(clean)); err == nil {
		return dec
	}
	return clean
}

func limit(s string) string { return truncate(s, maxKeyPart) }

// clip trims a sender string and bounds its length.
func clip(s string) string { return truncate(strings.TrimSpace(s), maxValue) }

// truncate cuts s to at most n bytes without splitting a UTF-8 sequence.
func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	s = s[:n]
	for len(s) > 0 && !utf8.ValidString(s) {
		s = s[:len(s)-1]
	}
	return s
}

// action applies the shared taxonomy mapping (audit.DICOMAction).
func (m *mapper) action() string {
	types := make([]string, len(m.types))
	for i, t := range m.types {
		types[i] = t.code
	}
	return audit.DICOMAction(m.eventID.code, types, m.actionCode)
}

func (m *mapper) apply(ev *audit.Event) {
	ev.Source.Kind = audit.KindDICOM
	ev.Message = ""
	ev.Malformed = false
	ev.Action = m.action()
	ev.ActionCode = audit.DICOMActionCode(m.eventID.code, m.actionCode)
	ev.Outcome = m.outcome
	if !m.when.IsZero() {
		ev.Time = m.when
	}
	if m.timeBad {
		m.detail["dicom.time_invalid"] = "true"
	}
	if m.truncated {
		m.detail["dicom.truncated"] = "true"
	}
	ev.Reason = m.reason
	m.applyQuery(ev)
	m.applyFacts(ev)
	ev.Patient = m.patient
	ev.Study = m.study
	ev.Accession = m.accession
	ev.Count = m.count

	codes := make([]audit.Code, 0, 1+len(m.types)+len(m.codes))
	if m.eventID.code != "" {
		codes = append(codes, m.eventID.toCode())
	}
	for _, t := range m.types {
		if t.code != "" {
			codes = append(codes, t.toCode())
		}
	}
	for _, c := range m.codes {
		dup := false
		for _, have := range codes {
			if have.System == c.System && have.Code == c.Code {
				dup = true
				break
			}
		}
		if !dup {
			codes = append(codes, c)
		}
	}
	ev.Codes = codes

	if a, mach := pickActor(m.parts); a >= 0 {
		req := m.parts[a]
		ev.Actor.User = req.user
		ev.Actor.Role = req.role
		ev.Actor.Requestor = true
		ev.Source.AETitle = req.aeTitle()
		switch {
		case mach >= 0:
			ev.Source.Workstation = m.parts[mach].workstation()
			if ae := m.parts[mach].aeTitle(); ae != "" {
				ev.Source.AETitle = ae
			}
		case req.kind() == kindPerson:
			ev.Source.Workstation = req.nap
		}
	}
	if ev.Source.AETitle == "" {
		for _, p := range m.parts {
			if p.roleCode == "110153" { // Source Role ID
				if ae := p.aeTitle(); ae != "" {
					ev.Source.AETitle = ae
					break
				}
			}
		}
	}

	if ev.Detail == nil {
		ev.Detail = make(map[string]string, len(m.detail))
	}
	for k, v := range m.detail {
		ev.Detail[k] = v
	}
}
