package hl7

import (
	"bufio"
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/edgeaudit/edgeaudit/audit"
)

// corpusDir returns the shared corpus folder, skipping the test when it is absent
// (failing under CI=true).
func corpusDir(t testing.TB) string {
	t.Helper()
	dir := filepath.Join("..", "..", "..", "shared", "corpus")
	if _, err := os.Stat(dir); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("shared corpus missing at %s (CI=true)", dir)
		}
		t.Skipf("shared corpus missing at %s", dir)
	}
	return dir
}

// documentedReasons are the parse errors a corpus sample may give (README "Errors").
var documentedReasons = map[string]bool{
	ReasonMissingMSH: true, ReasonBadMSH: true, ReasonInvalidUTF8: true, ReasonMalformed: true,
}

// corpusRejected are the samples of the good corpus (hl7v2/) that are refused, and why.
// Every sample of bad/ may be refused with a documented reason.
var corpusRejected = map[string]string{
	// A framing example whose message is only "MSH|^~\&|GHH LAB|ELAB": no MSH-9.
	"python-hl7-mllp-frame.bin#0": ReasonBadMSH,
	// A raw CR inside the base64 of OBX-5 splits the segment; HL7 requires it escaped.
	"dcm4che-ORU_R01-embedded-pdf-base64.hl7": ReasonMalformed,
}

// corpusMessages returns every HL7 sample of the shared corpus: the .hl7 files as they
// are and the blocks of the .bin (MLLP) files.
func corpusMessages(t testing.TB) map[string][]byte {
	t.Helper()
	dir := corpusDir(t)
	out := map[string][]byte{}
	var files []string
	for _, g := range []string{"hl7v2/*.hl7", "hl7v2/mllp/*.bin", "bad/hl7v2-*.hl7", "bad/hl7v2-*.bin"} {
		m, err := filepath.Glob(filepath.Join(dir, g))
		if err != nil {
			t.Fatal(err)
		}
		files = append(files, m...)
	}
	if len(files) == 0 {
		t.Fatal("no hl7v2 samples in the corpus")
	}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		name := filepath.Base(f)
		if filepath.Ext(f) != ".bin" {
			out[name] = b
			continue
		}
		fr := NewFramer(bufio.NewReader(bytes.NewReader(b)), DefaultMaxMessageSize)
		for i := 0; ; i++ {
			blk, err := fr.Next()
			if err != nil {
				var fe *FrameError
				if errors.As(err, &fe) && !fe.Fatal() {
					continue
				}
				break
			}
			out[name+"#"+strconv.Itoa(i)] = bytes.Clone(blk)
		}
	}
	return out
}

// TestCorpus parses every corpus sample: each parses or fails with a documented
// reason, and no event carries a raw identifier, name or birth date.
func TestCorpus(t *testing.T) {
	tok := testTokenizer(t)
	for name, raw := range corpusMessages(t) {
		t.Run(name, func(t *testing.T) {
			msgs, err := ParseAll(raw)
			if err != nil {
				r := ReasonOf(err)
				if !documentedReasons[r] {
					t.Fatalf("undocumented reason %q (%v)", r, err)
				}
				if want, ok := corpusRejected[name]; ok && want != r {
					t.Fatalf("reason %q, want %q", r, want)
				}
				if _, listed := corpusRejected[name]; !listed && !strings.HasPrefix(name, "hl7v2-") {
					t.Fatalf("good sample refused: %v", err)
				}
				t.Logf("%s rejected: %v", name, err)
				return
			}
			phi := phiValues(raw)
			for _, m := range msgs {
				var ev audit.Event
				Map(&ev, m, tok, time.UTC, fixedNow)
				enc := string(ev.AppendJSON(nil))
				for _, v := range phi {
					if strings.Contains(enc, v) {
						t.Errorf("event contains raw PHI value %q:\n%s", v, enc)
					}
				}
			}
		})
	}
}

