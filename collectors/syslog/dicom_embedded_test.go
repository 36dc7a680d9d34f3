package syslog

import (
	"strings"
	"testing"
	"time"

	"github.com/edgeaudit/edgeaudit/audit"
)

// TestDICOMXMLAfterText: some senders put a text prefix before the AuditMessage (a
// logger tag, "ATNA:", a second header). The XML is then not the whole MSG, and before
// this test it was kept as free text, patient ID and name in clear. It must be parsed
// from where it starts, or, if that fails, dropped like any other unparsable DICOM XML.
func TestDICOMXMLAfterText(t *testing.T) {
	const mrn, name = "MRN5544332", "ZWEIBRUECKEN^ANNA"
	xml := `<?xml version="1.0" encoding="UTF-8"?><AuditMessage>` +
		`<EventIdentification EventActionCode="R" EventDateTime="2026-12-01T12:00:01Z" EventOutcomeIndicator="0">` +
		`<EventID csd-code="110103" codeSystemName="DCM" originalText="DICOM Instances Accessed"/></EventIdentification>` +
		`<ActiveParticipant UserID="rad02" UserIsRequestor="true"/><AuditSourceIdentification AuditSourceID="PACS1"/>` +
		`<ParticipantObjectIdentification ParticipantObjectID="` + mrn + `^^^HOSP" ParticipantObjectTypeCode="1" ParticipantObjectTypeCodeRole="1">` +
		`<ParticipantObjectIDTypeCode csd-code="2"/><ParticipantObjectName>` + name + `</ParticipantObjectName></ParticipantObjectIdentification></AuditMessage>`
	tests := []struct {
		name, msg string
		wantKind  string
	}{
		{"tag before the declaration", "ATNA: " + xml, audit.KindDICOM},
		{"tag before the root", "audit " + strings.TrimPrefix(xml, `<?xml version="1.0" encoding="UTF-8"?>`), audit.KindDICOM},
		{"broken XML after text", "ATNA: " + strings.Replace(xml, "</AuditMessage>", "", 1), audit.KindSyslog},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := newTestParser(t)
			var ev audit.Event
			resetEvent(&ev, "tcp", "127.0.0.1")
			frame := []byte("<85>1 2026-12-01T12:00:00.000Z pacs1 viewer - - - " + tt.msg)
			if !p.parse(&ev, frame, time.Now().UTC()) {
				t.Fatal("frame not parsed")
			}
			if got := ev.Source.Kind; got != tt.wantKind {
				t.Errorf("kind=%q, want %q", got, tt.wantKind)
			}
			enc := string(ev.AppendJSON(nil))
			for _, phi := range []string{mrn, "ZWEIBRUECKEN"} {
				if strings.Contains(enc, phi) {
					t.Errorf("event holds %q in clear: %s", phi, enc)
				}
			}
		})
	}
}
