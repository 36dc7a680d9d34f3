// Package yamlcfg reads a YAML config file into Go structs by their yaml tags (the one
// source of the valid keys) and reports every problem, not only the first: unknown keys
// with the closest valid one, values of the wrong type, keys given twice, each with its
// line and key path and in words ("a duration (examples: 30s, 5m, 24h)"), never Go type
// names. It keeps the line of every key, so that the errors of later checks, which name
// the key path, can name the line too (Locate).
package yamlcfg

import (
	"bytes"
	"errors"
	"fmt"
	"math"
	"reflect"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/edgeaudit/edgeaudit/internal/configerr"
)

// Doc is what was read of one file: the line of each key path, each scalar as written,
// and the problems found.
type Doc struct {
	Lines    map[string]int
	Values   map[string]string
	Problems []error
	// Bad are the key paths that have a problem; the default left in their place is not
	// worth another.
	Bad map[string]bool
}

// New returns an empty Doc.
func New() *Doc {
	return &Doc{Lines: map[string]int{}, Values: map[string]string{}, Bad: map[string]bool{}}
}

// Decode reads n into the value v points to, at key path ("" for the whole file),
// noting every problem in d.
func (d *Doc) Decode(n *yaml.Node, v any, path string) {
	(&decoder{src: d}).decode(n, reflect.ValueOf(v).Elem(), path)
}

// yamlLineRE finds the line in yaml.v3's syntax errors ("yaml: line 3: ...").
var yamlLineRE = regexp.MustCompile(`^(?:yaml: )?line (\d+): (.*)$`)

// SyntaxError says that the file is not YAML, where, and the usual cause of a message
// that names none.
func SyntaxError(b []byte, err error) error {
	msg := strings.TrimPrefix(err.Error(), "yaml: ")
	line := 0
	if m := yamlLineRE.FindStringSubmatch(err.Error()); m != nil {
		line, _ = strconv.Atoi(m[1])
		msg = m[2]
	}
	switch {
	case strings.Contains(msg, "cannot start any token") && bytes.ContainsRune(b, '\t'):
		msg += " (a tab: YAML indents with spaces only)"
	case strings.Contains(msg, "unexpected end of stream"):
		msg += " (a quote not closed?)"
	}
	e := fmt.Errorf("not valid YAML: %s", msg)
	if line > 0 {
		return &configerr.Line{Line: line, Err: e}
	}
	return e
}

// Sort puts the problems without a line first (the file as a whole: a missing
// site), then the others by line; the order among equals is kept.
func Sort(errs []error) []error {
	line := func(e error) int {
		var l *configerr.Line
		if errors.As(e, &l) {
			return l.Line
		}
		return 0
	}
	sort.SliceStable(errs, func(i, j int) bool { return line(errs[i]) < line(errs[j]) })
	return errs
}

// Locate gives each of err's problems the line of the key it names (or of the nearest
// section above it that the file has), names a duration as written ("1h", not
// "1h0m0s"), and returns them one by one.
func (d *Doc) Locate(err error) []error {
	var out []error
	for _, e := range configerr.Flatten(err) {
		var l *configerr.Line
		if errors.As(e, &l) {
			out = append(out, e)
			continue
		}
		var ce *configerr.Error
		if errors.As(e, &ce) && e == error(ce) {
			if raw, ok := d.Values[ce.Field]; ok && raw != ce.Value && sameDuration(raw, ce.Value) {
				e = &configerr.Error{Field: ce.Field, Value: raw, Err: ce.Err}
			}
		}
		line := 0
		for f := configerr.FieldOf(e); f != "" && line == 0; f = configerr.Parent(f) {
			line = d.Lines[f]
		}
		if line > 0 {
			e = &configerr.Line{Line: line, Err: e}
		}
		out = append(out, e)
	}
	return out
}

// decoder reads a yaml.Node tree into a Go value by the yaml tags of its types (the one
// source of the valid keys), noting every problem instead of stopping at the first.
type decoder struct {
	src *Doc
}

var (
	durationType = reflect.TypeFor[time.Duration]()
	nodeType     = reflect.TypeFor[yaml.Node]()
)

