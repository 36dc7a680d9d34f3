package fhir

import (
	"bytes"
	"strings"
	"testing"

	"github.com/edgeaudit/edgeaudit/audit"
)

// The outcome description is the sender's free text; redaction rules apply to it.
func TestOutcomeDescriptionRedacted(t *testing.T) {
	tok, _ := audit.NewTokenizer(bytes.Repeat([]byte{5}, 32))
	red, _ := audit.NewRedactor(tok, audit.DefaultRedactRules)
	r, err := decodeJSON([]byte(`{"resourceType":"AuditEvent","type":{"system":"http://dicom.nema.org/resources/ontology/DCM","code":"110110"},"action":"R","recorded":"2026-11-27T08:00:00Z","outcome":"4","outcomeDesc":"record locked for MRN: 555-0101 by another user","agent":[{"who":{"display":"tech01"},"requestor":true}],"source":{"observer":{"display":"ris"}}}`))
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		name   string
		redact *audit.Redactor
		leaks  bool
	}{{"with rules", red, false}, {"without rules", nil, true}} {
		var ev audit.Event
		mapper{tok: tok, redact: tt.redact}.event(r, &ev)
		if got := strings.Contains(ev.Reason, "555-0101"); got != tt.leaks {
			t.Errorf("%s: reason %q holds the MRN=%v, want %v", tt.name, ev.Reason, got, tt.leaks)
		}
		if ev.Action != audit.ActionPHIView || ev.Outcome != audit.OutcomeMinorFailure {
			t.Errorf("%s: action %s outcome %s", tt.name, ev.Action, ev.Outcome)
		}
	}
}
