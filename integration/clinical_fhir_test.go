package integration

import (
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"
)

// fhirTestMaxBody is the fhir.max_body_bytes of the test daemons: small, yet above every
// corpus sample (the largest is about 12 KiB), so that only the test's own oversize body
// gets 413.
const fhirTestMaxBody = 64 << 10

// TestClinicalFHIRForms posts the forms the FHIR collector takes through the real curl:
// single R4 and R5 JSON and XML AuditEvents (201 + Location), batch and transaction
// Bundles (200), a wrong resource type and truncated JSON (400 OperationOutcome), an
// oversize body (413), then every sample of the FHIR corpus. The accepted ones must be
// fhir events, the refused ones audit.input_rejected self events with their reasons,
// and the chain must verify.
func TestClinicalFHIRForms(t *testing.T) {
	t.Parallel()
	clinicalCorpus(t)
	curl := peer(t, "curl", "CURL")
	d := startClinical(t, clinicalConfig{FHIR: true, MaxBodyBytes: fhirTestMaxBody})
	base := "http://" + d.fhir + "/"
	const jsonCT, xmlCT = "application/fhir+json", "application/fhir+xml"
	r4 := mustRead(t, filepath.Join(clinicalCorpus(t), "fhir", "r4", "r4-example-login-110114.json"))
	r4b := mustRead(t, filepath.Join(clinicalCorpus(t), "fhir", "r4", "r4-example-logout-110114.json"))
	r5 := mustRead(t, filepath.Join(clinicalCorpus(t), "fhir", "r5", "r5-example-login-110122.json"))
	x := mustRead(t, filepath.Join(clinicalCorpus(t), "fhir", "xml", "gematik-erp-auditevent.xml"))

	var accepted int
	locations := map[string]string{} // event id -> form
	single := func(name, ct string, body []byte) {
		t.Helper()
		r := curlPost(t, curl, base+"AuditEvent", ct, body)
		loc := r.header("Location")
		if r.status != 201 || !strings.HasPrefix(loc, "/AuditEvent/") {
			t.Errorf("%s: status %d Location %q, want 201 with /AuditEvent/<id>: %s", name, r.status, loc, r.body)
			return
		}
		locations[strings.TrimPrefix(loc, "/AuditEvent/")] = name
		accepted++
	}
	single("R4 JSON", jsonCT, r4)
	single("R5 JSON", jsonCT, r5)
	single("XML", xmlCT, x)

	bundle := func(typ string, entries ...[]byte) []byte {
		var es []any
		for _, e := range entries {
			es = append(es, map[string]any{
				"resource": json.RawMessage(e),
				"request":  map[string]string{"method": "POST", "url": "AuditEvent"},
			})
		}
		b, err := json.Marshal(map[string]any{"resourceType": "Bundle", "type": typ, "entry": es})
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	for _, tt := range []struct {
		typ     string
		entries [][]byte
	}{
		{"batch", [][]byte{r4, r5}},
		{"transaction", [][]byte{r4b, r5, r4}},
	} {
		r := curlPost(t, curl, base, jsonCT, bundle(tt.typ, tt.entries...))
		if n := strings.Count(r.body, "201 Created"); r.status != 200 || n != len(tt.entries) ||
			!strings.Contains(r.body, `"`+tt.typ+`-response"`) {
			t.Errorf("%s Bundle: status %d with %d entries created, want 200 with %d in a %s-response: %s",
				tt.typ, r.status, n, len(tt.entries), tt.typ, r.body)
			continue
		}
		accepted += len(tt.entries)
	}

	oversize := []byte(`{"resourceType":"AuditEvent","outcomeDesc":"` + strings.Repeat("x", fhirTestMaxBody) + `"}`)
	refused := []struct {
		name, path string
		body       []byte
		status     int
		reason     string
	}{
		{"wrong resource type", "AuditEvent", mustRead(t, filepath.Join(clinicalCorpus(t), "bad", "fhir-json-wrong-resource-type.json")), 400, "wrong_resource_type"},
		{"truncated JSON", "AuditEvent", mustRead(t, filepath.Join(clinicalCorpus(t), "bad", "fhir-json-truncated.json")), 400, "bad_json"},
		{"oversize body", "AuditEvent", oversize, 413, "too_large"},
	}
	for _, tt := range refused {
		r := curlPost(t, curl, base+tt.path, jsonCT, tt.body)
		if r.status != tt.status || !strings.Contains(r.body, `"OperationOutcome"`) {
			t.Errorf("%s: status %d, want %d with an OperationOutcome: %s", tt.name, r.status, tt.status, r.body)
		}
	}

	cr := postFHIRCorpus(t, curl, base)
	d.waitMetric(t, float64(accepted+cr.events), "edgeaudit_fhir_events_total")
	d.stop(t)

	evs := exportClinical(t, d.dataDir, false)
	fhirEvs := eventsOfKind(evs, "fhir")
	if len(fhirEvs) != accepted+cr.events {
		t.Errorf("%d fhir events, want %d (%d forms + %d corpus)", len(fhirEvs), accepted+cr.events, accepted, cr.events)
	}
	ids := map[string]bool{}
	for _, e := range fhirEvs {
		ids[e.ID] = true
		if e.Source.Transport != "http" || e.Source.IP != "127.0.0.1" {
			t.Errorf("fhir event %s: transport %q from %q, want http from 127.0.0.1", e.ID, e.Source.Transport, e.Source.IP)
		}
	}
	for id, form := range locations {
		if !ids[id] {
			t.Errorf("%s: the Location's event %s is not in the export", form, id)
		}
	}
	want := map[string]int{"wrong_resource_type": 1, "bad_json": 1, "too_large": 1}
	if cr.searchsets > 0 {
		want["unsupported_bundle"] = cr.searchsets
	}
	got := rejectedReasons(evs, "fhir")
	for r, n := range want {
		if got[r] != n {
			t.Errorf("audit.input_rejected %s: %d events, want %d", r, got[r], n)
		}
	}
	for r, n := range got {
		if _, ok := want[r]; !ok {
			t.Errorf("unexpected audit.input_rejected %s: %d events", r, n)
		}
	}
	v := mustVerifyData(t, d.dataDir)
	t.Logf("forms: %d AuditEvents accepted, %d refused (%v); corpus: %d files, %d AuditEvents accepted, %d Bundles (%d search sets refused and re-posted); "+
		"%d fhir events exported; chain: %d batches, %d events",
		accepted, len(refused), got, cr.files, cr.events, cr.bundles, cr.searchsets, len(fhirEvs), v.Batches, v.Events)
}