func (d *decoder) problem(n *yaml.Node, path string, format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	var e error = errors.New(msg)
	if path != "" {
		e = fmt.Errorf("%s: %s", path, msg)
		d.src.Bad[path] = true
	}
	if n != nil && n.Line > 0 {
		e = &configerr.Line{Line: n.Line, Err: e}
	}
	d.src.Problems = append(d.src.Problems, e)
}

// IsNull reports whether n is YAML's null ("key:" with nothing after it, ~, null).
func IsNull(n *yaml.Node) bool {
	return n.Kind == yaml.ScalarNode && n.Tag == "!!null" && (n.Value == "" || n.Value == "~" || strings.EqualFold(n.Value, "null"))
}

// decode reads n into v (settable) at key path.
func (d *decoder) decode(n *yaml.Node, v reflect.Value, path string) {
	if n.Kind == yaml.AliasNode && n.Alias != nil {
		n = n.Alias
	}
	t := v.Type()
	if t == nodeType { // kept as written (the receive: section is central's)
		v.Set(reflect.ValueOf(*n))
		return
	}
	if IsNull(n) { // "key:" with nothing after it: the default
		if t.Kind() == reflect.Pointer || t.Kind() == reflect.Slice || t.Kind() == reflect.Map {
			v.Set(reflect.Zero(t))
		}
		return
	}
	switch {
	case t.Kind() == reflect.Pointer:
		if v.IsNil() {
			v.Set(reflect.New(t.Elem()))
		}
		d.decode(n, v.Elem(), path)
	case t.Kind() == reflect.Struct:
		d.section(n, v, path)
	case t.Kind() == reflect.Slice && t.Elem().Kind() != reflect.Uint8:
		if n.Kind != yaml.SequenceNode {
			d.problem(n, path, "%s is not a list (write [a, b], or one \"- item\" per line)", describe(n))
			return
		}
		if len(n.Content) == 0 { // [] is the default: none
			v.Set(reflect.Zero(t))
			return
		}
		s := reflect.MakeSlice(t, len(n.Content), len(n.Content))
		for i, e := range n.Content {
			p := fmt.Sprintf("%s[%d]", path, i)
			d.src.Lines[p] = e.Line
			d.decode(e, s.Index(i), p)
		}
		v.Set(s)
	case t.Kind() == reflect.Interface: // anything goes
		m := reflect.New(t)
		if err := n.Decode(m.Interface()); err == nil {
			v.Set(m.Elem())
		}
	case t.Kind() == reflect.Map:
		if n.Kind != yaml.MappingNode {
			d.problem(n, path, "%s is not a section of keys", describe(n))
			return
		}
		m := reflect.New(t)
		if err := n.Decode(m.Interface()); err != nil {
			d.problem(n, path, "holds a value of the wrong kind (%s)", wanted(t.Elem()))
			return
		}
		v.Set(m.Elem())
	default:
		d.scalar(n, v, path)
	}
}

// section reads a mapping into the struct v, key by key.
func (d *decoder) section(n *yaml.Node, v reflect.Value, path string) {
	fields := keysOf(v.Type())
	if n.Kind != yaml.MappingNode {
		name := path
		if name == "" {
			name = "the file"
		}
		d.problem(n, path, "%s is not a section of keys (write %q on its own line, then one \"key: value\" per line below it, indented)", describe(n), name+":")
		return
	}
	seen := map[string]int{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, val := n.Content[i], n.Content[i+1]
		key := k.Value
		p := key
		if path != "" {
			p = path + "." + key
		}
		if first, dup := seen[key]; dup {
			d.problem(k, p, "given twice (first on line %d); keep one", first)
			continue
		}
		seen[key] = k.Line
		idx, ok := fields[key]
		if !ok || k.Kind != yaml.ScalarNode {
			d.unknown(k, p, key, fields)
			continue
		}
		d.src.Lines[p] = k.Line
		d.decode(val, v.FieldByIndex(idx), p)
	}
}

// unknown reports a key that the section does not have, with the closest one that it
// has when that looks like a typo, else the list of its keys.
func (d *decoder) unknown(k *yaml.Node, path, key string, fields map[string][]int) {
	names := make([]string, 0, len(fields))
	for name := range fields {
		names = append(names, name)
	}
	sort.Strings(names)
	if s := configerr.Suggest(key, names); s != "" {
		d.problem(k, path, "unknown key; did you mean %q?", s)
		return
	}
	where := "here"
	if p := configerr.Parent(path); p != "" {
		where = "in " + p
	} else {
		where = "at the top level"
	}
	d.problem(k, path, "unknown key; the keys %s are: %s", where, strings.Join(names, ", "))
}

