package syslog

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"maps"
	"strings"
	"testing"
	"time"

	"github.com/edgeaudit/edgeaudit/audit"
)

func TestInferYear(t *testing.T) {
	berlin, err := time.LoadLocation("Europe/Berlin")
	if err != nil {
		t.Skipf("no tzdata: %v", err)
	}
	// stamp builds what go-syslog returns for a BSD timestamp: year 0, UTC.
	stamp := func(month time.Month, day, h, m, s int) time.Time {
		return time.Date(0, month, day, h, m, s, 0, time.UTC)
	}
	tests := []struct {
		name string
		ts   time.Time
		now  time.Time
		loc  *time.Location
		want time.Time
	}{
		{"same day", stamp(3, 15, 11, 58, 1), fixedNow, time.UTC, time.Date(2026, 3, 15, 11, 58, 1, 0, time.UTC)},
		{"earlier this year", stamp(1, 2, 0, 0, 0), fixedNow, time.UTC, time.Date(2026, 1, 2, 0, 0, 0, 0, time.UTC)},
		{"sender clock a few hours ahead", stamp(3, 15, 20, 0, 0), fixedNow, time.UTC, time.Date(2026, 3, 15, 20, 0, 0, 0, time.UTC)},
		{"two days ahead is last year", stamp(3, 17, 12, 0, 1), fixedNow, time.UTC, time.Date(2025, 3, 17, 12, 0, 1, 0, time.UTC)},
		{"december read in january", stamp(12, 31, 23, 59, 59), time.Date(2026, 1, 1, 0, 0, 5, 0, time.UTC), time.UTC, time.Date(2025, 12, 31, 23, 59, 59, 0, time.UTC)},
		{"sender already in the new year", stamp(1, 1, 0, 0, 10), time.Date(2025, 12, 31, 23, 59, 50, 0, time.UTC), time.UTC, time.Date(2026, 1, 1, 0, 0, 10, 0, time.UTC)},
		{"feb 29 outside a leap year", stamp(2, 29, 10, 0, 0), fixedNow, time.UTC, time.Date(2024, 2, 29, 10, 0, 0, 0, time.UTC)},
		{"feb 29 in a leap year", stamp(2, 29, 10, 0, 0), time.Date(2028, 3, 1, 0, 0, 0, 0, time.UTC), time.UTC, time.Date(2028, 2, 29, 10, 0, 0, 0, time.UTC)},
		{"local zone", stamp(3, 15, 12, 30, 0), fixedNow, berlin, time.Date(2026, 3, 15, 11, 30, 0, 0, time.UTC)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := inferYear(tt.ts, tt.now, tt.loc); !got.Equal(tt.want) {
				t.Fatalf("inferYear = %v, want %v", got.UTC(), tt.want)
			}
		})
	}
}

func TestIs5424(t *testing.T) {
	tests := []struct {
		in   string
		want bool
	}{
		{"<165>1 2003-10-11T22:14:15.003Z host app - - - msg", true},
		{"<1>1 - - - - - -", true},
		{"<1>12 - - - - - -", true},
		{"<0>100 -", true},
		{"<34>Oct 11 22:14:15 host su: x", false},
		{"<13>2023-04-18T14:32:52Z host app: x", false},
		{"<189>237: *Jan 8 19:46:03.295: %SYS-5-CONFIG_I", false},
		{"<0>1990 Oct 22", false},
		{"<1>1", false},
		{"<1>1-", false},
		{"<1234>1 x", false},
		{"1 x", false},
		{"", false},
	}
	for _, tt := range tests {
		if got := is5424([]byte(tt.in)); got != tt.want {
			t.Errorf("is5424(%q) = %v, want %v", tt.in, got, tt.want)
		}
	}
}

