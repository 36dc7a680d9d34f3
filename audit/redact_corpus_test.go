package audit

import (
	"bufio"
	"bytes"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// corpusPatterns are the site identifier patterns the PHI corpus assumes ({{p:...}}).
var corpusPatterns = []IdentifierPattern{
	{Name: "site-mrn", Pattern: `M\d{7}`, Kind: IDPatient},
	{Name: "site-accession", Pattern: `RAD-\d{4}-\d{5}`, Kind: IDAccession},
}

// phiLine is one corpus line: the text without markers and the marked values.
type phiLine struct {
	no   int
	text string
	phi  []string
	seen []string // values of {{s:...}}: seen in a structured message before
}

var markRE = regexp.MustCompile(`\{\{(?:([sp]):)?(.*?)\}\}`)

func readPHICorpus(tb testing.TB, path string) []phiLine {
	tb.Helper()
	f, err := os.Open(path)
	if err != nil {
		tb.Fatal(err)
	}
	defer f.Close()
	var out []phiLine
	sc := bufio.NewScanner(f)
	for no := 1; sc.Scan(); no++ {
		l := sc.Text()
		if l == "" || strings.HasPrefix(l, "#") {
			continue
		}
		pl := phiLine{no: no}
		for _, m := range markRE.FindAllStringSubmatch(l, -1) {
			pl.phi = append(pl.phi, m[2])
			if m[1] == "s" {
				pl.seen = append(pl.seen, m[2])
			}
		}
		if len(pl.phi) == 0 {
			tb.Fatalf("%s:%d: no marked PHI", path, no)
		}
		pl.text = markRE.ReplaceAllString(l, "$2")
		out = append(out, pl)
	}
	if err := sc.Err(); err != nil {
		tb.Fatal(err)
	}
	return out
}

// corpusRedactor is the redactor of a site with the default rules, the corpus's
// identifier patterns and a seen set.
func corpusRedactor(tb testing.TB) (*Redactor, *Tokenizer) {
	tb.Helper()
	tok, err := NewTokenizer(bytes.Repeat([]byte{7}, 32))
	if err != nil {
		tb.Fatal(err)
	}
	tok.SetSeen(NewSeenSet(0))
	r, err := NewRedactor(tok, DefaultRedactRules)
	if err != nil {
		tb.Fatal(err)
	}
	if err := r.SetIdentifierPatterns(corpusPatterns); err != nil {
		tb.Fatal(err)
	}
	r.SetSeen(tok.seen)
	return r, tok
}

// leaks returns the parts of value still readable in out: the whole value, and every
// name part (split at ^, space, comma) of three letters or more standing as a word.
func leaks(out, value string) []string {
	var got []string
	if strings.Contains(out, value) {
		got = append(got, value)
	}
	for _, part := range strings.FieldsFunc(value, func(r rune) bool { return r == '^' || r == ' ' || r == ',' }) {
		if len(part) < 3 || part == value {
			continue
		}
		if regexp.MustCompile(`(^|[^A-Za-z0-9_])` + regexp.QuoteMeta(part) + `($|[^A-Za-z0-9_])`).MatchString(out) {
			got = append(got, part)
		}
	}
	return got
}

// TestRedactPHICorpus: every marked value of testdata/redact/phi-lines.txt is gone after
// redaction, and redacting the output again changes nothing.
func TestRedactPHICorpus(t *testing.T) {
	lines := readPHICorpus(t, filepath.Join("testdata", "redact", "phi-lines.txt"))
	if got, want := len(lines), 300; got < want {
		t.Fatalf("corpus has %d lines, want at least %d", got, want)
	}
	r, tok := corpusRedactor(t)
	for _, l := range lines {
		for _, v := range l.seen {
			tok.PatientToken(v, "HOSP")
		}
	}
	leaked := 0
	for _, l := range lines {
		got, n := r.Redact(l.text)
		if n < len(l.phi) {
			t.Errorf("line %d: %d replacements, want at least %d: %q", l.no, n, len(l.phi), got)
		}
		for _, v := range l.phi {
			if lk := leaks(got, v); len(lk) > 0 {
				leaked++
				t.Errorf("line %d: %q leaks %q in %q", l.no, v, lk, got)
			}
		}
		if again, n := r.Redact(got); again != got || n != 0 {
			t.Errorf("line %d: not idempotent: %q -> %q (%d)", l.no, got, again, n)
		}
	}
	t.Logf("%d lines, %d leaks", len(lines), leaked)
}

// ordinaryLines are the corpus lines without PHI: our own and the shared syslog corpus.
func ordinaryLines(tb testing.TB) []string {
	tb.Helper()
	var lines []string
	for _, name := range []string{"ordinary-lines.txt", "ordinary-lines-2.txt"} {
		b, err := os.ReadFile(filepath.Join("testdata", "redact", name))
		if err != nil {
			tb.Fatal(err)
		}
		lines = append(lines, strings.Split(strings.TrimRight(string(b), "\n"), "\n")...)
	}
	// The shared corpus, where this checkout has it (read by path, not copied).
	shared, _ := filepath.Glob(filepath.Join("..", "..", "shared", "corpus", "syslog", "rfc*", "*.log"))
	for _, p := range shared {
		b, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		for _, l := range strings.Split(string(b), "\n") {
			if strings.TrimSpace(l) != "" {
				lines = append(lines, l)
			}
		}
	}
	return lines
}

// TestRedactOrdinaryLines measures the false positives: lines without PHI that the
// redactor changes. The figure is logged; the test fails above 2%.
func TestRedactOrdinaryLines(t *testing.T) {
	lines := ordinaryLines(t)
	r, tok := corpusRedactor(t)
	// A site where the seen set is full of ids of the usual shapes.
	for _, v := range []string{"4471029", "PX-558210", "0099182734", "H7781-20", "ENC20261127", "12345678", "00482913"} {
		tok.PatientToken(v, "")
	}
	changed := 0
	for _, l := range lines {
		if got, n := r.Redact(l); n != 0 || got != l {
			changed++
			t.Logf("changed: %q -> %q", l, got)
		}
	}
	rate := float64(changed) / float64(len(lines))
	t.Logf("false positives: %d of %d lines (%.2f%%)", changed, len(lines), 100*rate)
	if rate > 0.02 {
		t.Errorf("false-positive rate %.2f%%, want at most 2%%", 100*rate)
	}
}

// TestAnchoredMatchesAsSearch: on every corpus line, the redactor that tries its
// default rules where labels can start gives what searching each whole line gives.
func TestAnchoredMatchesAsSearch(t *testing.T) {
	lines := ordinaryLines(t)
	for _, name := range []string{"phi-lines.txt", "phi-lines-2.txt"} {
		for _, l := range readPHICorpus(t, filepath.Join("testdata", "redact", name)) {
			lines = append(lines, l.text)
		}
	}
	r, tok := corpusRedactor(t)
	search := searchingCopy(t, tok, tok.seen)
	for _, l := range lines {
		got, n := r.Redact(l)
		want, wn := search.Redact(l)
		if got != want || n != wn {
			t.Errorf("on %q: tried at hints %q (%d), searched whole %q (%d)", l, got, n, want, wn)
		}
	}
}

// searchingCopy is the corpus redactor with every rule searched over the whole line.
func searchingCopy(tb testing.TB, tok *Tokenizer, seen *SeenSet) *Redactor {
	tb.Helper()
	r, err := NewRedactor(tok, DefaultRedactRules)
	if err != nil {
		tb.Fatal(err)
	}
	if err := r.SetIdentifierPatterns(corpusPatterns); err != nil {
		tb.Fatal(err)
	}
	r.SetSeen(seen)
	anchored := 0
	for i := range r.rules {
		if r.rules[i].anchored != nil {
			anchored++
		}
		r.rules[i].anchored = nil
	}
	if anchored < 10 {
		tb.Fatalf("only %d rules tried anchored", anchored)
	}
	return r
}
