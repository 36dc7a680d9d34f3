package hl7

import (
	"strings"
	"testing"
	"time"

	"github.com/edgeaudit/edgeaudit/audit"
)

// mapOne parses msg (segments joined by CR) and maps it with the test tokenizer.
func mapOne(t testing.TB, segs ...string) audit.Event {
	t.Helper()
	m, err := Parse([]byte(strings.Join(segs, "\r") + "\r"))
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	var ev audit.Event
	Map(&ev, m, testTokenizer(t), time.UTC, fixedNow)
	return ev
}

func mshOf(typ string) string {
	return "MSH|^~\\&|APP|FAC|EDGE|AUDIT|20260315100000||" + typ + "|C1|P|2.5.1"
}

func TestACKCodeFor(t *testing.T) {
	tests := []struct {
		mode, accept, app string
		o                 outcome
		want              string // "" = no ACK
	}{
		{ACKModeAuto, "", "", outcomeAccepted, AckAccept},
		{ACKModeAuto, "", "", outcomeStoreFailed, AckError},
		{ACKModeAuto, "", "", outcomeRejected, AckReject},
		{ACKModeAuto, "AL", "NE", outcomeAccepted, AckCommitAccept},
		{ACKModeAuto, "AL", "AL", outcomeStoreFailed, AckCommitError},
		{ACKModeAuto, "AL", "", outcomeRejected, AckCommitReject},
		{ACKModeAuto, "al", "", outcomeAccepted, AckCommitAccept}, // case-insensitive
		{ACKModeAuto, "NE", "NE", outcomeAccepted, ""},
		{ACKModeAuto, "NE", "NE", outcomeStoreFailed, ""},
		{ACKModeAuto, "NE", "", outcomeAccepted, ""},
		{ACKModeAuto, "NE", "AL", outcomeAccepted, AckAccept}, // = original mode (v2.5.1 2.9.3)
		{ACKModeAuto, "NE", "AL", outcomeStoreFailed, AckError},
		{ACKModeAuto, "NE", "ER", outcomeAccepted, ""},
		{ACKModeAuto, "NE", "ER", outcomeRejected, AckReject},
		{ACKModeAuto, "NE", "SU", outcomeAccepted, AckAccept},
		{ACKModeAuto, "NE", "SU", outcomeStoreFailed, ""},
		{ACKModeAuto, "ER", "NE", outcomeAccepted, ""},
		{ACKModeAuto, "ER", "NE", outcomeStoreFailed, AckCommitError},
		{ACKModeAuto, "ER", "AL", outcomeAccepted, AckAccept},
		{ACKModeAuto, "SU", "NE", outcomeAccepted, AckCommitAccept},
		{ACKModeAuto, "SU", "NE", outcomeRejected, ""},
		{ACKModeAuto, "", "AL", outcomeAccepted, AckCommitAccept}, // empty MSH-15 in enhanced mode: AL
		{ACKModeAuto, "XX", "NE", outcomeAccepted, AckCommitAccept},
		{ACKModeOriginal, "NE", "NE", outcomeAccepted, AckAccept},
		{ACKModeOriginal, "AL", "AL", outcomeStoreFailed, AckError},
		{ACKModeEnhanced, "", "", outcomeAccepted, AckCommitAccept},
		{ACKModeEnhanced, "", "", outcomeRejected, AckCommitReject},
		{ACKModeEnhanced, "NE", "NE", outcomeAccepted, ""},
		{ACKModeEnhanced, "ER", "", outcomeAccepted, ""},
	}
	for _, tt := range tests {
		name := tt.mode + "/" + tt.accept + "/" + tt.app + "/" + [...]string{"ok", "store", "reject"}[tt.o]
		t.Run(name, func(t *testing.T) {
			m, err := Parse([]byte("MSH|^~\\&|A|B|C|D|2026||ADT^A08|X|P|2.5|||" + tt.accept + "|" + tt.app + "\r"))
			if err != nil {
				t.Fatal(err)
			}
			code, ok := ackCodeFor(tt.mode, m, tt.o)
			if !ok {
				code = ""
			}
			if got, want := code, tt.want; got != want {
				t.Fatalf("ack=%q, want %q", got, want)
			}
		})
	}
	// A message whose MSH could not be read is answered in original mode.
	if code, ok := ackCodeFor(ACKModeEnhanced, nil, outcomeRejected); !ok || code != AckReject {
		t.Fatalf("nil message: %q %v, want AR", code, ok)
	}
}

