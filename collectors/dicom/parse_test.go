package dicom

import (
	"errors"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/edgeaudit/edgeaudit/audit"
)

func TestLooks(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want bool
	}{
		{"declaration", `<?xml version="1.0"?><AuditMessage/>`, true},
		{"root", `<AuditMessage>`, true},
		{"bom and blanks", "\xef\xbb\xbf \r\n\t<AuditMessage>", true},
		{"bom then declaration", "\xef\xbb\xbf<?xml", true},
		{"other root", `<Bundle>`, false},
		{"text", `hello <AuditMessage>`, false},
		{"empty", ``, false},
		{"bom only", "\xef\xbb\xbf", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := Looks(tt.in); got != tt.want {
				t.Fatalf("Looks(%q)=%v, want %v", tt.in, got, tt.want)
			}
		})
	}
}

func TestParseErrors(t *testing.T) {
	deep := "<AuditMessage>" + strings.Repeat("<a>", MaxDepth) + strings.Repeat("</a>", MaxDepth) + "</AuditMessage>"
	okDepth := "<AuditMessage>" + strings.Repeat("<a>", MaxDepth-1) + strings.Repeat("</a>", MaxDepth-1) + "</AuditMessage>"
	many := "<AuditMessage>" + strings.Repeat("<a/>", MaxElements) + "</AuditMessage>"
	attrs := "<AuditMessage><a" + strings.Repeat(" x=\"1\"", maxAttrsElem+1) + "/></AuditMessage>"
	tests := []struct {
		name string
		in   string
		want string // reason; "" = parses
	}{
		{"minimal", `<AuditMessage/>`, ""},
		{"max depth", okDepth, ""},
		{"too deep", deep, ReasonTooDeep},
		{"too many elements", many, ReasonTooLarge},
		{"too many attributes", attrs, ReasonTooLarge},
		{"too large", "<AuditMessage>" + strings.Repeat(" ", MaxSize) + "</AuditMessage>", ReasonTooLarge},
		{"empty", "", ReasonMalformed},
		{"blank", " \n\t", ReasonMalformed},
		{"doctype", `<!DOCTYPE AuditMessage><AuditMessage/>`, ReasonDoctype},
		{"unknown entity", `<AuditMessage a="&ent;"/>`, ReasonDoctype},
		{"predefined entities", `<AuditMessage a="&lt;&amp;&gt;&quot;&apos;&#65;"/>`, ""},
		{"bad character reference", `<AuditMessage a="&#0;"/>`, ReasonMalformed},
		{"truncated", `<AuditMessage><EventIdentification`, ReasonMalformed},
		{"unclosed root", `<AuditMessage><a/>`, ReasonMalformed},
		{"mismatched", `<AuditMessage><a></b></AuditMessage>`, ReasonMalformed},
		{"two documents", `<AuditMessage/><AuditMessage/>`, ReasonMalformed},
		{"declaration after root", `<AuditMessage/><?xml version="1.0"?>`, ReasonMalformed},
		{"text after root", `<AuditMessage/>x`, ReasonMalformed},
		{"comment and blanks after root", "<AuditMessage/>\n<!-- end -->\n", ""},
		{"other root", `<Foo/>`, ReasonNotAuditMessage},
		{"namespaced root", `<a:AuditMessage xmlns:a="urn:x"/>`, ReasonNotAuditMessage},
		{"invalid utf-8", "<AuditMessage a=\"\xff\"/>", ReasonInvalidUTF8},
		{"latin-1 declared", `<?xml version="1.0" encoding="ISO-8859-1"?><AuditMessage/>`, ReasonMalformed},
		{"utf-8 declared", `<?xml version="1.0" encoding="utf-8"?><AuditMessage/>`, ""},
		{"nul character", "<AuditMessage a=\"\x00\"/>", ReasonMalformed},
	}
	tok := testTokenizer(t)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ev := baseEvent([]byte(tt.in))
			err := Parse([]byte(tt.in), tok, &ev)
			if got := Reason(err); got != tt.want {
				t.Fatalf("reason=%q (err %v), want %q", got, err, tt.want)
			}
			if err != nil && ev.Source.Kind != audit.KindSyslog {
				t.Errorf("Parse changed the event on error")
			}
		})
	}
}

func TestParseNoTokenizer(t *testing.T) {
	ev := baseEvent(nil)
	err := Parse([]byte(`<AuditMessage/>`), nil, &ev)
	if !errors.Is(err, ErrNoTokenizer) {
		t.Fatalf("err=%v, want ErrNoTokenizer", err)
	}
	if got, want := Reason(err), ReasonNoTokenizer; got != want {
		t.Fatalf("Reason=%q, want %q", got, want)
	}
}

