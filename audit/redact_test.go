package audit

import (
	"bytes"
	"strings"
	"testing"
)

func testTokenizer(tb testing.TB) *Tokenizer {
	tb.Helper()
	tok, err := NewTokenizer(bytes.Repeat([]byte{7}, 32))
	if err != nil {
		tb.Fatal(err)
	}
	return tok
}

func TestRedactDefaults(t *testing.T) {
	tok := testTokenizer(t)
	r, err := NewRedactor(tok, DefaultRedactRules)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name, in string
		gone     []string // must not survive
		kept     []string // must survive
		n        int
	}{
		// The forms issue 7 found stored in clear.
		{"issue: MRN space", "MRN 12345678", []string{"12345678"}, []string{"MRN pat_"}, 1},
		{"issue: DOB space", "DOB 1970-01-02", []string{"1970-01-02"}, []string{"DOB dob_"}, 1},
		{"issue: Birth date", "Birth date 1970-01-02", []string{"1970-01-02"}, []string{"Birth date dob_"}, 1},
		{"issue: name colon", "name: John Smith", []string{"John", "Smith"}, []string{"name: name_"}, 1},
		{"issue: patient HL7 name", "patient: DOE^JANE", []string{"DOE", "JANE"}, []string{"patient: name_"}, 1},
		{"issue: patient quoted HL7 name", `patient="LAST^FIRST"`, []string{"LAST", "FIRST"}, []string{`patient="name_`}, 1},
		{"issue: accession number", "accession number ACC998877", []string{"ACC998877"}, []string{"accession number acc_"}, 1},
		{"issue: ssn nine digits", "ssn: 123456789", []string{"123456789"}, []string{"ssn: txt_"}, 1},

		{"mrn", "viewer opened study for MRN: 4711-22 by drsmith", []string{"4711-22"}, []string{"MRN: pat_", "drsmith"}, 1},
		{"patient id key=value", "query PatientID=ABC123 modality=CT", []string{"ABC123"}, []string{"modality=CT"}, 1},
		{"mrn number", "mrn number 00482913 merged", []string{"00482913"}, []string{"mrn number pat_", "merged"}, 1},
		{"mrn no.", "MRN no. H00987654", []string{"H00987654"}, []string{"MRN no. pat_"}, 1},
		{"mrn hash", "MRN#P-99812 ok", []string{"P-99812"}, []string{"MRN#pat_", "ok"}, 1},
		{"mrn quoted json", `{"mrn": "7731002"}`, []string{"7731002"}, []string{`{"mrn": "pat_`}, 1},
		{"end of sentence", "Report for mrn 55-201-33.", []string{"55-201-33"}, []string{"mrn pat_", "."}, 1},
		{"whole CX is one patient", "PatientID=12345^^^HOSP", []string{"12345"}, []string{"PatientID=" + tok.PatientToken("12345", "")}, 1},
		{"FHIR reference", "GET /fhir/Patient/pat-889/$everything", []string{"pat-889"}, []string{"/fhir/Patient/pat_", "/$everything"}, 1},
		{"name", `patient_name="DOE^JANE" study opened`, []string{"DOE^JANE"}, []string{"study opened"}, 1},
		{"name last, first", "Patient Name: Smith, John confirmed", []string{"Smith", "John"}, []string{"confirmed"}, 1},
		{"name unicode HL7", "PatientName=GARCÍA^JOSÉ StudyDate=20261127", []string{"GARCÍA", "JOSÉ"}, []string{"StudyDate=20261127"}, 1},
		{"name lower", "name: jane doe registered", []string{"jane doe"}, []string{"registered"}, 1},
		{"name is", "Patient's name is Mary-Ann O'Neil", []string{"Mary-Ann", "O'Neil"}, []string{"name is name_"}, 1},
		{"name of a thing", "hostname: pacs01 user name: Tech Admin Station Name: CT01", nil, []string{"pacs01", "Tech Admin", "CT01"}, 0},
		{"name of a k=v thing", "job done name=nightly-export rows=15321", nil, []string{"name=nightly-export"}, 0},
		{"HL7 name anywhere", "C-FIND match SMITH^JOHN^Q 2 results", []string{"SMITH", "JOHN"}, []string{"C-FIND match name_", "2 results"}, 1},
		{"HL7 names side by side", "DOE^JANE,SMITH^JOHN DOE^J~KIM^MIN", []string{"JANE", "SMITH", "JOHN", "KIM", "MIN"}, []string{"name_"}, 4},
		{"control-character notation", "format ^A^B stripped", nil, []string{"^A^B"}, 0},
		{"HL7 name with particles", "sending VAN DER BERG^ANNA to PACS2", []string{"VAN DER", "BERG", "ANNA"}, []string{"to PACS2"}, 1},
		{"message types are not names", "received ADT^A08^ADT_A01 and ORM^O01, sent ACK^A01", nil, []string{"ADT^A08^ADT_A01", "ORM^O01", "ACK^A01"}, 0},
		{"dob", "DOB: 1961-04-12 checked", []string{"1961-04-12"}, []string{"checked"}, 1},
		{"dob month name", "Date of Birth: March 14, 2001", []string{"March 14, 2001"}, []string{"Date of Birth: dob_"}, 1},
		{"dob dotted label", "D.O.B. 02.01.1970 on file", []string{"02.01.1970"}, []string{"on file"}, 1},
		{"accession", "Accession# A20261127-9 stored", []string{"A20261127-9"}, []string{"stored"}, 1},
		{"accession keyword", "AccessionNumber=CT26-118842 Modality=MR", []string{"CT26-118842"}, []string{"Modality=MR"}, 1},
		{"accession words", "accession ready, acc lookup", nil, []string{"accession ready, acc lookup"}, 0},
		{"order", "order #ORD-55123 placed", []string{"ORD-55123"}, []string{"order #ord_", "placed"}, 1},
		{"in order to", "in order to free space, 12 entries dropped", nil, []string{"in order to free space, 12 entries dropped"}, 0},
		{"study uid", "StudyInstanceUID=1.2.840.113619.2.55.3.6 moved", []string{"1.2.840.113619.2.55.3.6"}, []string{"StudyInstanceUID=stu_"}, 1},
		{"ssn", "billing ref 123-45-6789 sent", []string{"123-45-6789"}, []string{"billing ref"}, 1},
		{"ssn spaced after label", "SSN 457 55 5462 stored", []string{"457 55 5462"}, []string{"SSN txt_", "stored"}, 1},
		{"nine digits without label", "batch 123456789 sealed", nil, []string{"batch 123456789 sealed"}, 0},
		{"nothing", "sshd[42]: Accepted publickey for tech from 10.0.0.7 port 2222", nil, []string{"Accepted publickey for tech from 10.0.0.7 port 2222"}, 0},
		{"case-insensitive label", "mrn=77 and Mrn: 88", []string{"=77", ": 88"}, nil, 2},
		{"pid is a process id", "kernel: audit pid=4242 uid=0", nil, []string{"pid=4242"}, 0},
		{"label alone", "MRN lookup failed; patient index rebuilt; 1532 patients", nil, []string{"MRN lookup failed; patient index rebuilt; 1532 patients"}, 0},
		{"PID segment", "PID|1||44120033^^^HOSP^MR~X9^^^CLIN||DOE^JANE||19880312|F|||1 MAIN ST^^TOWN",
			[]string{"44120033", "X9", "DOE", "JANE", "19880312", "MAIN"}, []string{"PID|1||pat_", "||name_", "|F|||txt_"}, 5},
		{"MRG segment after CR", "ADT^A40 MSH|^~\\&|A|B\rMRG|H-0012-88^^^HOSP||ACCT9", []string{"H-0012-88", "ACCT9"}, []string{"ADT^A40", "MRG|pat_", "||txt_"}, 2},
		{"not a segment", "RAPID|fast CUPID|x", nil, []string{"RAPID|fast CUPID|x"}, 0},
		{"FHIR search by name and birth date", "GET /fhir/Patient?family=Smith&given=john&birthdate=1970-01-02&_count=5",
			[]string{"Smith", "john", "1970-01-02"}, []string{"?family=name_", "&given=name_", "&birthdate=dob_", "&_count=5"}, 3},
		{"FHIR search by identifier", "GET /fhir/ImagingStudy?patient.identifier=urn:oid:1.2.3|12345678&_count=5",
			[]string{"12345678"}, []string{"urn:oid:1.2.3|pat_", "&_count=5"}, 1},
		{"several", "MRN 12345678 (DOE^JANE) DOB 1970-01-02 accession ACC998877",
			[]string{"12345678", "DOE", "JANE", "1970-01-02", "ACC998877"}, []string{"MRN pat_", "DOB dob_", "accession acc_"}, 4},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, n := r.Redact(tt.in)
			if n != tt.n {
				t.Errorf("replaced %d, want %d (%q)", n, tt.n, got)
			}
			for _, g := range tt.gone {
				if strings.Contains(got, g) {
					t.Errorf("%q survived in %q", g, got)
				}
			}
			for _, k := range tt.kept {
				if !strings.Contains(got, k) {
					t.Errorf("%q lost from %q", k, got)
				}
			}
			if again, n := r.Redact(got); again != got || n != 0 {
				t.Errorf("second redaction changed %q to %q (%d)", got, again, n)
			}
		})
	}
}

