package hl7

import (
	"strings"

	"github.com/edgeaudit/edgeaudit/audit"
)

// Taxonomy actions used by this collector (docs/taxonomy.md, README "Taxonomy mapping").
const (
	ActionExchange        = audit.ActionHL7Exchange
	ActionOrderCreate     = audit.ActionOrderCreate
	ActionOrderUpdate     = audit.ActionOrderUpdate
	ActionOrderView       = audit.ActionOrderView
	ActionOrderCancel     = audit.ActionOrderCancel
	ActionOrderRecord     = audit.ActionOrderRecord
	ActionReportSign      = audit.ActionReportSign
	ActionPatientMerge    = audit.ActionPatientMerge
	ActionPatientRegister = audit.ActionPatientRegister
	ActionSchedule        = audit.ActionAppointment
	ActionResultPrelim    = audit.ActionResultPrelim
	ActionResultFinal     = audit.ActionResultFinal
	ActionResultAddendum  = audit.ActionResultCorrected
	ActionDocument        = audit.ActionDocument
	ActionQuery           = audit.ActionPHIQuery
)

// Objects (audit.Event.Object): what a message acts on, by type. Messages without one of
// these get their message structure (MSH-9.3, else MSH-9.1).
const (
	ObjectPatient     = "Patient"
	ObjectOrder       = "Order"
	ObjectAppointment = "Appointment"
	ObjectResult      = "DiagnosticReport"
	ObjectDocument    = "Document"
)

// action is a taxonomy action with its action code.
type action struct{ name, code string }

// adtAction maps ADT triggers (HL7 v2.5.1 chapter 3) to actions. Merges, links, moves
// and identifier changes of a patient are patient.merge; registration, visit and
// account events are patient.register: C for a new registration, U for a change,
// D for a cancellation or deletion. Triggers not listed (A19 is a query, A20 bed
// status, vendor Z triggers) keep data.hl7_exchange.
func adtAction(trigger string) (action, bool) {
	switch trigger {
	case "A18", "A24", "A30", "A34", "A36", "A37", "A39", "A40", "A43", "A46", "A47", "A48":
		return action{ActionPatientMerge, "U"}, true
	case "A01", "A04", "A05", "A14", "A28":
		return action{ActionPatientRegister, "C"}, true
	case "A02", "A03", "A06", "A07", "A08", "A09", "A10", "A12", "A13", "A15", "A16",
		"A17", "A21", "A22", "A25", "A26", "A31", "A32", "A33", "A35", "A41", "A42",
		"A44", "A45", "A49", "A50", "A51", "A52", "A53", "A54", "A55", "A60", "A61", "A62":
		return action{ActionPatientRegister, "U"}, true
	case "A11", "A23", "A27", "A29", "A38":
		return action{ActionPatientRegister, "D"}, true
	}
	return action{}, false
}

// scheduleAction maps SIU (S12..S26, filler notifications) and SRM (S01..S11, placer
// requests) triggers (chapter 10) to order.schedule: a new booking C, a change U, a
// cancellation, discontinuation or deletion of the appointment D.
func scheduleAction(trigger string) (action, bool) {
	switch trigger {
	case "S12", "S01":
		return action{ActionSchedule, "C"}, true
	case "S13", "S14", "S18", "S19", "S20", "S21", "S22", "S23", "S24", "S25", "S26",
		"S02", "S03", "S07", "S08", "S09", "S10", "S11":
		return action{ActionSchedule, "U"}, true
	case "S15", "S16", "S17", "S04", "S05", "S06":
		return action{ActionSchedule, "D"}, true
	}
	return action{}, false
}

