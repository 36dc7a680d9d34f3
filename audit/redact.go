package audit

import (
	"fmt"
	"regexp"
	"regexp/syntax"
	"slices"
	"strings"
	"unicode"
	"unicode/utf8"
)

// RedactRule replaces identifiers found in free text (syslog MSG) by tokens. Pattern is
// an RE2 expression; the first of its capture groups that took part in the match is the
// identifier, and the rest of the match (the label) stays, so "MRN: 12345" becomes
// "MRN: pat_3f…". Trailing '.', ',', ';', ':' and '-' are left out of the identifier (the
// end of a sentence), and a value that is already a token is left alone, so redacting
// twice changes nothing.
type RedactRule struct {
	Name    string `yaml:"name"`
	Pattern string `yaml:"pattern"`
	// Kind is the token namespace (pat, name, dob, acc, ...); see the ID* constants.
	// KindAuto chooses per value: pat when it holds a digit, name otherwise.
	Kind string `yaml:"kind"`
	// Hints are lowercase words of which at least one must occur (case-insensitively)
	// before the expression runs: the cheap test that keeps redaction off the hot path
	// for the vast majority of lines, which name no patient at all. Hints are matched where
	// a word starts. A hint starting with "~" is a shape in which "d" stands for any digit
	// ("~ddd-dd-dddd"), matched where a number starts. A hint starting with a byte that is
	// not a letter, digit or '_' ("^") is matched anywhere. Empty means always.
	Hints []string `yaml:"hints"`
	// NotAfter are lowercase words that, standing right before the match (separated by
	// space, '_' or '-'), cancel it: "user name: x" is not a patient's name.
	NotAfter []string `yaml:"not_after"`
}

// KindAuto is the Kind of rules whose values may be a patient id or a person's name.
const KindAuto = "auto"

// Pieces of the default rules. A label is followed by an optional quote, then either an
// explicit separator (':', '=', '#', with or without spaces) and a loose value, or only
// space and a strict value, one that holds a digit (so "MRN lookup failed" keeps its
// words).
const (
	// labelSuffix: "number", "num", "nbr", "no", "no.", "#", "id" after a label.
	labelSuffix = `(?:[ _-]?(?:number|num|nbr|no\.?|#|id))?`
	quote       = `["']?`
	explicitSep = `\s*[:=#]\s*` + quote
	spaceSep    = `\s+(?:-\s+)?` + quote
	// looseID: anything id-like after an explicit separator; '^' and '&' keep a whole
	// CX (12345^^^HOSP&1.2.3&ISO) together.
	looseID = `[A-Za-z0-9][A-Za-z0-9^&._/-]*`
	// strictID: an id after mere space: starts with a digit and is two bytes or more,
	// or a short letter prefix and a digit (ACC998877, M-1234).
	strictID = `\d[A-Za-z0-9^&._/-]+|[A-Za-z]{1,8}[-_]?\d[A-Za-z0-9^&._/-]*`
	// wordEnd stands for \b after a name: RE2's \b knows only ASCII letters, names do
	// not ("GARCÍA^JOSÉ").
	wordEnd = `(?:$|[^\pL\pN_])`
	// hl7Name: a person name in HL7 / DICOM PN form, A^B, A^B^C (up to 5 components),
	// letters only, so message types (ADT^A08) and CX values (123^^^HOSP) do not match,
	// and a family name of two letters or more (control-character notation ^A^B is not);
	// up to two capitalized words may stand before the family name (VAN DER BERG^ANNA).
	hl7Name = `((?:\p{Lu}[\p{Lu}'-]+ ){0,2}\pL[\pL'-]+\^\pL[\pL'-]*(?:\^(?:\pL[\pL'.-]*)?){0,4})` + wordEnd
	// titleName: "John Smith", "Smith, John", "JOHN Q. SMITH", "Mary-Ann O'Neil": up to
	// four capitalized words, a comma only after the first.
	titleName = `(\p{Lu}[\pL'-]+(?:, \p{Lu}[\pL'-]+)?(?: \p{Lu}[\pL'-]*\.?){0,2})` + wordEnd
	// lowerName: "john smith", two lowercase words (one would be any k=v value).
	lowerName = `(\p{Ll}[\p{Ll}'-]+ \p{Ll}[\p{Ll}'-]+)` + wordEnd
	// quotedName: a quoted value that reads like a name, not a path or a number.
	quotedName = `"(\pL[\pL ^,.'-]*)"|'(\pL[\pL ^,.'-]*)'`
	quotedVal  = `"([^"\n]+)"|'([^'\n]+)'`
	// date: ISO, compact (19700102), numeric with / . -, and month names.
	date = `\d{4}-\d{1,2}-\d{1,2}|\d{4}/\d{1,2}/\d{1,2}|\d{8}\b|\d{1,2}[/.-]\d{1,2}[/.-]\d{2,4}\b|` +
		`(?i:jan|feb|mar|apr|may|jun|jul|aug|sep|oct|nov|dec)[a-z]*\.? \d{1,2},? \d{4}|\d{1,2} (?i:jan|feb|mar|apr|may|jun|jul|aug|sep|oct|nov|dec)[a-z]*\.? \d{4}`
)

