package dicom

import (
	"encoding/base64"
	"encoding/binary"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/edgeaudit/edgeaudit/audit"
)

// parseString parses one document or fails the test.
func parseString(tb testing.TB, doc string) audit.Event {
	tb.Helper()
	ev := baseEvent([]byte(doc))
	if err := Parse([]byte(doc), testTokenizer(tb), &ev); err != nil {
		tb.Fatalf("Parse: %v", err)
	}
	return ev
}

// TestGoldenNoPHI applies the corpus test's PHI extraction to the golden inputs: no
// patient id, name or base64 query value may appear in the encoded event.
func TestGoldenNoPHI(t *testing.T) {
	inputs, _ := filepath.Glob(filepath.Join("testdata", "*", "input.xml"))
	tok := testTokenizer(t)
	checked := 0
	for _, in := range inputs {
		raw, err := os.ReadFile(in)
		if err != nil {
			t.Fatal(err)
		}
		ev := baseEvent(raw)
		if Parse(raw, tok, &ev) != nil {
			continue // the err-* cases
		}
		out := string(ev.AppendJSON(nil))
		for _, s := range phiOf(t, raw) {
			checked++
			if strings.Contains(out, s.value) || strings.Contains(out, jsonEscaped(s.value)) {
				t.Errorf("%s: event contains %s %q", in, s.kind, s.value)
			}
		}
	}
	if checked < 20 {
		t.Fatalf("only %d values checked, want the golden cases to carry patient data", checked)
	}
}

// One MRN, one token: a patient object "ID^^^AUTHORITY&OID&ISO", a C-FIND PatientID with
// IssuerOfPatientID and a PDQ @PID.3.1 all give Tokenizer.PatientToken(ID, AUTHORITY).
func TestOnePatientOneToken(t *testing.T) {
	tok := testTokenizer(t)
	tests := []struct {
		name, dir, id, authority string
	}{
		{"patient object with CX", "actor-person-and-ae", "MRN5501234", "HOSP"},
		{"patient object without OID", "actor-domain-user-and-process", "MRN5501234", "HOSP"},
		{"C-FIND PatientID and issuer", "query-cfind-dataset-patient", "PX-40917", "HOSP"},
		{"PDQ QPD @PID.3.1", "query-hl7-pdq-patient", "MRN55012", "HOSP"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			raw, err := os.ReadFile(filepath.Join("testdata", tt.dir, "input.xml"))
			if err != nil {
				t.Fatal(err)
			}
			ev := parseString(t, string(raw))
			if got, want := ev.Patient, tok.PatientToken(tt.id, tt.authority); got != want {
				t.Fatalf("patient=%q, want PatientToken(%q, %q)=%q", got, tt.id, tt.authority, want)
			}
		})
	}
}

func TestSplitCX(t *testing.T) {
	tests := []struct{ in, value, authority string }{
		{"12345^^^HOSP", "12345", "HOSP"},
		{"12345^^^HOSP&1.2.3&ISO", "12345", "HOSP"},
		{"12345^^^&1.2.3&ISO", "12345", "1.2.3"},
		{"12345", "12345", ""},
		{" 12345 ^^^ HOSP ", "12345", "HOSP"},
		{"", "", ""},
	}
	for _, tt := range tests {
		if v, a := splitCX(tt.in); v != tt.value || a != tt.authority {
			t.Errorf("splitCX(%q)=%q,%q, want %q,%q", tt.in, v, a, tt.value, tt.authority)
		}
	}
}

