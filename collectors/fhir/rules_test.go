package fhir

import (
	"encoding/base64"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/edgeaudit/edgeaudit/audit"
)

// mapJSON decodes one AuditEvent given as JSON and maps it.
func mapJSON(t *testing.T, tok *audit.Tokenizer, body string) audit.Event {
	t.Helper()
	r, err := decodeJSON([]byte(body))
	if err != nil {
		t.Fatalf("decode: %v\n%s", err, body)
	}
	var ev audit.Event
	mapper{tok: tok}.event(r, &ev)
	return ev
}

// restEvent is an R4 REST AuditEvent with the given interaction, agents and entities.
func restEvent(interaction, agents, entities string) string {
	return `{"resourceType":"AuditEvent",` +
		`"type":{"system":"http://terminology.hl7.org/CodeSystem/audit-event-type","code":"rest"},` +
		`"subtype":[{"system":"http://hl7.org/fhir/restful-interaction","code":"` + interaction + `"}],` +
		`"recorded":"2026-03-15T09:00:00Z","outcome":"0",` +
		`"source":{"observer":{"reference":"Device/srv","display":"srv.example.org"}},` +
		`"agent":[` + agents + `],"entity":[` + entities + `]}`
}

const (
	agHuman      = `{"type":{"coding":[{"system":"http://terminology.hl7.org/CodeSystem/extra-security-role-type","code":"humanuser"}]},"who":{"identifier":{"value":"rad.lee"}},"requestor":%s}`
	agSourceMach = `{"type":{"coding":[{"system":"http://dicom.nema.org/resources/ontology/DCM","code":"110153"}]},"who":{"identifier":{"value":"WS_AE"}},"requestor":%s,"network":{"address":"ws-9.example.org"}}`
)

func agent(tmpl, requestor string) string { return strings.Replace(tmpl, "%s", requestor, 1) }