// DefaultRedactRules are the rules a site gets unless it configures its own: labelled
// patient ids, names, birth dates, accession and order numbers, study UIDs, person names
// in HL7/DICOM form anywhere, and US social security numbers. Hints are chosen so that
// common words ("Accepted", "path", "pid") do not wake the expressions.
var DefaultRedactRules = []RedactRule{
	// Rules with a label of their own run before the name rules, whose runs of
	// capitalized words could otherwise swallow a following label ("JANE DOE DOB ...").
	{Name: "patient-id", Kind: IDPatient,
		Hints: []string{"mrn", "medical", "patient", "pat id", "pat-id", "pat_id", "patid", "pt id", "pt-id", "pt_id", "ptid", "pid-3", "pid3", "pid_3", "pid 3", "chart", "pat#", "pat #", "pat no"},
		Pattern: `(?i:\b(?:mrn|medical[ _-]?record|patient[ _-]?(?:id|identifier|number|num|nbr|no\.?|#)|pat[ _-]?(?:id|no\.?|#)|pt[ _-]?id|pid[ _-]?3|chart)` + labelSuffix + `)` + quote +
			`(?:` + explicitSep + `(` + looseID + `)|\s+(?:-\s+|(?:ending|ends)(?: in| with)?\s+)?` + quote + `(` + strictID + `))`},
	// FHIR search parameters naming a patient: ?patient=123, &subject=Patient/123,
	// ?identifier=urn:oid:1.2.3|123 (the system stays).
	{Name: "fhir-search", Kind: IDPatient, Hints: []string{"patient", "subject", "identifier", "beneficiary"},
		Pattern: `[?&](?i:patient|subject|patient\.identifier|subject\.identifier|identifier|beneficiary)=(?:Patient/|[^|&\s]*\|)?([A-Za-z0-9._-]+)`},
	{Name: "fhir-search-name", Kind: IDName, Hints: []string{"name", "family", "given", "patient.name", "subject.name"},
		Pattern: `[?&](?i:name|family|given|patient\.name|patient\.family|patient\.given|subject\.name)(?::exact|:contains)?=([^&\s]+)`},
	{Name: "birth-date", Kind: IDBirthDate,
		Hints: []string{"dob", "d.o.b", "birth", "date of birth", "born", "patientbirth", "pid-7", "pid7", "pid_7", "pid 7"},
		Pattern: `(?i:\b(?:d\.?o\.?b\.?|pid[ _-]?7|(?:patient[ _-]?)?birth[ _-]?(?:date|day)|date[ _-]of[ _-]birth|born(?: on)?))` + quote +
			`(?:\s*[:=-]\s*|\s+)` + quote + `(` + date + `)`},
	{Name: "accession", Kind: IDAccession,
		Hints: []string{"accession", "acc_", "acc-", "acc#", "acc:", "acc=", "acc no", "accno", "acc num", "acc ", "acc.", "accn", "acsn"},
		Pattern: `(?i:\b(?:accession|acc\.?|accn|acsn)` + labelSuffix + `)` + quote +
			`(?:` + explicitSep + `(` + looseID + `)|` + spaceSep + `(` + strictID + `))`},
	// Order numbers hold a digit after any separator: "sort order: ascending" is not one.
	{Name: "order", Kind: IDOrder, Hints: []string{"order", "placer", "filler"},
		Pattern: `(?i:\b(?:(?:placer|filler)[ _-]?(?:order)?|order)(?:[ _-]?(?:number|num|nbr|no\.?|#|id))?)` + quote +
			`(?:` + explicitSep + `(` + strictID + `)|\s+(?:#\s*)?(` + strictID + `))`},
	{Name: "study-uid", Kind: IDStudy, Hints: []string{"study", "studyinstance"},
		Pattern: `(?i:\bstudy[ _-]?(?:instance[ _-]?)?uid)` + quote + `(?:\s*[:=]\s*|\s+)` + quote + `(\d+(?:\.\d+){2,})`},
	{Name: "ssn-label", Kind: IDText, Hints: []string{"ssn", "social", "ss#", "ss #", "ss no", "ss-no", "ss_no"},
		Pattern: `(?i:\b(?:ssn|social[ _-]?security|ss[ _-]?#|ss[ _-]?no\.?)` + labelSuffix + `)` + quote +
			`(?:\s*[:=#]\s*|\s+)` + quote + `(\d{3}[- ]?\d{2}[- ]?\d{4})\b`},
	{Name: "ssn", Kind: IDText, Hints: []string{"~ddd-dd-dddd"},
		Pattern: `\b(\d{3}-\d{2}-\d{4})\b`},
	{Name: "patient", Kind: KindAuto, Hints: []string{"patient"},
		Pattern: `(?i:\bpatient(?:'s)?)` + quote +
			`(?:\s*[:=#]\s*(?:Patient/)?(?:` + quotedVal + `|` + hl7Name + `|` + titleName + `|(` + looseID + `)|` + lowerName + `)` +
			`|\s+(?:` + quotedVal + `|` + hl7Name + `|(` + strictID + `))|/([A-Za-z0-9._-]+))`},
	{Name: "patient-name", Kind: IDName,
		Hints:    []string{"name", "patientname", "patient", "pat_name", "pat-name", "pt_name", "pt-name", "ptname", "surname"},
		NotAfter: notAfterName,
		Pattern: `(?i:\b(?:(?:patient|pat|pt)(?:'s)?[ _-]?)?(?:(?:full|last|first|given|family|middle)[ _-]?)?(?:name|surname)\b)` + quote +
			`(?:\s*[:=]\s*(?:` + quotedName + `|` + hl7Name + `|` + titleName + `)|\s*:\s*` + lowerName +
			`|\s+is\s+(?:` + quotedName + `|` + hl7Name + `|` + titleName + `)|\s+(?:` + quotedName + `|` + hl7Name + `))`},
	// Lowercase names after '=' only with a patient label: "name=nginx service=web" is
	// not a person.
	{Name: "patient-name-lower", Kind: IDName,
		Hints:   []string{"patientname", "patient", "pat_name", "pat-name", "pt_name", "pt-name", "ptname"},
		Pattern: `(?i:\b(?:patient|pat|pt)(?:'s)?[ _-]?name)` + quote + `\s*=\s*` + lowerName},
	{Name: "hl7-name", Kind: IDName, Hints: []string{"^"},
		Pattern: `(?:^|[^\pL\pN_^&])` + hl7Name},
}

