package dicom

import (
	"regexp"
	"strings"

	"github.com/edgeaudit/edgeaudit/audit"
)

// The guide's core fields (issue 7 item 8) that a DICOM audit message can give: what
// was acted on (object), purpose of use and break-glass, the source's error code, and
// the subject and scope of a query.

// breakGlassPurposes are PurposeOfUse codes (HL7 v3 ActReason / PurposeOfUse) of
// emergency access: ETREAT emergency treatment, BTG break the glass, ERTREAT emergency
// room treatment.
var breakGlassPurposes = map[string]bool{"ETREAT": true, "BTG": true, "ERTREAT": true}

func isDCM(system string) bool {
	return system == "" || strings.EqualFold(system, "DCM") || system == "1.2.840.10008.2.16.4"
}

// isVendorSystem reports whether an EventTypeCode's system is a vendor's own (such as
// dcm4chee's 99DCM4CHEE), whose codes on a failed event are the vendor's error codes.
func isVendorSystem(system string) bool {
	if isDCM(system) {
		return false
	}
	s := strings.ToLower(system)
	return !strings.HasPrefix(s, "ihe") && !strings.HasPrefix(s, "urn:ihe") && s != "rfc-3881"
}

// statusNames are DICOM status keywords (PS3.7 Annex C, as dcm4che names them) seen in
// outcome descriptions, with their codes.
var statusNames = map[string]string{
	"ProcessingFailure":              "0110",
	"DuplicateSOPinstance":           "0111",
	"NoSuchObjectInstance":           "0112",
	"NoSuchEventType":                "0113",
	"NoSuchArgument":                 "0114",
	"InvalidArgumentValue":           "0115",
	"InvalidObjectInstance":          "0117",
	"NoSuchSOPclass":                 "0118",
	"ClassInstanceConflict":          "0119",
	"MissingAttribute":               "0120",
	"MissingAttributeValue":          "0121",
	"SOPclassNotSupported":           "0122",
	"NoSuchActionType":               "0123",
	"NotAuthorized":                  "0124",
	"DuplicateInvocation":            "0210",
	"UnrecognizedOperation":          "0211",
	"MistypedArgument":               "0212",
	"ResourceLimitation":             "0213",
	"OutOfResources":                 "A700",
	"MoveDestinationUnknown":         "A801",
	"IdentifierDoesNotMatchSOPClass": "A900",
	"UnableToProcess":                "C000",
	"Cancel":                         "FE00",
}

// statusHex finds a DICOM status in text: 0xA700, A700H, or a bare failure/warning code
// (A, B, C or F then three hex digits, at least one a digit).
var statusHex = regexp.MustCompile(`\b(?:0[xX]([0-9A-Fa-f]{4})|([0-9A-F]{4})H|([ABCF][0-9A-F]{3}))\b`)

// errorCode is the source's own code for a failed event: a vendor EventTypeCode, else
// a DICOM status or association failure named in EventOutcomeDescription.
func (m *mapper) errorCode() string {
	if m.outcome == audit.OutcomeSuccess || m.outcome == audit.OutcomeUnknown {
		return ""
	}
	if m.vendorCode != "" {
		return m.vendorCode
	}
	d := m.reason
	for _, kw := range []string{"A-ASSOCIATE-RJ", "A-ABORT", "A-P-ABORT"} {
		if strings.Contains(d, kw) {
			return kw
		}
	}
	for _, sub := range statusHex.FindAllStringSubmatch(d, 4) {
		for _, g := range sub[1:] {
			if g != "" && strings.ContainsAny(g, "0123456789") {
				return strings.ToUpper(g)
			}
		}
	}
	for _, w := range strings.FieldsFunc(d, func(r rune) bool {
		return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z')
	}) {
		if code, ok := statusNames[w]; ok {
			return code
		}
	}
	return ""
}

// object names what was acted on: the query model of a query, the one SOP class of
// the instances, an imaging study, a patient, else the first object's role.
func (m *mapper) objectName() string {
	switch {
	case m.queryClass != "":
		return sopClassName(m.queryClass)
	case m.query != nil:
		return "Query"
	case len(m.sopUIDs) == 1:
		return sopClassName(m.sopUIDs[0])
	case m.hasStudy:
		return "ImagingStudy"
	case m.hasPatient:
		return "Patient"
	}
	return objectRoles[m.firstRole]
}

// applyFacts sets object, purpose, break_glass, error_code and the worklist, storage
// commitment and print actions.
func (m *mapper) applyFacts(ev *audit.Event) {
	ev.Object = m.objectName()
	ev.Purpose = strings.Join(m.purposes, ",")
	ev.BreakGlass = m.breakGlass
	ev.ErrorCode = m.errorCode()
	switch m.eventID.code {
	case "110112":
		if m.queryClass == sopMWLFind || m.queryClass == sopUPSPull || (m.query != nil && m.query.worklist) {
			ev.Action = audit.ActionDICOMWorklist
		}
	case "110102", "110104":
		if m.commit {
			ev.Action = audit.ActionDICOMCommit
		}
	case "110106":
		// An export to film or paper (CID 405 110010 Film, 110038 Paper Document) is a
		// print.
		for _, p := range m.parts {
			if p.media == "110010" || p.media == "110038" {
				ev.Action = audit.ActionPHIPrint
				break
			}
		}
	}
}

// applyQuery gives a Query event (110112) its subject: the patient object's token, else
// the one patient the decoded identifier names (query_scope "patient"); a query naming
// no patient, several, or only wildcards is "broad", with the names of its matching
// keys (never their values) in detail "query_keys".
func (m *mapper) applyQuery(ev *audit.Event) {
	if m.eventID.code != "110112" {
		return
	}
	scope := ScopeBroad
	if q := m.query; q != nil {
		m.detail["query.format"] = q.format
		m.setDetail("query.level", q.level)
		m.setDetail("query_keys", q.keyList())
		if value, authority, ok := q.single(); ok {
			t := m.tok.PatientToken(value, authority)
			switch {
			case m.patient == "":
				m.patient = t
			case t != m.patient:
				m.detail["query.patient"] = t
			}
			scope = ScopePatient
		}
	}
	if scope != ScopePatient && len(m.patients) == 1 {
		scope = ScopePatient
	}
	ev.QueryScope = scope
}