// TestActorRules pins who the actor is and where it happened (issue 7 item 1): the
// person over the machine, the machine as the workstation, a single requesting machine
// as the actor, the observer never the workstation, a patient never the actor.
func TestActorRules(t *testing.T) {
	tok := testTokenizer(t)
	tests := []struct {
		name            string
		agents          string
		wantUser        string
		wantRole        string
		wantRequestor   bool
		wantWorkstation string
		wantNetwork     string // detail["actor.network"]
		wantSession     string
		wantPatient     string
	}{
		{name: "person requestor, machine beside it",
			agents:   agent(agHuman, "true") + "," + agent(agSourceMach, "false"),
			wantUser: "rad.lee", wantRequestor: true, wantWorkstation: "ws-9.example.org"},
		{name: "two requestors, machine first",
			agents:   agent(agSourceMach, "true") + "," + agent(agHuman, "true"),
			wantUser: "rad.lee", wantRequestor: true, wantWorkstation: "ws-9.example.org"},
		{name: "no requestor marked: the person",
			agents:   agent(agSourceMach, "false") + "," + agent(agHuman, "false"),
			wantUser: "rad.lee", wantWorkstation: "ws-9.example.org"},
		{name: "requesting machine, person not marked requestor",
			agents:   agent(agSourceMach, "true") + "," + agent(agHuman, "false"),
			wantUser: "rad.lee", wantWorkstation: "ws-9.example.org"},
		{name: "single requesting machine stays the actor",
			agents:   agent(agSourceMach, "true") + `,{"type":{"coding":[{"system":"http://dicom.nema.org/resources/ontology/DCM","code":"110152"}]},"who":{"identifier":{"value":"PACS"}},"requestor":false}`,
			wantUser: "WS_AE", wantRole: "110153", wantRequestor: true, wantNetwork: "ws-9.example.org"},
		{name: "a recipient practitioner is not the actor (disclosure)",
			agents:   agent(agSourceMach, "true") + `,{"type":{"coding":[{"system":"http://dicom.nema.org/resources/ontology/DCM","code":"110152"}]},"who":{"reference":"Practitioner/p1","display":"Dr Who"},"requestor":false}`,
			wantUser: "WS_AE", wantRole: "110153", wantRequestor: true, wantNetwork: "ws-9.example.org"},
		{name: "the observer is not the workstation (BALP server agent)",
			agents:   `{"type":{"coding":[{"system":"http://dicom.nema.org/resources/ontology/DCM","code":"110153"}]},"who":{"reference":"Device/srv"},"requestor":false,"network":{"address":"http://srv.example.org/fhir"}},` + agent(agSourceMach, "false") + "," + agent(agHuman, "true"),
			wantUser: "rad.lee", wantRequestor: true, wantWorkstation: "ws-9.example.org"},
		{name: "Device agent named by display",
			agents:   `{"who":{"reference":"Device/ws12","display":"WS-12"},"requestor":true},{"who":{"reference":"Practitioner/t4","identifier":{"value":"tech.bo"}},"requestor":true}`,
			wantUser: "tech.bo", wantRequestor: true, wantWorkstation: "WS-12"},
		{name: "person alone: own network address is the workstation (R5 networkString)",
			agents:   `{"who":{"identifier":{"value":"rad.lee"}},"type":{"coding":[{"code":"humanuser"}]},"requestor":true,"networkString":"10.0.0.5"}`,
			wantUser: "rad.lee", wantRequestor: true, wantWorkstation: "10.0.0.5"},
		{name: "session from the token id in policy; a consent URL is not one",
			agents:   `{"who":{"identifier":{"value":"rad.lee"}},"type":{"coding":[{"code":"IRCP"}]},"role":[{"text":"Radiologist"}],"requestor":true,"policy":["http://consent.example.org/yes","jti-42"]}`,
			wantUser: "rad.lee", wantRole: "Radiologist", wantRequestor: true, wantSession: "jti-42"},
		{name: "a patient's device is not a workstation",
			agents:   `{"who":{"reference":"Patient/p-77"},"requestor":true},{"who":{"reference":"Device/phone"},"requestor":false,"networkString":"203.0.113.9"}`,
			wantRole: "patient", wantRequestor: true, wantPatient: tok.PatientToken("p-77", "")},
		{name: "a patient acting is tokenized, its address not kept",
			agents:   `{"who":{"reference":"Patient/p-77"},"requestor":true,"networkString":"203.0.113.9"}`,
			wantRole: "patient", wantRequestor: true, wantPatient: tok.PatientToken("p-77", "")},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ev := mapJSON(t, tok, restEvent("read", tt.agents, ""))
			if got, want := ev.Actor.User, tt.wantUser; got != want {
				t.Errorf("actor.user=%q, want %q", got, want)
			}
			if got, want := ev.Actor.Role, tt.wantRole; got != want {
				t.Errorf("actor.role=%q, want %q", got, want)
			}
			if got, want := ev.Actor.Requestor, tt.wantRequestor; got != want {
				t.Errorf("actor.requestor=%v, want %v", got, want)
			}
			if got, want := ev.Source.Workstation, tt.wantWorkstation; got != want {
				t.Errorf("source.workstation=%q, want %q", got, want)
			}
			if got, want := ev.Detail["actor.network"], tt.wantNetwork; got != want {
				t.Errorf("detail[actor.network]=%q, want %q", got, want)
			}
			if got, want := ev.Actor.Session, tt.wantSession; got != want {
				t.Errorf("actor.session=%q, want %q", got, want)
			}
			if got, want := ev.Patient, tt.wantPatient; got != want {
				t.Errorf("patient=%q, want %q", got, want)
			}
			if enc := string(ev.AppendJSON(nil)); strings.Contains(enc, "203.0.113.9") || strings.Contains(enc, "p-77") {
				t.Errorf("a patient's address or id in the event: %s", enc)
			}
		})
	}
}