func TestTrimFrame(t *testing.T) {
	tests := []struct{ in, want string }{
		{"<1>a\r\n", "<1>a"},
		{"<1>a\x00", "<1>a"},
		{"<1>a\n\r\x00\n", "<1>a"},
		{"  <1>a", "<1>a"},
		{"  text", "  text"},
		{" \t \r", ""},
		{"\x00", ""},
		{"", ""},
		{"a b ", "a b "},
	}
	for _, tt := range tests {
		if got := string(trimFrame([]byte(tt.in))); got != tt.want {
			t.Errorf("trimFrame(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

func TestParse(t *testing.T) {
	recv := fixedNow
	tests := []struct {
		name   string
		in     string
		want   audit.Event // Kind, Transport, IP, Received, Outcome, Action and RawSHA256 are checked for all
		detail map[string]string
	}{
		{
			name: "rfc5424 with structured data",
			in:   `<165>1 2003-10-11T22:14:15.003+02:00 mymachine.example.com evntslog 42 ID47 [exampleSDID@32473 iut="3" eventSource="App\]lication"][meta] An application event`,
			want: audit.Event{
				Time:    time.Date(2003, 10, 11, 20, 14, 15, 3_000_000, time.UTC),
				Source:  audit.Source{Host: "mymachine.example.com", App: "evntslog", ProcID: "42", MsgID: "ID47", Facility: "local4", Severity: "notice"},
				Message: "An application event",
			},
			detail: map[string]string{"sd.exampleSDID@32473.iut": "3", "sd.exampleSDID@32473.eventSource": "App]lication", "sd.meta": ""},
		},
		{
			name: "rfc5424 BOM stripped, nil timestamp uses receive time",
			in:   "<85>1 - host app - IHE+RFC-3881 - \ufeff<AuditMessage/>\n",
			want: audit.Event{
				Time:      recv,
				Source:    audit.Source{Host: "host", App: "app", MsgID: "IHE+RFC-3881", Facility: "authpriv", Severity: "notice"},
				Malformed: true, // DICOM audit XML without a tokenizer: kept without its body
			},
			detail: map[string]string{DetailDICOMError: "dicom_no_tokenizer"},
		},
		{
			name: "rfc5424 multi-line XML message",
			in:   "<85>1 2025-04-18T09:04:00.603Z matchbox.test - - IHE+RFC-3881 - <?xml version=\"1.0\"?>\n<AuditMessage>\n</AuditMessage>\n",
			want: audit.Event{
				Time:      time.Date(2025, 4, 18, 9, 4, 0, 603_000_000, time.UTC),
				Source:    audit.Source{Host: "matchbox.test", MsgID: "IHE+RFC-3881", Facility: "authpriv", Severity: "notice"},
				Malformed: true,
			},
			detail: map[string]string{DetailDICOMError: "dicom_no_tokenizer"},
		},
		{
			name: "rfc3164 year inferred",
			in:   "<38>Mar 15 11:58:01 pacs01 sshd[1234]: Accepted publickey for admin",
			want: audit.Event{
				Time:   time.Date(2026, 3, 15, 11, 58, 1, 0, time.UTC),
				Source: audit.Source{Host: "pacs01", App: "sshd", ProcID: "1234", Facility: "auth", Severity: "info"},
				Action: audit.ActionLogin, ActionCode: "E", Outcome: audit.OutcomeSuccess,
				Actor:   audit.Actor{User: "admin"},
				Message: "Accepted publickey for admin",
			},
		},
		{
			name: "rfc3164 december stamp is last year",
			in:   "<38>Dec 31 23:00:00 pacs01 sshd: bye",
			want: audit.Event{
				Time:    time.Date(2025, 12, 31, 23, 0, 0, 0, time.UTC),
				Source:  audit.Source{Host: "pacs01", App: "sshd", Facility: "auth", Severity: "info"},
				Message: "bye",
			},
		},
		{
			name: "rfc3164 with rfc3339 timestamp",
			in:   "<13>2026-03-01T10:00:00+01:00 ris app: hello",
			want: audit.Event{
				Time:    time.Date(2026, 3, 1, 9, 0, 0, 0, time.UTC),
				Source:  audit.Source{Host: "ris", App: "app", Facility: "user", Severity: "notice"},
				Message: "hello",
			},
		},
		{
			name: "leading spaces before PRI",
			in:   "  <13>Mar 15 11:00:00 h a: x\r\n",
			want: audit.Event{
				Time:    time.Date(2026, 3, 15, 11, 0, 0, 0, time.UTC),
				Source:  audit.Source{Host: "h", App: "a", Facility: "user", Severity: "notice"},
				Message: "x",
			},
		},
		{
			name: "not syslog is kept as malformed",
			in:   "just some text\n",
			want: audit.Event{Time: recv, Message: "just some text", Malformed: true},
		},
		{
			name: "accepted by go-syslog but empty is malformed",
			in:   "<181>00",
			want: audit.Event{Time: recv, Message: "<181>00", Malformed: true, Source: audit.Source{Facility: "local6", Severity: "notice"}},
		},
		{
			name: "broken PRI keeps no recovered fields",
			in:   "<19000021>122 2018-11-22",
			want: audit.Event{Time: recv, Message: "<19000021>122 2018-11-22", Malformed: true},
		},
		{
			name: "partial rfc5424 keeps header, whole frame as message",
			in:   `<165>1 2023-04-18T14:32:52Z host app 123 MSG [id broken="value" missingEnd`,
			want: audit.Event{
				Time:      recv,
				Source:    audit.Source{Host: "host", App: "app", ProcID: "123", MsgID: "MSG", Facility: "local4", Severity: "notice"},
				Message:   `<165>1 2023-04-18T14:32:52Z host app 123 MSG [id broken="value" missingEnd`,
				Malformed: true,
			},
		},
		{
			name: "invalid UTF-8 survives as malformed",
			in:   "\xff\xfe not utf8",
			want: audit.Event{Time: recv, Message: "\xff\xfe not utf8", Malformed: true},
		},
	}
	p := newParser(time.UTC)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var ev audit.Event
			resetEvent(&ev, "tcp", "192.0.2.7")
			if !p.parse(&ev, []byte(tt.in), recv) {
				t.Fatal("parse reported an empty frame")
			}
			want := tt.want
			want.Source.Kind, want.Source.Transport, want.Source.IP = "syslog", "tcp", "192.0.2.7"
			want.Received = recv
			if want.Action == "" {
				want.Action = ActionLog
				want.Outcome = audit.OutcomeUnknown
			}
			sum := sha256.Sum256([]byte(tt.in))
			want.RawSHA256 = hex.EncodeToString(sum[:])
			if !ev.Time.Equal(want.Time) {
				t.Errorf("Time = %v, want %v", ev.Time, want.Time)
			}
			if got, want := ev.Time.Location(), time.UTC; got != want {
				t.Errorf("Time zone = %v, want UTC", got)
			}
			ev.Time, want.Time = time.Time{}, time.Time{}
			gotDetail := ev.Detail
			ev.Detail, want.Detail = nil, nil
			if got, want := string(ev.AppendJSON(nil)), string(want.AppendJSON(nil)); got != want {
				t.Errorf("event\n got %s\nwant %s", got, want)
			}
			if len(gotDetail) != len(tt.detail) || !maps.Equal(gotDetail, tt.detail) {
				t.Errorf("Detail = %v, want %v", gotDetail, tt.detail)
			}
		})
	}
}

func TestParseEmpty(t *testing.T) {
	p := newParser(time.UTC)
	for _, in := range []string{"", "\n", "\r\n", "\x00", "   "} {
		var ev audit.Event
		resetEvent(&ev, "udp", "")
		if p.parse(&ev, []byte(in), fixedNow) {
			t.Errorf("parse(%q) kept an event, want it skipped", in)
		}
	}
}

// TestParseReusesEvent checks that a reused event carries nothing over from the last
// message, in particular no structured data.
func TestParseReusesEvent(t *testing.T) {
	p := newParser(time.UTC)
	var ev audit.Event
	resetEvent(&ev, "tcp", "ip")
	p.parse(&ev, []byte(`<13>1 - h a - - [x@1 k="v"] first`), fixedNow)
	resetEvent(&ev, "tcp", "ip")
	p.parse(&ev, []byte(`<13>1 - h2 - - - - second`), fixedNow)
	var m map[string]any
	if err := json.Unmarshal(ev.AppendJSON(nil), &m); err != nil {
		t.Fatal(err)
	}
	if _, ok := m["detail"]; ok {
		t.Fatalf("second event has detail %v", m["detail"])
	}
	if got, want := ev.Source.App, ""; got != want {
		t.Fatalf("App = %q, want %q", got, want)
	}
}

// TestSyslogActor pins the actor rules of parse.go: sshd's own rule, then structured
// data, then MSG pairs, phrases, and uid last.
func TestSyslogActor(t *testing.T) {
	tests := []struct {
		name, in                         string
		user, role, session, workstation string
	}{
		{"sd user", `<86>1 - h app - - [origin@32473 user="jdoe"] x`, "jdoe", "", "", ""},
		{"sd meta user", `<86>1 - h app - - [meta user="jdoe"] x`, "jdoe", "", "", ""},
		{"sd names case-insensitive", `<86>1 - h app - - [a@1 UserName="jdoe" Role="tech" Session_ID="s1"] x`, "jdoe", "tech", "s1", ""},
		{"sd acct", `<86>1 - h app - - [a@1 acct="svc1"] x`, "svc1", "", "", ""},
		{"sd best name wins over order", `<86>1 - h app - - [a@1 uid="1001"][b@1 login="kp"] x`, "kp", "", "", ""},
		{"sd first element in byte order", `<86>1 - h app - - [z@1 user="zed"][a@1 user="abe"] x`, "abe", "", "", ""},
		{"sd over msg", `<86>1 - h app - - [a@1 user="sd"] user=msg role=r2`, "sd", "r2", "", ""},
		{"sd placeholder skipped", `<86>1 - h app - - [a@1 user="-"] user=msg`, "msg", "", "", ""},
		{"sd patient id is not a user", `<86>1 - h app - - [a@1 PatientID="P1" patient_uid="P2"] x`, "", "", "", ""},
		{"sd workstation", `<86>1 - h app - - [a@1 workstation="WS1" user="u"] x`, "u", "", "", "WS1"},
		{"msg user", "<13>1 - h app - - - opened user=rad2", "rad2", "", "", ""},
		{"msg quoted", `<13>1 - h app - - - opened user="rad 2" sid=77`, "rad 2", "", "77", ""},
		{"msg single quoted", `<13>1 - h app - - - opened login='rad2'`, "rad2", "", "", ""},
		{"msg best key", "<13>1 - h app - - - account=a1 user=u1", "u1", "", "", ""},
		{"msg trailing punctuation", "<13>1 - h app - - - done by usr=kp, ok.", "kp", "", "", ""},
		{"msg key must be a whole word", "<13>1 - h app - - - patient_uid=X1 myuser=Y1 user_idx=Z1", "", "", "", ""},
		{"msg pam ruser", "<13>1 - h sudo - - - auth failure; logname=a uid=1 euid=0 tty=x ruser=b rhost= user=root", "b", "", "", ""},
		{"msg pam logname", "<13>1 - h sudo - - - auth failure; logname=a uid=1 euid=0 tty=x ruser= rhost= user=root", "a", "", "", ""},
		{"msg phrase quoted", `<13>1 - h pg - - - failed for user "dba"`, "dba", "", "", ""},
		{"msg phrase by user", "<13>1 - h app - - - Study viewed by user radiologist1 from workstation WS-0042", "radiologist1", "", "", ""},
		{"msg uid last", "<13>1 - h app - - - uid=1001 for user alice", "alice", "", "", ""},
		{"msg uid alone", "<13>1 - h app - - - uid=1001", "1001", "", "", ""},
		{"sshd rule first", "<86>1 - h sshd - - - Accepted publickey for tech01 from 10.0.0.7 port 1 ssh2 user=other", "tech01", "", "", ""},
		{"rfc3164 too", "<38>Dec  1 10:00:00 ws12 viewer[42]: user=rad02 role=radiologist", "rad02", "radiologist", "", ""},
		{"nothing", "<13>1 - h app - - - nothing here = at all", "", "", "", ""},
		{"malformed lines get no actor", "user=jdoe not syslog", "", "", "", ""},
	}
	p := newTestParser(t)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var ev audit.Event
			resetEvent(&ev, "tcp", "127.0.0.1")
			p.parse(&ev, []byte(tt.in), fixedNow)
			if got, want := ev.Actor.User, tt.user; got != want {
				t.Errorf("user=%q, want %q", got, want)
			}
			if got, want := ev.Actor.Role, tt.role; got != want {
				t.Errorf("role=%q, want %q", got, want)
			}
			if got, want := ev.Actor.Session, tt.session; got != want {
				t.Errorf("session=%q, want %q", got, want)
			}
			if got, want := ev.Source.Workstation, tt.workstation; got != want {
				t.Errorf("workstation=%q, want %q", got, want)
			}
		})
	}
}