// orderAction maps an ORC-1 order control code (table 0119) to an action. failed is
// set for the "unable to" codes, which report that the request named failed.
func orderAction(control string) (a action, failed bool) {
	switch control {
	case "NW", "SN", "CH", "PA", "RO":
		return action{ActionOrderCreate, "C"}, false
	case "XO", "XX", "XR", "SC", "RP", "RQ", "RU", "HD", "HR", "OH", "RL", "OR", "OE",
		"NA", "OK", "RR", "RE", "LI", "UN", "PR":
		return action{ActionOrderUpdate, "U"}, false
	case "CA", "DC", "OC", "OD", "CR", "DR":
		return action{ActionOrderCancel, "D"}, false
	case "SS", "SR":
		return action{ActionOrderView, "R"}, false
	case "UA":
		return action{ActionOrderCreate, "C"}, true
	case "UX", "UH", "UR", "UM", "UF", "DE", "DF":
		return action{ActionOrderUpdate, "U"}, true
	case "UC", "UD":
		return action{ActionOrderCancel, "D"}, true
	}
	return action{ActionOrderRecord, ""}, false
}

// isOrderMessage reports whether MSH-9.1 is an order or order response whose ORC-1
// says what happened to the order (chapters 4 and 4A).
func isOrderMessage(code string) bool {
	switch code {
	case "ORM", "OMG", "OMI", "OML", "OMD", "OMS", "OMN", "OMP", "OMB",
		"ORR", "ORG", "ORI", "ORL", "ORD", "ORS", "ORN", "ORP", "ORB", "RDE":
		return true
	}
	return false
}

// Result status ranks: the most significant status of a message decides its action.
const (
	rankNone = iota
	rankOrder
	rankPrelim
	rankFinal
	rankCorrected
)

// resultRank ranks an OBR-25 result status (table 0123) or, with obx set, an OBX-11
// observation result status (table 0085).
func resultRank(status string, obx bool) int {
	switch status {
	case "C", "W":
		return rankCorrected
	case "D":
		if obx {
			return rankCorrected
		}
	case "F", "U":
		return rankFinal
	case "P", "R", "A", "S":
		if status == "S" && !obx {
			return rankOrder // OBR-25 S: procedure scheduled, not done
		}
		return rankPrelim
	case "O", "I", "X":
		if !obx {
			return rankOrder
		}
	}
	return rankNone
}

// resultAction maps the most significant result status of an ORU to an action: P
// (and R, A, S) report.preliminary C, F report.final C (U when the status alone turns
// final: OBX-11 U), C (and W) report.addendum U (D when an observation is deleted:
// OBX-11 D); OBR-25 O/I/S order.update U and X order.cancel D.
func resultAction(status string, obx bool) (action, bool) {
	switch resultRank(status, obx) {
	case rankCorrected:
		if obx && status == "D" {
			return action{ActionResultAddendum, "D"}, true
		}
		return action{ActionResultAddendum, "U"}, true
	case rankFinal:
		if status == "U" {
			return action{ActionResultFinal, "U"}, true
		}
		return action{ActionResultFinal, "C"}, true
	case rankPrelim:
		return action{ActionResultPrelim, "C"}, true
	case rankOrder:
		if status == "X" {
			return action{ActionOrderCancel, "D"}, true
		}
		return action{ActionOrderUpdate, "U"}, true
	}
	return action{}, false
}

// documentAction maps an MDM trigger (chapter 9) and TXA-17 completion status to an
// action. Addenda (T05, T06) are report.addendum; a document authenticated (TXA-17 AU,
// legally authenticated LA) is report.sign; any other document event report.document.
// The action code: T01/T02 (original) C, T03..T10 (status change, addendum, edit,
// replacement) U, T11 (cancel) D.
func documentAction(trigger, completion string) (a action, signed bool) {
	code := ""
	switch trigger {
	case "T01", "T02":
		code = "C"
	case "T03", "T04", "T05", "T06", "T07", "T08", "T09", "T10":
		code = "U"
	case "T11":
		code = "D"
	}
	signed = completion == "AU" || completion == "LA"
	switch {
	case trigger == "T05" || trigger == "T06":
		return action{ActionResultAddendum, code}, signed
	case trigger == "T11":
		return action{ActionDocument, code}, false
	case signed:
		return action{ActionReportSign, code}, true
	}
	return action{ActionDocument, code}, false
}

// structure is the message structure for Object: MSH-9.3, else MSH-9.1.
func structure(m *Message, msh *Segment) string {
	if s := m.Component(msh.Field(9), 3); s != "" && len(s) <= 16 && !strings.ContainsAny(s, " ^&") {
		return s
	}
	return m.Component(msh.Field(9), 1)
}