// TestPatientTokenRules checks that every way FHIR names a patient gives the token
// audit.Tokenizer.PatientToken gives for the same identifier from HL7, DICOM and syslog
// (issue 7 item 2), and that an identifier wins over a resource id.
func TestPatientTokenRules(t *testing.T) {
	tok := testTokenizer(t)
	const patEntity = `"type":{"system":"http://terminology.hl7.org/CodeSystem/audit-entity-type","code":"1"},"role":{"system":"http://terminology.hl7.org/CodeSystem/object-role","code":"1"}`
	tests := []struct {
		name      string
		extra     string // more members of the AuditEvent
		entities  string
		want      string
		wantCount string
	}{
		{name: "identifier with system",
			entities: `{"what":{"identifier":{"system":"urn:oid:1.2.840.99999.1","value":"MRN-1"}},` + patEntity + `}`,
			want:     tok.PatientToken("MRN-1", "urn:oid:1.2.840.99999.1")},
		{name: "identifier without system",
			entities: `{"what":{"identifier":{"value":"MRN-1"}},` + patEntity + `}`,
			want:     tok.PatientToken("MRN-1", "")},
		{name: "same as the HL7 CX with its assigning authority",
			entities: `{"what":{"identifier":{"system":"urn:oid:1.2.840.99999.1","value":"MRN-1"}},` + patEntity + `}`,
			want:     tok.PatientToken("MRN-1^^^HOSP&1.2.840.99999.1&ISO", "")},
		{name: "a CX in the identifier value (R4 examples)",
			entities: `{"what":{"identifier":{"value":"e3cdfc81a0d24bd^^^&2.16.840.1.113883.4.2&ISO"}},` + patEntity + `}`,
			want:     tok.PatientToken("e3cdfc81a0d24bd", "")},
		{name: "reference: the resource id",
			entities: `{"what":{"reference":"Patient/123"},` + patEntity + `}`,
			want:     tok.PatientToken("123", "")},
		{name: "absolute reference with _history",
			entities: `{"what":{"reference":"https://fhir.example.org/r4/Patient/123/_history/4"}}`,
			want:     tok.PatientToken("123", "")},
		{name: "reference and identifier: the identifier",
			entities: `{"what":{"reference":"Patient/123","identifier":{"system":"urn:oid:1.2","value":"MRN-1"}},` + patEntity + `}`,
			want:     tok.PatientToken("MRN-1", "urn:oid:1.2")},
		{name: "identifier entity wins over an earlier resource id",
			entities: `{"what":{"reference":"Patient/123"},` + patEntity + `},{"what":{"identifier":{"value":"MRN-1"}},` + patEntity + `}`,
			want:     tok.PatientToken("MRN-1", "")},
		{name: "R5 AuditEvent.patient",
			extra: `"patient":{"reference":"Patient/123"},`,
			want:  tok.PatientToken("123", "")},
		{name: "contained Patient: its MR identifier",
			extra:    `"contained":[{"resourceType":"Patient","id":"p1","identifier":[{"system":"urn:x:ssn","value":"SSN-9"},{"type":{"coding":[{"system":"http://terminology.hl7.org/CodeSystem/v2-0203","code":"MR"}]},"system":"urn:oid:1.2","value":"MRN-1"}]}],`,
			entities: `{"what":{"reference":"#p1"},` + patEntity + `}`,
			want:     tok.PatientToken("MRN-1", "urn:oid:1.2")},
		{name: "two patients by identifier: the first, counted",
			entities:  `{"what":{"identifier":{"value":"MRN-1"}},` + patEntity + `},{"what":{"identifier":{"value":"MRN-2"}},` + patEntity + `}`,
			want:      tok.PatientToken("MRN-1", ""),
			wantCount: "2"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			body := restEvent("read", agent(agHuman, "true"), tt.entities)
			body = strings.Replace(body, `"recorded"`, tt.extra+`"recorded"`, 1)
			ev := mapJSON(t, tok, body)
			if ev.Patient == "" || ev.Patient != tt.want {
				t.Errorf("patient=%q, want %q", ev.Patient, tt.want)
			}
			if got, want := ev.Detail["patient.count"], tt.wantCount; got != want {
				t.Errorf("patient.count=%q, want %q", got, want)
			}
			for _, v := range []string{"MRN-1", "MRN-2", "SSN-9", "e3cdfc81a0d24bd", `"123"`, "Patient/123"} {
				if enc := string(ev.AppendJSON(nil)); strings.Contains(enc, v) {
					t.Errorf("%q in clear: %s", v, enc)
				}
			}
		})
	}
}

