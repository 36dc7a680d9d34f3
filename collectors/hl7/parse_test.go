package hl7

import (
	"strings"
	"testing"
	"time"
)

func TestParseErrors(t *testing.T) {
	tests := []struct {
		name, in, want string
	}{
		{"empty", "", ReasonMissingMSH},
		{"no msh", "PID|||1\r", ReasonMissingMSH},
		{"lowercase", "msh|^~\\&|A|B|||||ADT^A01|1|P|2.5\r", ReasonBadMSH},
		{"no encoding chars", "MSH|A|B|C||ADT^A01|1|P|2.5\r", ReasonBadMSH},
		{"short", "MSH|^~\r", ReasonBadMSH},
		{"truncated after encoding", "MSH|^~\\&\rPID|||1\r", ReasonBadMSH},
		{"duplicate delimiter", "MSH|^^\\&|A||||||ADT^A01|1|P|2.5\r", ReasonBadMSH},
		{"no message type", "MSH|^~\\&|A|B|C|D|2026||||1|P|2.5\r", ReasonBadMSH},
		{"bad version", "MSH|^~\\&|A|B|C|D|2026||ADT^A01|1|P|2.3\\rMSA\r", ReasonBadMSH},
		{"bad segment id", "MSH|^~\\&|A|B|C|D|2026||ADT^A01|1|P|2.5\r<xml>\r", ReasonMalformed},
		{"second msh", "MSH|^~\\&|A|B|C|D|2026||ADT^A01|1|P|2.5\rMSH|^~\\&|A|B|C|D|2026||ADT^A01|2|P|2.5\r", ReasonMalformed},
		{"invalid utf8", "MSH|^~\\&|A|B|C|D|2026||ADT^A01|1|P|2.5||||||UNICODE UTF-8\rPID|||\xff\xfe\r", ReasonInvalidUTF8},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse([]byte(tt.in))
			if err == nil {
				t.Fatal("Parse succeeded, want error")
			}
			if got := ReasonOf(err); got != tt.want {
				t.Fatalf("reason=%s (%v), want %s", got, err, tt.want)
			}
		})
	}
}

