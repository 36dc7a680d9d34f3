package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/edgeaudit/edgeaudit/daemon"
	"github.com/edgeaudit/edgeaudit/internal/configerr"
	"github.com/edgeaudit/edgeaudit/internal/yamlcfg"
	"github.com/edgeaudit/edgeaudit/receiver/central"
)

// ConfigCommand prints the sample config, checks a config file, or prints the effective
// config of one.
type ConfigCommand struct {
	// Out receives the sample, the check's report or the effective config (default
	// stdout).
	Out io.Writer
}

// portsNote is what -check cannot know: whether each port is free is only known when
// run binds it (before it opens the spool).
const portsNote = "ports are checked at start"

// Run implements the command.
func (c *ConfigCommand) Run(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("edgeaudit config", flag.ContinueOnError)
	check := fs.String("check", "", "report every problem `run -config FILE` would find")
	effective := fs.Bool("effective", false, "print the effective config of FILE (or of `run` without -config): every default filled in")
	fs.Usage = c.Usage
	if err := fs.Parse(args); err != nil {
		return err
	}
	out := c.Out
	if out == nil {
		out = os.Stdout
	}
	switch {
	case *check != "" && *effective:
		return &usageError{"config: -check and -effective go alone"}
	case *check != "":
		if fs.NArg() > 0 {
			return &usageError{fmt.Sprintf("config: unexpected argument %q", fs.Arg(0))}
		}
		return checkConfig(out, *check)
	case *effective:
		if fs.NArg() > 1 {
			return &usageError{fmt.Sprintf("config: unexpected argument %q", fs.Arg(1))}
		}
		return effectiveConfig(out, fs.Arg(0))
	case fs.NArg() > 0:
		return &usageError{fmt.Sprintf("config: unexpected argument %q (to check a file: -check FILE)", fs.Arg(0))}
	}
	_, err := io.WriteString(out, daemon.SampleConfig)
	return err
}

// checkConfig is `config -check`: what run does before it opens anything (daemon.Preflight),
// one problem per line, exit 1 with any.
func checkConfig(out io.Writer, path string) error {
	cfg, err := daemon.LoadConfig(path)
	var probs *daemon.Problems
	if err != nil && !errors.As(err, &probs) {
		// Unreadable, or not YAML at all: nothing more to check.
		var l *configerr.Line
		if errors.As(err, &l) {
			fmt.Fprintln(out, l)
		} else {
			fmt.Fprintln(out, err)
		}
		return &exitCodeError{code: exitFailure, msg: fmt.Sprintf("%s: 1 problem; `edgeaudit run` would not start", path)}
	}
	cfg.SetDefaults()
	var list []error
	keys := cfg.FileKeys()
	hasReceive := slices.Contains(keys, "receive")
	applianceToo := !hasReceive || len(keys) > 1 // a file of central's alone has no site
	if applianceToo {
		list = configerr.Flatten(daemon.Preflight(&cfg))
	}
	if hasReceive {
		list = append(list, checkReceive(path, &cfg.Receive)...)
	}
	if len(list) > 0 {
		for _, e := range list {
			fmt.Fprintln(out, e)
		}
		n := "1 problem"
		if len(list) != 1 {
			n = fmt.Sprintf("%d problems", len(list))
		}
		what := "`edgeaudit run`"
		switch {
		case hasReceive && applianceToo:
			what = "`edgeaudit run` or `edgeaudit receive`"
		case hasReceive:
			what = "`edgeaudit receive`"
		}
		return &exitCodeError{code: exitFailure, msg: fmt.Sprintf("%s: %s; %s would not start", path, n, what)}
	}
	if applianceToo {
		for _, w := range configWarnings(&cfg) {
			fmt.Fprintln(out, "warning:", w)
		}
	}
	what := ""
	if hasReceive {
		what = "receive: section ok; "
		if !applianceToo {
			what = "central's receive: section; "
		}
	}
	fmt.Fprintf(out, "%s: ok (%s%s)\n", path, what, portsNote)
	return nil
}

// checkReceive is what `edgeaudit receive` would refuse in the file's receive: section
// (node): its keys and types, then its values, each with its line.
func checkReceive(path string, node *yaml.Node) []error {
	doc := yamlcfg.New()
	doc.Lines["receive"] = node.Line
	var rc central.Config
	doc.Decode(node, &rc, "receive")
	if len(doc.Problems) > 0 {
		return yamlcfg.Sort(doc.Problems)
	}
	cc, err := central.LoadConfig(path) // its relative paths, as receive reads them
	if err != nil {
		return []error{err}
	}
	cc.SetDefaults()
	return yamlcfg.Sort(doc.Locate(cc.Validate()))
}

