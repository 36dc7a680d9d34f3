package daemon

import (
	"bytes"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/edgeaudit/edgeaudit/collectors/fhir"
	"github.com/edgeaudit/edgeaudit/collectors/hl7"
	"github.com/edgeaudit/edgeaudit/collectors/syslog"
	"github.com/edgeaudit/edgeaudit/internal/configerr"
)

// Problems is every problem found in one config file, each its own error: "line N: key:
// what is wrong" where the line is known. Its text is one problem per line.
type Problems struct {
	Path string
	Errs []error
}

func (p *Problems) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "config %s: ", p.Path)
	if len(p.Errs) == 1 {
		b.WriteString(p.Errs[0].Error())
		return b.String()
	}
	fmt.Fprintf(&b, "%d problems:", len(p.Errs))
	for _, e := range p.Errs {
		b.WriteString("\n  ")
		b.WriteString(e.Error())
	}
	return b.String()
}

// Unwrap gives the single problems (errors.Is and errors.As see each).
func (p *Problems) Unwrap() []error { return p.Errs }

// source is what LoadConfig kept of the file: the line of each key path, for the
// errors of Validate and Check, and the problems found while reading it.
type source struct {
	path     string
	lines    map[string]int
	values   map[string]string // scalars as written, by key path
	problems []error
	bad      map[string]bool // key paths that already have a problem
}

// LoadConfig reads the config file at path over the defaults; "" gives the zero-config
// defaults (DefaultConfig). A config file opens only the listeners it names (without a
// syslog: section, syslog and admin keep their defaults), starts an uplink only with an
// uplink: section and checks the clock only with an ntp: section, and must name its site.
//
// Every problem in the file is reported at once, as a *Problems: unknown keys (with the
// closest valid one), values of the wrong type, keys given twice, each with its line and
// key path. With a *Problems the returned Config still holds everything that could be
// read, so that Preflight can report the rest in the same pass; any other error (the
// file unreadable, not YAML) leaves nothing to check. Defaults are applied by
// SetDefaults.
func LoadConfig(path string) (Config, error) {
	if path == "" {
		return DefaultConfig(), nil
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return DefaultConfig(), fmt.Errorf("load config: %w", err)
	}
	return parseConfig(b, path)
}

// parseConfig is LoadConfig of the bytes b, read from path.
func parseConfig(b []byte, path string) (Config, error) {
	c := DefaultConfig()
	// A file that names syslog replaces the default listeners entirely: an admin who
	// configures only TLS must not get plain TCP too. The same holds for the clinical
	// listeners: a config file opens only what it names.
	c.Site = "" // required in a file
	c.Syslog, c.HL7, c.FHIR = syslog.Config{}, hl7.Config{}, fhir.Config{}
	c.Admin = ""
	c.Uplink = UplinkSection{}
	src := &source{path: path, lines: map[string]int{}, values: map[string]string{}, bad: map[string]bool{}}
	c.src = src

	var root yaml.Node
	if err := yaml.Unmarshal(b, &root); err != nil {
		return c, fmt.Errorf("config %s: %w", path, syntaxError(b, err))
	}
	doc := &root
	if doc.Kind == yaml.DocumentNode && len(doc.Content) == 1 {
		doc = doc.Content[0]
	}
	present := map[string]bool{}
	if doc.Kind == yaml.MappingNode {
		for i := 0; i+1 < len(doc.Content); i += 2 {
			present[doc.Content[i].Value] = true
		}
	}
	if !present["syslog"] {
		c.Syslog.UDP, c.Syslog.TCP = DefaultSyslogUDP, DefaultSyslogTCP
	}
	if !present["admin"] {
		c.Admin = DefaultAdmin
	}
	if !present["ntp"] {
		c.NTP = NTPSection{Off: true}
	}
	if doc.Kind != 0 && !isNull(doc) { // an empty file (or only comments) is all defaults
		d := &decoder{src: src}
		d.decode(doc, reflect.ValueOf(&c).Elem(), "")
	}
	// Relative paths in the file are relative to the file, not to wherever the daemon
	// was started from.
	base := filepath.Dir(path)
	for _, p := range []*string{&c.DataDir, &c.Syslog.TLSCert, &c.Syslog.TLSKey, &c.Syslog.TLSClientCA,
		&c.HL7.TLSCert, &c.HL7.TLSKey, &c.HL7.TLSClientCA,
		&c.FHIR.TLSCert, &c.FHIR.TLSKey, &c.FHIR.TLSClientCA, &c.FHIR.BearerTokensFile,
		&c.Uplink.CA, &c.Uplink.Cert, &c.Uplink.Key, &c.Uplink.CentralKey} {
		if *p != "" && !filepath.IsAbs(*p) {
			*p = filepath.Join(base, *p)
		}
	}
	if len(src.problems) > 0 {
		return c, &Problems{Path: path, Errs: sortProblems(slices.Clone(src.problems))}
	}
	return c, nil
}

