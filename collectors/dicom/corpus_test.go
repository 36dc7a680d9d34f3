package dicom

import (
	"bytes"
	"encoding/base64"
	"encoding/xml"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// The shared corpus, relative to this package (see /work/shared/corpus/SOURCES.md).
var (
	corpusDir = filepath.Join("..", "..", "..", "shared", "corpus", "dicom-audit")
	badGlob   = filepath.Join("..", "..", "..", "shared", "corpus", "bad", "xml-*")
)

// corpusFiles returns the files matching glob, skipping the test when there are none
// (failing under CI=true, where the corpus must be present).
func corpusFiles(tb testing.TB, glob string) []string {
	tb.Helper()
	files, err := filepath.Glob(glob)
	if err != nil {
		tb.Fatal(err)
	}
	if len(files) == 0 {
		if os.Getenv("CI") == "true" {
			tb.Fatalf("no corpus files match %s", glob)
		}
		tb.Skipf("no corpus files match %s", glob)
	}
	return files
}

// TestCorpus parses every real DICOM audit sample and checks that the encoded event holds
// no patient identifier, name, birth date or accession number found in the XML.
func TestCorpus(t *testing.T) {
	tok := testTokenizer(t)
	for _, path := range corpusFiles(t, filepath.Join(corpusDir, "*")) {
		t.Run(filepath.Base(path), func(t *testing.T) {
			raw, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			if !Looks(string(raw)) {
				t.Errorf("Looks=false, want true")
			}
			ev := baseEvent(raw)
			ev.Message = ""
			if err := Parse(raw, tok, &ev); err != nil {
				t.Fatalf("Parse: %v (reason %s)", err, Reason(err))
			}
			if ev.Action == "" || ev.Outcome == "" || len(ev.Codes) == 0 {
				t.Errorf("action=%q outcome=%q codes=%v, want all set", ev.Action, ev.Outcome, ev.Codes)
			}
			out := string(ev.AppendJSON(nil))
			secrets := phiOf(t, raw)
			if len(secrets) == 0 && strings.Contains(string(raw), "ParticipantObjectTypeCodeRole=\"1\"") {
				t.Errorf("no patient data extracted from a document with a patient object")
			}
			t.Logf("%d patient values checked", len(secrets))
			for _, s := range secrets {
				if strings.Contains(out, s.value) || strings.Contains(out, jsonEscaped(s.value)) {
					t.Errorf("event contains %s %q:\n%s", s.kind, s.value, out)
				}
			}
		})
	}
}

// TestCorpusBad checks the reason keyword of each malformed document.
func TestCorpusBad(t *testing.T) {
	want := map[string]string{
		"xml-dicom-billion-laughs.xml":             ReasonDoctype,
		"xml-dicom-doctype-xxe-file.xml":           ReasonDoctype,
		"xml-dicom-external-dtd.xml":               ReasonDoctype,
		"xml-dicom-empty.xml":                      ReasonMalformed,
		"xml-dicom-invalid-utf8.xml":               ReasonInvalidUTF8,
		"xml-dicom-truncated-mid-attribute.xml":    ReasonMalformed,
		"xml-dicom-two-documents-concatenated.xml": ReasonMalformed,
	}
	tok := testTokenizer(t)
	for _, path := range corpusFiles(t, badGlob) {
		name := filepath.Base(path)
		if !strings.HasPrefix(name, "xml-dicom-") {
			continue
		}
		t.Run(name, func(t *testing.T) {
			w, ok := want[name]
			if !ok {
				t.Fatalf("no expected reason for %s; add it to the table", name)
			}
			raw, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			ev := baseEvent(raw)
			before := string(ev.AppendJSON(nil))
			perr := Parse(raw, tok, &ev)
			if got := Reason(perr); got != w {
				t.Fatalf("reason=%q (err %v), want %q", got, perr, w)
			}
			if after := string(ev.AppendJSON(nil)); after != before {
				t.Errorf("Parse changed the event on error")
			}
			if msg := perr.Error(); strings.Contains(msg, "COTTA") || strings.Contains(msg, "SMS") || strings.Contains(msg, "passwd") || strings.Contains(msg, "lol") {
				t.Errorf("error text carries document content: %q", msg)
			}
		})
	}
	for name := range want {
		if _, err := os.Stat(filepath.Join(filepath.Dir(badGlob), name)); err != nil {
			t.Errorf("expected bad file %s: %v", name, err)
		}
	}
}

type secret struct{ kind, value string }

// phiOf extracts, independently of the parser, the values that must never appear in an
// event: patient ids (whole and before '^'), patient names and their components,
// accession numbers, and the patient ids, names and birth dates inside base64 HL7
// messages and queries.
func phiOf(tb testing.TB, raw []byte) []secret {
	tb.Helper()
	d := xml.NewDecoder(bytes.NewReader(bytes.TrimPrefix(raw, bom)))
	var (
		out      []secret
		inObject bool
		patient  bool
		inName   bool
		encoded  []string
	)
	add := func(kind, v string) {
		v = strings.TrimSpace(v)
		if len(v) >= 4 {
			out = append(out, secret{kind, v})
		}
	}
	for {
		tk, err := d.Token()
		if err == io.EOF {
			break
		}
		if err != nil {
			tb.Fatalf("test xml reader: %v", err)
		}
		switch t := tk.(type) {
		case xml.StartElement:
			attr := func(n string) string {
				for _, a := range t.Attr {
					if a.Name.Local == n {
						return a.Value
					}
				}
				return ""
			}
			switch t.Name.Local {
			case "ParticipantObjectIdentification":
				inObject = true
				patient = attr("ParticipantObjectTypeCode") == "1" && attr("ParticipantObjectTypeCodeRole") == "1"
				if patient {
					id := attr("ParticipantObjectID")
					add("patient id", id)
					before, _, _ := strings.Cut(id, "^")
					add("patient id", before)
				}
			case "ParticipantObjectName":
				inName = patient
			case "Accession":
				add("accession", attr("Number"))
			case "ParticipantObjectDetail":
				encoded = append(encoded, attr("value"))
			case "ParticipantObjectQuery":
				encoded = append(encoded, "") // filled by the CharData
			}
			_ = inObject
		case xml.CharData:
			if inName {
				add("patient name", string(t))
				for _, part := range strings.Split(string(t), "^") {
					add("patient name", part)
				}
			}
			if n := len(encoded); n > 0 && encoded[n-1] == "" {
				encoded[n-1] = strings.TrimSpace(string(t))
			}
		case xml.EndElement:
			switch t.Name.Local {
			case "ParticipantObjectName":
				inName = false
			case "ParticipantObjectIdentification":
				inObject, patient = false, false
			case "ParticipantObjectQuery":
				if n := len(encoded); n > 0 && encoded[n-1] == "" {
					encoded = encoded[:n-1]
				}
			}
		}
	}
	for _, e := range encoded {
		add("base64 value", e)
		dec, err := base64.StdEncoding.DecodeString(strings.Join(strings.Fields(e), ""))
		if err != nil {
			continue
		}
		out = append(out, hl7PHI(string(dec))...)
		out = append(out, datasetPHI(dec)...)
	}
	return out
}

// hl7PHI returns PID-3 ids (first component), PID-5 name components and PID-7 birth
// dates of an HL7 v2 message, and the value after "@PID.3.1^" in a QPD query.
func hl7PHI(msg string) []secret {
	var out []secret
	add := func(kind, v string) {
		if len(v) >= 4 {
			out = append(out, secret{kind, v})
		}
	}
	for _, seg := range strings.FieldsFunc(msg, func(r rune) bool { return r == '\r' || r == '\n' }) {
		if f := strings.Split(seg, "|"); f[0] == "PID" {
			if len(f) > 3 {
				for _, rep := range strings.Split(f[3], "~") {
					id, _, _ := strings.Cut(rep, "^")
					add("hl7 patient id", id)
				}
			}
			if len(f) > 5 {
				for _, part := range strings.Split(f[5], "^") {
					add("hl7 patient name", part)
				}
			}
			if len(f) > 7 {
				add("hl7 birth date", f[7])
			}
		}
		if _, rest, ok := strings.Cut(seg, "@PID.3.1^"); ok {
			id, _, _ := strings.Cut(rest, "~")
			id, _, _ = strings.Cut(id, "^")
			id, _, _ = strings.Cut(id, "|")
			add("query patient id", id)
		}
	}
	return out
}

// jsonEscaped returns s as the encoder writes it inside a JSON string (without quotes).
func jsonEscaped(s string) string {
	var b strings.Builder
	for _, r := range s {
		switch r {
		case '"', '\\':
			b.WriteByte('\\')
			b.WriteRune(r)
		case '&':
			b.WriteString(`\u0026`)
		case '<':
			b.WriteString(`\u003c`)
		case '>':
			b.WriteString(`\u003e`)
		default:
			b.WriteRune(r)
		}
	}
	return b.String()
}

// datasetPHI returns Patient ID (0010,0020), Patient's Name (0010,0010) and Birth Date
// (0010,0030) from a little-endian DICOM dataset (explicit or implicit VR), as found in
// the ParticipantObjectQuery of a C-FIND.
func datasetPHI(b []byte) []secret {
	var out []secret
	tags := []struct {
		kind string
		tag  []byte
	}{
		{"dataset patient id", []byte{0x10, 0x00, 0x20, 0x00}},
		{"dataset patient name", []byte{0x10, 0x00, 0x10, 0x00}},
		{"dataset birth date", []byte{0x10, 0x00, 0x30, 0x00}},
	}
	for _, t := range tags {
		i := bytes.Index(b, t.tag)
		if i < 0 || i+8 > len(b) {
			continue
		}
		var n, off int
		if vr := b[i+4 : i+6]; vr[0] >= 'A' && vr[0] <= 'Z' && vr[1] >= 'A' && vr[1] <= 'Z' {
			n, off = int(b[i+6])|int(b[i+7])<<8, i+8
		} else {
			n, off = int(b[i+4])|int(b[i+5])<<8|int(b[i+6])<<16|int(b[i+7])<<24, i+8
		}
		if n <= 0 || off+n > len(b) {
			continue
		}
		v := strings.Trim(string(b[off:off+n]), " \x00")
		for _, part := range append([]string{v}, strings.Split(v, "^")...) {
			if len(part) >= 4 {
				out = append(out, secret{t.kind, part})
			}
		}
	}
	return out
}
