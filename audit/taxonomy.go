package audit

import "slices"

// The normalized actions (docs/taxonomy.md). Every collector takes its action names from
// here, and DICOM event codes are mapped by one function, DICOMAction, whether they came
// as DICOM audit XML or inside a FHIR AuditEvent: the same act gets the same action.
const (
	ActionSystemLog       = "system.log"
	ActionAppStart        = "system.app_start"
	ActionAppStop         = "system.app_stop"
	ActionAppActivity     = "system.app_activity"
	ActionAuditLogUsed    = "system.audit_log_used"
	ActionNetworkAttach   = "network.attach"
	ActionNetworkDetach   = "network.detach"
	ActionNetworkEntry    = "network.entry"
	ActionLogin           = "auth.login"
	ActionLogout          = "auth.logout"
	ActionAuthenticate    = "auth.authenticate"
	ActionPHIView         = "phi.view"
	ActionPHICreate       = "phi.create"
	ActionPHIUpdate       = "phi.update"
	ActionPHIDelete       = "phi.delete"
	ActionPHIExport       = "phi.export"
	ActionPHIImport       = "phi.import"
	ActionPatientRecord   = "patient.record"
	ActionProcedureRecord = "procedure.record"
	ActionDICOMStore      = "dicom.store"
	ActionDICOMMove       = "dicom.move"
	ActionDICOMDelete     = "dicom.delete"
	ActionDICOMQuery      = "dicom.query"
	ActionDICOMOther      = "dicom.other"
	ActionOrderCreate     = "order.create"
	ActionOrderView       = "order.view"
	ActionOrderUpdate     = "order.update"
	ActionOrderDelete     = "order.delete"
	ActionOrderRecord     = "order.record"
	ActionReportSign      = "report.sign"
	ActionSecurityAlert   = "security.alert"
	ActionRBACChange      = "admin.rbac_change"
	ActionHL7Exchange     = "data.hl7_exchange"
	ActionFHIROther       = "fhir.other"

	// The HIPAA guide's minimum events that the list above did not name (issue 7).
	ActionPHIQuery         = "phi.query"          // a search for patient data (FHIR search, PDQ); query_scope says how wide
	ActionPHIPrint         = "phi.print"          // patient data printed
	ActionPHIShare         = "phi.share"          // patient data shared with another party or organization
	ActionPatientMerge     = "patient.merge"      // patient records merged or linked (HL7 A40, A24)
	ActionPatientRegister  = "patient.register"   // a patient registered, admitted or updated (HL7 ADT)
	ActionOrderCancel      = "order.cancel"       // an order cancelled or discontinued (ORC-1 CA/DC/OC)
	ActionAppointment      = "order.schedule"     // an appointment booked, changed or cancelled (SIU)
	ActionResultPrelim     = "report.preliminary" // a preliminary result or report (OBR-25/OBX-11 P)
	ActionResultFinal      = "report.final"       // a final result (F)
	ActionResultCorrected  = "report.addendum"    // a corrected result or addendum (C)
	ActionDocument         = "report.document"    // a clinical document created or changed (MDM/TXA)
	ActionAuthMFA          = "auth.mfa"           // a multi-factor challenge
	ActionAuthTokenRefresh = "auth.token_refresh" // an access token refreshed
	ActionDICOMWorklist    = "dicom.worklist"     // a modality worklist query
	ActionDICOMCommit      = "dicom.commit"       // a storage commitment
	ActionConfigChange     = "admin.config_change"
	ActionKeyChange        = "admin.key_change"
	ActionPolicyChange     = "admin.policy_change"
	ActionDataExtract      = "data.extract" // a bulk extract of records
	ActionBackup           = "system.backup"
	ActionRestore          = "system.restore"
)

// DICOM EventTypeCodes that refine an EventID's action.
const (
	dicomTypeLogin         = "110122"
	dicomTypeLogout        = "110123"
	dicomTypeAppStart      = "110120"
	dicomTypeAppStop       = "110121"
	dicomTypeAttach        = "110124"
	dicomTypeDetach        = "110125"
	dicomTypeRolesChanged  = "110136"
	dicomTypeUserAttrsChgd = "110137"
)

// DICOMAction maps a DICOM audit EventID (CID 400, "110100".."110114"), its
// EventTypeCodes (CID 401/403) and EventActionCode (C/R/U/D/E) to the normalized action.
// It also takes the type codes 110122/110123 used as EventID, a deviation seen in the wild.
func DICOMAction(eventID string, typeCodes []string, actionCode string) string {
	has := func(c string) bool { return slices.Contains(typeCodes, c) }
	crud := func(create, read, update, del, other string) string {
		switch actionCode {
		case "C":
			return create
		case "R":
			return read
		case "U":
			return update
		case "D":
			return del
		}
		return other
	}
	switch eventID {
	case "110100":
		switch {
		case has(dicomTypeAppStart):
			return ActionAppStart
		case has(dicomTypeAppStop):
			return ActionAppStop
		}
		return ActionAppActivity
	case "110101":
		return ActionAuditLogUsed
	case "110102", "110104":
		if actionCode == "C" {
			return ActionDICOMStore
		}
		return ActionDICOMMove
	case "110103":
		return crud(ActionPHICreate, ActionPHIView, ActionPHIUpdate, ActionPHIDelete, ActionPHIView)
	case "110105":
		return ActionDICOMDelete
	case "110106":
		return ActionPHIExport
	case "110107":
		return ActionPHIImport
	case "110108":
		switch {
		case has(dicomTypeAttach):
			return ActionNetworkAttach
		case has(dicomTypeDetach):
			return ActionNetworkDetach
		}
		return ActionNetworkEntry
	case "110109":
		return crud(ActionOrderCreate, ActionOrderView, ActionOrderUpdate, ActionOrderDelete, ActionOrderRecord)
	case "110110":
		// A patient record read is a view of PHI, as a FHIR read of Patient is.
		return crud(ActionPHICreate, ActionPHIView, ActionPHIUpdate, ActionPHIDelete, ActionPatientRecord)
	case "110111":
		return crud(ActionPHICreate, ActionPHIView, ActionPHIUpdate, ActionPHIDelete, ActionProcedureRecord)
	case "110112":
		return ActionDICOMQuery
	case "110113":
		switch {
		case has(dicomTypeRolesChanged) || has(dicomTypeUserAttrsChgd):
			return ActionRBACChange
		case has("110128") || has("110129") || has("110130") || has("110131"):
			// Network, security, hardware, software configuration (PS3.16 CID 403).
			return ActionConfigChange
		}
		return ActionSecurityAlert
	case "110114":
		switch {
		case has(dicomTypeLogin):
			return ActionLogin
		case has(dicomTypeLogout):
			return ActionLogout
		}
		return ActionAuthenticate
	case dicomTypeLogin:
		if has(dicomTypeLogout) {
			return ActionLogout
		}
		return ActionLogin
	case dicomTypeLogout:
		return ActionLogout
	}
	return ActionDICOMOther
}

// DICOMActionCode is the EventActionCode to store: the source's when it gave one, else
// the one PS3.15 A.5.3 fixes for that event (empty where the event allows several).
func DICOMActionCode(eventID, given string) string {
	if given != "" {
		return given
	}
	switch eventID {
	case "110100", "110102", "110108", "110112", "110113", "110114", dicomTypeLogin, dicomTypeLogout:
		return "E"
	case "110101", "110106":
		return "R"
	case "110105":
		return "D"
	case "110107":
		return "C"
	}
	return ""
}