// yamlLineRE finds the line in yaml.v3's syntax errors ("yaml: line 3: ...").
var yamlLineRE = regexp.MustCompile(`^(?:yaml: )?line (\d+): (.*)$`)

// syntaxError says that the file is not YAML, where, and the usual cause of a message
// that names none.
func syntaxError(b []byte, err error) error {
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

// Preflight is everything `run` checks before it opens anything, and what
// `edgeaudit config -check` reports: the problems LoadConfig found, Validate's (values
// and their combinations) and Check's (the files the config names), all of them, each
// with its line when the key is in the file. Call it after SetDefaults. It returns a
// *Problems, or nil when the daemon would start (ports are only known at start).
func Preflight(c *Config) error {
	var errs []error
	var bad map[string]bool
	path := "(built-in defaults)"
	if c.src != nil {
		errs = append(errs, c.src.problems...)
		bad, path = c.src.bad, c.src.path
	}
	for _, e := range append(configerr.Flatten(c.Validate()), configerr.Flatten(c.Check())...) {
		// A key whose value could not be read has been reported; what Validate says about
		// the default left in its place would only confuse.
		if f := configerr.FieldOf(e); f != "" && bad[f] {
			continue
		}
		errs = append(errs, e)
	}
	if len(errs) == 0 {
		return nil
	}
	return &Problems{Path: path, Errs: sortProblems(errs)}
}

// sortProblems puts the problems without a line first (the file as a whole: a missing
// site), then the others by line; the order among equals is kept.
func sortProblems(errs []error) []error {
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

// locate gives each of err's problems the line of the key it names (or of the nearest
// section above it that the file has), and returns them joined.
func (c *Config) locate(err error) error {
	if err == nil || c.src == nil {
		return err
	}
	var out []error
	for _, e := range configerr.Flatten(err) {
		var l *configerr.Line
		if errors.As(e, &l) {
			out = append(out, e)
			continue
		}
		// A value is named as written ("1h", not "1h0m0s").
		var ce *configerr.Error
		if errors.As(e, &ce) && e == error(ce) {
			if raw, ok := c.src.values[ce.Field]; ok && raw != ce.Value && sameDuration(raw, ce.Value) {
				e = &configerr.Error{Field: ce.Field, Value: raw, Err: ce.Err}
			}
		}
		line := 0
		for f := configerr.FieldOf(e); f != "" && line == 0; f = configerr.Parent(f) {
			line = c.src.lines[f]
		}
		if line > 0 {
			e = &configerr.Line{Line: line, Err: e}
		}
		out = append(out, e)
	}
	return errors.Join(out...)
}

// sameDuration reports whether a and b are one duration written two ways.
func sameDuration(a, b string) bool {
	da, erra := time.ParseDuration(a)
	db, errb := time.ParseDuration(b)
	return erra == nil && errb == nil && da == db
}

// decoder reads a yaml.Node tree into a Go value by the yaml tags of its types (the one
// source of the valid keys), noting every problem instead of stopping at the first.
type decoder struct {
	src *source
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
		d.src.bad[path] = true
	}
	if n != nil && n.Line > 0 {
		e = &configerr.Line{Line: n.Line, Err: e}
	}
	d.src.problems = append(d.src.problems, e)
}

func isNull(n *yaml.Node) bool {
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
	if isNull(n) { // "key:" with nothing after it: the default
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
			d.src.lines[p] = e.Line
			d.decode(e, s.Index(i), p)
		}
		v.Set(s)
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
		d.src.lines[p] = k.Line
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
	d.src.values[path] = n.Value
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
			if !f.IsExported() || name == "-" {
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

// Keys lists every key path of the config file, sections and their keys
// ("syslog", "syslog.udp", ...; a list of sections as "privacy.redact_rules[].name"), from
// the yaml tags: the sample and the docs are tested against it.
func Keys() []string {
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
	walk(reflect.TypeFor[Config](), "")
	return out
}