// TestRedactSameTokenAsStructured: a value found in free text gets the token the
// structured sources give it, so events correlate.
func TestRedactSameTokenAsStructured(t *testing.T) {
	tok := testTokenizer(t)
	r, _ := NewRedactor(tok, DefaultRedactRules)
	tests := []struct {
		name, in, want string
	}{
		{"mrn", "MRN 12345678", "MRN " + tok.PatientToken("12345678", "HOSP")},
		{"patient id quoted", `PatientID="12345678"`, `PatientID="` + tok.PatientToken(`"12345678"`, "") + `"`},
		{"accession", "accession number ACC998877", "accession number " + tok.Token(IDAccession, "ACC998877")},
		{"name case", "patient: Doe^Jane", "patient: " + tok.Token(IDName, "DOE^JANE")},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got, _ := r.Redact(tt.in); got != tt.want {
				t.Errorf("Redact(%q)=%q, want %q", tt.in, got, tt.want)
			}
		})
	}
}

func TestRedactIdentifierPatterns(t *testing.T) {
	tok := testTokenizer(t)
	r, _ := NewRedactor(tok, DefaultRedactRules)
	if err := r.SetIdentifierPatterns([]IdentifierPattern{{Name: "mrn", Pattern: `M\d{7}`}, {Name: "acc", Pattern: `RAD-\d{4}-\d{5}`, Kind: IDAccession}}); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name, in, want string
	}{
		{"anywhere", "worklist item M1234567 ready", "worklist item " + tok.PatientToken("M1234567", "") + " ready"},
		{"punctuation around", "(M7654321), done.", "(" + tok.PatientToken("M7654321", "") + "), done."},
		{"accession kind", "scan RAD-2026-00017: ok", "scan " + tok.Token(IDAccession, "RAD-2026-00017") + ": ok"},
		{"whole words only", "XM12345678 M123456 M12345678", "XM12345678 M123456 M12345678"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got, _ := r.Redact(tt.in); got != tt.want {
				t.Errorf("Redact(%q)=%q, want %q", tt.in, got, tt.want)
			}
		})
	}
	for _, bad := range []IdentifierPattern{{Name: "paren", Pattern: `(`}, {Name: "empty", Pattern: ""}, {Name: "matches-empty", Pattern: `\d*`}, {Name: "kind", Pattern: `X\d+`, Kind: "Bad Kind"}} {
		if err := r.SetIdentifierPatterns([]IdentifierPattern{bad}); err == nil || !strings.Contains(err.Error(), bad.Name) || !strings.Contains(err.Error(), "identifier_patterns[0]") {
			t.Errorf("pattern %s: err=%v, want one naming identifier_patterns[0] and it", bad.Name, err)
		}
	}
}