func TestReason(t *testing.T) {
	if got := Reason(nil); got != "" {
		t.Fatalf("Reason(nil)=%q, want empty", got)
	}
	if got, want := Reason(errors.New("other")), ReasonMalformed; got != want {
		t.Fatalf("Reason(other)=%q, want %q", got, want)
	}
}

func TestStripQuery(t *testing.T) {
	tests := []struct{ in, want string }{
		{"STORESCU", "STORESCU"},
		{"pix|pix", "pix|pix"},
		{"a?b", "a?b"}, // not a URL
		{"http://h:8080/rs/studies?PatientID=X1", "http://h:8080/rs/studies"},
		{"http://h/rs/studies/1.2.3/series/4.5/metadata", "http://h/rs/studies/*/series/*/metadata"},
		{"http://h/pdq/x/patients/P1%5E%5E%5EA", "http://h/pdq/x/patients/*"},
		{"http://h/rs/mwlitems/1.2.3/SPS1", "http://h/rs/mwlitems/*/*"},
		{"/fhir/Patient/123/_history/2", "/fhir/Patient/*/_history/2"},
		{"/app-gateway/fhir/Patient", "/app-gateway/fhir/Patient"},
		{"http://user:secret@qstar.host:port/", "http://qstar.host:port/"},
		{"http://user@host", "http://host"},
		{"https://h/x#frag", "https://h/x"},
	}
	for _, tt := range tests {
		if got := stripQuery(tt.in); got != tt.want {
			t.Errorf("stripQuery(%q)=%q, want %q", tt.in, got, tt.want)
		}
	}
}

func TestParseDateTime(t *testing.T) {
	tests := []struct {
		in   string
		want time.Time
		ok   bool
	}{
		{"2023-11-28T15:16:32.025+01:00", time.Date(2023, 11, 28, 14, 16, 32, 25e6, time.UTC), true},
		{"2015-12-10T09:42:24.128Z", time.Date(2015, 12, 10, 9, 42, 24, 128e6, time.UTC), true},
		{"2015-12-10T09:42:24", time.Date(2015, 12, 10, 9, 42, 24, 0, time.UTC), true},
		{"2015-12-10T09:42:24.5+0200", time.Date(2015, 12, 10, 7, 42, 24, 5e8, time.UTC), true},
		{"yesterday", time.Time{}, false},
	}
	for _, tt := range tests {
		got, ok := parseDateTime(tt.in)
		if ok != tt.ok || !got.Equal(tt.want) {
			t.Errorf("parseDateTime(%q)=%v,%v, want %v,%v", tt.in, got, ok, tt.want, tt.ok)
		}
	}
}

func TestInvalidTimeKeepsSyslogTime(t *testing.T) {
	in := `<AuditMessage><EventIdentification EventDateTime="not a time" EventOutcomeIndicator="0"><EventID csd-code="110112"/></EventIdentification></AuditMessage>`
	ev := baseEvent([]byte(in))
	if err := Parse([]byte(in), testTokenizer(t), &ev); err != nil {
		t.Fatal(err)
	}
	if got, want := ev.Time, fixedTime; !got.Equal(want) {
		t.Fatalf("time=%v, want %v", got, want)
	}
	if got, want := ev.Detail["dicom.time_invalid"], "true"; got != want {
		t.Fatalf("dicom.time_invalid=%q, want %q", got, want)
	}
}

func TestReasonTruncated(t *testing.T) {
	long := strings.Repeat("é", 200) // 400 bytes
	in := `<AuditMessage><EventIdentification EventOutcomeIndicator="8"><EventID csd-code="110113"/><EventOutcomeDescription>` + long + `</EventOutcomeDescription></EventIdentification></AuditMessage>`
	ev := baseEvent([]byte(in))
	if err := Parse([]byte(in), testTokenizer(t), &ev); err != nil {
		t.Fatal(err)
	}
	if got, want := len(ev.Reason), MaxReason; got != want {
		t.Fatalf("len(reason)=%d, want %d", got, want)
	}
	if got, want := ev.Reason, long[:MaxReason]; got != want {
		t.Fatalf("reason=%q, want %q", got, want)
	}
}

