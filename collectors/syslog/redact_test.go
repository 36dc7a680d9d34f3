package syslog

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"github.com/edgeaudit/edgeaudit/audit"
)

func TestRedactSyslogText(t *testing.T) {
	tok, _ := audit.NewTokenizer(bytes.Repeat([]byte{9}, 32))
	red, err := audit.NewRedactor(tok, audit.DefaultRedactRules)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name, frame, gone, detail string
	}{
		{"rfc5424", "<38>1 2026-11-27T08:00:00Z ris1 ris - - - order placed for MRN: 99881 by tech7", "99881", "1"},
		{"rfc3164", "<38>Nov 27 08:00:00 pacs1 viewer: opened DOB=1950-02-03 study", "1950-02-03", "1"},
		{"malformed kept", "garbage PatientID=XYZ-77 end", "XYZ-77", "1"},
		{"nothing to redact", "<38>1 2026-11-27T08:00:00Z h a - - - Accepted publickey for tech", "", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := newParser(time.UTC)
			p.redact = red
			var ev audit.Event
			resetEvent(&ev, "tcp", "127.0.0.1")
			if !p.parse(&ev, []byte(tt.frame), time.Now()) {
				t.Fatal("frame not kept")
			}
			if tt.gone != "" && strings.Contains(ev.Message, tt.gone) {
				t.Fatalf("message %q still holds %q", ev.Message, tt.gone)
			}
			if got := ev.Detail[DetailRedacted]; got != tt.detail {
				t.Fatalf("detail redacted=%q, want %q", got, tt.detail)
			}
			if tt.gone != "" && !strings.Contains(ev.Message, "_") {
				t.Fatalf("message %q has no token", ev.Message)
			}
		})
	}
}

// A login gets auth.login whether it came as syslog, DICOM XML or FHIR.
func TestClassifyLogins(t *testing.T) {
	tests := []struct {
		frame, action, outcome, user string
	}{
		{"<86>1 2026-11-27T08:00:00Z ws1 sshd 42 - - Accepted publickey for tech01 from 10.0.0.7 port 51514 ssh2", audit.ActionLogin, audit.OutcomeSuccess, "tech01"},
		{"<86>Nov 27 08:00:00 ws1 sshd[42]: Failed password for invalid user admin from 10.0.0.9 port 2222 ssh2", audit.ActionLogin, audit.OutcomeMinorFailure, "admin"},
		{"<86>Nov 27 08:00:00 ws1 sshd[42]: Failed password for rad2 from 10.0.0.9 port 2222 ssh2", audit.ActionLogin, audit.OutcomeMinorFailure, "rad2"},
		{"<86>Nov 27 08:00:00 ws1 sshd[42]: Disconnected from user tech01 10.0.0.7 port 51514", audit.ActionLogout, audit.OutcomeSuccess, "tech01"},
		{"<86>Nov 27 08:00:00 ws1 cron[42]: Accepted nothing", audit.ActionSystemLog, audit.OutcomeUnknown, ""},
	}
	for _, tt := range tests {
		p := newParser(time.UTC)
		var ev audit.Event
		resetEvent(&ev, "tcp", "127.0.0.1")
		p.parse(&ev, []byte(tt.frame), time.Now())
		if ev.Action != tt.action || ev.Outcome != tt.outcome || ev.Actor.User != tt.user {
			t.Errorf("%q: action=%s outcome=%s user=%q, want %s %s %q", tt.frame, ev.Action, ev.Outcome, ev.Actor.User, tt.action, tt.outcome, tt.user)
		}
	}
}

// A DICOM audit message's EventOutcomeDescription is free text too.
func TestRedactDICOMOutcomeDescription(t *testing.T) {
	tok, _ := audit.NewTokenizer(bytes.Repeat([]byte{9}, 32))
	red, _ := audit.NewRedactor(tok, audit.DefaultRedactRules)
	xml := `<?xml version="1.0"?><AuditMessage><EventIdentification EventActionCode="R" EventDateTime="2026-11-27T08:00:00Z" EventOutcomeIndicator="4"><EventID csd-code="110110" codeSystemName="DCM" originalText="Patient Record"/><EventOutcomeDescription>denied for PatientID=XQ-7781</EventOutcomeDescription></EventIdentification><ActiveParticipant UserID="tech01" UserIsRequestor="true"/><AuditSourceIdentification AuditSourceID="RIS1"/></AuditMessage>`
	p := newParser(time.UTC)
	p.tok, p.redact = tok, red
	var ev audit.Event
	resetEvent(&ev, "tcp", "127.0.0.1")
	p.parse(&ev, []byte("<85>1 2026-11-27T08:00:00Z ris1 ris - IHE+RFC-3881 - "+xml), time.Now())
	if ev.Source.Kind != audit.KindDICOM {
		t.Fatalf("kind %s, want dicom (detail %v)", ev.Source.Kind, ev.Detail)
	}
	if strings.Contains(ev.Reason, "XQ-7781") || !strings.Contains(ev.Reason, "denied for PatientID=pat_") {
		t.Fatalf("reason %q: want the id replaced by a token", ev.Reason)
	}
}

// One MRN, one token, within this collector: plain syslog text ("PatientID=..."),
// structured data and a DICOM audit message with the CX form "ID^^^AUTHORITY" all give
// Tokenizer.PatientToken(ID, ...), and none keeps the MRN in clear.
func TestOnePatientSyslogAndDICOM(t *testing.T) {
	const mrn = "MRN7788991"
	tok := testTokenizer(t)
	red, err := audit.NewRedactor(tok, audit.DefaultRedactRules)
	if err != nil {
		t.Fatal(err)
	}
	xml := `<AuditMessage><EventIdentification EventActionCode="R" EventDateTime="2026-12-01T12:00:01Z" EventOutcomeIndicator="0"><EventID csd-code="110103"/></EventIdentification>` +
		`<ActiveParticipant UserID="rad02" UserIsRequestor="true"/><AuditSourceIdentification AuditSourceID="PACS1"/>` +
		`<ParticipantObjectIdentification ParticipantObjectID="` + mrn + `^^^HOSP" ParticipantObjectTypeCode="1" ParticipantObjectTypeCodeRole="1"><ParticipantObjectIDTypeCode csd-code="2"/></ParticipantObjectIdentification></AuditMessage>`
	tests := []struct{ name, frame string }{
		{"syslog text", "<134>1 2026-12-01T12:00:03Z ws4 viewer - - - opened study for PatientID=" + mrn + " on RAD-WS-04"},
		{"structured data", `<134>1 2026-12-01T12:00:03Z ws4 viewer - - [app@32473 PatientID="` + mrn + `"] opened study`},
		{"dicom audit xml", "<85>1 2026-12-01T12:00:01Z pacs1 pacs - IHE+RFC-3881 - " + xml},
	}
	want := tok.PatientToken(mrn, "HOSP")
	if other := tok.PatientToken(mrn, ""); other != want {
		t.Logf("note: the tokenizer gives different tokens with and without the authority (%s, %s)", want, other)
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := newTestParser(t)
			p.redact = red
			var ev audit.Event
			resetEvent(&ev, "tcp", "127.0.0.1")
			p.parse(&ev, []byte(tt.frame), time.Now())
			if ev.Patient == "" || ev.Patient != want {
				t.Errorf("patient=%q, want %q", ev.Patient, want)
			}
			if out := string(ev.AppendJSON(nil)); strings.Contains(out, mrn) {
				t.Errorf("event holds the MRN in clear: %s", out)
			}
		})
	}
}