// TestStructuredDataPHI: patient parameters of structured data are stored as tokens
// (the patient id through PatientToken), never in clear, and dropped without a tokenizer.
func TestStructuredDataPHI(t *testing.T) {
	const in = `<86>1 - h app - - [a@1 PatientID="MRN7788991" patient_name="DOE^JANE" DOB="1970-01-02" accession="ACC998877" user="rad4"] opened`
	secrets := []string{"MRN7788991", "DOE^JANE", "1970-01-02", "ACC998877"}
	tok := testTokenizer(t)
	tests := []struct {
		name    string
		tok     *audit.Tokenizer
		patient string
	}{
		{"tokenizer", tok, tok.PatientToken("MRN7788991", "")},
		{"no tokenizer", nil, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := newParser(time.UTC)
			p.tok = tt.tok
			var ev audit.Event
			resetEvent(&ev, "tcp", "127.0.0.1")
			p.parse(&ev, []byte(in), fixedNow)
			if got, want := ev.Patient, tt.patient; got != want {
				t.Errorf("patient=%q, want %q", got, want)
			}
			if got, want := ev.Actor.User, "rad4"; got != want {
				t.Errorf("user=%q, want %q", got, want)
			}
			out := string(ev.AppendJSON(nil))
			for _, s := range secrets {
				if strings.Contains(out, s) {
					t.Errorf("event holds %q in clear: %s", s, out)
				}
			}
			if tt.tok != nil {
				if got := ev.Detail["sd.a@1.patient_name"]; !audit.IsToken(audit.IDName, got) {
					t.Errorf("patient_name detail %q, want a name token", got)
				}
				if got := ev.Accession; !audit.IsToken(audit.IDAccession, got) {
					t.Errorf("accession %q, want a token", got)
				}
			}
		})
	}
}