// TestQueryRules checks searches (issue 7 item 6): phi.query, the patient a query names
// as a token with query_scope patient, broad otherwise, method and endpoint with
// parameter names only.
func TestQueryRules(t *testing.T) {
	tok := testTokenizer(t)
	const patEntity = `{"what":{"reference":"Patient/ent-1"},"role":{"system":"http://terminology.hl7.org/CodeSystem/object-role","code":"1"}}`
	tests := []struct {
		name         string
		query        string // decoded; the test base64-encodes it
		interaction  string
		withPatient  bool // a patient entity beside the query
		wantScope    string
		wantPatient  string
		wantMethod   string
		wantEndpoint string
		wantObject   string
	}{
		{name: "reference parameter", query: "Observation?patient=Patient/123&code=1234-5",
			wantScope: "patient", wantPatient: tok.PatientToken("123", ""), wantMethod: "GET", wantEndpoint: "/Observation?patient&code", wantObject: "Observation"},
		{name: "bare id, percent-encoded reference", query: "Observation?subject=Patient%2F123",
			wantScope: "patient", wantPatient: tok.PatientToken("123", ""), wantMethod: "GET", wantEndpoint: "/Observation?subject", wantObject: "Observation"},
		{name: "identifier on Patient, absolute URL with method", query: "GET https://ehr.example.org/fhir/R4/Patient?identifier=urn:oid:1.2.840.99999.1|MRN-9",
			wantScope: "patient", wantPatient: tok.PatientToken("MRN-9", "urn:oid:1.2.840.99999.1"), wantMethod: "GET", wantEndpoint: "/Patient?identifier", wantObject: "Patient"},
		{name: ":identifier modifier", query: "ImagingStudy?patient:identifier=urn:oid:1.2|MRN-9&_count=20",
			wantScope: "patient", wantPatient: tok.PatientToken("MRN-9", "urn:oid:1.2"), wantMethod: "GET", wantEndpoint: "/ImagingStudy?patient:identifier&_count", wantObject: "ImagingStudy"},
		{name: "chained identifier", query: "DiagnosticReport?subject:Patient.identifier=MRN-9",
			wantScope: "patient", wantPatient: tok.PatientToken("MRN-9", ""), wantMethod: "GET", wantEndpoint: "/DiagnosticReport?subject:Patient.identifier", wantObject: "DiagnosticReport"},
		{name: "Patient _id", query: "/fhir/Patient?_id=123",
			wantScope: "patient", wantPatient: tok.PatientToken("123", ""), wantMethod: "GET", wantEndpoint: "/Patient?_id", wantObject: "Patient"},
		{name: "patient compartment", query: "https://h.example.org/Patient/123/Observation?_count=5", interaction: "search-compartment",
			wantScope: "patient", wantPatient: tok.PatientToken("123", ""), wantMethod: "GET", wantEndpoint: "/Patient/{id}/Observation?_count", wantObject: "Observation"},
		{name: "POST _search with a form body", query: "POST /r4/Observation/_search HTTP/1.1\r\nHost: h\r\nContent-Type: application/x-www-form-urlencoded\r\n\r\npatient=123&_count=10",
			wantScope: "patient", wantPatient: tok.PatientToken("123", ""), wantMethod: "POST", wantEndpoint: "/Observation/_search?patient&_count", wantObject: "Observation"},
		{name: "subject that is not a patient", query: "Observation?subject=Group/9",
			wantScope: "broad", wantMethod: "GET", wantEndpoint: "/Observation?subject", wantObject: "Observation"},
		{name: "no patient parameter", query: "http://fhir.example.org/open/Encounter?participant=13",
			wantScope: "broad", wantMethod: "GET", wantEndpoint: "/Encounter?participant", wantObject: "Encounter"},
		{name: "wildcard", query: "Observation?patient=*",
			wantScope: "broad", wantMethod: "GET", wantEndpoint: "/Observation?patient", wantObject: "Observation"},
		{name: ":missing is not a patient", query: "Observation?patient:missing=true",
			wantScope: "broad", wantMethod: "GET", wantEndpoint: "/Observation?patient:missing", wantObject: "Observation"},
		{name: "name search without a patient entity", query: "Patient?family=MUSTERMANN&birthdate=1970-01-01",
			wantScope: "broad", wantMethod: "GET", wantEndpoint: "/Patient?family&birthdate", wantObject: "Patient"},
		{name: "name search with the patient found", query: "Patient?family=MUSTERMANN&birthdate=1970-01-01", withPatient: true,
			wantScope: "patient", wantPatient: tok.PatientToken("ent-1", ""), wantMethod: "GET", wantEndpoint: "/Patient?family&birthdate", wantObject: "Patient"},
		{name: "a broad query beside a result patient stays broad", query: "Observation?code=1234-5", withPatient: true,
			wantScope: "broad", wantPatient: tok.PatientToken("ent-1", ""), wantMethod: "GET", wantEndpoint: "/Observation?code", wantObject: "Observation"},
		{name: "names that look like values are dropped", query: "Observation?MRN12345=1&patient=123&x9=2&flag",
			wantScope: "patient", wantPatient: tok.PatientToken("123", ""), wantMethod: "GET", wantEndpoint: "/Observation?patient", wantObject: "Observation"},
		{name: "HL7 v2 query: not read, the patient entity decides", query: "MSH|^~\\&|A|B|C|D|20260315||QBP^Q21^QBP_Q21|1|P|2.5\rQPD|IHE PDQ Query|1|@PID.3.1^MRN-9\r", interaction: "search", withPatient: true,
			wantScope: "patient", wantPatient: tok.PatientToken("ent-1", ""), wantObject: "Patient"},
		{name: "HL7 v2 query without a patient entity", query: "MSH|^~\\&|A|B|C|D|20260315||QBP^Q21^QBP_Q21|1|P|2.5\r",
			wantScope: "broad"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			interaction := tt.interaction
			if interaction == "" {
				interaction = "search-type"
			}
			ents := `{"role":{"system":"http://terminology.hl7.org/CodeSystem/object-role","code":"24"},"query":"` + base64.StdEncoding.EncodeToString([]byte(tt.query)) + `"}`
			if tt.withPatient {
				ents = patEntity + "," + ents
			}
			ev := mapJSON(t, tok, restEvent(interaction, agent(agHuman, "true"), ents))
			if got, want := ev.Action, audit.ActionPHIQuery; got != want {
				t.Errorf("action=%q, want %q", got, want)
			}
			if got, want := ev.QueryScope, tt.wantScope; got != want {
				t.Errorf("query_scope=%q, want %q", got, want)
			}
			if got, want := ev.Patient, tt.wantPatient; got != want {
				t.Errorf("patient=%q, want %q", got, want)
			}
			if got, want := ev.Method, tt.wantMethod; got != want {
				t.Errorf("method=%q, want %q", got, want)
			}
			if got, want := ev.Endpoint, tt.wantEndpoint; got != want {
				t.Errorf("endpoint=%q, want %q", got, want)
			}
			if got, want := ev.Object, tt.wantObject; got != want {
				t.Errorf("object=%q, want %q", got, want)
			}
			enc := string(ev.AppendJSON(nil))
			for _, v := range []string{"MRN-9", "MRN12345", "MUSTERMANN", "1970-01-01", "123", "ent-1", "1234-5"} {
				if strings.Contains(enc, v) {
					t.Errorf("%q in clear: %s", v, enc)
				}
			}
		})
	}
}