func TestParseValues(t *testing.T) {
	tests := []struct {
		name   string
		in     string
		seg    string
		field  int
		comp   int
		want   string
		chNote string
	}{
		{"cr", "MSH|^~\\&|APP|FAC|||2026||ADT^A01|1|P|2.5\rPID|||ID1\r", "PID", 3, 1, "ID1", ""},
		{"crlf", "MSH|^~\\&|APP|FAC|||2026||ADT^A01|1|P|2.5\r\nPID|||ID1\r\n", "PID", 3, 1, "ID1", ""},
		{"lf", "MSH|^~\\&|APP|FAC|||2026||ADT^A01|1|P|2.5\nPID|||ID1\n", "PID", 3, 1, "ID1", ""},
		{"msh numbering", "MSH|^~\\&|APP|FAC|||2026||ADT^A01|1|P|2.5\r", "MSH", 3, 1, "APP", ""},
		{"message type", "MSH|^~\\&|APP|FAC|||2026||ADT^A01^ADT_A01|1|P|2.5\r", "MSH", 9, 2, "A01", ""},
		{"nonstandard delimiters", "MSH^~|\\&^APP^FAC^^^2026^^ADT~A01^1^P^2.5\rPID^^^ID1~X\r", "PID", 3, 2, "X", ""},
		{"five encoding chars", "MSH|^~\\&#|APP|FAC|||2026||ADT^A01|1|P|2.7\rPID|||a\\P\\b\r", "PID", 3, 1, "a#b", ""},
		{"escapes", "MSH|^~\\&|APP|FAC|||2026||ADT^A01|1|P|2.5\rNTE|||a\\F\\b\\S\\c\\T\\d\\R\\e\\E\\f\r", "NTE", 3, 1, "a|b^c&d~e\\f", ""},
		{"hex escape", "MSH|^~\\&|APP|FAC|||2026||ADT^A01|1|P|2.5||||||UNICODE UTF-8\rNTE|||M\\XC3BC\\ller\r", "NTE", 3, 1, "Müller", ""},
		{"highlight dropped", "MSH|^~\\&|APP|FAC|||2026||ADT^A01|1|P|2.5\rNTE|||\\H\\bold\\N\\\r", "NTE", 3, 1, "bold", ""},
		{"unterminated escape", "MSH|^~\\&|APP|FAC|||2026||ADT^A01|1|P|2.5\rNTE|||a\\Fb\r", "NTE", 3, 1, "a\\Fb", ""},
		{"null", "MSH|^~\\&|APP|FAC|||2026||ADT^A01|1|P|2.5\rPID|||\"\"\r", "PID", 3, 1, "", ""},
		{"latin1", "MSH|^~\\&|APP|FAC|||2026||ADT^A01|1|P|2.5||||||8859/1\rPID|||M\xfcller\r", "PID", 3, 1, "Müller", ""},
		{"8859/1 that is utf-8", "MSH|^~\\&|APP|FAC|||2026||ADT^A01|1|P|2.5||||||8859/1\rPID|||Müller\r", "PID", 3, 1, "Müller", "utf8_in_8859_1"},
		{"unknown charset", "MSH|^~\\&|APP|FAC|||2026||ADT^A01|1|P|2.5||||||ISO IR87\rPID|||a\xffb\r", "PID", 3, 1, "a\uFFFDb", "unknown"},
		{"repetition", "MSH|^~\\&|APP|FAC|||2026||ADT^A01|1|P|2.5\rPID|||A~B\r", "PID", 3, 1, "A", ""},
		{"batch", "BHS|^~\\&\rMSH|^~\\&|APP|FAC|||2026||ADT^A04|1|P|2.5\rPID|||A\rMSH|^~\\&|APP|FAC|||2026||ADT^A04|2|P|2.5\rPID|||B\rBTS|2\r", "PID", 3, 1, "A", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m, err := Parse([]byte(tt.in))
			if err != nil {
				t.Fatalf("Parse: %v", err)
			}
			if got := m.Component(m.Field(tt.seg, tt.field), tt.comp); got != tt.want {
				t.Fatalf("%s-%d.%d=%q, want %q", tt.seg, tt.field, tt.comp, got, tt.want)
			}
			if got := m.CharsetNote; got != tt.chNote {
				t.Fatalf("CharsetNote=%q, want %q", got, tt.chNote)
			}
		})
	}
}

func TestParseBatchCount(t *testing.T) {
	m, err := Parse([]byte("BHS|^~\\&\rMSH|^~\\&|APP|FAC|||2026||ADT^A04|1|P|2.5\rPID|||A\rMSH|^~\\&|APP|FAC|||2026||ADT^A04|2|P|2.5\rPID|||B\rBTS|2\r"))
	if err != nil {
		t.Fatal(err)
	}
	if got, want := m.Batch, 2; got != want {
		t.Fatalf("Batch=%d, want %d", got, want)
	}
	if got, want := len(m.All("PID")), 1; got != want {
		t.Fatalf("PID segments=%d, want %d", got, want)
	}
}

func TestParseDTM(t *testing.T) {
	berlin, err := time.LoadLocation("Europe/Berlin")
	if err != nil {
		t.Skip("no tzdata")
	}
	tests := []struct {
		in   string
		want string // RFC 3339 UTC, or "" for invalid
	}{
		{"20260315110000", "2026-03-15T10:00:00Z"},
		{"20260315110000+0000", "2026-03-15T11:00:00Z"},
		{"20260315110000-0500", "2026-03-15T16:00:00Z"},
		{"20260315110000.123+0100", "2026-03-15T10:00:00.123Z"},
		{"202603151100", "2026-03-15T10:00:00Z"},
		{"2026", "2025-12-31T23:00:00Z"},
		{"20260231", ""},
		{"2026031", ""},
		{"20261315", ""},
		{"abc", ""},
		{"20260315110000+01", ""},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, ok := parseDTM(tt.in, berlin)
			if tt.want == "" {
				if ok {
					t.Fatalf("parseDTM ok=%v (%v), want invalid", ok, got)
				}
				return
			}
			if !ok || got.Format(time.RFC3339Nano) != tt.want {
				t.Fatalf("parseDTM=%v,%v want %s", got.Format(time.RFC3339Nano), ok, tt.want)
			}
		})
	}
}