// TestActorPrecedence checks, per message type, which field names the actor when
// several do (README "Actor").
func TestActorPrecedence(t *testing.T) {
	tests := []struct {
		name     string
		segs     []string
		user     string
		role     string
		nameOnly string
	}{
		{"adt operator", []string{mshOf("ADT^A08"), "EVN||2026|||OP1^Op^Olly^^^^^^HOSP"}, "OP1", RoleOperator, ""},
		{"adt name only", []string{mshOf("ADT^A08"), "EVN||2026|||^Op^Olly"}, "", "", RoleOperator},
		{"order action by first", []string{mshOf("ORM^O01"), "EVN||2026|||OP1", "ORC|CA|P1||||||||ENT1||DR1|||||||ACT1"}, "ACT1", RoleActionBy, ""},
		{"order entered by", []string{mshOf("ORM^O01"), "EVN||2026|||OP1", "ORC|NW|P1||||||||ENT1||DR1"}, "ENT1", RoleEnteredBy, ""},
		{"order operator before provider", []string{mshOf("ORM^O01"), "EVN||2026|||OP1", "ORC|NW|P1||||||||||DR1"}, "OP1", RoleOperator, ""},
		{"order provider last", []string{mshOf("OMI^O23"), "ORC|NW|P1||||||||||DR1"}, "DR1", RoleOrderingProvider, ""},
		{"order OBR-16", []string{mshOf("OMI^O23"), "ORC|NW|P1", "OBR|1|P1||X||||||||||||DR2"}, "DR2", RoleOrderingProvider, ""},
		{"result interpreter", []string{mshOf("ORU^R01"), "OBR|1|P1||X|||||||||||||||||||||F|||||||RAD1&Rad&Rita||TECH1&T&T", "OBX|1|TX|X||v||||||F|||||OBS1"}, "RAD1", RoleResultInterpreter, ""},
		{"result observer", []string{mshOf("ORU^R01"), "OBR|1|P1||X|||||||||||||||||||||F|||||||||TECH1", "OBX|1|TX|X||v||||||F|||||OBS1"}, "OBS1", RoleResponsibleObserver, ""},
		{"result technician", []string{mshOf("ORU^R01"), "OBR|1|P1||X|||||||||||||||||||||P|||||||||TECH1"}, "TECH1", RoleTechnician, ""},
		{"result not the orderer", []string{mshOf("ORU^R01"), "ORC|RE|P1||||||||||DR1", "OBR|1|P1||X||||||||||||DR1|||||||||F"}, "", "", ""},
		{"schedule entered by", []string{mshOf("SIU^S12"), "SCH|A1|||||||||||PLC1||||FIL1||||ENT1"}, "ENT1", RoleEnteredBy, ""},
		{"schedule filler contact", []string{mshOf("SIU^S14"), "SCH|A1|||||||||||PLC1||||FIL1"}, "FIL1", RoleFillerContact, ""},
		{"schedule placer contact", []string{mshOf("SIU^S14"), "SCH|A1|||||||||||PLC1"}, "PLC1", RolePlacerContact, ""},
		{"document signed", []string{mshOf("MDM^T04"), "EVN||2026|||OP1", "TXA|1|RAD|TX||||||ORIG1||TRN1||||||AU|||||AUTH1^A^A"}, "AUTH1", RoleAuthenticator, ""},
		{"document unsigned operator", []string{mshOf("MDM^T04"), "EVN||2026|||OP1", "TXA|1|RAD|TX||||||ORIG1||TRN1||||||DO|||||AUTH1"}, "OP1", RoleOperator, ""},
		{"document originator", []string{mshOf("MDM^T02"), "TXA|1|RAD|TX||||||ORIG1||TRN1||||||IP"}, "ORIG1", RoleOriginator, ""},
		{"document transcriptionist", []string{mshOf("MDM^T02"), "TXA|1|RAD|TX||||||||TRN1||||||IP"}, "TRN1", RoleTranscriptionist, ""},
		{"query has none", []string{mshOf("QBP^Q22"), "QPD|Q22|T1|@PID.5.1.1^DOE"}, "", "", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ev := mapOne(t, tt.segs...)
			if got, want := ev.Actor.User+"/"+ev.Actor.Role, tt.user+"/"+tt.role; got != want {
				t.Fatalf("actor=%s, want %s", got, want)
			}
			if got, want := ev.Detail["actor_name_only"], tt.nameOnly; got != want {
				t.Fatalf("actor_name_only=%q, want %q", got, want)
			}
			if strings.Contains(string(ev.AppendJSON(nil)), "Olly") || strings.Contains(string(ev.AppendJSON(nil)), "Rita") {
				t.Fatal("a staff name was stored")
			}
		})
	}
}

