package fhir

import (
	"strconv"
	"strings"

	"github.com/edgeaudit/edgeaudit/audit"
)

// The DICOM extensions of AuditEvent.entity (FHIR R4 core, and the same canonical URLs
// in the R5 extensions pack: http://hl7.org/fhir/StructureDefinition/auditevent-*). They
// carry what PS3.15 puts in ParticipantObjectDescription. Matched by the last segment of
// the URL, case-insensitively, so that the extensions pack's
// http://hl7.org/fhir/extensions/StructureDefinition/… spelling is read too.
const (
	extAccession     = "auditevent-accession"         // valueIdentifier, 0..*: accession number → accession token
	extNumInstances  = "auditevent-numberofinstances" // valueInteger, 0..1 → count
	extSOPClass      = "auditevent-sopclass"          // valueReference(ImagingStudy) in the spec; UIDs as seen → detail sop_class.<uid>
	extInstance      = "auditevent-instance"          // valueIdentifier, 0..*: SOP Instance UIDs → counted, never stored
	extMPPS          = "auditevent-mpps"              // valueIdentifier, 0..*: MPPS instance UIDs → counted, never stored
	extContainsStudy = "auditevent-participantobjectcontainsstudy"
	extStudyUID      = "auditevent-studyinstanceuid" // not a published extension; accepted as an alias of ContainsStudy
	extEncrypted     = "auditevent-encrypted"        // valueBoolean
	extAnonymized    = "auditevent-anonymized"       // valueBoolean
	extAltUserID     = "auditevent-alternativeuserid"
	maxCount         = 1 << 30
	maxSOPClasses    = 16
)

// extName is the lower-cased last path segment of an extension's url.
func extName(e *node) string {
	u := e.str("url")
	if i := strings.LastIndexByte(u, '/'); i >= 0 {
		u = u[i+1:]
	}
	return strings.ToLower(u)
}

// extValue is the primitive value of an extension whatever its value[x] type: a
// primitive, an Identifier's value, a Coding's code, a Reference's identifier value or
// reference.
func extValue(e *node) string {
	if name := valueKey(e); name != "" {
		v := e.get(name)
		if v.val != "" {
			return strings.TrimSpace(v.val)
		}
		return firstNonEmpty(v.str("value"), v.str("code"), v.get("identifier").str("value"), v.str("reference"))
	}
	return ""
}

// valueKey is the name of n's value[x] child ("valueString", "valueIdentifier" …), the
// first in sort order should a sender give several, so that one input always maps to
// one event; "" if none.
func valueKey(n *node) string {
	best := ""
	for _, kv := range n.kids {
		if strings.HasPrefix(kv.name, "value") && len(kv.vals) > 0 && (best == "" || kv.name < best) {
			best = kv.name
		}
	}
	return best
}

// dicomUID returns a DICOM UID without its URI prefix, or "" when v is not one
// (digits and dots, at most 64 characters).
func dicomUID(v string) string {
	v = studyUID(v)
	if v == "" || len(v) > 64 {
		return ""
	}
	for i := 0; i < len(v); i++ {
		if c := v[i]; !(c >= '0' && c <= '9' || c == '.') {
			return ""
		}
	}
	return v
}

// entityExtensions reads the DICOM extensions of one entity into ev and detail.
// Accession numbers and study UIDs become tokens; instance and MPPS UIDs are only
// counted; SOP class UIDs (public DICOM vocabulary, not patient data) are kept with
// their instance counts as the DICOM collector keeps them.
func (m mapper) entityExtensions(e *node, pre string, ev *audit.Event, detail map[string]string) {
	var instances, mpps, sopN int
	numSeen := false
	for _, x := range e.all("extension") {
		switch extName(x) {
		case extAccession:
			if t := m.tok.Token(audit.IDAccession, extValue(x)); t != "" {
				if ev.Accession == "" {
					ev.Accession = t
				} else if t != ev.Accession {
					detail[pre+".accession"] = t
				}
			}
		case extNumInstances:
			if n, err := strconv.Atoi(extValue(x)); err == nil && n > 0 {
				ev.Count = min(ev.Count+min(n, maxCount), maxCount)
				numSeen = true
			}
		case extSOPClass:
			sopN = min(sopN+m.sopClass(x, detail), maxCount)
		case extInstance:
			if extValue(x) != "" {
				instances++
			}
		case extMPPS:
			if extValue(x) != "" {
				mpps++
			}
		case extContainsStudy, extStudyUID:
			uid := studyUID(extValue(x))
			// A complex form (StudyIDs with a UID sub-extension) as PS3.15 nests it.
			for _, sub := range x.all("extension") {
				if uid == "" {
					uid = studyUID(extValue(sub))
				}
			}
			addStudy(m.tok, ev, uid)
		case extEncrypted:
			setBool(detail, pre+".encrypted", extValue(x))
		case extAnonymized:
			setBool(detail, pre+".anonymized", extValue(x))
		}
	}
	if !numSeen && sopN > 0 {
		ev.Count = min(ev.Count+sopN, maxCount)
	}
	if instances > 0 {
		detail[pre+".instances"] = strconv.Itoa(instances)
	}
	if mpps > 0 {
		detail[pre+".mpps"] = strconv.Itoa(mpps)
	}
}

// sopClass reads one SOPClass extension: the UID from its value, or from the uid
// sub-extension of the complex form some senders use (PS3.15 SOPClass@UID with
// @NumberOfInstances), with that count. detail["sop_class.<uid>"] holds the count
// ("0" when the sender gives none). It returns that count.
func (m mapper) sopClass(x *node, detail map[string]string) int {
	uid := dicomUID(extValue(x))
	n := 0
	for _, sub := range x.all("extension") {
		switch strings.ToLower(extName(sub)) {
		case "uid", "sopclassuid":
			if uid == "" {
				uid = dicomUID(extValue(sub))
			}
		case "numberofinstances":
			if v, err := strconv.Atoi(extValue(sub)); err == nil && v > 0 {
				n = min(v, maxCount)
			}
		}
	}
	if uid == "" {
		return 0
	}
	k := "sop_class." + uid
	prev, ok := detail[k]
	if !ok && countPrefix(detail, "sop_class.") >= maxSOPClasses {
		return n
	}
	p, _ := strconv.Atoi(prev)
	detail[k] = strconv.Itoa(min(p+n, maxCount))
	return n
}

func countPrefix(m map[string]string, pre string) int {
	n := 0
	for k := range m {
		if strings.HasPrefix(k, pre) {
			n++
		}
	}
	return n
}

func setBool(detail map[string]string, k, v string) {
	switch strings.ToLower(v) {
	case "true", "false":
		detail[k] = strings.ToLower(v)
	}
}

// addStudy adds the token of a Study Instance UID to ev.Study once.
func addStudy(tok *audit.Tokenizer, ev *audit.Event, uid string) {
	if t := tok.Token(audit.IDStudy, uid); t != "" && !has(ev.Study, t) && len(ev.Study) < maxEntities {
		ev.Study = append(ev.Study, t)
	}
}