// TestRedactSeen: identifiers tokenized from structured fields are found bare in free
// text and get the structured token, also in another domain.
func TestRedactSeen(t *testing.T) {
	tok := testTokenizer(t)
	if err := tok.SetIDDomains([]IDDomain{{Name: "HOSP", Authorities: []string{"HOSP"}}, {Name: "CLINIC", Authorities: []string{"CLIN"}}}); err != nil {
		t.Fatal(err)
	}
	seen := NewSeenSet(0)
	tok.SetSeen(seen)
	r, _ := NewRedactor(tok, DefaultRedactRules)
	r.SetSeen(seen)
	home := tok.PatientToken("4471029", "HOSP")
	clinic := tok.PatientToken("PX-558210", "CLIN")
	acc := tok.Token(IDAccession, "CT26-118842")
	both1, both2 := tok.PatientToken("777001", "HOSP"), tok.PatientToken("777001", "CLIN")
	if both1 == both2 {
		t.Fatal("one MRN in two domains gave one token")
	}
	tests := []struct {
		name, in, want string
	}{
		{"home", "moved 4471029 to archive", "moved " + home + " to archive"},
		{"other domain keeps its token", "prefetch PX-558210 from PACS-A", "prefetch " + clinic + " from PACS-A"},
		{"accession", "report CT26-118842 final.", "report " + acc + " final."},
		{"ambiguous is still hidden", "recheck 777001", "recheck " + tok.Token(IDText, "777001")},
		{"not seen", "moved 4471030 to archive", "moved 4471030 to archive"},
		{"inside a longer word", "moved X4471029 and 4471029a", "moved X4471029 and 4471029a"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got, _ := r.Redact(tt.in); got != tt.want {
				t.Errorf("Redact(%q)=%q, want %q", tt.in, got, tt.want)
			}
		})
	}
}

