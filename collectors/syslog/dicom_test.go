package syslog

import (
	"bytes"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/edgeaudit/edgeaudit/audit"
	"github.com/edgeaudit/edgeaudit/collectors/dicom"
)

func testTokenizer(tb testing.TB) *audit.Tokenizer {
	tb.Helper()
	tok, err := audit.NewTokenizer([]byte("edgeaudit-syslog-test-data-key-0123456789"))
	if err != nil {
		tb.Fatal(err)
	}
	return tok
}

// newTestParser is the parser of a collector configured with a tokenizer.
func newTestParser(tb testing.TB) *parser {
	p := newParser(time.UTC)
	p.tok = testTokenizer(tb)
	return p
}

// checkATNA asserts that a corpus ATNA message became a dicom event without its XML.
func checkATNA(t testing.TB, path string, ev audit.Event) {
	t.Helper()
	if !strings.Contains(path, "atna") {
		return
	}
	if ev.Source.Kind != audit.KindDICOM || ev.Message != "" || ev.Malformed {
		t.Errorf("ATNA sample: kind=%q malformed=%v dicom.error=%q message %d bytes, want a dicom event without message",
			ev.Source.Kind, ev.Malformed, ev.Detail[DetailDICOMError], len(ev.Message))
	}
}

const goodXML = `<AuditMessage><EventIdentification EventActionCode="E" EventDateTime="2026-03-15T10:00:00Z" EventOutcomeIndicator="0"><EventID csd-code="110114" codeSystemName="DCM" originalText="User Authentication"/><EventTypeCode csd-code="110122" codeSystemName="DCM" originalText="Login"/></EventIdentification><ActiveParticipant UserID="jdoe" UserIsRequestor="true"/><AuditSourceIdentification AuditSourceID="pacs"/><ParticipantObjectIdentification ParticipantObjectID="PID-SECRET-1" ParticipantObjectTypeCode="1" ParticipantObjectTypeCodeRole="1"><ParticipantObjectIDTypeCode csd-code="2"/><ParticipantObjectName>SECRET^NAME</ParticipantObjectName></ParticipantObjectIdentification></AuditMessage>`

const doctypeXML = `<?xml version="1.0"?><!DOCTYPE AuditMessage [<!ENTITY x "PID-SECRET-2">]><AuditMessage>&x;</AuditMessage>`

func TestParseDICOM(t *testing.T) {
	tests := []struct {
		name      string
		in        string
		noTok     bool
		kind      string
		action    string
		malformed bool
		message   string
		reason    string // Detail dicom.error and the reject reason
	}{
		{name: "audit message", in: "<85>1 2026-03-15T10:00:01Z pacs app - IHE+RFC-3881 - \ufeff" + goodXML, kind: "dicom", action: "auth.login"},
		{name: "doctype", in: "<85>1 - pacs app - IHE+RFC-3881 - " + doctypeXML, kind: "syslog", action: ActionLog, malformed: true, reason: dicom.ReasonDoctype},
		{name: "truncated", in: "<85>1 - pacs app - - - " + goodXML[:100], kind: "syslog", action: ActionLog, malformed: true, reason: dicom.ReasonMalformed},
		{name: "no tokenizer", in: "<85>1 - pacs app - - - " + goodXML, noTok: true, kind: "syslog", action: ActionLog, malformed: true, reason: dicom.ReasonNoTokenizer},
		{name: "plain text", in: "<85>1 - pacs app - - - user jdoe logged in", kind: "syslog", action: ActionLog, message: "user jdoe logged in"},
		{name: "other xml root", in: "<85>1 - pacs app - - - <?xml version=\"1.0\"?><Bundle/>", kind: "syslog", action: ActionLog, malformed: true, reason: dicom.ReasonNotAuditMessage},
		{name: "xml in malformed syslog", in: "<999>garbage " + goodXML, kind: "syslog", action: ActionLog, malformed: true, reason: ReasonDICOMInMalformed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := newTestParser(t)
			if tt.noTok {
				p.tok = nil
			}
			var ev audit.Event
			resetEvent(&ev, "tcp", "192.0.2.7")
			if !p.parse(&ev, []byte(tt.in), fixedNow) {
				t.Fatal("frame skipped")
			}
			if got, want := ev.Source.Kind, tt.kind; got != want {
				t.Errorf("kind=%q, want %q", got, want)
			}
			if got, want := ev.Action, tt.action; got != want {
				t.Errorf("action=%q, want %q", got, want)
			}
			if got, want := ev.Malformed, tt.malformed; got != want {
				t.Errorf("malformed=%v, want %v", got, want)
			}
			if got, want := ev.Message, tt.message; got != want {
				t.Errorf("message=%q, want %q", got, want)
			}
			if got, want := ev.Detail[DetailDICOMError], tt.reason; got != want {
				t.Errorf("dicom.error=%q, want %q", got, want)
			}
			if got, want := p.dicomErr, tt.reason; got != want {
				t.Errorf("parser reject reason=%q, want %q", got, want)
			}
			if out := ev.AppendJSON(nil); bytes.Contains(out, []byte("SECRET")) {
				t.Errorf("event holds patient data: %s", out)
			}
			// The next frame starts clean.
			resetEvent(&ev, "tcp", "192.0.2.7")
			p.parse(&ev, []byte("<13>1 - h a - - - next"), fixedNow)
			if p.dicomErr != "" || ev.Detail[DetailDICOMError] != "" {
				t.Errorf("reason carried over to the next frame: %q", p.dicomErr)
			}
		})
	}
}