func TestParticipantKind(t *testing.T) {
	tests := []struct {
		name string
		p    participant
		want partKind
	}{
		{"person id type", participant{user: "x", idTypeCode: "113871", alt: "AETITLES=X"}, kindPerson},
		{"station AE type", participant{user: "jdoe@h", idTypeCode: "110119"}, kindMachine},
		{"node id type", participant{user: "127.0.0.1", idTypeCode: "110182", userType: "1"}, kindMachine},
		{"user type person", participant{user: "admin", userType: "1"}, kindPerson},
		{"user type person but an IP", participant{user: "127.0.0.1", userType: "1"}, kindMachine},
		{"user type process", participant{user: "STORESCU", userType: "2"}, kindMachine},
		{"AE title", participant{user: "VIEWER", alt: "AETITLES=VIEWER"}, kindMachine},
		{"application role", participant{user: "app", roleCode: "110150"}, kindMachine},
		{"source role", participant{user: "FINDSCU", roleCode: "110153"}, kindMachine},
		{"destination media", participant{user: "CD", roleCode: "110154"}, kindMachine},
		{"ip address", participant{user: "10.1.2.3"}, kindMachine},
		{"ipv6 address", participant{user: "2001:db8::1"}, kindMachine},
		{"url", participant{user: "http://h/x"}, kindMachine},
		{"url path", participant{user: "/app/fhir/Patient"}, kindMachine},
		{"same as network access point", participant{user: "ws12", nap: "WS12"}, kindMachine},
		{"process id", participant{user: "java", alt: "4711"}, kindMachine},
		{"user name", participant{user: "rad02", hasName: true}, kindPerson},
		{"person with a source role", participant{user: "smitty@readingroom.hospital.org", alt: "smith@nema", hasName: true, roleCode: "110153", nap: "192.168.1.2"}, kindPerson},
		{"user name beside an AE title", participant{user: "CT1", hasName: true, alt: "AETITLES=CT1"}, kindMachine},
		{"user@domain", participant{user: "jdoe@hospital.example"}, kindPerson},
		{"DOMAIN\\user", participant{user: `HOSP\jdoe`}, kindPerson},
		{"email-like url is not a person", participant{user: "http://a@b/"}, kindMachine},
		{"plain id", participant{user: "rad02"}, kindUnknown},
		{"empty", participant{}, kindUnknown},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.p.kind(); got != tt.want {
				t.Fatalf("kind=%d, want %d", got, tt.want)
			}
		})
	}
}

func TestPickActor(t *testing.T) {
	ae := participant{user: "VIEWER", alt: "AETITLES=VIEWER", nap: "ws1", requestor: true}
	person := participant{user: "jdoe", hasName: true, requestor: true, nap: "ws1"}
	plain := participant{user: "rad02", requestor: true}
	other := participant{user: "PACS", alt: "AETITLES=PACS", requestor: false}
	tests := []struct {
		name           string
		parts          []participant
		actor, machine int
	}{
		{"machine first, person second", []participant{ae, person}, 1, 0},
		{"person first", []participant{person, ae}, 0, 1},
		{"plain user beside an AE", []participant{ae, plain}, 1, 0},
		{"only a machine", []participant{other, ae}, 1, -1},
		{"person alone", []participant{person, other}, 0, -1},
		{"no requestor", []participant{other}, -1, -1},
		{"two persons", []participant{person, {user: "b@h", requestor: true}}, 0, -1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a, m := pickActor(tt.parts)
			if a != tt.actor || m != tt.machine {
				t.Fatalf("actor, machine = %d, %d, want %d, %d", a, m, tt.actor, tt.machine)
			}
		})
	}
}

// dsElem is one explicit VR little endian element.
func dsElem(group, elem uint16, vr, value string) []byte {
	if len(value)%2 == 1 {
		value += " "
	}
	b := binary.LittleEndian.AppendUint16(nil, group)
	b = binary.LittleEndian.AppendUint16(b, elem)
	b = append(b, vr...)
	b = binary.LittleEndian.AppendUint16(b, uint16(len(value)))
	return append(b, value...)
}

func queryDoc(sopClass string, dataset []byte) string {
	return `<AuditMessage><EventIdentification EventActionCode="E" EventOutcomeIndicator="0"><EventID csd-code="110112"/></EventIdentification>` +
		`<ActiveParticipant UserID="FINDSCU" UserIsRequestor="true"><RoleIDCode csd-code="110153"/></ActiveParticipant>` +
		`<ParticipantObjectIdentification ParticipantObjectID="` + sopClass + `" ParticipantObjectTypeCode="2" ParticipantObjectTypeCodeRole="24">` +
		`<ParticipantObjectIDTypeCode csd-code="110181"/><ParticipantObjectQuery>` + base64.StdEncoding.EncodeToString(dataset) +
		`</ParticipantObjectQuery></ParticipantObjectIdentification></AuditMessage>`
}