// notAfterName: words before "name" that make it a thing's name, not a person's.
var notAfterName = []string{"user", "host", "file", "service", "device", "station", "printer", "queue", "node",
	"ae", "application", "app", "domain", "server", "image", "series", "protocol", "job", "task", "volume",
	"disk", "share", "group", "role", "process", "program", "table", "column", "field", "key", "param",
	"parameter", "dns", "cert", "common", "computer", "machine", "network", "interface", "tag", "attribute",
	"class", "module", "package", "container", "pod", "database", "db", "bucket", "schema", "index", "path",
	"test", "type", "event", "metric", "login", "account", "folder", "dir", "directory", "site", "vendor",
	"product", "model", "modality", "institution", "department", "workstation", "cluster", "zone", "realm",
	"certificate", "variable", "env", "policy", "rule", "plugin", "thread", "channel", "tenant", "project",
	"resource", "method", "function", "operation", "property", "profile", "report", "template", "code",
	"config", "setting", "option", "study", "procedure", "exam", "body", "part", "sop", "transfer", "syntax",
	"ref", "object", "display", "operator", "physician", "doctor", "referring", "performing", "reading", "staff", "tech",
	"technologist", "radiologist", "nurse", "provider", "author", "signer", "sender", "receiver", "facility", "location", "room", "unit", "ward", "bed", "org", "organization"}

// IdentifierPattern is one of the site's own identifier formats (its MRN or accession
// shape), recognized anywhere in free text: Pattern, an RE2 expression, must match a
// whole word (a run of letters, digits, '.', '_' and '-', without the '.', '_' or '-' at
// its ends), so `M\d{7}` finds "M1234567" in "moved M1234567, done" but not inside
// "XM12345678".
type IdentifierPattern struct {
	Name    string `yaml:"name"`
	Pattern string `yaml:"pattern"`
	// Kind is the token namespace: pat (default), acc, ord, txt...
	Kind string `yaml:"kind"`
}

// Redactor applies rules to free text. Safe for concurrent use.
type Redactor struct {
	tok   *Tokenizer
	rules []compiledRule
	// words indexes every rule's hint words by their first byte, so one pass over a line
	// finds which rules can match at all; punct holds hints that start with a separator
	// byte, matched at any position.
	words [256][]hintWord
	punct [256][]hintWord
	// wake marks the bytes that can start a hint: wakeWord for letters and digits with
	// word hints, wakePunct for separator bytes with punct hints.
	wake [256]uint8
	// tri has a bit for the first three bytes (lowercase) of every word hint, and
	// short marks first bytes of hints shorter than three: a word start whose three
	// bytes are in no hint costs one bit test.
	tri   [1 << 16 / 64]uint64
	short [256]bool

	ids  []idPattern
	seen *SeenSet
	// idLens has bit n set when some identifier pattern can match an n-byte word (bit
	// 63: 63 or more).
	idLens uint64
}

type compiledRule struct {
	RedactRule
	fn func(s string) (string, int) // a built-in rule: runs instead of re
	re *regexp.Regexp
	// anchored, for default rules whose match starts at a hint or a word or two before
	// it, is re tried only at those places: Go's regexp runs (?i) alternations at
	// about 100 ns a byte, a line costs microseconds; tried where a label can start,
	// the same matches cost a few hundred nanoseconds.
	anchored *regexp.Regexp
	// nameAnchor: anchored is tried at the starts of the words before each '^'.
	nameAnchor bool
	index      int  // the rule's bit in the hint mask
	always     bool // no hints: always run
	notAfter   map[string]bool
}