func TestActions(t *testing.T) {
	tests := []struct {
		name       string
		segs       []string
		action     string
		code       string
		outcome    string
		errorCode  string
		object     string
		queryScope string
	}{
		{"A01", []string{mshOf("ADT^A01"), "PID|||1"}, ActionPatientRegister, "C", audit.OutcomeSuccess, "", ObjectPatient, ""},
		{"A03", []string{mshOf("ADT^A03")}, ActionPatientRegister, "U", audit.OutcomeSuccess, "", ObjectPatient, ""},
		{"A23", []string{mshOf("ADT^A23")}, ActionPatientRegister, "D", audit.OutcomeSuccess, "", ObjectPatient, ""},
		{"A24 link", []string{mshOf("ADT^A24")}, ActionPatientMerge, "U", audit.OutcomeSuccess, "", ObjectPatient, ""},
		{"A37 unlink", []string{mshOf("ADT^A37")}, ActionPatientMerge, "U", audit.OutcomeSuccess, "", ObjectPatient, ""},
		{"A47 id change", []string{mshOf("ADT^A47")}, ActionPatientMerge, "U", audit.OutcomeSuccess, "", ObjectPatient, ""},
		{"A20 bed status", []string{mshOf("ADT^A20")}, ActionExchange, "", audit.OutcomeSuccess, "", "ADT", ""},
		{"S12", []string{mshOf("SIU^S12^SIU_S12")}, ActionSchedule, "C", audit.OutcomeSuccess, "", ObjectAppointment, ""},
		{"S14", []string{mshOf("SIU^S14")}, ActionSchedule, "U", audit.OutcomeSuccess, "", ObjectAppointment, ""},
		{"S15", []string{mshOf("SIU^S15")}, ActionSchedule, "D", audit.OutcomeSuccess, "", ObjectAppointment, ""},
		{"S17", []string{mshOf("SIU^S17")}, ActionSchedule, "D", audit.OutcomeSuccess, "", ObjectAppointment, ""},
		{"NW", []string{mshOf("ORM^O01"), "ORC|NW"}, ActionOrderCreate, "C", audit.OutcomeSuccess, "", ObjectOrder, ""},
		{"XO", []string{mshOf("OMI^O23"), "ORC|XO"}, ActionOrderUpdate, "U", audit.OutcomeSuccess, "", ObjectOrder, ""},
		{"SC", []string{mshOf("OMG^O19"), "ORC|SC"}, ActionOrderUpdate, "U", audit.OutcomeSuccess, "", ObjectOrder, ""},
		{"CA", []string{mshOf("ORM^O01"), "ORC|CA"}, ActionOrderCancel, "D", audit.OutcomeSuccess, "", ObjectOrder, ""},
		{"DC", []string{mshOf("ORM^O01"), "ORC|DC"}, ActionOrderCancel, "D", audit.OutcomeSuccess, "", ObjectOrder, ""},
		{"OC", []string{mshOf("ORM^O01"), "ORC|OC"}, ActionOrderCancel, "D", audit.OutcomeSuccess, "", ObjectOrder, ""},
		{"UA unable to accept", []string{mshOf("ORR^O02"), "MSA|AA|X", "ORC|UA"}, ActionOrderCreate, "C", audit.OutcomeMinorFailure, "UA", ObjectOrder, ""},
		{"no ORC-1", []string{mshOf("ORM^O01"), "ORC|"}, ActionOrderRecord, "", audit.OutcomeSuccess, "", ObjectOrder, ""},
		{"first ORC decides", []string{mshOf("ORM^O01"), "ORC|CA", "ORC|NW"}, ActionOrderCancel, "D", audit.OutcomeSuccess, "", ObjectOrder, ""},
		{"ORU P", []string{mshOf("ORU^R01"), "OBR|1|||X|||||||||||||||||||||P"}, ActionResultPrelim, "C", audit.OutcomeSuccess, "", ObjectResult, ""},
		{"ORU F", []string{mshOf("ORU^R01"), "OBR|1|||X|||||||||||||||||||||F"}, ActionResultFinal, "C", audit.OutcomeSuccess, "", ObjectResult, ""},
		{"ORU C", []string{mshOf("ORU^R01"), "OBR|1|||X|||||||||||||||||||||C"}, ActionResultAddendum, "U", audit.OutcomeSuccess, "", ObjectResult, ""},
		{"ORU F and C", []string{mshOf("ORU^R01"), "OBR|1|||X|||||||||||||||||||||F", "OBR|2|||X|||||||||||||||||||||C"}, ActionResultAddendum, "U", audit.OutcomeSuccess, "", ObjectResult, ""},
		{"ORU X cancelled", []string{mshOf("ORU^R01"), "OBR|1|||X|||||||||||||||||||||X"}, ActionOrderCancel, "D", audit.OutcomeSuccess, "", ObjectResult, ""},
		{"ORU OBX U", []string{mshOf("ORU^R01"), "OBR|1|||X", "OBX|1|TX|X||v||||||U"}, ActionResultFinal, "U", audit.OutcomeSuccess, "", ObjectResult, ""},
		{"ORU OBX D", []string{mshOf("ORU^R01"), "OBR|1|||X", "OBX|1|TX|X||v||||||D"}, ActionResultAddendum, "D", audit.OutcomeSuccess, "", ObjectResult, ""},
		{"ORU no status", []string{mshOf("ORU^R01"), "OBR|1|||X"}, ActionExchange, "C", audit.OutcomeSuccess, "", ObjectResult, ""},
		{"T02 dictated", []string{mshOf("MDM^T02"), "TXA|1|RAD|TX||||||||||||||DI"}, ActionDocument, "C", audit.OutcomeSuccess, "", ObjectDocument, ""},
		{"T04 authenticated", []string{mshOf("MDM^T04"), "TXA|1|RAD|TX||||||||||||||AU"}, ActionReportSign, "U", audit.OutcomeSuccess, "", ObjectDocument, ""},
		{"T02 legally authenticated", []string{mshOf("MDM^T02"), "TXA|1|RAD|TX||||||||||||||LA"}, ActionReportSign, "C", audit.OutcomeSuccess, "", ObjectDocument, ""},
		{"T02 pre-authenticated", []string{mshOf("MDM^T02"), "TXA|1|RAD|TX||||||||||||||PA"}, ActionDocument, "C", audit.OutcomeSuccess, "", ObjectDocument, ""},
		{"T05 addendum", []string{mshOf("MDM^T05"), "TXA|1|RAD|TX||||||||||||||DO"}, ActionResultAddendum, "U", audit.OutcomeSuccess, "", ObjectDocument, ""},
		{"T11 cancel", []string{mshOf("MDM^T11"), "TXA|1|RAD|TX||||||||||||||AU"}, ActionDocument, "D", audit.OutcomeSuccess, "", ObjectDocument, ""},
		{"ACK AE ERR-3", []string{mshOf("ACK^A01^ACK"), "MSA|AE|X", "ERR||PID^1^3|101^Required field missing^HL70357|E"}, ActionExchange, "", audit.OutcomeMinorFailure, "101", "ACK", ""},
		{"ACK AR ERR-1 (v2.3)", []string{mshOf("ACK"), "MSA|AR|X", "ERR|MSH^1^9^200&Unsupported message type&HL70357"}, ActionExchange, "", audit.OutcomeMinorFailure, "200", "ACK", ""},
		{"ACK AE MSA-6", []string{mshOf("ACK"), "MSA|AE|X||||207^Application internal error"}, ActionExchange, "", audit.OutcomeMinorFailure, "207", "ACK", ""},
		{"ACK AA with ERR", []string{mshOf("ACK"), "MSA|AA|X", "ERR||||I"}, ActionExchange, "", audit.OutcomeSuccess, "", "ACK", ""},
		{"RSP AE", []string{mshOf("RSP^K23^RSP_K23"), "MSA|AE|X", "ERR||QPD^1^3^1^1|204^Unknown key identifier^HL70357|E", "QAK|T1|AE"}, ActionExchange, "", audit.OutcomeMinorFailure, "204", "RSP_K23", ""},
		{"PDQ broad", []string{mshOf("QBP^Q22"), "QPD|IHE PDQ Query|T1|@PID.5.1.1^DOE~@PID.7^19700101"}, ActionQuery, "E", audit.OutcomeSuccess, "", ObjectPatient, ScopeBroad},
		{"PDQ by id", []string{mshOf("QBP^Q22"), "QPD|IHE PDQ Query|T1|@PID.3.1^X1~@PID.3.4.1^HOSP"}, ActionQuery, "E", audit.OutcomeSuccess, "", ObjectPatient, ScopePatient},
		{"PDQ two ids", []string{mshOf("QBP^Q22"), "QPD|IHE PDQ Query|T1|@PID.3.1^X1~@PID.3.1^X2"}, ActionQuery, "E", audit.OutcomeSuccess, "", ObjectPatient, ScopeBroad},
		{"PDQ empty id", []string{mshOf("QBP^Q22"), "QPD|IHE PDQ Query|T1|@PID.3.1^"}, ActionQuery, "E", audit.OutcomeSuccess, "", ObjectPatient, ScopeBroad},
		{"PDQ no QPD-3", []string{mshOf("QBP^Q22"), "QPD|IHE PDQ Query|T1"}, ActionQuery, "E", audit.OutcomeSuccess, "", ObjectPatient, ScopeBroad},
		{"PIX Q23", []string{mshOf("QBP^Q23"), "QPD|IHE PIX Query|T1|X1^^^HOSP&1.2.3&ISO^PI"}, ActionQuery, "E", audit.OutcomeSuccess, "", ObjectPatient, ScopePatient},
		{"PIX wildcard", []string{mshOf("QBP^Q23"), "QPD|IHE PIX Query|T1|X*^^^HOSP"}, ActionQuery, "E", audit.OutcomeSuccess, "", ObjectPatient, ScopeBroad},
		{"vendor query", []string{mshOf("QBP^Z99"), "QPD|Z99^Local^L|T1|X1"}, ActionQuery, "E", audit.OutcomeSuccess, "", ObjectPatient, ScopeBroad},
		{"QRY A19", []string{mshOf("QRY^A19"), "QRD|2026|R|I|Q1|||1^RD|X1|DEM"}, ActionQuery, "E", audit.OutcomeSuccess, "", ObjectPatient, ScopePatient},
		{"QRY ALL", []string{mshOf("QRY^Q01"), "QRD|2026|R|I|Q1|||1^RD|ALL|DEM"}, ActionQuery, "E", audit.OutcomeSuccess, "", ObjectPatient, ScopeBroad},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ev := mapOne(t, tt.segs...)
			got := strings.Join([]string{ev.Action, ev.ActionCode, ev.Outcome, ev.ErrorCode, ev.Object, ev.QueryScope}, " ")
			want := strings.Join([]string{tt.action, tt.code, tt.outcome, tt.errorCode, tt.object, tt.queryScope}, " ")
			if got != want {
				t.Fatalf("got  %q\nwant %q", got, want)
			}
			if tt.queryScope == ScopePatient && !audit.IsToken(audit.IDPatient, ev.Patient) {
				t.Fatalf("patient query without a patient token: %q", ev.Patient)
			}
			if tt.queryScope == ScopeBroad && ev.Patient != "" {
				t.Fatalf("broad query with a patient %q", ev.Patient)
			}
		})
	}
}