// phiValues extracts, with a deliberately simple splitter independent of Parse, the
// values that must never reach an event: PID-3 ids, PID-5 name parts, PID-7 birth date,
// PID-11 address parts, PID-19 SSN, MRG-1 prior ids, QPD-3 query values (QIP values,
// a PIX CX id), QRD-8 subject ids, ORC-2/3 and OBR-2/3 order numbers, OBR-18 and IPC-1
// accession numbers, OBX-5 values.
// Values shorter than 4 characters are skipped: they match by chance (a sex code, "MR").
func phiValues(raw []byte) []string {
	s := string(raw)
	i := strings.Index(s, "MSH")
	if i < 0 || len(s) < i+8 {
		return nil
	}
	fs, comp, rep := s[i+3:i+4], s[i+4:i+5], s[i+5:i+6]
	var out []string
	add := func(v string) {
		for _, r := range strings.Split(v, rep) {
			for _, c := range strings.Split(r, comp) {
				if c = strings.TrimSpace(c); len(c) >= 4 && c != `""` && !strings.ContainsAny(c, `\&`) {
					out = append(out, c)
				}
			}
		}
	}
	for _, seg := range strings.FieldsFunc(s, func(r rune) bool { return r == '\r' || r == '\n' }) {
		f := strings.Split(seg, fs)
		get := func(n int) string {
			if n < len(f) {
				return f[n]
			}
			return ""
		}
		first := func(v string) string { return strings.Split(strings.Split(v, rep)[0], comp)[0] }
		switch f[0] {
		case "PID":
			for _, r := range strings.Split(get(3), rep) {
				if id := strings.Split(r, comp)[0]; len(id) >= 4 {
					out = append(out, id)
				}
			}
			add(get(5))
			add(get(11))
			if v := first(get(19)); len(v) >= 4 {
				out = append(out, v) // SSN
			}
			if dob := first(get(7)); len(dob) >= 8 {
				out = append(out, dob)
			}
		case "MRG":
			for _, r := range strings.Split(get(1), rep) {
				if id := strings.Split(r, comp)[0]; len(id) >= 4 {
					out = append(out, id)
				}
			}
		case "QPD":
			// QIP parameters (@PID.5.1.1^SMITH): every value; a PIX CX: its ID.
			for _, r := range strings.Split(get(3), rep) {
				parts := strings.Split(r, comp)
				if strings.HasPrefix(parts[0], "@") {
					if len(parts) > 1 && len(parts[1]) >= 4 {
						out = append(out, parts[1])
					}
				} else if len(parts[0]) >= 4 {
					out = append(out, parts[0])
				}
			}
		case "QRD":
			if v := first(get(8)); len(v) >= 4 {
				out = append(out, v)
			}
		case "ORC", "OBR":
			for _, n := range []int{2, 3} {
				if v := first(get(n)); len(v) >= 4 {
					out = append(out, v)
				}
			}
			if f[0] == "OBR" {
				if v := first(get(18)); len(v) >= 4 {
					out = append(out, v)
				}
			}
		case "IPC":
			if v := first(get(1)); len(v) >= 4 {
				out = append(out, v)
			}
		case "OBX":
			if v := first(get(5)); len(v) >= 6 {
				out = append(out, v)
			}
		}
	}
	return out
}

// TestPHIExtractor keeps the corpus check honest: it must find the values it guards.
func TestPHIExtractor(t *testing.T) {
	got := strings.Join(phiValues([]byte(adt("C1")+"ORC|NW|PLACER9|FILLER9\rOBR|1|PLACER9|FILLER9|||||||||||||||ACCN9\r"+
		"MRG|PRIOR42^^^HOSP\rQPD|Q22|T1|@PID.5.1.1^QUERIED~@PID.3.1^QID77\rQRD|2026|R|I|Q1||||QRDID88\r")), ",")
	for _, want := range []string{"MRN4711", "99887766", "Jane", "19800102", "Main St 1", "Town", "PLACER9", "FILLER9", "ACCN9",
		"PRIOR42", "QUERIED", "QID77", "QRDID88"} {
		if !strings.Contains(got, want) {
			t.Errorf("phiValues misses %q: %s", want, got)
		}
	}
	// And the mapping really leaves them out.
	m, err := Parse([]byte(adt("C1")))
	if err != nil {
		t.Fatal(err)
	}
	var ev audit.Event
	Map(&ev, m, testTokenizer(t), time.UTC, fixedNow)
	if enc := string(ev.AppendJSON(nil)); strings.Contains(enc, "MRN4711") || strings.Contains(enc, "Jane") || strings.Contains(enc, "1980") {
		t.Fatalf("event leaks PHI: %s", enc)
	}
}