type idPattern struct {
	IdentifierPattern
	re       *regexp.Regexp
	prefix   string // literal prefix every match starts with
	min, max int    // length bounds of a match; max -1 unbounded
}

type hintWord struct {
	rule  int
	word  string // lowercase word, or a shape where 'd' stands for a digit
	shape bool
}

// maxRules bounds the rules whose hints are tracked in one bitmask.
const maxRules = 64

// NewRedactor compiles rules; an error names the bad rule.
func NewRedactor(tok *Tokenizer, rules []RedactRule) (*Redactor, error) {
	if len(rules) > maxRules-1 {
		return nil, fmt.Errorf("redact rules: %d rules, at most %d", len(rules), maxRules-1)
	}
	r := &Redactor{tok: tok}
	// HL7 segments pasted into log lines are always redacted, whatever the rules, and
	// first, while their fields are intact.
	rules = append([]RedactRule{{Name: "hl7-segments", Hints: []string{"pid|", "mrg|", "nk1|"}}}, rules...)
	for i, rule := range rules {
		if i == 0 {
			c := compiledRule{RedactRule: rule, fn: r.segments}
			r.indexHints(i, &c)
			r.rules = append(r.rules, c)
			continue
		}
		re, err := regexp.Compile(rule.Pattern)
		if err != nil {
			return nil, fmt.Errorf("redact rule %d (%s): %w", i, rule.Name, err)
		}
		if re.NumSubexp() < 1 {
			return nil, fmt.Errorf("redact rule %d (%s): pattern needs a capture group around the identifier", i, rule.Name)
		}
		if rule.Kind == "" {
			rule.Kind = IDText
		}
		c := compiledRule{RedactRule: rule, re: re, always: len(rule.Hints) == 0}
		if isAnchorable(rule) {
			c.anchored = regexp.MustCompile(`^(?:` + rule.Pattern + `)`)
			if rule.Name == "hl7-name" {
				// The byte before a name is checked in code (nameStartOK).
				c.anchored, c.nameAnchor = regexp.MustCompile(`^(?:`+hl7Name+`)`), true
			}
		}
		if len(rule.NotAfter) > 0 {
			c.notAfter = make(map[string]bool, len(rule.NotAfter))
			for _, w := range rule.NotAfter {
				c.notAfter[strings.ToLower(w)] = true
			}
		}
		c.index = i
		r.indexHints(i, &c)
		r.rules = append(r.rules, c)
	}
	return r, nil
}

// isAnchorable reports whether rule is one of the defaults whose matches begin at one
// of its word hints, a word or two before one ("patient full name", "patient birth
// date"), or at the '?' or '&' right before one (FHIR search parameters), and the HL7
// name rule, whose names start at most three words before a '^'. Site rules are
// searched whole.
func isAnchorable(rule RedactRule) bool {
	for _, d := range DefaultRedactRules {
		if d.Name == rule.Name && d.Pattern == rule.Pattern && d.Kind == rule.Kind {
			return len(d.Hints) > 0
		}
	}
	return false
}

// indexHints indexes rule i's hints; an empty hint makes the rule run always.
func (r *Redactor) indexHints(i int, c *compiledRule) {
	for _, h := range c.Hints {
		if shape, ok := strings.CutPrefix(h, "~"); ok && shape != "" {
			// Index the shape under every byte its first position can match.
			for b := 0; b < 256; b++ {
				if shapeByte(byte(b), shape[0]) {
					r.words[b] = append(r.words[b], hintWord{rule: i, word: shape, shape: true})
					r.wake[b] |= wakeWord
				}
			}
			r.indexTri(shape)
			continue
		}
		h = strings.ToLower(h)
		if h == "" {
			c.always = true
			continue
		}
		if byteClass[h[0]] == 0 {
			r.punct[h[0]] = append(r.punct[h[0]], hintWord{rule: i, word: h})
			r.wake[h[0]] |= wakePunct
			continue
		}
		r.words[h[0]] = append(r.words[h[0]], hintWord{rule: i, word: h})
		r.wake[h[0]] |= wakeWord
		r.indexTri(h)
		if up := h[0] - 'a' + 'A'; 'a' <= h[0] && h[0] <= 'z' {
			r.wake[up] |= wakeWord
		}
	}
}

// indexTri records the first three bytes of a word hint (a shape: every digit for 'd').
func (r *Redactor) indexTri(h string) {
	if len(h) < 3 {
		r.short[h[0]] = true
		if h[0] == 'd' {
			for c := byte('0'); c <= '9'; c++ {
				r.short[c] = true
			}
		}
		return
	}
	expand := func(b byte) []byte {
		if b == 'd' {
			return []byte("d0123456789")
		}
		return []byte{b}
	}
	for _, a := range expand(h[0]) {
		for _, b := range expand(h[1]) {
			for _, c := range expand(h[2]) {
				k := triKey(a, b, c)
				r.tri[k/64] |= 1 << (k % 64)
			}
		}
	}
}

func triKey(a, b, c byte) uint32 { return ((uint32(a)*131+uint32(b))*131 + uint32(c)) & (1<<16 - 1) }