func TestActionMapping(t *testing.T) {
	tests := []struct {
		eventID, actionCode, typeCode, want string
	}{
		{"110100", "E", "110120", ActionAppStart},
		{"110100", "E", "110121", ActionAppStop},
		{"110100", "E", "", ActionAppActivity},
		{"110101", "R", "", ActionAuditLogUsed},
		{"110102", "E", "", ActionMove},
		{"110104", "C", "", ActionStore},
		{"110104", "R", "", ActionMove},
		{"110104", "U", "", ActionMove},
		{"110103", "C", "", ActionPHICreate},
		{"110103", "R", "", ActionPHIView},
		{"110103", "U", "", ActionPHIUpdate},
		{"110103", "D", "", ActionPHIDelete},
		{"110105", "D", "", ActionStudyDelete},
		{"110106", "R", "", ActionExport},
		{"110107", "C", "", ActionImport},
		{"110108", "E", "110124", ActionNetworkAttach},
		{"110108", "E", "110125", ActionNetworkDetach},
		{"110108", "E", "", ActionNetworkEntry},
		{"110109", "C", "", ActionOrderCreate},
		{"110109", "R", "", ActionOrderView},
		{"110109", "U", "", ActionOrderUpdate},
		{"110109", "D", "", ActionOrderDelete},
		{"110109", "", "", ActionOrderRecord},
		{"110110", "U", "", ActionPHIUpdate},
		{"110110", "", "", ActionPatientRecord},
		{"110111", "C", "", ActionPHICreate},
		{"110111", "", "", ActionProcedure},
		{"110112", "E", "", ActionQuery},
		{"110113", "E", "110132", ActionSecurityAlert},
		{"110113", "E", "110137", ActionRBACChange},
		{"110114", "E", "110122", ActionLogin},
		{"110114", "E", "110123", ActionLogout},
		{"110114", "E", "", ActionAuthentication},
		{"110122", "E", "", ActionLogin},
		{"110123", "E", "", ActionLogout},
		{"IHE0001", "E", "", ActionOther},
		{"", "", "", ActionOther},
	}
	for _, tt := range tests {
		m := mapper{eventID: coded{code: tt.eventID}, actionCode: tt.actionCode}
		if tt.typeCode != "" {
			m.types = []coded{{code: tt.typeCode}}
		}
		if got := m.action(); got != tt.want {
			t.Errorf("EventID %s action %q type %q: action=%q, want %q", tt.eventID, tt.actionCode, tt.typeCode, got, tt.want)
		}
	}
}

// TestBounds checks that a document with many participants, objects and codes gives a
// bounded event that says it was cut.
func TestBounds(t *testing.T) {
	var b strings.Builder
	b.WriteString(`<AuditMessage><EventIdentification EventActionCode="R" EventOutcomeIndicator="0"><EventID csd-code="110103"/>`)
	for i := 0; i < 200; i++ {
		b.WriteString(`<EventTypeCode csd-code="T` + strconv.Itoa(i) + `"/>`)
	}
	b.WriteString(`</EventIdentification>`)
	for i := 0; i < 200; i++ {
		b.WriteString(`<ActiveParticipant UserID="u` + strconv.Itoa(i) + `" UserIsRequestor="false"/>`)
	}
	b.WriteString(`<ActiveParticipant UserID="` + strings.Repeat("x", 1000) + `" UserIsRequestor="true"/>`)
	for i := 0; i < 200; i++ {
		b.WriteString(`<ParticipantObjectIdentification ParticipantObjectID="1.2.` + strconv.Itoa(i) + `" ParticipantObjectTypeCode="2" ParticipantObjectTypeCodeRole="3"><ParticipantObjectIDTypeCode csd-code="110180"/>`)
		b.WriteString(`<ParticipantObjectDescription><SOPClass UID="1.2.840.` + strconv.Itoa(i) + `" NumberOfInstances="2"/></ParticipantObjectDescription>`)
		b.WriteString(strings.Repeat(`<ParticipantObjectDetail type="t" value="dg=="/>`, 20))
		b.WriteString(`</ParticipantObjectIdentification>`)
	}
	b.WriteString(`</AuditMessage>`)
	in := []byte(b.String())
	ev := baseEvent(in)
	if err := Parse(in, testTokenizer(t), &ev); err != nil {
		t.Fatal(err)
	}
	if got, want := ev.Detail["dicom.truncated"], "true"; got != want {
		t.Errorf("dicom.truncated=%q, want %q", got, want)
	}
	if got, want := ev.Count, 400; got != want {
		t.Errorf("count=%d, want %d", got, want)
	}
	if got := len(ev.Study); got != maxList {
		t.Errorf("studies=%d, want %d", got, maxList)
	}
	if got := len(ev.Codes); got > maxList+1 {
		t.Errorf("codes=%d, want at most %d", got, maxList+1)
	}
	if got, want := len(ev.Actor.User), maxValue; got != want {
		t.Errorf("len(actor.user)=%d, want %d", got, want)
	}
	if got, want := len(ev.Detail), 4*maxParticipant+maxObjects*(4+2*maxObjDetails)+maxList+3; got > want {
		t.Errorf("detail has %d keys, want at most %d", got, want)
	}
}