func TestAge(t *testing.T) {
	at := time.Date(2026, 3, 15, 0, 0, 0, 0, time.UTC)
	tests := []struct {
		dob  time.Time
		want int
	}{
		{time.Date(1980, 3, 15, 0, 0, 0, 0, time.UTC), 46},
		{time.Date(1980, 3, 16, 0, 0, 0, 0, time.UTC), 45},
		{time.Date(2027, 1, 1, 0, 0, 0, 0, time.UTC), -1},
	}
	for _, tt := range tests {
		if got := age(tt.dob, at); got != tt.want {
			t.Errorf("age(%v)=%d, want %d", tt.dob, got, tt.want)
		}
	}
}

func TestACKEchoesDelimitersAndControlID(t *testing.T) {
	m, err := Parse([]byte("MSH^~|\\&^APP^FAC^RAPP^RFAC^2026^^ADT~A01^CTL9^P^2.4\r"))
	if err != nil {
		t.Fatal(err)
	}
	b := AppendACK(nil, m, AckReject, ReasonMalformed, "", fixedNow)
	if b[0] != startBlock || b[len(b)-2] != endBlock || b[len(b)-1] != carriage {
		t.Fatalf("ack not framed: %q", b)
	}
	a, err := Parse(b[1 : len(b)-2])
	if err != nil {
		t.Fatalf("parse ack %q: %v", b, err)
	}
	if a.Delims != m.Delims {
		t.Fatalf("delims %+v, want %+v", a.Delims, m.Delims)
	}
	for _, c := range []struct {
		seg  string
		f    int
		want string
	}{
		{"MSH", 3, "RAPP"}, {"MSH", 4, "RFAC"}, {"MSH", 5, "APP"}, {"MSH", 6, "FAC"},
		{"MSH", 12, "2.4"}, {"MSA", 1, "AR"}, {"MSA", 2, "CTL9"}, {"MSA", 3, "rejected: malformed"},
		{"ERR", 8, "malformed"},
	} {
		if got := a.Component(a.Field(c.seg, c.f), 1); got != c.want {
			t.Errorf("%s-%d=%q, want %q", c.seg, c.f, got, c.want)
		}
	}
	if got, want := a.Text(a.Field("MSH", 9)), "ACK^A01^ACK"; got != want {
		t.Errorf("MSH-9=%q, want %q", got, want)
	}
	// Without a readable MSH the ACK uses the default delimiters.
	b = AppendACK(nil, nil, AckReject, ReasonMissingMSH, "", fixedNow)
	a, err = Parse(b[1 : len(b)-2])
	if err != nil {
		t.Fatalf("parse default ack %q: %v", b, err)
	}
	if a.Delims != DefaultDelims || a.Component(a.Field("MSA", 1), 1) != AckReject {
		t.Fatalf("default ack wrong: %q", b)
	}
}

func TestParseAll(t *testing.T) {
	const h = "BHS|^~\\&\r"
	msg := func(ctl string) string {
		return "MSH|^~\\&|A|B|C|D|2026||ADT^A04|" + ctl + "|P|2.5\rPID|||" + ctl + "\r"
	}
	tests := []struct {
		name, in string
		want     []string // control ids, or the reason
	}{
		{"single", msg("1"), []string{"1"}},
		{"batch", h + msg("1") + msg("2") + msg("3") + "BTS|3\r", []string{"1", "2", "3"}},
		{"bad second", h + msg("1") + "MSH|^~\\&|A|B|C|D|2026||ADT^A04|2|P|x\r", []string{ReasonBadMSH}},
		{"two msh without batch", msg("1") + msg("2"), []string{ReasonMalformed}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			msgs, err := ParseAll([]byte(tt.in))
			var got []string
			if err != nil {
				got = []string{ReasonOf(err)}
			} else {
				for _, m := range msgs {
					got = append(got, m.Component(m.Field("MSH", 10), 1))
					if len(tt.want) > 1 && m.Batch != len(tt.want) {
						t.Fatalf("Batch=%d, want %d", m.Batch, len(tt.want))
					}
					if m.Component(m.Field("PID", 3), 1) != m.Component(m.Field("MSH", 10), 1) {
						t.Fatal("segments mixed between messages")
					}
				}
			}
			if strings.Join(got, ",") != strings.Join(tt.want, ",") {
				t.Fatalf("got %q, want %q", got, tt.want)
			}
		})
	}
}