// SetIdentifierPatterns adds the site's own identifier formats, before the redactor is
// shared. An error names the bad pattern by index and name.
func (r *Redactor) SetIdentifierPatterns(ps []IdentifierPattern) error {
	r.ids, r.idLens = nil, 0
	for i, p := range ps {
		ip, err := compileIdentifierPattern(p)
		if err != nil {
			return fmt.Errorf("identifier_patterns[%d] (%s): %w", i, p.Name, err)
		}
		r.ids = append(r.ids, ip)
		for n := ip.min; n <= 63 && (ip.max < 0 || n <= ip.max); n++ {
			r.idLens |= lenBit(n)
		}
		if ip.max < 0 || ip.max >= 63 {
			r.idLens |= lenBit(63)
		}
	}
	return nil
}

func compileIdentifierPattern(p IdentifierPattern) (idPattern, error) {
	if strings.TrimSpace(p.Pattern) == "" {
		return idPattern{}, fmt.Errorf("empty pattern")
	}
	re, err := regexp.Compile(`^(?:` + p.Pattern + `)$`)
	if err != nil {
		return idPattern{}, err
	}
	if re.MatchString("") {
		return idPattern{}, fmt.Errorf("pattern %q matches the empty word", p.Pattern)
	}
	st, err := syntax.Parse(p.Pattern, syntax.Perl)
	if err != nil {
		return idPattern{}, err
	}
	st = st.Simplify()
	if p.Kind == "" {
		p.Kind = IDPatient
	}
	if !validKind(p.Kind) {
		return idPattern{}, fmt.Errorf("kind %q: must be 2-8 lowercase letters", p.Kind)
	}
	prefix, _ := regexp.MustCompile(p.Pattern).LiteralPrefix()
	return idPattern{IdentifierPattern: p, re: re, prefix: prefix, min: minLen(st), max: maxLen(st)}, nil
}

func validKind(k string) bool {
	if len(k) < 2 || len(k) > 8 || k == KindAuto {
		return false
	}
	for i := 0; i < len(k); i++ {
		if k[i] < 'a' || k[i] > 'z' {
			return false
		}
	}
	return true
}

// minLen and maxLen bound the byte length of what a parsed expression matches (maxLen
// -1: unbounded); they let the word pass skip words an identifier pattern cannot match.
func minLen(re *syntax.Regexp) int {
	switch re.Op {
	case syntax.OpLiteral:
		n := 0
		for _, r := range re.Rune {
			n += len(string(r))
		}
		return n
	case syntax.OpCharClass, syntax.OpAnyChar, syntax.OpAnyCharNotNL:
		return 1
	case syntax.OpCapture, syntax.OpPlus:
		return minLen(re.Sub[0])
	case syntax.OpRepeat:
		return re.Min * minLen(re.Sub[0])
	case syntax.OpConcat:
		n := 0
		for _, s := range re.Sub {
			n += minLen(s)
		}
		return n
	case syntax.OpAlternate:
		n := -1
		for _, s := range re.Sub {
			if m := minLen(s); n < 0 || m < n {
				n = m
			}
		}
		return max(n, 0)
	}
	return 0 // star, quest, empty, anchors, boundaries
}

func maxLen(re *syntax.Regexp) int {
	switch re.Op {
	case syntax.OpLiteral:
		n := 0
		for _, r := range re.Rune {
			n += len(string(r))
		}
		return n
	case syntax.OpCharClass, syntax.OpAnyChar, syntax.OpAnyCharNotNL:
		return 4 // one rune, up to 4 bytes of UTF-8
	case syntax.OpCapture, syntax.OpQuest:
		return maxLen(re.Sub[0])
	case syntax.OpStar, syntax.OpPlus:
		return -1
	case syntax.OpRepeat:
		m := maxLen(re.Sub[0])
		if re.Max < 0 || m < 0 {
			return -1
		}
		return re.Max * m
	case syntax.OpConcat:
		n := 0
		for _, s := range re.Sub {
			m := maxLen(s)
			if m < 0 {
				return -1
			}
			n += m
		}
		return n
	case syntax.OpAlternate:
		n := 0
		for _, s := range re.Sub {
			m := maxLen(s)
			if m < 0 {
				return -1
			}
			n = max(n, m)
		}
		return n
	}
	return 0
}

// SetSeen makes the redactor replace, wherever they stand in free text, the identifiers
// remembered in s (the set the tokenizer fills, see Tokenizer.SetSeen), before the
// redactor is shared.
func (r *Redactor) SetSeen(s *SeenSet) { r.seen = s }

// Redact returns s with every identifier the rules find replaced by its token, and how
// many were replaced. Rules run first (their labels say what a value is), then one pass
// over the words replaces those that match a site identifier pattern or were seen in
// structured messages.
func (r *Redactor) Redact(s string) (string, int) {
	hit := r.hints(s)
	n := 0
	for i := range r.rules {
		rule := &r.rules[i]
		if hit&(1<<i) == 0 && !rule.always {
			continue
		}
		var k int
		if rule.fn != nil {
			s, k = rule.fn(s)
			n += k
			continue
		}
		// Matches do not overlap, and an expression may consume the byte after a
		// value ("DOE^JANE,SMITH^JOHN"): run again while it finds more (tokens are
		// left alone, so this ends).
		for pass := 0; pass < 4; pass++ {
			if s, k = r.apply(rule, s); k == 0 {
				break
			}
			n += k
		}
	}
	if len(r.ids) > 0 || r.seen != nil && r.seen.lens.Load() != 0 {
		var k int
		s, k = r.words1(s)
		n += k
	}
	return s, n
}

