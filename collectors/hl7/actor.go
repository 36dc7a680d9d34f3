package hl7

import (
	"strings"
	"unicode"
)

// Actor roles: the field the actor came from (audit.Actor.Role).
const (
	RoleOperator             = "operator"              // EVN-5 operator ID
	RoleEnteredBy            = "entered_by"            // ORC-10, SCH-20
	RoleActionBy             = "action_by"             // ORC-19
	RoleOrderingProvider     = "ordering_provider"     // ORC-12, OBR-16
	RoleResultInterpreter    = "result_interpreter"    // OBR-32
	RoleAssistantInterpreter = "assistant_interpreter" // OBR-33
	RoleTechnician           = "technician"            // OBR-34
	RoleResponsibleObserver  = "responsible_observer"  // OBX-16
	RoleOriginator           = "originator"            // TXA-9
	RoleAuthenticator        = "authenticator"         // TXA-22
	RoleTranscriptionist     = "transcriptionist"      // TXA-11
	RoleFillerContact        = "filler_contact"        // SCH-16
	RolePlacerContact        = "placer_contact"        // SCH-12
)

// personField is one field that may name the person who performed the act.
type personField struct {
	seg  string
	n    int
	role string
}

var (
	evn5 = personField{"EVN", 5, RoleOperator}

	// Orders: who initiated the event of ORC-1 (for CA, who asked for the cancel),
	// who keyed it in, the operator, and last the ordering provider.
	orderActors = []personField{
		{"ORC", 19, RoleActionBy}, {"ORC", 10, RoleEnteredBy}, evn5,
		{"ORC", 12, RoleOrderingProvider}, {"OBR", 16, RoleOrderingProvider},
	}
	// Results: who interpreted (and for a final result verified) it, then who
	// performed it; the ordering provider is not the author of a result.
	resultActors = []personField{
		{"OBR", 32, RoleResultInterpreter}, {"OBR", 33, RoleAssistantInterpreter},
		{"OBX", 16, RoleResponsibleObserver}, {"OBR", 34, RoleTechnician},
		{"ORC", 19, RoleActionBy}, {"ORC", 10, RoleEnteredBy}, evn5,
	}
	// Appointments: who keyed the booking in, the operator, the filler's and the
	// placer's contact person.
	scheduleActors = []personField{
		{"SCH", 20, RoleEnteredBy}, evn5,
		{"SCH", 16, RoleFillerContact}, {"SCH", 12, RolePlacerContact},
	}
	// Documents being signed: the authenticator; otherwise the operator, the author
	// (originator) and the transcriptionist.
	signActors     = []personField{{"TXA", 22, RoleAuthenticator}, evn5, {"TXA", 9, RoleOriginator}}
	documentActors = []personField{evn5, {"TXA", 9, RoleOriginator}, {"TXA", 11, RoleTranscriptionist}}
	// Everything else (ADT among them): EVN-5.
	defaultActors = []personField{evn5}
)

// pickActor returns the workforce ID and role of the first field in fields (in each
// segment of that id, in order) that holds an ID. Names are never read: a person named
// without an ID gives no actor, and nameOnly reports the role of the first such field.
// The assigning authority (XCN.9) is dropped.
func pickActor(m *Message, fields []personField) (id, role, nameOnly string) {
	for _, f := range fields {
		for i := range m.Segments {
			s := &m.Segments[i]
			if s.ID != f.seg {
				continue
			}
			raw := s.Field(f.n)
			if len(raw) == 0 {
				continue
			}
			// XCN.1 / PPN.1, or NDL.1's CNN.1 (a sub-component); senders that send an
			// NDL field as an XCN give the same value.
			if v := strings.TrimSpace(m.SubComponent(raw, 1, 1)); v != "" && len(v) <= maxActorLen && !strings.ContainsFunc(v, unicode.IsControl) {
				return v, f.role, ""
			}
			if nameOnly == "" && strings.TrimSpace(m.Text(m.firstRep(raw))) != "" {
				nameOnly = f.role
			}
		}
	}
	return "", "", nameOnly
}

// maxActorLen bounds a kept workforce ID (XCN.1 is ST 15 in v2.5.1; senders exceed it).
const maxActorLen = 64
