// Package configerr is the config validation error every collector returns: it names the
// YAML field and the bad value, so a site admin knows what to fix.
package configerr

import (
	"errors"
	"regexp"
	"strconv"
	"strings"
	"unicode"
)

// Error is one invalid config value. Field is the YAML path, e.g. "hl7.tls_cert".
type Error struct {
	Field string
	Value string
	Err   error
}

func (e *Error) Error() string {
	if e.Value == "" {
		return e.Field + ": " + e.Err.Error()
	}
	return e.Field + ": " + Quote(e.Value) + ": " + e.Err.Error()
}

// Quote puts v in double quotes as the admin wrote it: backslashes stay single (a
// pattern reads as in the file); a value with quotes or control characters is quoted
// with Go escapes.
func Quote(v string) string {
	for _, r := range v {
		if r == '"' || !unicode.IsPrint(r) {
			return strconv.Quote(v)
		}
	}
	return `"` + v + `"`
}

func (e *Error) Unwrap() error { return e.Err }

// Line is a problem found on one line of the config file; its text starts "line N: ".
type Line struct {
	Line int
	Err  error
}

func (e *Line) Error() string { return "line " + strconv.Itoa(e.Line) + ": " + e.Err.Error() }

func (e *Line) Unwrap() error { return e.Err }

// Flatten returns the single problems in err: errors.Join trees (and errors wrapping
// one) are opened down to their leaves, in order. A nil err gives none.
func Flatten(err error) []error {
	if err == nil {
		return nil
	}
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		var out []error
		for _, e := range j.Unwrap() {
			out = append(out, Flatten(e)...)
		}
		return out
	}
	return []error{err}
}

// pathRE is a YAML key path as the validators write it at the start of their messages:
// "syslog.tcp", "ntp.servers[1]", "privacy.redact_rules[0].pattern".
var pathRE = regexp.MustCompile(`^[a-z][a-z0-9_]*(?:\[\d+\])*(?:\.[a-z][a-z0-9_]*(?:\[\d+\])*)*$`)

// FieldOf returns the key path err names: an *Error's Field, or the path a message
// starts with ("syslog.tcp: ..."); "" when it names none.
func FieldOf(err error) string {
	var ce *Error
	if errors.As(err, &ce) {
		return ce.Field
	}
	msg := err.Error()
	if strings.HasPrefix(msg, "line ") {
		return ""
	}
	p, _, ok := strings.Cut(msg, ": ")
	if !ok || !pathRE.MatchString(p) {
		return ""
	}
	return p
}

// Parent is the path one level up: "a.b[2]" → "a.b", "a.b" → "a", "a" → "".
func Parent(path string) string {
	if strings.HasSuffix(path, "]") {
		if i := strings.LastIndexByte(path, '['); i > 0 {
			return path[:i]
		}
	}
	if i := strings.LastIndexByte(path, '.'); i > 0 {
		return path[:i]
	}
	return ""
}

// Suggest returns the candidate closest to key by edit distance when it is close enough
// to be a typo (at most a third of key's length, and at most 3 edits), else "".
func Suggest(key string, candidates []string) string {
	best, bestD := "", -1
	limit := min(3, max(1, len(key)/3))
	for _, c := range candidates {
		d := distance(strings.ToLower(key), c)
		if d <= limit && (bestD < 0 || d < bestD) {
			best, bestD = c, d
		}
	}
	return best
}

// distance is the Damerau-Levenshtein distance (optimal string alignment): inserts,
// deletes, substitutions and swaps of two neighbours each cost one ("tpc" → "tcp" is 1).
func distance(a, b string) int {
	ra, rb := []rune(a), []rune(b)
	d := make([][]int, len(ra)+1)
	for i := range d {
		d[i] = make([]int, len(rb)+1)
		d[i][0] = i
	}
	for j := range d[0] {
		d[0][j] = j
	}
	for i := 1; i <= len(ra); i++ {
		for j := 1; j <= len(rb); j++ {
			cost := 1
			if ra[i-1] == rb[j-1] {
				cost = 0
			}
			d[i][j] = min(d[i-1][j]+1, d[i][j-1]+1, d[i-1][j-1]+cost)
			if i > 1 && j > 1 && ra[i-1] == rb[j-2] && ra[i-2] == rb[j-1] {
				d[i][j] = min(d[i][j], d[i-2][j-2]+1)
			}
		}
	}
	return d[len(ra)][len(rb)]
}