func TestQueryScope(t *testing.T) {
	const studyFind = "1.2.840.10008.5.1.4.1.2.2.1"
	tok := testTokenizer(t)
	level := dsElem(0x0008, 0x0052, "CS", "STUDY")
	tests := []struct {
		name    string
		doc     string
		scope   string
		patient string // PatientToken value ("" = none)
		keys    string
		action  string
	}{
		{"one patient id", queryDoc(studyFind, append(level, dsElem(0x0010, 0x0020, "LO", "A12345")...)), ScopePatient, "A12345", "0010,0020 PatientID", audit.ActionDICOMQuery},
		{"padded patient id", queryDoc(studyFind, dsElem(0x0010, 0x0020, "LO", "A1234 ")), ScopePatient, "A1234", "0010,0020 PatientID", audit.ActionDICOMQuery},
		{"star wildcard", queryDoc(studyFind, dsElem(0x0010, 0x0020, "LO", "A1*")), ScopeBroad, "", "0010,0020 PatientID", audit.ActionDICOMQuery},
		{"question mark wildcard", queryDoc(studyFind, dsElem(0x0010, 0x0020, "LO", "A1?3")), ScopeBroad, "", "0010,0020 PatientID", audit.ActionDICOMQuery},
		{"list of ids", queryDoc(studyFind, dsElem(0x0010, 0x0020, "LO", `A1\A2`)), ScopeBroad, "", "0010,0020 PatientID", audit.ActionDICOMQuery},
		{"empty id is a return key", queryDoc(studyFind, append(dsElem(0x0008, 0x0020, "DA", "20260101-"), dsElem(0x0010, 0x0020, "LO", "")...)), ScopeBroad, "", "0008,0020 StudyDate", audit.ActionDICOMQuery},
		{"name only", queryDoc(studyFind, dsElem(0x0010, 0x0010, "PN", "SMITH^J*")), ScopeBroad, "", "0010,0010 PatientName", audit.ActionDICOMQuery},
		{"no keys at all", queryDoc(studyFind, level), ScopeBroad, "", "", audit.ActionDICOMQuery},
		{"worklist", queryDoc("1.2.840.10008.5.1.4.31", dsElem(0x0008, 0x0060, "CS", "MR")), ScopeBroad, "", "0008,0060 Modality", audit.ActionDICOMWorklist},
		{"not a dataset", queryDoc(studyFind, []byte{1, 2, 3}), ScopeBroad, "", "", audit.ActionDICOMQuery},
		{"truncated dataset", queryDoc(studyFind, dsElem(0x0010, 0x0020, "LO", "A12345")[:10]), ScopeBroad, "", "", audit.ActionDICOMQuery},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ev := parseString(t, tt.doc)
			if got, want := ev.QueryScope, tt.scope; got != want {
				t.Errorf("query_scope=%q, want %q", got, want)
			}
			want := ""
			if tt.patient != "" {
				want = tok.PatientToken(tt.patient, "")
			}
			if got := ev.Patient; got != want {
				t.Errorf("patient=%q, want %q", got, want)
			}
			if got, want := ev.Detail["query_keys"], tt.keys; got != want {
				t.Errorf("query_keys=%q, want %q", got, want)
			}
			if got, want := ev.Action, tt.action; got != want {
				t.Errorf("action=%q, want %q", got, want)
			}
			if out := string(ev.AppendJSON(nil)); strings.Contains(out, "A12345") || strings.Contains(out, "SMITH") {
				t.Errorf("event holds a query value in clear: %s", out)
			}
		})
	}
}

