// Package audit defines the normalized audit event that every collector produces and
// every later stage stores, seals and ships, plus its one canonical JSON encoding.
package audit

import (
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"sync/atomic"
	"time"
)

// Source kinds (the contract's `source.kind`).
const (
	KindSyslog = "syslog"
	KindDICOM  = "dicom"
	KindHL7    = "hl7"
	KindFHIR   = "fhir"
	KindSelf   = "self"
)

// Outcomes (the contract's `outcome`). OutcomeUnknown is used where the source does not
// state one (plain syslog); it is documented in docs/taxonomy.md.
const (
	OutcomeSuccess        = "success"
	OutcomeMinorFailure   = "minor_failure"
	OutcomeSeriousFailure = "serious_failure"
	OutcomeMajorFailure   = "major_failure"
	OutcomeUnknown        = "unknown"
)

// Event is one normalized audit record. Field names are a contract shared with the central
// side (see docs/format.md); add fields, never rename them.
type Event struct {
	ID       string    `json:"id"`
	Time     time.Time `json:"time"`     // when the source says it happened, UTC
	Received time.Time `json:"received"` // when this appliance received it, UTC
	Source   Source    `json:"source"`

	Action     string `json:"action"`                // taxonomy code, e.g. auth.login
	ActionCode string `json:"action_code,omitempty"` // C/R/U/D/E
	Outcome    string `json:"outcome"`

	Actor         Actor    `json:"actor"`
	Patient       string   `json:"patient,omitempty"`     // token, never a raw identifier
	PatientAge    string   `json:"patient_age,omitempty"` // age band (AgeBand), never a birth date
	Study         []string `json:"study,omitempty"`       // tokens
	Accession     string   `json:"accession,omitempty"`   // token
	Reason        string   `json:"reason,omitempty"`
	Count         int      `json:"count,omitempty"`
	CorrelationID string   `json:"correlation_id,omitempty"`

	// Object is what was acted on, by type, never by value: "Patient", "ImagingStudy",
	// "DiagnosticReport", a DICOM SOP class name, an HL7 message structure.
	Object string `json:"object,omitempty"`
	// Purpose is the purpose of use the source gives (e.g. TREAT, HPAYMT, ETREAT);
	// BreakGlass marks emergency access ("break the glass") as such.
	Purpose    string `json:"purpose,omitempty"`
	BreakGlass bool   `json:"break_glass,omitempty"`
	// Method and Endpoint name an API call (FHIR, DICOMweb): "GET", "/Patient" or
	// "/studies/{uid}/series" with identifiers replaced, never a query string in clear.
	Method   string `json:"method,omitempty"`
	Endpoint string `json:"endpoint,omitempty"`
	// QueryScope says what a query (C-FIND, PDQ, a FHIR search) asked for: "patient"
	// when one patient is named (Patient then holds the token), "broad" for queries
	// without a patient, with wildcards or over all patients. The HIPAA guide asks for
	// weekly review of broad queries.
	QueryScope string `json:"query_scope,omitempty"`
	// ErrorCode is the source's own error or status code for a failure (HL7 ERR-3,
	// FHIR OperationOutcome code, DICOM status), beside the normalized outcome.
	ErrorCode string `json:"error_code,omitempty"`

	// Codes keeps the source's own codes beside the taxonomy code (e.g. DICOM EventID).
	Codes []Code `json:"codes,omitempty"`
	// Message is the human-readable text of the source (syslog MSG); PHI redaction applies.
	Message string `json:"message,omitempty"`
	// Malformed marks input that was kept although it did not parse as its format.
	Malformed bool `json:"malformed,omitempty"`
	// ClockUnsynced marks an event received while the appliance's clock was not known
	// to be right (NTP unsynced, beyond ntp.max_offset, or not checked yet): its times
	// are the local clock's. The batch header's time_sync says by how much.
	ClockUnsynced bool `json:"clock_unsynced,omitempty"`
	// Detail holds small, non-PHI facts without a field of their own (self-audit counters,
	// syslog structured data). Keys are encoded in sorted order.
	Detail map[string]string `json:"detail,omitempty"`

	RawSHA256 string `json:"raw_sha256"` // hex SHA-256 of the bytes as received
}

// Values of Event.QueryScope.
const (
	QueryScopePatient = "patient" // the query names one patient; Patient holds the token
	QueryScopeBroad   = "broad"   // no patient, wildcards, several patients, or unreadable
)

// Source says where an event came from.
type Source struct {
	Kind      string `json:"kind"`
	Host      string `json:"host,omitempty"`
	IP        string `json:"ip,omitempty"`
	App       string `json:"app,omitempty"`
	AETitle   string `json:"ae_title,omitempty"`
	Transport string `json:"transport,omitempty"` // udp|tcp|tls|mllp|http|https|internal
	ProcID    string `json:"proc_id,omitempty"`
	MsgID     string `json:"msg_id,omitempty"`
	Facility  string `json:"facility,omitempty"` // syslog facility keyword
	Severity  string `json:"severity,omitempty"` // syslog severity keyword
	// Workstation is the machine where a person acted, when the source names both (the
	// person is the actor): a workstation host, a DICOM network access point or process.
	Workstation string `json:"workstation,omitempty"`
}

// Actor is who did it: the person when a source names a person and a machine, else
// the process or AE. User is a workforce ID (never a patient's name); docs/taxonomy.md
// gives each source's rules.
type Actor struct {
	User      string `json:"user,omitempty"`
	Role      string `json:"role,omitempty"`
	Session   string `json:"session,omitempty"`
	Requestor bool   `json:"requestor,omitempty"`
}

// Code is one source-specific code kept alongside the taxonomy.
type Code struct {
	System string `json:"system"`
	Code   string `json:"code"`
	Text   string `json:"text,omitempty"`
}

var (
	idPrefix  [4]byte
	idCounter atomic.Uint64
)

func init() {
	if _, err := rand.Read(idPrefix[:]); err != nil {
		// crypto/rand never fails on supported platforms (Go 1.24+ guarantees it).
		binary.BigEndian.PutUint32(idPrefix[:], uint32(time.Now().UnixNano()))
	}
}

// NewID returns a 32-hex-digit event id: 48 bits of Unix milliseconds, 32 random bits
// fixed per process and a 48-bit counter, so ids sort roughly by time and never repeat
// within a process. It costs no system call, which matters at 100k+ events/s.
func NewID(now time.Time) string {
	var b [16]byte
	ms := uint64(now.UnixMilli())
	b[0], b[1], b[2], b[3], b[4], b[5] = byte(ms>>40), byte(ms>>32), byte(ms>>24), byte(ms>>16), byte(ms>>8), byte(ms)
	copy(b[6:10], idPrefix[:])
	n := idCounter.Add(1)
	b[10], b[11], b[12], b[13], b[14], b[15] = byte(n>>40), byte(n>>32), byte(n>>24), byte(n>>16), byte(n>>8), byte(n)
	return hex.EncodeToString(b[:])
}