// TestOnePatientOneToken: the same identifier gives one token whether it comes from an
// ADT's PID-3 (with an assigning authority), a PDQ or PIX query, a QRY, an RSP, a
// merge's MRG-1, and Tokenizer.PatientToken as the other collectors call it.
func TestOnePatientOneToken(t *testing.T) {
	want := testTokenizer(t).PatientToken("MRN7001", "")
	tests := []struct {
		name string
		segs []string
		get  func(ev audit.Event) string
	}{
		{"adt", []string{mshOf("ADT^A08"), "PID|1||MRN7001^^^HOSP&1.2.3&ISO^MR"}, func(ev audit.Event) string { return ev.Patient }},
		{"adt no authority", []string{mshOf("ADT^A08"), "PID|1||MRN7001"}, func(ev audit.Event) string { return ev.Patient }},
		{"pdq", []string{mshOf("QBP^Q22"), "QPD|IHE PDQ Query|T1|@PID.3.1^MRN7001~@PID.3.4.1^HOSP"}, func(ev audit.Event) string { return ev.Patient }},
		{"pix", []string{mshOf("QBP^Q23"), "QPD|IHE PIX Query|T1|MRN7001^^^HOSP&1.2.3&ISO^PI"}, func(ev audit.Event) string { return ev.Patient }},
		{"qry", []string{mshOf("QRY^A19"), "QRD|2026|R|I|Q1|||1^RD|MRN7001^^^^^^^^HOSP|DEM"}, func(ev audit.Event) string { return ev.Patient }},
		{"rsp", []string{mshOf("RSP^K22"), "MSA|AA|X", "PID|1||OTHER1", "PID|2||MRN7001^^^HOSP"}, func(ev audit.Event) string {
			return strings.Split(ev.Detail["patient_ids"], ",")[1]
		}},
		{"mrg", []string{mshOf("ADT^A40"), "PID|1||NEW1", "MRG|MRN7001^^^HOSP"}, func(ev audit.Event) string { return ev.Detail["prior_patient_ids"] }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.get(mapOne(t, tt.segs...)); got != want {
				t.Fatalf("token=%s, want %s", got, want)
			}
		})
	}
}