func TestReadQueryFormats(t *testing.T) {
	tests := []struct {
		name, in, format, patient, authority, keys string
	}{
		{"pdq one id", "MSH|^~\\&|A|B|C|D|20260101||QBP^Q22^QBP_Q21|1|P|2.5\rQPD|IHE PDQ Query|Q1|@PID.3.1^X77~@PID.3.4.1^HOSP\r", formatHL7, "X77", "HOSP", "PID.3.1;PID.3.4.1"},
		{"pdq name", "MSH|^~\\&|A|B|C|D|20260101||QBP^Q22^QBP_Q21|1|P|2.5\rQPD|IHE PDQ Query|Q1|@PID.5.1^meier\r", formatHL7, "", "", "PID.5.1"},
		{"pdq wildcard id", "MSH|^~\\&|A|B|C|D|20260101||QBP^Q22^QBP_Q21|1|P|2.5\rQPD|IHE PDQ Query|Q1|@PID.3.1^X7*\r", formatHL7, "", "", "PID.3.1"},
		{"pix cx", "MSH|^~\\&|A|B|C|D|20260101||QBP^Q23^QBP_Q21|1|P|2.5\rQPD|Q23^PIX^IHE|Q1|78106^^^PKLN&2.16.840.1&ISO\r", formatHL7, "78106", "PKLN", "QPD-3"},
		{"qido patient", "/rs/studies?PatientID=X88&StudyDate=20260101&limit=10", formatURL, "X88", "", "PatientID;StudyDate"},
		{"qido tag form", "/rs/studies?00100020=X88&00100021=HOSP", formatURL, "X88", "HOSP", "00100020;00100021"},
		{"qido wildcard", "/rs/studies?PatientID=X8*", formatURL, "", "", "PatientID"},
		{"fhir identifier", "http://h/fhir/Patient?identifier=urn:oid:1.2.3%7CX99&_format=json", formatURL, "X99", "urn:oid:1.2.3", "identifier"},
		{"fhir subject reference", "http://h/fhir/ImagingStudy?subject=Patient/p1", formatURL, "p1", "", "subject"},
		{"fhir _id on Patient", "http://h/fhir/Patient?_id=p2", formatURL, "p2", "", "_id"},
		{"fhir name search", "http://h/fhir/Patient?family=xpid", formatURL, "", "", "family"},
		{"fhir two patients", "http://h/fhir/Patient?_id=p2,p3", formatURL, "", "", "_id"},
		{"odd parameter name is not listed", "/rs/studies?123=4&Modality=CT", formatURL, "", "", "Modality"},
		{"xcpd living subject id", `<queryByParameter><parameterList><livingSubjectId><value extension="P1" root="2.16.756"/></livingSubjectId></parameterList></queryByParameter>`, formatXML, "P1", "2.16.756", "livingSubjectId"},
		{"xcpd name", `<queryByParameter><parameterList><livingSubjectName><value><family>G</family></value></livingSubjectName></parameterList></queryByParameter>`, formatXML, "", "", "livingSubjectName"},
		{"xds stored query", `<q:AdhocQueryRequest xmlns:q="urn:q"><r:AdhocQuery xmlns:r="urn:r"><r:Slot name="$XDSDocumentEntryPatientId"><r:ValueList><r:Value>'ID9^^^&amp;1.3.6&amp;ISO'</r:Value></r:ValueList></r:Slot></r:AdhocQuery></q:AdhocQueryRequest>`, formatXML, "ID9", "1.3.6", "$XDSDocumentEntryPatientId"},
		{"xml with a doctype", `<!DOCTYPE x><x/>`, formatUnknown, "", "", ""},
		{"binary", "\x01\x02\x03", formatUnknown, "", "", ""},
		{"empty", "", formatUnknown, "", "", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			q := readQuery([]byte(tt.in), "")
			if got, want := q.format, tt.format; got != want {
				t.Errorf("format=%q, want %q", got, want)
			}
			p, a, _ := q.single()
			if p != tt.patient || a != tt.authority {
				t.Errorf("patient=%q authority=%q, want %q %q", p, a, tt.patient, tt.authority)
			}
			if got, want := q.keyList(), tt.keys; got != want {
				t.Errorf("keys=%q, want %q", got, want)
			}
		})
	}
}

// The dataset reader follows sequences of defined and undefined length, in implicit VR.
func TestDatasetImplicitSequence(t *testing.T) {
	imp := func(group, elem uint16, value []byte) []byte {
		b := binary.LittleEndian.AppendUint16(nil, group)
		b = binary.LittleEndian.AppendUint16(b, elem)
		b = binary.LittleEndian.AppendUint32(b, uint32(len(value)))
		return append(b, value...)
	}
	itemBody := imp(0x0008, 0x0060, []byte("CT"))
	item := imp(0xFFFE, 0xE000, itemBody)
	ds := append(imp(0x0040, 0x0100, item), imp(0x0010, 0x0020, []byte("Q1"))...)
	var q queryInfo
	if err := readDatasetQuery(ds, transferImplicit, &q); err != nil {
		t.Fatal(err)
	}
	if got, want := q.keyList(), "0040,0100>0008,0060 Modality;0010,0020 PatientID"; got != want {
		t.Fatalf("keys=%q, want %q", got, want)
	}
	if p, _, ok := q.single(); !ok || p != "Q1" {
		t.Fatalf("patient=%q ok=%v, want Q1", p, ok)
	}
}