// TestQueryEntityWithoutInteraction: a REST event that carries only a query entity is
// a query, and a DICOM 110112 Query stays dicom.query but gets its scope.
func TestQueryEntityWithoutInteraction(t *testing.T) {
	tok := testTokenizer(t)
	q := base64.StdEncoding.EncodeToString([]byte("Observation?patient=123"))
	tests := []struct {
		name, body, wantAction string
	}{
		{"rest without subtype", `{"resourceType":"AuditEvent","type":{"system":"http://terminology.hl7.org/CodeSystem/audit-event-type","code":"rest"},"recorded":"2026-03-15T09:00:00Z","agent":[{"who":{"display":"u1"},"requestor":true}],"source":{"observer":{"display":"s"}},"entity":[{"role":{"code":"24"},"query":"` + q + `"}]}`, audit.ActionPHIQuery},
		{"DICOM 110112", `{"resourceType":"AuditEvent","type":{"system":"http://dicom.nema.org/resources/ontology/DCM","code":"110112"},"action":"E","recorded":"2026-03-15T09:00:00Z","agent":[{"who":{"display":"u1"},"requestor":true}],"source":{"observer":{"display":"s"}},"entity":[{"role":{"code":"24"},"query":"` + q + `"}]}`, audit.ActionDICOMQuery},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ev := mapJSON(t, tok, tt.body)
			if got, want := ev.Action, tt.wantAction; got != want {
				t.Errorf("action=%q, want %q", got, want)
			}
			if got, want := ev.QueryScope, "patient"; got != want {
				t.Errorf("query_scope=%q, want %q", got, want)
			}
			if got, want := ev.Patient, tok.PatientToken("123", ""); got != want {
				t.Errorf("patient=%q, want %q", got, want)
			}
		})
	}
}