// TestQueryAuthority: the authority of a PDQ identifier reaches PatientToken in the
// same form as a PID-3 CX.4 (the HD as sent), whether QPD names it whole or by parts.
func TestQueryAuthority(t *testing.T) {
	tests := []struct {
		name, qip, want string
	}{
		{"whole", "@PID.3.1^X1~@PID.3.4^HOSP&1.2.3&ISO", "HOSP&1.2.3&ISO"},
		{"parts", "@PID.3.1^X1~@PID.3.4.1^HOSP~@PID.3.4.2^1.2.3~@PID.3.4.3^ISO", "HOSP&1.2.3&ISO"},
		{"namespace", "@PID.3.4.1^HOSP~@PID.3.1^X1", "HOSP"},
		{"oid only", "@PID.3.1^X1~@PID.3.4.2^1.2.3~@PID.3.4.3^ISO", "&1.2.3&ISO"},
		{"none", "@PID.3.1^X1", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m, err := Parse([]byte(mshOf("QBP^Q22") + "\rQPD|IHE PDQ Query|T1|" + tt.qip + "\r"))
			if err != nil {
				t.Fatal(err)
			}
			tok := testTokenizer(t)
			var gotAuth string
			q := readQuery(m, func(id, auth string) string {
				gotAuth = auth
				return tok.PatientToken(id, auth)
			})
			if got, want := gotAuth, tt.want; got != want {
				t.Fatalf("authority=%q, want %q", got, want)
			}
			if q.scope != ScopePatient {
				t.Fatalf("scope=%s", q.scope)
			}
		})
	}
}