// apply runs one rule over s.
func (r *Redactor) apply(rule *compiledRule, s string) (string, int) {
	var locs [][]int
	if rule.anchored != nil {
		locs = r.anchoredMatches(rule, s)
	} else {
		locs = rule.re.FindAllStringSubmatchIndex(s, -1)
	}
	if locs == nil {
		return s, 0
	}
	var b strings.Builder
	last, n := 0, 0
	for _, m := range locs {
		lo, hi := -1, -1
		for g := 2; g+1 < len(m); g += 2 {
			if m[g] >= 0 {
				lo, hi = m[g], m[g+1]
				break
			}
		}
		if lo < 0 || lo < last {
			continue
		}
		for hi > lo && strings.IndexByte(".,;:-", s[hi-1]) >= 0 {
			hi--
		}
		v := s[lo:hi]
		if strings.TrimSpace(v) == "" || looksToken(v) || looksToken(wordAt(s, lo)) {
			continue
		}
		if rule.notAfter != nil && rule.notAfter[wordBefore(s, m[0])] {
			continue
		}
		tok := r.tokenFor(rule.Kind, v)
		if tok == "" {
			continue
		}
		b.WriteString(s[last:lo])
		b.WriteString(tok)
		last = hi
		n++
	}
	if n == 0 {
		return s, 0
	}
	b.WriteString(s[last:])
	return b.String(), n
}

func (r *Redactor) tokenFor(kind, v string) string {
	if kind == KindAuto {
		kind = IDName
		if strings.ContainsAny(v, "0123456789") {
			kind = IDPatient
		}
	}
	if kind == IDPatient {
		return r.tok.PatientToken(v, "")
	}
	return r.tok.Token(kind, v)
}

// wordBefore returns the lowercase word that ends right before i, skipping one run of
// space, '_' or '-'.
func wordBefore(s string, i int) string {
	j := i
	for j > 0 && (s[j-1] == ' ' || s[j-1] == '_' || s[j-1] == '-') {
		j--
	}
	if j == i && i > 0 && byteClass[s[i-1]] != 0 {
		// The match starts inside a word ("PatientName"): nothing before it.
		return ""
	}
	k := j
	for k > 0 && byteClass[s[k-1]] == classWord && s[k-1] != '_' {
		k--
	}
	return strings.ToLower(s[k:j])
}

// anchoredMatches finds rule's matches, left to right and not overlapping, by trying
// its anchored expression where a match can start: at each occurrence of one of its
// hints, at the start of the two words before it, and at a '?' or '&' right before it.
func (r *Redactor) anchoredMatches(rule *compiledRule, s string) [][]int {
	var locs [][]int
	pos := 0 // end of the last match
	var qs [4]int
	for _, p := range r.hintPositions(s, rule.index) {
		if rule.nameAnchor {
			// p is a '^': the family name is the word that ends there, and up to two
			// capitalized words may stand before it.
			f := nameWordStart(s, p)
			if f == p {
				continue
			}
			qs = [4]int{f, f, f, f}
			for k := 1; k < 3; k++ {
				q := qs[k-1]
				if q < 2 || s[q-1] != ' ' {
					break
				}
				w := nameWordStart(s, q-1)
				if w == q-1 {
					break
				}
				qs[k] = w
			}
		} else {
			qs = [4]int{p, p, p, p}
			if p > 0 && (s[p-1] == '?' || s[p-1] == '&') {
				qs[0] = p - 1
			}
			qs[1] = prevWordStart(s, p)
			qs[2] = prevWordStart(s, qs[1])
		}
		slices.Sort(qs[:])
		n := len(slices.Compact(qs[:]))
		for _, q := range qs[:n] {
			if q < pos || rule.nameAnchor && !nameStartOK(s, q) {
				continue
			}
			m := rule.anchored.FindStringSubmatchIndex(s[q:])
			if m == nil {
				continue
			}
			for k := range m {
				if m[k] >= 0 {
					m[k] += q
				}
			}
			locs = append(locs, m)
			pos = m[1]
			break
		}
	}
	return locs
}

// nameWordStart returns the start of the name's word that ends at i: runes that are
// letters, '\” or '-', starting with a letter; i when there is none.
func nameWordStart(s string, i int) int {
	j := i
	for j > 0 {
		r, n := utf8.DecodeLastRuneInString(s[:j])
		if !unicode.IsLetter(r) && r != '\'' && r != '-' {
			break
		}
		j -= n
	}
	for j < i {
		r, n := utf8.DecodeRuneInString(s[j:])
		if unicode.IsLetter(r) {
			break
		}
		j += n
	}
	return j
}