// TestExtensionsJSONAndXML: the DICOM entity extensions give the same event fields in
// both encodings (issue 7 item 4), and the same study and accession tokens as the bare
// values do.
func TestExtensionsJSONAndXML(t *testing.T) {
	tok := testTokenizer(t)
	const ext = "http://hl7.org/fhir/StructureDefinition/auditevent-"
	js := `{"resourceType":"AuditEvent","type":{"system":"http://dicom.nema.org/resources/ontology/DCM","code":"110104"},"action":"R","recorded":"2026-03-15T09:00:00Z","outcome":"0",` +
		`"agent":[{"who":{"identifier":{"value":"PACS"}},"requestor":true}],"source":{"observer":{"display":"PACS"}},` +
		`"entity":[{"what":{"reference":"DocumentReference/kos"},"extension":[` +
		`{"url":"` + ext + `ParticipantObjectContainsStudy","valueIdentifier":{"value":"urn:oid:1.2.3.4.5"}},` +
		`{"url":"` + ext + `Accession","valueIdentifier":{"value":"ACC-1"}},` +
		`{"url":"` + ext + `Accession","valueIdentifier":{"value":"ACC-2"}},` +
		`{"url":"` + ext + `NumberOfInstances","valueInteger":7},` +
		`{"url":"` + ext + `SOPClass","valueReference":{"identifier":{"value":"urn:oid:1.2.840.10008.5.1.4.1.1.2"}}},` +
		`{"url":"` + ext + `SOPClass","valueReference":{"reference":"ImagingStudy/not-a-uid"}},` +
		`{"url":"` + ext + `Instance","valueIdentifier":{"value":"1.2.3.4.5.6"}},` +
		`{"url":"` + ext + `MPPS","valueIdentifier":{"value":"1.2.3.4.5.7"}},` +
		`{"url":"` + ext + `Encrypted","valueBoolean":true},` +
		`{"url":"` + ext + `Anonymized","valueBoolean":false}]}]}`
	xml := `<AuditEvent xmlns="http://hl7.org/fhir"><type><system value="http://dicom.nema.org/resources/ontology/DCM"/><code value="110104"/></type><action value="R"/><recorded value="2026-03-15T09:00:00Z"/><outcome value="0"/>` +
		`<agent><who><identifier><value value="PACS"/></identifier></who><requestor value="true"/></agent><source><observer><display value="PACS"/></observer></source>` +
		`<entity>` +
		`<extension url="` + ext + `ParticipantObjectContainsStudy"><valueIdentifier><value value="urn:oid:1.2.3.4.5"/></valueIdentifier></extension>` +
		`<extension url="` + ext + `Accession"><valueIdentifier><value value="ACC-1"/></valueIdentifier></extension>` +
		`<extension url="` + ext + `Accession"><valueIdentifier><value value="ACC-2"/></valueIdentifier></extension>` +
		`<extension url="` + ext + `NumberOfInstances"><valueInteger value="7"/></extension>` +
		`<extension url="` + ext + `SOPClass"><valueReference><identifier><value value="urn:oid:1.2.840.10008.5.1.4.1.1.2"/></identifier></valueReference></extension>` +
		`<extension url="` + ext + `SOPClass"><valueReference><reference value="ImagingStudy/not-a-uid"/></valueReference></extension>` +
		`<extension url="` + ext + `Instance"><valueIdentifier><value value="1.2.3.4.5.6"/></valueIdentifier></extension>` +
		`<extension url="` + ext + `MPPS"><valueIdentifier><value value="1.2.3.4.5.7"/></valueIdentifier></extension>` +
		`<extension url="` + ext + `Encrypted"><valueBoolean value="true"/></extension>` +
		`<extension url="` + ext + `Anonymized"><valueBoolean value="false"/></extension>` +
		`<what><reference value="DocumentReference/kos"/></what></entity></AuditEvent>`
	for _, tt := range []struct {
		name string
		dec  func([]byte) (*node, error)
		body string
	}{{"json", decodeJSON, js}, {"xml", decodeXML, xml}} {
		t.Run(tt.name, func(t *testing.T) {
			r, err := tt.dec([]byte(tt.body))
			if err != nil {
				t.Fatal(err)
			}
			var ev audit.Event
			mapper{tok: tok}.event(r, &ev)
			if got, want := strings.Join(ev.Study, ","), tok.Token(audit.IDStudy, "1.2.3.4.5"); got != want {
				t.Errorf("study=%q, want %q", got, want)
			}
			if got, want := ev.Accession, tok.Token(audit.IDAccession, "ACC-1"); got != want {
				t.Errorf("accession=%q, want %q", got, want)
			}
			if got, want := ev.Detail["entity.0.accession"], tok.Token(audit.IDAccession, "ACC-2"); got != want {
				t.Errorf("second accession=%q, want %q", got, want)
			}
			if got, want := ev.Count, 7; got != want {
				t.Errorf("count=%d, want %d", got, want)
			}
			for k, want := range map[string]string{
				"sop_class.1.2.840.10008.5.1.4.1.1.2": "0", "entity.0.instances": "1", "entity.0.mpps": "1",
				"entity.0.encrypted": "true", "entity.0.anonymized": "false",
			} {
				if got := ev.Detail[k]; got != want {
					t.Errorf("detail[%s]=%q, want %q", k, got, want)
				}
			}
			if got, want := ev.Object, "DocumentReference"; got != want {
				t.Errorf("object=%q, want %q", got, want)
			}
			enc := string(ev.AppendJSON(nil))
			for _, v := range []string{"ACC-1", "ACC-2", "1.2.3.4.5\"", "1.2.3.4.5.6", "1.2.3.4.5.7", "not-a-uid"} {
				if strings.Contains(enc, v) {
					t.Errorf("%q in clear: %s", v, enc)
				}
			}
		})
	}
}