// configWarnings are the config's warnings, with every listener off among them.
func configWarnings(cfg *daemon.Config) []string {
	w := cfg.Warnings()
	if !cfg.Syslog.Enabled() && !cfg.HL7.Enabled() && !cfg.FHIR.Enabled() {
		w = append(w, "every listener is off (syslog, hl7 and fhir name no address): nothing can send audit messages to this appliance")
	}
	return w
}

// effectiveConfig prints the config run would use for path ("" = no -config), every
// default filled in.
func effectiveConfig(out io.Writer, path string) error {
	cfg, err := daemon.LoadConfig(path)
	if err != nil {
		return err
	}
	cfg.SetDefaults()
	var doc yaml.Node
	if err := doc.Encode(&cfg); err != nil {
		return err
	}
	offSections(&doc, &cfg)
	tidy(&doc)
	from := "the built-in defaults (run without -config)"
	if path != "" {
		from = path
	}
	fmt.Fprintf(out, "# effective config of %s, every default filled in (secrets not shown)\n", from)
	enc := yaml.NewEncoder(out)
	enc.SetIndent(2)
	if err := enc.Encode(&doc); err != nil {
		return err
	}
	return enc.Close()
}

// secretKeys are keys whose values -effective does not print.
var secretKeys = map[string]bool{"password": true}

// tidy writes durations as the sample does ("5m", not "5m0s") and hides secrets.
func tidy(n *yaml.Node) {
	if n.Kind == yaml.MappingNode {
		for i := 0; i+1 < len(n.Content); i += 2 {
			if v := n.Content[i+1]; secretKeys[n.Content[i].Value] && v.Kind == yaml.ScalarNode && v.Value != "" {
				v.Value, v.Tag, v.Style = "(set, not shown)", "!!str", yaml.DoubleQuotedStyle
			}
		}
	}
	if n.Kind == yaml.ScalarNode {
		if d, err := time.ParseDuration(n.Value); err == nil && d != 0 && strings.HasSuffix(n.Value, "0s") {
			short := strings.TrimSuffix(strings.TrimSuffix(n.Value, "0s"), "0m")
			if d2, err := time.ParseDuration(short); err == nil && d2 == d {
				n.Value = short
			}
		}
	}
	for _, c := range n.Content {
		tidy(c)
	}
}

// offSections replaces the sections that are off by what turns them off, so that the
// values nothing uses are not shown as if they were, and drops an absent receive:.
func offSections(doc *yaml.Node, cfg *daemon.Config) {
	off := map[string][2]string{} // section -> key, value that says it is off
	if !cfg.HL7.Enabled() {
		off["hl7"] = [2]string{"mllp", ""}
	}
	if !cfg.FHIR.Enabled() {
		off["fhir"] = [2]string{"http", ""}
	}
	if cfg.Uplink.Broker == "" {
		off["uplink"] = [2]string{"broker", ""}
	}
	if cfg.NTP.Off {
		off["ntp"] = [2]string{"off", "true"}
	}
	m := doc
	if m.Kind == yaml.DocumentNode && len(m.Content) == 1 {
		m = m.Content[0]
	}
	var content []*yaml.Node
	for i := 0; i+1 < len(m.Content); i += 2 {
		k, v := m.Content[i], m.Content[i+1]
		if k.Value == "receive" && (v.Kind == 0 || v.Tag == "!!null" || len(v.Content) == 0 && v.Kind != yaml.ScalarNode) {
			continue
		}
		if o, ok := off[k.Value]; ok {
			val := &yaml.Node{Kind: yaml.ScalarNode, Value: o[1], Tag: "!!str", Style: yaml.DoubleQuotedStyle}
			if o[1] == "true" {
				val = &yaml.Node{Kind: yaml.ScalarNode, Value: "true", Tag: "!!bool"}
			}
			v = &yaml.Node{Kind: yaml.MappingNode, Content: []*yaml.Node{{Kind: yaml.ScalarNode, Value: o[0]}, val}}
			k.LineComment = "off"
		}
		content = append(content, k, v)
	}
	m.Content = content
}

// Usage prints the man page.
func (c *ConfigCommand) Usage() {
	fmt.Fprintf(os.Stderr, `The config command prints a commented sample config whose values are the defaults,
checks a config file, or prints the config a file gives with every default filled in.

Usage:

	edgeaudit config
	edgeaudit config -check FILE
	edgeaudit config -effective [FILE]

Arguments:

	-check FILE
	    Report every problem that "edgeaudit run -config FILE" would refuse to start
	    with, one per line with its line number and key: YAML types, unknown keys,
	    values out of range, missing or invalid certificate, key and CA files, invalid
	    redaction patterns, the central key. Exits 1 with any, else prints "ok" (%s:
	    run binds each listener before it opens the spool and names the key of a port
	    in use).

	-effective [FILE]
	    Print the effective config of FILE, or without FILE of "edgeaudit run" with no
	    -config, as YAML with every default filled in.
`, portsNote)
}