func TestSeenSetBound(t *testing.T) {
	tok := testTokenizer(t)
	s := NewSeenSet(3)
	tok.SetSeen(s)
	for _, v := range []string{"100001", "100002", "100003", "100004", "12", "CTHEAD"} {
		tok.PatientToken(v, "")
	}
	if got, want := s.Len(), 3; got != want {
		t.Fatalf("Len=%d, want %d", got, want)
	}
	tests := []struct {
		word string
		want bool
	}{{"100001", false}, {"100002", true}, {"100004", true}, {"12", false}, {"CTHEAD", false}}
	for _, tt := range tests {
		if _, got := s.Lookup(tt.word, tok); got != tt.want {
			t.Errorf("Lookup(%q)=%v, want %v", tt.word, got, tt.want)
		}
	}
}

func TestRedactRuleErrors(t *testing.T) {
	tok := testTokenizer(t)
	for _, rule := range []RedactRule{{Name: "bad", Pattern: "("}, {Name: "nogroup", Pattern: "x"}} {
		if _, err := NewRedactor(tok, []RedactRule{rule}); err == nil || !strings.Contains(err.Error(), rule.Name) {
			t.Errorf("rule %s: err=%v, want one naming it", rule.Name, err)
		}
	}
}

func FuzzRedact(f *testing.F) {
	for _, s := range []string{"MRN 12345678", "patient: DOE^JANE", `patient="LAST^FIRST"`, "DOB 1970-01-02", "ssn: 123456789",
		"name: John Smith, DOB 1970-01-02", "GET /fhir/Patient/pat-889", "accession number ACC998877", "moved 4471029 to M1234567",
		"MRN: pat_0123456789abcdef0123456789abcdef", "patient \"\" name=", "^^^", "GARCÍA^JOSÉ"} {
		f.Add(s)
	}
	tok := testTokenizer(f)
	seen := NewSeenSet(1000)
	tok.SetSeen(seen)
	tok.PatientToken("4471029", "")
	r, err := NewRedactor(tok, DefaultRedactRules)
	if err != nil {
		f.Fatal(err)
	}
	if err := r.SetIdentifierPatterns(corpusPatterns); err != nil {
		f.Fatal(err)
	}
	r.SetSeen(seen)
	search := searchingCopy(f, tok, seen)
	f.Fuzz(func(t *testing.T, s string) {
		if got, want := r.hints(s), naiveHints(r, s); got != want {
			t.Fatalf("hints(%q)=%b, want %b", s, got, want)
		}
		if got, want := redacted(r, s), redacted(search, s); got != want {
			t.Fatalf("tried at hints %q, searched whole %q (from %q)", got, want, s)
		}
		got, n := r.Redact(s)
		if n == 0 && got != s {
			t.Fatalf("no replacement counted but %q became %q", s, got)
		}
		// Each replacement puts at most one token where there was at least one byte.
		if len(got) > len(s)+n*(8+1+TokenLen) {
			t.Fatalf("%q grew to %q with %d replacements", s, got, n)
		}
		if strings.Contains(got, "4471029") && !strings.Contains(s, "X4471029") && strings.Count(s, "4471029") == strings.Count(got, "4471029") {
			// A seen id standing alone must go; inside longer words it may stay.
			for _, w := range strings.FieldsFunc(got, func(r rune) bool { return !(r < 128 && idByte(byte(r))) }) {
				if strings.Trim(w, "._-") == "4471029" {
					t.Fatalf("seen id kept in %q (from %q)", got, s)
				}
			}
		}
		if again, _ := r.Redact(got); again != got {
			t.Fatalf("not idempotent: %q -> %q -> %q", s, got, again)
		}
	})
}

func BenchmarkRedactNoHit(b *testing.B) {
	tok := testTokenizer(b)
	r, _ := NewRedactor(tok, DefaultRedactRules)
	msg := "seq: 0000000042, thread: 0000, runid: 1795767051, stamp: 2026-11-27T08:10:51 PADDPADDPADDPADDPADDPADDPADDPADDPADDPADDPADDPADDPADDPADDPADD"
	for b.Loop() {
		r.Redact(msg)
	}
}