// nameStartOK is the HL7 name rule's condition on what stands before a name: nothing,
// or a rune that is not a letter, digit, '_', '^' or '&'.
func nameStartOK(s string, q int) bool {
	if q == 0 {
		return true
	}
	r, _ := utf8.DecodeLastRuneInString(s[:q])
	return !unicode.IsLetter(r) && !unicode.IsNumber(r) && r != '_' && r != '^' && r != '&'
}

// prevWordStart returns the start of the word before the one at i (across space, '_',
// '-', '\” and '.'), or i when there is none.
func prevWordStart(s string, i int) int {
	j := i
	for j > 0 && strings.IndexByte(" _-'.", s[j-1]) >= 0 && i-j < 3 {
		j--
	}
	if j == i || j == 0 || byteClass[s[j-1]] == 0 {
		return i
	}
	for j > 0 && byteClass[s[j-1]] != 0 {
		j--
	}
	return j
}

// hintPositions returns where rule's hints occur in s, in order: the same scan as
// hints, for one rule.
func (r *Redactor) hintPositions(s string, rule int) []int {
	var ps []int
	prev := byte(0)
	for i := 0; i < len(s); i++ {
		c := s[i]
		cls := byteClass[c]
		if cls == 0 {
			if r.wake[c]&wakePunct != 0 {
				for _, w := range r.punct[c] {
					if w.rule == rule && hasPrefixFold(s[i:], w.word) {
						ps = append(ps, i)
						break
					}
				}
			}
		} else if prev == 0 || cls == classDigit && prev != classDigit {
			for _, w := range r.words[lowerASCII(c)] {
				if w.rule == rule && (w.shape && hasShapeAt(s[i:], w.word) || !w.shape && hasPrefixFold(s[i:], w.word)) {
					ps = append(ps, i)
					break
				}
			}
		}
		prev = cls
	}
	return ps
}

// wordAt returns the run of letters, digits and '_' that starts at i.
func wordAt(s string, i int) string {
	j := i
	for j < len(s) && byteClass[s[j]] != 0 {
		j++
	}
	return s[i:j]
}

// looksToken reports whether v is a token of any kind: "<2-8 lowercase letters>_<32 hex>".
func looksToken(v string) bool {
	i := strings.IndexByte(v, '_')
	if i < 2 || i > 8 || len(v)-i-1 != TokenLen {
		return false
	}
	for j := 0; j < i; j++ {
		if v[j] < 'a' || v[j] > 'z' {
			return false
		}
	}
	for j := i + 1; j < len(v); j++ {
		c := v[j]
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return false
		}
	}
	return true
}

// idByte: the bytes of a word for the word pass.
func idByte(c byte) bool {
	return byteClass[c] != 0 || c == '.' || c == '-'
}

// words1 is the word pass: every word that matches a site identifier pattern or was
// seen in a structured message becomes its token.
func (r *Redactor) words1(s string) (string, int) {
	var b strings.Builder
	last, n := 0, 0
	for i := 0; i < len(s); {
		if !idByte(s[i]) {
			i++
			continue
		}
		j := i
		digit := false
		for j < len(s) && idByte(s[j]) {
			if byteClass[s[j]] == classDigit {
				digit = true
			}
			j++
		}
		lo, hi := i, j
		i = j
		for lo < hi && (s[lo] == '.' || s[lo] == '-' || s[lo] == '_') {
			lo++
		}
		for hi > lo && (s[hi-1] == '.' || s[hi-1] == '-' || s[hi-1] == '_') {
			hi--
		}
		if hi-lo < 2 {
			continue
		}
		w := s[lo:hi]
		tok := ""
		if r.idLens&lenBit(len(w)) != 0 && !looksToken(w) {
			for k := range r.ids {
				p := &r.ids[k]
				if len(w) >= p.min && (p.max < 0 || len(w) <= p.max) && strings.HasPrefix(w, p.prefix) && p.re.MatchString(w) {
					tok = r.tokenFor(p.Kind, w)
					break
				}
			}
		}
		if tok == "" && digit && r.seen != nil {
			tok, _ = r.seen.Lookup(w, r.tok)
		}
		if tok == "" {
			continue
		}
		b.WriteString(s[last:lo])
		b.WriteString(tok)
		last = hi
		n++
	}
	if n == 0 {
		return s, 0
	}
	b.WriteString(s[last:])
	return b.String(), n
}