// TestQueryKeepsNoValues: query parameters are named by field, their values never
// stored, and a parameter whose "field name" is not a field path is dropped whole.
func TestQueryKeepsNoValues(t *testing.T) {
	ev := mapOne(t, mshOf("QBP^Q22"), "QPD|IHE PDQ Query|T1|@PID.5.1.1^SECRETNAME~@PID.7^19700101~@JOHN DOE^X~@PID.5.1.1.^Y~@PID.11.5^90210")
	if got, want := ev.Detail["query_fields"], "PID.5.1.1,PID.7,PID.11.5"; got != want {
		t.Fatalf("query_fields=%q, want %q", got, want)
	}
	enc := string(ev.AppendJSON(nil))
	for _, v := range []string{"SECRETNAME", "19700101", "JOHN", "90210"} {
		if strings.Contains(enc, v) {
			t.Fatalf("event holds query value %q: %s", v, enc)
		}
	}
}

func TestIsFieldPath(t *testing.T) {
	tests := []struct {
		in   string
		want bool
	}{
		{"PID.3.1", true}, {"PID.5", true}, {"PV1.19.1", true}, {"ZPI.1", true},
		{"PID", false}, {"PID.", false}, {"PID..3", false}, {"PID.3.", false},
		{"pid.3", false}, {"PID-3", false}, {"DOE^JOHN", false}, {"PID.3 x", false}, {"1ID.3", false},
	}
	for _, tt := range tests {
		if got := isFieldPath(tt.in); got != tt.want {
			t.Errorf("isFieldPath(%q)=%v, want %v", tt.in, got, tt.want)
		}
	}
}