func BenchmarkRedactTypical(b *testing.B) {
	tok := testTokenizer(b)
	r, _ := NewRedactor(tok, DefaultRedactRules)
	msg := "Accepted publickey for tech01 from 10.20.30.40 port 51514 ssh2: ED25519 SHA256:Kx9fQm2zT7bLrW0vYp3sN8cJ4hD6gA1eU5iO"
	for b.Loop() {
		r.Redact(msg)
	}
}

// BenchmarkRedactCorpus: ns per line over the ordinary and the PHI corpus, with the
// defaults alone and with identifier patterns and a seen set of 100,000 ids.
func BenchmarkRedactCorpus(b *testing.B) {
	ordinary := ordinaryLines(b)
	var phi []string
	for _, l := range readPHICorpus(b, "testdata/redact/phi-lines.txt") {
		phi = append(phi, l.text)
	}
	for _, c := range []struct {
		name  string
		lines []string
		full  bool
	}{{"ordinary/defaults", ordinary, false}, {"ordinary/patterns+seen", ordinary, true}, {"phi/defaults", phi, false}, {"phi/patterns+seen", phi, true}} {
		b.Run(c.name, func(b *testing.B) {
			tok := testTokenizer(b)
			r, _ := NewRedactor(tok, DefaultRedactRules)
			if c.full {
				seen := NewSeenSet(0)
				tok.SetSeen(seen)
				for i := range DefaultSeenMax {
					tok.PatientToken("H"+strings.Repeat("0", 3)+itoa(i), "")
				}
				r.SetSeen(seen)
				r.SetIdentifierPatterns(corpusPatterns)
			}
			b.ResetTimer()
			i := 0
			for b.Loop() {
				r.Redact(c.lines[i%len(c.lines)])
				i++
			}
		})
	}
}

func itoa(i int) string {
	var b [20]byte
	n := len(b)
	for {
		n--
		b[n] = byte('0' + i%10)
		i /= 10
		if i == 0 {
			return string(b[n:])
		}
	}
}

// naiveHints is hints without the byte tables: every hint of every rule at every word
// start (separator hints at every byte).
func naiveHints(r *Redactor, s string) uint64 {
	var hit uint64
	for i := 0; i < len(s); i++ {
		cls, prev := byteClass[s[i]], byte(0)
		if i > 0 {
			prev = byteClass[s[i-1]]
		}
		start := cls != 0 && prev == 0 || cls == classDigit && prev != classDigit
		for k, rule := range r.rules {
			for _, h := range rule.Hints {
				if shape, ok := strings.CutPrefix(h, "~"); ok {
					if start && hasShapeAt(s[i:], shape) {
						hit |= 1 << k
					}
					continue
				}
				h = strings.ToLower(h)
				if h == "" || len(s)-i < len(h) || asciiLower(s[i:i+len(h)]) != h {
					continue
				}
				if byteClass[h[0]] == 0 || start {
					hit |= 1 << k
				}
			}
		}
	}
	return hit
}

// TestHintsEveryHint: each hint of the default rules, in any case and position, wakes
// its rule, as the plain scan would.
func TestHintsEveryHint(t *testing.T) {
	r, _ := NewRedactor(testTokenizer(t), DefaultRedactRules)
	for k, rule := range r.rules {
		for _, h := range rule.Hints {
			word := strings.ReplaceAll(strings.TrimPrefix(h, "~"), "d", "7")
			if !strings.HasPrefix(h, "~") {
				word = h
			}
			for _, line := range []string{word, "x " + strings.ToUpper(word) + " y", "(" + titleASCII(word) + ")"} {
				if got := r.hints(line); got&(1<<k) == 0 || got != naiveHints(r, line) {
					t.Errorf("rule %s hint %q: hints(%q)=%b, want bit %d set and %b", rule.Name, h, line, got, k, naiveHints(r, line))
				}
			}
		}
	}
}

func asciiLower(s string) string {
	b := []byte(s)
	for i, c := range b {
		b[i] = lowerASCII(c)
	}
	return string(b)
}

func redacted(r *Redactor, s string) string {
	got, _ := r.Redact(s)
	return got
}

// titleASCII upper-cases the first byte of an ASCII word (hints are ASCII), as
// strings.Title did.
func titleASCII(w string) string {
	if w == "" || w[0] < 'a' || w[0] > 'z' {
		return w
	}
	return string(w[0]-'a'+'A') + w[1:]
}