// hints returns the bitmask of rules one of whose hints occurs in s, ignoring ASCII
// case, in one pass without allocating: the cheap test that keeps the expressions off the
// hot path for lines that name no patient. Word hints are only looked for where a word
// starts (the byte before is not a letter, digit or '_'), as the rules' expressions begin
// with \b too; so a long run of letters costs one lookup, not one per byte.
func (r *Redactor) hints(s string) uint64 {
	var hit uint64
	prev := byte(0) // class of the byte before i
	for i := 0; i < len(s); i++ {
		c := s[i]
		cls := byteClass[c]
		if cls == 0 {
			if r.wake[c]&wakePunct != 0 {
				for _, w := range r.punct[c] {
					if hit&(1<<w.rule) == 0 && hasPrefixFold(s[i:], w.word) {
						hit |= 1 << w.rule
					}
				}
			}
		} else if prev == 0 || cls == classDigit && prev != classDigit {
			lc := lowerASCII(c)
			if !r.short[lc] {
				if i+2 >= len(s) {
					prev = cls
					continue
				}
				k := triKey(lc, lowerASCII(s[i+1]), lowerASCII(s[i+2]))
				if r.tri[k/64]&(1<<(k%64)) == 0 {
					prev = cls
					continue
				}
			}
			for _, w := range r.words[lc] {
				if hit&(1<<w.rule) != 0 {
					continue
				}
				if w.shape && hasShapeAt(s[i:], w.word) || !w.shape && hasPrefixFold(s[i:], w.word) {
					hit |= 1 << w.rule
				}
			}
		}
		prev = cls
	}
	return hit
}

const (
	wakeWord  = 1
	wakePunct = 2
)

// Byte classes for finding word starts: 0 for separators, classDigit for digits,
// classWord for letters and '_' (what \b in RE2 counts as word characters).
const (
	classWord  = 1
	classDigit = 2
)

var byteClass = func() (t [256]byte) {
	for c := 'a'; c <= 'z'; c++ {
		t[c], t[c-'a'+'A'] = classWord, classWord
	}
	for c := '0'; c <= '9'; c++ {
		t[c] = classDigit
	}
	t['_'] = classWord
	return t
}()

func lowerASCII(c byte) byte {
	if 'A' <= c && c <= 'Z' {
		return c + 'a' - 'A'
	}
	return c
}

// hasPrefixFold reports whether s starts with the lowercase word, ignoring ASCII case.
func hasPrefixFold(s, word string) bool {
	if len(s) < len(word) {
		return false
	}
	for j := 1; j < len(word); j++ {
		if lowerASCII(s[j]) != word[j] {
			return false
		}
	}
	return true
}

// hasShapeAt reports whether s starts with shape, where 'd' in shape matches any digit.
func hasShapeAt(s, shape string) bool {
	if len(s) < len(shape) {
		return false
	}
	for j := 0; j < len(shape); j++ {
		if !shapeByte(s[j], shape[j]) {
			return false
		}
	}
	return true
}

func shapeByte(c, w byte) bool {
	if w == 'd' {
		return '0' <= c && c <= '9'
	}
	return c == w
}

// segmentFields are the fields of HL7 v2 segments that identify a patient, and the
// token kind of each: PID-2/3/4 ids, PID-5/6/9 names, PID-7 birth date, PID-11
// address, PID-13/14 phones, PID-18 account, PID-19 SSN, PID-20 driver's license;
// MRG-1..4 prior ids and account, MRG-7 prior name; NK1-2 name, NK1-4 address,
// NK1-5/6 phones.
var segmentFields = map[string]map[int]string{
	"PID": {2: IDPatient, 3: IDPatient, 4: IDPatient, 5: IDName, 6: IDName, 7: IDBirthDate, 9: IDName,
		11: IDText, 13: IDText, 14: IDText, 18: IDText, 19: IDText, 20: IDText},
	"MRG": {1: IDPatient, 2: IDPatient, 3: IDText, 4: IDPatient, 7: IDName},
	"NK1": {2: IDName, 4: IDText, 5: IDText, 6: IDText},
}

// segments replaces the identifying fields of PID, MRG and NK1 segments that appear in
// free text ("PID|1||12345^^^HOSP^MR||DOE^JANE||19700102|F"), each repetition by its
// token. A segment runs to the end of the line (CR or LF); its field separator is the
// byte after the segment id, as in HL7.
func (r *Redactor) segments(s string) (string, int) {
	var b strings.Builder
	last, n := 0, 0
	for i := 0; i+4 <= len(s); i++ {
		fields, ok := segmentFields[s[i:i+3]]
		if !ok || s[i+3] != '|' || i > 0 && byteClass[s[i-1]] != 0 {
			continue
		}
		end := len(s)
		if k := strings.IndexAny(s[i:], "\r\n"); k >= 0 {
			end = i + k
		}
		f, start := 1, i+4
		for p := i + 4; p <= end; p++ {
			if p < end && s[p] != '|' {
				continue
			}
			if kind, ok := fields[f]; ok && p > start {
				b.WriteString(s[last:start])
				for j, rep := range strings.Split(s[start:p], "~") {
					if j > 0 {
						b.WriteByte('~')
					}
					if tok := r.segmentToken(kind, rep); tok != "" {
						b.WriteString(tok)
						n++
					} else {
						b.WriteString(rep)
					}
				}
				last = p
			}
			f, start = f+1, p+1
		}
		i = end
	}
	if n == 0 {
		return s, 0
	}
	b.WriteString(s[last:])
	return b.String(), n
}

func (r *Redactor) segmentToken(kind, rep string) string {
	if strings.Trim(rep, "^&") == "" || looksToken(rep) {
		return ""
	}
	if kind == IDPatient {
		return r.tok.PatientToken(rep, "")
	}
	return r.tok.Token(kind, rep)
}