func TestErrorCode(t *testing.T) {
	tests := []struct {
		name, outcome, desc, vendor, want string
	}{
		{"hex with 0x", "4", "failed with status 0xA702", "", "A702"},
		{"hex with H", "8", "status C000H", "", "C000"},
		{"bare failure code", "8", "Refused A801 destination unknown", "", "A801"},
		{"status keyword", "4", "NoSuchObjectInstance", "", "0112"},
		{"association rejected", "8", "A-ASSOCIATE-RJ[result: 1]", "", "A-ASSOCIATE-RJ"},
		{"vendor code wins", "8", "0xA700", "A777", "A777"},
		{"year is no status", "4", "failed in 2026 at step 4", "", ""},
		{"words are no status", "4", "CAFE BEEF FACE", "", ""},
		{"success has none", "0", "0xA700", "", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			doc := `<AuditMessage><EventIdentification EventOutcomeIndicator="` + tt.outcome + `"><EventID csd-code="110104"/>`
			if tt.vendor != "" {
				doc += `<EventTypeCode csd-code="` + tt.vendor + `" codeSystemName="99DCM4CHEE"/>`
			}
			doc += `<EventOutcomeDescription>` + tt.desc + `</EventOutcomeDescription></EventIdentification></AuditMessage>`
			if got := parseString(t, doc).ErrorCode; got != tt.want {
				t.Fatalf("error_code=%q, want %q", got, tt.want)
			}
		})
	}
}

func TestBreakGlassAndPurpose(t *testing.T) {
	tests := []struct {
		name, inner string
		purpose     string
		breakGlass  bool
	}{
		{"emergency override type", `<EventTypeCode csd-code="110127" codeSystemName="DCM"/>`, "", true},
		{"override stopped is not", `<EventTypeCode csd-code="110138" codeSystemName="DCM"/>`, "", false},
		{"private 110127 is not", `<EventTypeCode csd-code="110127" codeSystemName="99X"/>`, "", false},
		{"ETREAT", `<PurposeOfUse csd-code="ETREAT" codeSystemName="2.16.840.1.113883.5.8"/>`, "ETREAT", true},
		{"btg lower case", `<PurposeOfUse csd-code="btg"/>`, "btg", true},
		{"TREAT", `<PurposeOfUse csd-code="TREAT"/>`, "TREAT", false},
		{"two purposes", `<PurposeOfUse csd-code="TREAT"/><PurposeOfUse csd-code="HPAYMT"/>`, "TREAT,HPAYMT", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ev := parseString(t, `<AuditMessage><EventIdentification EventOutcomeIndicator="0"><EventID csd-code="110113"/>`+tt.inner+`</EventIdentification></AuditMessage>`)
			if ev.Purpose != tt.purpose || ev.BreakGlass != tt.breakGlass {
				t.Fatalf("purpose=%q break_glass=%v, want %q %v", ev.Purpose, ev.BreakGlass, tt.purpose, tt.breakGlass)
			}
		})
	}
}

func TestObject(t *testing.T) {
	obj := func(attrs, inner string) string {
		return `<ParticipantObjectIdentification ` + attrs + `>` + inner + `</ParticipantObjectIdentification>`
	}
	study := obj(`ParticipantObjectID="1.2.3" ParticipantObjectTypeCode="2" ParticipantObjectTypeCodeRole="3"`, `<ParticipantObjectIDTypeCode csd-code="110180"/>`)
	patient := obj(`ParticipantObjectID="P1" ParticipantObjectTypeCode="1" ParticipantObjectTypeCodeRole="1"`, ``)
	tests := []struct{ name, objects, want string }{
		{"one SOP class", obj(`ParticipantObjectID="1.2.3" ParticipantObjectTypeCode="2" ParticipantObjectTypeCodeRole="3"`, `<ParticipantObjectIDTypeCode csd-code="110180"/><ParticipantObjectDescription><SOPClass UID="1.2.840.10008.5.1.4.1.1.4" NumberOfInstances="1"/></ParticipantObjectDescription>`), "MR Image Storage"},
		{"unknown SOP class keeps its UID", obj(`ParticipantObjectID="1.2.3" ParticipantObjectTypeCode="2" ParticipantObjectTypeCodeRole="3"`, `<ParticipantObjectIDTypeCode csd-code="110180"/><SOPClass UID="1.2.999" NumberOfInstances="1"/>`), "1.2.999"},
		{"study without SOP classes", study + patient, "ImagingStudy"},
		{"patient only", patient, "Patient"},
		{"security resource", obj(`ParticipantObjectID="x" ParticipantObjectTypeCode="2" ParticipantObjectTypeCodeRole="13"`, ``), "SecurityResource"},
		{"nothing", ``, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ev := parseString(t, `<AuditMessage><EventIdentification EventActionCode="R" EventOutcomeIndicator="0"><EventID csd-code="110103"/></EventIdentification>`+tt.objects+`</AuditMessage>`)
			if got := ev.Object; got != tt.want {
				t.Fatalf("object=%q, want %q", got, tt.want)
			}
		})
	}
}