// TestPurposeAndErrorCode: purpose of use from the event and the agents, break-glass
// from ETREAT/BTG, a security label or DICOM 110127, the error code only for failures.
func TestPurposeAndErrorCode(t *testing.T) {
	tok := testTokenizer(t)
	base := func(members string) string {
		return `{"resourceType":"AuditEvent","type":{"system":"http://dicom.nema.org/resources/ontology/DCM","code":"110110"},"action":"R","recorded":"2026-03-15T09:00:00Z",` +
			members + `"agent":[{"who":{"display":"u1"},"requestor":true}],"source":{"observer":{"display":"s"}}}`
	}
	tests := []struct {
		name        string
		members     string
		wantPurpose string
		wantBTG     bool
		wantErr     string
	}{
		{"R4 purposeOfEvent", `"outcome":"0","purposeOfEvent":[{"coding":[{"code":"TREAT"}]}],`, "TREAT", false, ""},
		{"R5 authorization ETREAT", `"outcome":{"code":{"code":"0"}},"authorization":[{"coding":[{"code":"ETREAT"}]}],`, "ETREAT", true, ""},
		{"security label BTG", `"outcome":"0","meta":{"security":[{"code":"BTG"}]},`, "", true, ""},
		{"R5 failure with a detail code", `"outcome":{"code":{"code":"8"},"detail":[{"coding":[{"code":"MSG_AUTH_REQUIRED"}]}]},`, "", false, "MSG_AUTH_REQUIRED"},
		{"R5 success with a detail code: none", `"outcome":{"code":{"code":"0"},"detail":[{"coding":[{"code":"MSG_CREATED"}]}]},`, "", false, ""},
		{"R4 contained OperationOutcome", `"outcome":"8","contained":[{"resourceType":"OperationOutcome","id":"o1","issue":[{"severity":"error","code":"invalid"}]}],"entity":[{"what":{"reference":"#o1"}}],`, "", false, "invalid"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ev := mapJSON(t, tok, base(tt.members))
			if got, want := ev.Purpose, tt.wantPurpose; got != want {
				t.Errorf("purpose=%q, want %q", got, want)
			}
			if got, want := ev.BreakGlass, tt.wantBTG; got != want {
				t.Errorf("break_glass=%v, want %v", got, want)
			}
			if got, want := ev.ErrorCode, tt.wantErr; got != want {
				t.Errorf("error_code=%q, want %q", got, want)
			}
		})
	}
	ev := mapJSON(t, tok, `{"resourceType":"AuditEvent","category":[{"coding":[{"system":"http://dicom.nema.org/resources/ontology/DCM","code":"110113"}]}],"code":{"coding":[{"system":"http://dicom.nema.org/resources/ontology/DCM","code":"110127"}]},"recorded":"2026-03-15T09:00:00Z","agent":[{"who":{"display":"u1"},"requestor":true}],"source":{"observer":{"display":"s"}}}`)
	if !ev.BreakGlass {
		t.Errorf("110127 Emergency Override Started: break_glass=false")
	}
}

