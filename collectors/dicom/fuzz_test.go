package dicom

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"unicode"

	"github.com/edgeaudit/edgeaudit/audit"
)

// errorWords is every word an error text may use: errors never quote the document.
var errorWords = func() map[string]bool {
	m := map[string]bool{}
	text := "read audit xml line bytes truncated processing instruction text outside the root " +
		"data after element too many elements or attributes empty document no parse dicom"
	for _, r := range reasons {
		text += " " + r.err.Error()
	}
	for _, w := range strings.FieldsFunc(text, func(r rune) bool { return !unicode.IsLetter(r) && r != '-' }) {
		m[w] = true
	}
	return m
}()

func FuzzParse(f *testing.F) {
	paths, _ := filepath.Glob(filepath.Join("testdata", "*", "input.xml"))
	more, _ := filepath.Glob(filepath.Join(corpusDir, "*"))
	paths = append(paths, more...)
	more, _ = filepath.Glob(badGlob)
	paths = append(paths, more...)
	for _, p := range paths {
		if b, err := os.ReadFile(p); err == nil {
			f.Add(b)
		}
	}
	f.Add([]byte(`<AuditMessage/>`))
	tok := testTokenizer(f)
	known := map[string]bool{}
	for _, r := range reasons {
		known[r.reason] = true
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		ev := baseEvent(data)
		before := string(ev.AppendJSON(nil))
		err := Parse(data, tok, &ev)
		out := ev.AppendJSON(nil)
		if err != nil {
			if r := Reason(err); !known[r] {
				t.Fatalf("unknown reason %q for %v", r, err)
			}
			if string(out) != before {
				t.Fatalf("Parse changed the event on error %v", err)
			}
			for _, w := range strings.FieldsFunc(err.Error(), func(r rune) bool { return !unicode.IsLetter(r) && r != '-' }) {
				if !errorWords[w] {
					t.Fatalf("error text %q has word %q that is not in the error vocabulary", err, w)
				}
			}
			return
		}
		if !json.Valid(out) {
			t.Fatalf("invalid JSON: %s", out)
		}
		if ev.Source.Kind != audit.KindDICOM || ev.Message != "" || ev.Action == "" || ev.Outcome == "" {
			t.Fatalf("kind=%q message=%q action=%q outcome=%q", ev.Source.Kind, ev.Message, ev.Action, ev.Outcome)
		}
		if len(ev.Reason) > MaxReason {
			t.Fatalf("reason is %d bytes, max %d", len(ev.Reason), MaxReason)
		}
		if _, err := audit.Decode(out); err != nil {
			t.Fatalf("decode own output: %v", err)
		}
	})
}

// FuzzReadQuery feeds the query readers (DICOM dataset, HL7 QPD, URL, XML) arbitrary
// bytes: they must not panic, and what they keep is bounded.
func FuzzReadQuery(f *testing.F) {
	f.Add([]byte("MSH|^~\\&|A|B|C|D|1||QBP^Q22|1|P|2.5\rQPD|x|y|@PID.3.1^X1\r"), "")
	f.Add([]byte("/rs/studies?PatientID=X1&StudyDate=2026"), "")
	f.Add([]byte(`<queryByParameter><parameterList><livingSubjectId><value extension="P1"/></livingSubjectId></parameterList></queryByParameter>`), "")
	f.Add([]byte("\x08\x00\x52\x00CS\x06\x00STUDY \x10\x00\x20\x00LO\x02\x00X1"), transferExplicit)
	f.Add([]byte("\x08\x00\x52\x00\x06\x00\x00\x00STUDY \x40\x00\x00\x01\xff\xff\xff\xff\xfe\xff\x00\xe0\xff\xff\xff\xff\xfe\xff\x0d\xe0\x00\x00\x00\x00\xfe\xff\xdd\xe0\x00\x00\x00\x00"), transferImplicit)
	f.Fuzz(func(t *testing.T, data []byte, ts string) {
		q := readQuery(data, ts)
		if q.format == "" {
			t.Fatal("no format")
		}
		if len(q.keys) > maxQueryKeys || len(q.keyList()) > maxQueryKeysText {
			t.Fatalf("%d keys, %d bytes", len(q.keys), len(q.keyList()))
		}
		if p, _, ok := q.single(); ok && (p == "" || strings.ContainsAny(p, "*?")) {
			t.Fatalf("single patient %q", p)
		}
	})
}
