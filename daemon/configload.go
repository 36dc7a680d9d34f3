package daemon

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"

	"go.yaml.in/yaml/v3"

	"github.com/edgeaudit/edgeaudit/collectors/fhir"
	"github.com/edgeaudit/edgeaudit/collectors/hl7"
	"github.com/edgeaudit/edgeaudit/collectors/syslog"
	"github.com/edgeaudit/edgeaudit/internal/configerr"
	"github.com/edgeaudit/edgeaudit/internal/yamlcfg"
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
	path string
	*yamlcfg.Doc
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
	src := &source{path: path, Doc: yamlcfg.New()}
	c.src = src

	var root yaml.Node
	if err := yaml.Unmarshal(b, &root); err != nil {
		return c, fmt.Errorf("config %s: %w", path, yamlcfg.SyntaxError(b, err))
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
	if doc.Kind != 0 && !yamlcfg.IsNull(doc) { // an empty file (or only comments) is all defaults
		src.Decode(doc, &c, "")
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
	if len(src.Problems) > 0 {
		return c, &Problems{Path: path, Errs: yamlcfg.Sort(slices.Clone(src.Problems))}
	}
	return c, nil
}

// FileKeys lists the top-level keys the config file has (none for a config built in
// code), sorted.
func (c *Config) FileKeys() []string {
	if c.src == nil {
		return nil
	}
	var keys []string
	for p := range c.src.Lines {
		if !strings.ContainsAny(p, ".[") {
			keys = append(keys, p)
		}
	}
	slices.Sort(keys)
	return keys
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
		errs = append(errs, c.src.Problems...)
		bad, path = c.src.Bad, c.src.path
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
	return &Problems{Path: path, Errs: yamlcfg.Sort(errs)}
}

// locate gives each of err's problems the line of the key it names (yamlcfg.Locate),
// and returns them joined.
func (c *Config) locate(err error) error {
	if err == nil || c.src == nil {
		return err
	}
	return errors.Join(c.src.Locate(err)...)
}

// Keys lists every key path of the config file, sections and their keys
// ("syslog", "syslog.udp", ...; a list of sections as "privacy.redact_rules[].name"), from
// the yaml tags: the sample and the docs are tested against it.
func Keys() []string { return yamlcfg.Keys(reflect.TypeFor[Config]()) }