// scalar reads one value, and says what was wanted when it is not one.
func (d *decoder) scalar(n *yaml.Node, v reflect.Value, path string) {
	t := v.Type()
	want := wanted(t)
	if n.Kind != yaml.ScalarNode {
		d.problem(n, path, "%s is not %s", describe(n), want)
		return
	}
	tmp := reflect.New(t)
	err := n.Decode(tmp.Interface())
	if err == nil && isInt(t) && n.Tag == "!!float" {
		// yaml.v3 truncates 1.5 to 1 without a word.
		if f, ferr := strconv.ParseFloat(n.Value, 64); ferr != nil || f != math.Trunc(f) {
			err = errors.New("not whole")
		}
	}
	if err != nil {
		d.problem(n, path, "%s is not %s", configerr.Quote(n.Value), want)
		return
	}
	d.src.Values[path] = n.Value
	v.Set(tmp.Elem())
}

// wanted names what a value of type t is, for a site admin.
func wanted(t reflect.Type) string {
	switch {
	case t == durationType:
		return "a duration (examples: 30s, 5m, 24h)"
	case isInt(t):
		return "a whole number"
	case t.Kind() == reflect.Bool:
		return "true or false"
	case t.Kind() == reflect.Float32 || t.Kind() == reflect.Float64:
		return "a number"
	case t.Kind() == reflect.String:
		return "a single value (quote it: \"...\")"
	}
	return "a valid value"
}

func isInt(t reflect.Type) bool {
	switch t.Kind() {
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return t != durationType
	}
	return false
}

// describe names what the file has at n: "a list", "a section", or the quoted value.
func describe(n *yaml.Node) string {
	switch n.Kind {
	case yaml.SequenceNode:
		return "a list"
	case yaml.MappingNode:
		return "a section of keys"
	}
	return configerr.Quote(n.Value)
}

// keysOf maps each YAML key of the struct type t to its field index, flattening inline
// structs; fields tagged "-" and unexported ones have no key.
func keysOf(t reflect.Type) map[string][]int {
	out := map[string][]int{}
	var walk func(t reflect.Type, prefix []int)
	walk = func(t reflect.Type, prefix []int) {
		for i := range t.NumField() {
			f := t.Field(i)
			tag := f.Tag.Get("yaml")
			name, opts, _ := strings.Cut(tag, ",")
			if (!f.IsExported() && !f.Anonymous) || name == "-" { // as yaml.v3 reads them
				continue
			}
			idx := append(slices.Clone(prefix), i)
			if strings.Contains(","+opts+",", ",inline,") {
				walk(f.Type, idx)
				continue
			}
			if name == "" {
				name = strings.ToLower(f.Name)
			}
			out[name] = idx
		}
	}
	walk(t, nil)
	return out
}

// Keys lists every key path of the struct type t, sections and their keys
// ("syslog", "syslog.udp", ...; a list of sections as "privacy.redact_rules[].name"), from
// the yaml tags.
func Keys(t reflect.Type) []string {
	var out []string
	var walk func(t reflect.Type, path string)
	walk = func(t reflect.Type, path string) {
		for t.Kind() == reflect.Pointer {
			t = t.Elem()
		}
		if t.Kind() == reflect.Slice && t.Elem().Kind() == reflect.Struct {
			walk(t.Elem(), path+"[]")
			return
		}
		if t.Kind() != reflect.Struct || t == durationType || t == nodeType {
			return
		}
		ks := keysOf(t)
		names := make([]string, 0, len(ks))
		for k := range ks {
			names = append(names, k)
		}
		sort.Strings(names)
		for _, k := range names {
			p := k
			if path != "" {
				p = path + "." + k
			}
			out = append(out, p)
			walk(t.FieldByIndex(ks[k]).Type, p)
		}
	}
	walk(t, "")
	return out
}

// sameDuration reports whether a and b are one duration written two ways.
func sameDuration(a, b string) bool {
	da, erra := time.ParseDuration(a)
	db, errb := time.ParseDuration(b)
	return erra == nil && errb == nil && da == db
}