// TestGoldenNoPHI maps every golden request and checks that no patient identifier,
// name, birth date, accession number or study UID of it is in the event, in any field
// (the new ones included).
func TestGoldenNoPHI(t *testing.T) {
	tok := testTokenizer(t)
	files, _ := filepath.Glob("testdata/*/request.*")
	extra := []string{"MRN-300471", "pt-8842", "MUSTERMANN", "1970-01-01", "DOE^JANE", "ACC20260315-77",
		"1.2.826.0.1.3680043.8.498.1001\"", "1.2.826.0.1.3680043.8.498.2001", "1.2.826.0.1.3680043.8.498.3001"}
	checked := 0
	for _, f := range files {
		body, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		root, err := decode(body, mediaFormat(contentTypeFor(f)), nil)
		if err != nil {
			continue // the golden cases of refused bodies
		}
		res := []*node{root}
		if root.str("resourceType") == "Bundle" {
			res = nil
			for _, e := range root.all("entry") {
				res = append(res, e.get("resource"))
			}
		}
		secrets := append(phiValues(root), extra...)
		for _, r := range res {
			var ev audit.Event
			mapper{tok: tok}.event(r, &ev)
			delete(ev.Detail, "fhir.id")
			enc := string(ev.AppendJSON(nil))
			for _, s := range secrets {
				if strings.Contains(enc, s) {
					t.Errorf("%s: %q in the event: %s", f, s, enc)
				}
			}
			checked++
		}
	}
	if checked < 15 {
		t.Fatalf("only %d events checked", checked)
	}
}
