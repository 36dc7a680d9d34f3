package audit

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
	"time"
	"unicode/utf8"
)

func sampleEvents() []Event {
	t0 := time.Date(2026, 11, 27, 8, 0, 0, 123456789, time.UTC)
	return []Event{
		{},
		{ID: "x", Time: t0, Received: t0.Add(time.Second), Source: Source{Kind: KindSyslog, Host: "h", IP: "127.0.0.1", App: "sshd", Transport: "tcp", Facility: "authpriv", Severity: "info"},
			Action: "system.log", Outcome: OutcomeUnknown, Message: "line <1> & \"q\" \\ \n\t\x01 \xff end \u2028", RawSHA256: "ab"},
		{ID: "y", Time: t0.In(time.FixedZone("x", 3600)), Source: Source{Kind: KindDICOM, AETitle: "PACS"}, Action: "dicom.query", ActionCode: "E",
			Outcome: OutcomeSuccess, Actor: Actor{User: "u", Role: "r", Session: "s", Requestor: true}, Patient: "tok", PatientAge: "40-64", Study: []string{"a", "b"},
			Accession: "acc", Reason: "why", Count: 3, CorrelationID: "c", Codes: []Code{{System: "DCM", Code: "110112", Text: "Query"}, {System: "x", Code: "y"}},
			Malformed: true, ClockUnsynced: true, Detail: map[string]string{"z": "1", "a": "2"}},
		{Actor: Actor{Requestor: true}, Count: -2},
		{Source: Source{Kind: KindFHIR, Workstation: "RAD-WS-04"}, Object: "ImagingStudy", Purpose: "ETREAT", BreakGlass: true,
			Method: "GET", Endpoint: "/ImagingStudy", QueryScope: "broad", ErrorCode: "not-found"},
	}
}

func TestAppendJSONMatchesEncodingJSON(t *testing.T) {
	for i, e := range sampleEvents() {
		got := e.AppendJSON(nil)
		e2 := e
		e2.Time, e2.Received = e.Time.UTC(), e.Received.UTC()
		e2.Message = fix(e2.Message)
		want, err := json.Marshal(e2)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want) {
			t.Errorf("event %d:\n got %s\nwant %s", i, got, want)
		}
		back, err := Decode(got)
		if err != nil {
			t.Fatalf("event %d: %v", i, err)
		}
		if again := back.AppendJSON(nil); !bytes.Equal(again, got) {
			t.Errorf("event %d: round trip changed bytes:\n got %s\nwant %s", i, again, got)
		}
	}
}

func TestNewIDUnique(t *testing.T) {
	now := time.Now()
	seen := map[string]bool{}
	for range 10000 {
		id := NewID(now)
		if len(id) != 32 {
			t.Fatalf("len(id)=%d, want 32", len(id))
		}
		if seen[id] {
			t.Fatalf("duplicate id %s", id)
		}
		seen[id] = true
	}
}

func FuzzAppendJSON(f *testing.F) {
	f.Add("msg", "host", "k", "v")
	f.Add("\xff\xfe<>&\u2028", "", "", "")
	f.Fuzz(func(t *testing.T, msg, host, k, v string) {
		e := Event{Message: msg, Source: Source{Host: host}, Detail: map[string]string{k: v}}
		got := e.AppendJSON(nil)
		back, err := Decode(got)
		if err != nil {
			t.Fatal(err)
		}
		if again := back.AppendJSON(nil); !bytes.Equal(again, got) {
			t.Fatalf("round trip changed bytes:\n got %s\nwant %s", again, got)
		}
		e = Event{Message: fix(msg), Source: Source{Host: fix(host)}, Detail: map[string]string{fix(k): fix(v)}}
		want, err := json.Marshal(e)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want) {
			t.Fatalf("got %s\nwant %s", got, want)
		}
	})
}

func BenchmarkAppendJSON(b *testing.B) {
	e := sampleEvents()[1]
	buf := make([]byte, 0, 1024)
	b.ReportAllocs()
	for b.Loop() {
		buf = e.AppendJSON(buf[:0])
	}
}

// fix replaces each invalid byte (not each run, as strings.ToValidUTF8 does) by U+FFFD.
func fix(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); {
		r, n := utf8.DecodeRuneInString(s[i:])
		b.WriteRune(r)
		i += n
	}
	return b.String()
}