func TestPatientInText(t *testing.T) {
	tok := "pat_0123456789abcdef0123456789abcdef"
	tests := []struct{ in, want string }{
		{"opened for PatientID=" + tok + " on WS", tok},
		{tok, tok},
		{"x" + tok, ""},
		{tok + "0", ""},
		{"pat_0123", ""},
		{"pat_ then " + tok, tok},
		{"pat_0123456789abcdef0123456789abcdeg", ""},
		{"", ""},
	}
	for _, tt := range tests {
		if got := patientInText(tt.in); got != tt.want {
			t.Errorf("patientInText(%q)=%q, want %q", tt.in, got, tt.want)
		}
	}
}

// BenchmarkParseActor measures parse on lines with and without actor hints: the MSG
// pair scan runs on every syslog line.
func BenchmarkParseActor(b *testing.B) {
	for _, tc := range []struct{ name, line string }{
		{"plain", "<134>1 2026-03-15T10:00:00.123456Z modality1.example.org ctscanner 4711 ID47 - Study viewed from workstation WS-0042; series 3 of 7 loaded in 412 ms"},
		{"pairs", "<134>1 2026-03-15T10:00:00.123456Z modality1.example.org ctscanner 4711 ID47 - Study viewed user=rad02 role=radiologist session_id=9f3c ws=WS-0042 ms=412"},
		{"sd", `<134>1 2026-03-15T10:00:00.123456Z modality1.example.org ctscanner 4711 ID47 [origin@32473 user="rad02" role="radiologist" session="9f3c"] Study viewed`},
	} {
		b.Run(tc.name, func(b *testing.B) {
			p := newTestParser(b)
			frame := []byte(tc.line)
			var ev audit.Event
			b.ReportAllocs()
			for b.Loop() {
				resetEvent(&ev, "tcp", "127.0.0.1")
				p.parse(&ev, frame, fixedNow)
			}
		})
	}
}
