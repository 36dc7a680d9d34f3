package integration

import (
	"fmt"
	"os"
	"strings"
	"testing"
	"time"
)

// onePatientMRN is the one patient of TestOnePatientFourSources, with its assigning
// authority as each standard spells it. The name and birth date must never be stored.
const (
	onePatientMRN   = "MRN7788991"
	onePatientName  = "QUINTANILLA"
	onePatientBirth = "19610214"
)

// TestOnePatientFourSources sends one patient, identified by the same MRN, through all
// four collectors: HL7 v2 (PID-3 as a CX with an assigning authority), DICOM audit XML in
// syslog (ParticipantObjectID with the ^^^ authority suffix), a FHIR AuditEvent (an
// entity identifier with a system), and plain syslog text (PatientID=...). Every event
// must carry the same patient token, so "every access to this patient" is one query
// whatever the source; the MRN, the name and the birth date are nowhere in the chain.
func TestOnePatientFourSources(t *testing.T) {
	d := startClinical(t, clinicalConfig{HL7: true, FHIR: true})

	// HL7 v2.5.1 ADT^A08 (update patient information), PID-3 CX with CX.4 HOSP.
	hl7 := "MSH|^~\\&|RIS|IMAGING|EDGE|SITE|20261201120000||ADT^A08^ADT_A01|ONEPAT1|P|2.5.1\r" +
		"EVN|A08|20261201120000|||tech01^Tech^Tina\r" +
		"PID|1||" + onePatientMRN + "^^^HOSP^MR||" + onePatientName + "^ANA||" + onePatientBirth + "|F\r"
	c, err := dialMLLP(d.mllp)
	if err != nil {
		t.Fatal(err)
	}
	ack, err := c.exchange([]byte(hl7), 20*time.Second)
	c.Close()
	if err != nil {
		t.Fatal(err)
	}
	if code, _, _, _ := ackMSA(ack); code != "AA" {
		t.Fatalf("HL7 ACK %q, want AA", code)
	}

	// DICOM PS3.15 A.5.3.2 Instances Accessed (110103), the patient as participant object
	// type 1 (person), role 1 (patient), ID type 2 (patient number).
	xml := `<?xml version="1.0" encoding="UTF-8"?><AuditMessage>` +
		`<EventIdentification EventActionCode="R" EventDateTime="2026-12-01T12:00:01Z" EventOutcomeIndicator="0">` +
		`<EventID csd-code="110103" codeSystemName="DCM" originalText="DICOM Instances Accessed"/></EventIdentification>` +
		`<ActiveParticipant UserID="rad02" UserIsRequestor="true"/>` +
		`<AuditSourceIdentification AuditSourceID="PACS1"/>` +
		`<ParticipantObjectIdentification ParticipantObjectID="` + onePatientMRN + `^^^HOSP" ParticipantObjectTypeCode="1" ParticipantObjectTypeCodeRole="1">` +
		`<ParticipantObjectIDTypeCode csd-code="2" codeSystemName="RFC-3881" originalText="Patient Number"/>` +
		`<ParticipantObjectName>` + onePatientName + `^ANA</ParticipantObjectName></ParticipantObjectIdentification>` +
		`</AuditMessage>`
	sendOctet(t, d.tcp, []string{xml}) // RFC 5424 frame around the XML, as sendOctet does

	// FHIR R4 AuditEvent: a REST read of the patient, the entity identified by MRN.
	fhirBody := `{"resourceType":"AuditEvent",` +
		`"type":{"system":"http://terminology.hl7.org/CodeSystem/audit-event-type","code":"rest"},` +
		`"subtype":[{"system":"http://hl7.org/fhir/restful-interaction","code":"read"}],"action":"R",` +
		`"recorded":"2026-12-01T12:00:02Z","outcome":"0",` +
		`"agent":[{"requestor":true,"who":{"identifier":{"value":"rad03"}}}],` +
		`"source":{"observer":{"display":"ehr"}},` +
		`"entity":[{"what":{"identifier":{"system":"urn:oid:1.2.840.99999.1","value":"` + onePatientMRN + `"}},` +
		`"type":{"system":"http://terminology.hl7.org/CodeSystem/audit-entity-type","code":"1"},` +
		`"role":{"system":"http://terminology.hl7.org/CodeSystem/object-role","code":"1"}}]}`
	res := curlPost(t, peer(t, "curl", "CURL"), "http://"+d.fhir+"/AuditEvent", "application/fhir+json", []byte(fhirBody))
	if res.status != 201 {
		t.Fatalf("FHIR POST: %d, want 201\n%s", res.status, res.body)
	}

	// Plain syslog text from a viewer.
	sendOctet(t, d.tcp, []string{rfc5424("viewer: opened study for PatientID=" + onePatientMRN + " on RAD-WS-04")})

	eventually(t, 30*time.Second, func() (bool, string) {
		h, err := d.healthz(t.Context())
		return err == nil && h.Committed >= 5, fmt.Sprintf("committed %d of 5 events", h.Committed)
	})
	d.stop(t)

	tokens := map[string]string{} // source kind -> patient token
	for _, e := range exportClinical(t, d.dataDir, true) {
		if e.Source.Kind == "self" {
			continue
		}
		if e.Patient == "" {
			t.Errorf("%s event %s has no patient token", e.Source.Kind, e.Action)
			continue
		}
		if prev, ok := tokens[e.Source.Kind]; ok && prev != e.Patient {
			t.Errorf("two tokens from %s: %s, %s", e.Source.Kind, prev, e.Patient)
		}
		tokens[e.Source.Kind] = e.Patient
		for _, phi := range []string{onePatientMRN, onePatientName, onePatientBirth} {
			if strings.Contains(e.line, phi) {
				t.Errorf("%s event holds %q in clear: %s", e.Source.Kind, phi, e.line)
			}
		}
	}
	for _, kind := range []string{"hl7", "dicom", "fhir", "syslog"} {
		if tokens[kind] == "" {
			t.Errorf("no %s event with a patient token (tokens: %v)", kind, tokens)
		}
	}
	want := tokens["hl7"]
	for kind, tok := range tokens {
		if tok != want {
			t.Errorf("patient token from %s is %s, from hl7 %s: one patient, several tokens", kind, tok, want)
		}
	}
	raw, err := os.ReadFile(d.dataDir + "/spool.db")
	if err != nil {
		t.Fatal(err)
	}
	for _, phi := range []string{onePatientMRN, onePatientName, onePatientBirth} {
		if strings.Contains(string(raw), phi) {
			t.Errorf("spool.db holds %q in clear", phi)
		}
	}
}
