package main

import (
	"bytes"
	"regexp"
	"strings"
	"testing"
)

// The demo runs the whole flow and its report says what a reader needs: every source's
// events at central, the chain verified, tokens for each identifier, none in clear.
func TestDemo(t *testing.T) {
	var out bytes.Buffer
	if err := (&DemoCommand{Out: &out}).Run(t.Context(), []string{"-dir", t.TempDir()}); err != nil {
		t.Fatalf("demo: %v\n%s", err, out.String())
	}
	report := out.String()
	for _, want := range []*regexp.Regexp{
		regexp.MustCompile(`(?m)^  dicom\s+phi\.view\s+1$`),
		regexp.MustCompile(`(?m)^  fhir\s+phi\.view\s+1$`),
		regexp.MustCompile(`(?m)^  hl7\s+patient\.register\s+1$`),
		regexp.MustCompile(`(?m)^  hl7\s+order\.create\s+1$`),
		regexp.MustCompile(`(?m)^  syslog\s+auth\.login\s+2$`),
		regexp.MustCompile(`(?m)^  self\s+audit\.start\s+1$`),
		regexp.MustCompile(`2 HL7 messages over MLLP \(AA, AA\)`),
		regexp.MustCompile(`central's copy: \d+ batches, signatures, Merkle roots and links verified`),
		regexp.MustCompile(`3 sent in clear, stored as 3 tokens: pat_[0-9a-f]{32} pat_`),
		regexp.MustCompile(`query by patient token pat_[0-9a-f]{32}: \d+ events`),
		regexp.MustCompile(`(?m)^identifiers in clear in central's store: 0$`),
		regexp.MustCompile(`(?m)^demo ok`),
	} {
		if !want.MatchString(report) {
			t.Errorf("report lacks %s\n%s", want, report)
		}
	}
	for _, id := range demoPatientIDs {
		if strings.Contains(report, id) {
			t.Errorf("the report prints the identifier %s", id)
		}
	}
}