// TestCollectorDICOM sends a good and a bad audit message over TCP: the good one becomes a
// dicom event, the bad one a malformed syslog event without text plus a reject.
func TestCollectorDICOM(t *testing.T) {
	sink, rep := &fakeSink{}, &fakeReporter{}
	c := startCollector(t, Config{TCP: "127.0.0.1:0"}, sink, rep, func() time.Time { return fixedNow },
		func(c *Collector) { c.SetTokenizer(testTokenizer(t)) })
	conn, err := net.Dial("tcp", c.TCPAddr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	var stream bytes.Buffer
	for _, msg := range []string{
		"<85>1 2026-03-15T10:00:01Z pacs dcm4chee - DICOM+RFC3881 - " + goodXML,
		"<85>1 2026-03-15T10:00:02Z pacs dcm4chee - DICOM+RFC3881 - " + doctypeXML,
	} {
		stream.WriteString(strconv.Itoa(len(msg)) + " " + msg)
	}
	if _, err := conn.Write(stream.Bytes()); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "two events", func() bool { return sink.len() == 2 })
	evs := sink.decoded(t)
	if got, want := evs[0].Source.Kind, audit.KindDICOM; got != want {
		t.Errorf("event 0 kind=%q, want %q", got, want)
	}
	if got, want := evs[0].Action, "auth.login"; got != want {
		t.Errorf("event 0 action=%q, want %q", got, want)
	}
	if !audit.IsToken(audit.IDPatient, evs[0].Patient) {
		t.Errorf("event 0 patient=%q, want a token", evs[0].Patient)
	}
	if got, want := evs[1].Detail[DetailDICOMError], dicom.ReasonDoctype; got != want || !evs[1].Malformed || evs[1].Message != "" {
		t.Errorf("event 1 dicom.error=%q malformed=%v message=%q, want %q, true, empty", got, evs[1].Malformed, evs[1].Message, want)
	}
	for _, b := range sink.raw() {
		if bytes.Contains(b, []byte("SECRET")) {
			t.Errorf("stored event holds patient data: %s", b)
		}
	}
	waitFor(t, "the reject", func() bool { return len(rep.getRejects()) == 1 })
	r := rep.getRejects()[0]
	if r.Reason != dicom.ReasonDoctype || r.SHA256 != evs[1].RawSHA256 || r.Transport != "tcp" || r.Kind != audit.KindSyslog {
		t.Errorf("reject=%+v, want reason %s, sha256 %s, tcp, kind syslog", r, dicom.ReasonDoctype, evs[1].RawSHA256)
	}
}
