package audit

import (
	"fmt"
	"regexp"
	"strings"
)

// RedactRule replaces identifiers found in free text (syslog MSG) by tokens. Pattern is
// an RE2 expression whose first capture group is the identifier; the rest of the match
// (the label) stays, so "MRN: 12345" becomes "MRN: pat_3f…".
type RedactRule struct {
	Name    string `yaml:"name"`
	Pattern string `yaml:"pattern"`
	// Kind is the token namespace (pat, name, dob, acc, ...); see the ID* constants.
	Kind string `yaml:"kind"`
	// Hints are lowercase words of which at least one must occur (case-insensitively)
	// before the expression runs: the cheap test that keeps redaction off the hot path
	// for the vast majority of lines, which name no patient at all. Hints are matched where
	// a word starts. A hint starting with "~" is a shape in which "d" stands for any digit
	// ("~ddd-dd-dddd"), matched where a number starts. Empty means always.
	Hints []string `yaml:"hints"`
}

// DefaultRedactRules are the rules a site gets unless it configures its own: labelled
// patient ids, names, birth dates and accession numbers, and US social security numbers.
// Hints are chosen so that common words ("Accepted", "path") do not wake the expressions.
var DefaultRedactRules = []RedactRule{
	{Name: "patient-id", Kind: IDPatient, Hints: []string{"mrn", "patient", "pid", "pat_", "pat-", "pat id", "patid"},
		Pattern: `(?i)\b(?:mrn|patient[ _-]?id|pat[ _-]?id|pid)\s*[:=#]\s*"?([A-Za-z0-9^&._-]{2,64})`},
	{Name: "patient-name", Kind: IDName, Hints: []string{"patient"},
		Pattern: `(?i)\bpatient[ _-]?name\s*[:=]\s*"?([^",;\]\n]{2,64})`},
	{Name: "birth-date", Kind: IDBirthDate, Hints: []string{"dob", "birth"},
		Pattern: `(?i)\b(?:dob|birth[ _-]?date|date of birth)\s*[:=]\s*"?([0-9./-]{6,10})`},
	{Name: "accession", Kind: IDAccession, Hints: []string{"accession", "acc_", "acc-", "acc#", "acc:", "acc=", "acc no", "accno", "acc num"},
		Pattern: `(?i)\b(?:accession(?:[ _-]?(?:no|num|number))?|acc[ _-]?(?:no|num))\s*[:=#]\s*"?([A-Za-z0-9._-]{2,64})`},
	{Name: "ssn", Kind: IDText, Hints: []string{"~ddd-dd-dddd"},
		Pattern: `\b(\d{3}-\d{2}-\d{4})\b`},
}

// Redactor applies rules to free text. Safe for concurrent use.
type Redactor struct {
	tok   *Tokenizer
	rules []compiledRule
	// words indexes every rule's hint words by their first byte, so one pass over a line
	// finds which rules can match at all.
	words [256][]hintWord
}

type compiledRule struct {
	RedactRule
	re     *regexp.Regexp
	always bool // no hints: always run
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
	if len(rules) > maxRules {
		return nil, fmt.Errorf("redact rules: %d rules, at most %d", len(rules), maxRules)
	}
	r := &Redactor{tok: tok}
	for i, rule := range rules {
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
		for _, h := range rule.Hints {
			if shape, ok := strings.CutPrefix(h, "~"); ok && shape != "" {
				// Index the shape under every byte its first position can match.
				for b := 0; b < 256; b++ {
					if shapeByte(byte(b), shape[0]) {
						r.words[b] = append(r.words[b], hintWord{rule: i, word: shape, shape: true})
					}
				}
				continue
			}
			h = strings.ToLower(h)
			if h == "" {
				c.always = true
				continue
			}
			r.words[h[0]] = append(r.words[h[0]], hintWord{rule: i, word: h})
		}
		r.rules = append(r.rules, c)
	}
	return r, nil
}

// Redact returns s with every identifier the rules find replaced by its token, and how
// many were replaced.
func (r *Redactor) Redact(s string) (string, int) {
	hit := r.hints(s)
	n := 0
	for i, rule := range r.rules {
		if hit&(1<<i) == 0 && !rule.always {
			continue
		}
		locs := rule.re.FindAllStringSubmatchIndex(s, -1)
		if locs == nil {
			continue
		}
		var b strings.Builder
		last := 0
		for _, m := range locs {
			if m[2] < 0 {
				continue
			}
			b.WriteString(s[last:m[2]])
			b.WriteString(r.tok.Token(rule.Kind, s[m[2]:m[3]]))
			last = m[3]
			n++
		}
		b.WriteString(s[last:])
		s = b.String()
	}
	return s, n
}

// hints returns the bitmask of rules one of whose hints occurs in s, ignoring ASCII
// case, in one pass without allocating: the cheap test that keeps the expressions off the
// hot path for lines that name no patient. Hints are only looked for where a word starts
// (the byte before is not a letter, digit or '_'), as the rules' expressions begin with
// \b too; so a long run of letters costs one lookup, not one per byte.
func (r *Redactor) hints(s string) uint64 {
	var hit uint64
	prev := byte(0) // class of the byte before i
	for i := 0; i < len(s); i++ {
		c := s[i]
		cls := byteClass[c]
		if cls != 0 && prev == 0 || cls == classDigit && prev != classDigit {
			for _, w := range r.words[lowerASCII(c)] {
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
