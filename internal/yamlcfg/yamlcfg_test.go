package yamlcfg

import (
	"errors"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/edgeaudit/edgeaudit/internal/configerr"
)

type inner struct {
	Addr string `yaml:"addr"`
	Port int    `yaml:"port"`
}

type toy struct {
	Name    string        `yaml:"name"`
	Wait    time.Duration `yaml:"wait"`
	On      *bool         `yaml:"on"`
	Items   []inner       `yaml:"items"`
	inner   `yaml:",inline"`
	Skipped string    `yaml:"-"`
	Raw     yaml.Node `yaml:"raw"`
}

func decode(t *testing.T, src string) (toy, *Doc) {
	t.Helper()
	var n yaml.Node
	if err := yaml.Unmarshal([]byte(src), &n); err != nil {
		t.Fatal(err)
	}
	var v toy
	d := New()
	d.Decode(n.Content[0], &v, "")
	return v, d
}

func TestDecode(t *testing.T) {
	v, d := decode(t, "name: x\nwait: 2s\non: true\naddr: a\nport: 5\nitems:\n  - {addr: b, port: 6}\nraw: {anything: [1]}\n")
	if len(d.Problems) != 0 {
		t.Fatalf("problems: %v", d.Problems)
	}
	if v.Name != "x" || v.Wait != 2*time.Second || v.On == nil || !*v.On || v.Addr != "a" || v.Port != 5 ||
		len(v.Items) != 1 || v.Items[0].Port != 6 || v.Raw.Kind != yaml.MappingNode {
		t.Fatalf("decoded %+v", v)
	}
	if got, want := d.Lines["items[0].port"], 7; got != want {
		t.Errorf("line of items[0].port=%d, want %d", got, want)
	}
}

func TestDecodeProblems(t *testing.T) {
	_, d := decode(t, "nmae: x\nwait: soon\nport: 1.5\nitems: b\nskipped: y\nname: a\nname: b\n")
	var got []string
	for _, e := range Sort(d.Problems) {
		got = append(got, e.Error())
	}
	want := []string{
		`line 1: nmae: unknown key; did you mean "name"?`,
		`line 2: wait: "soon" is not a duration (examples: 30s, 5m, 24h)`,
		`line 3: port: "1.5" is not a whole number`,
		`line 4: items: "b" is not a list (write [a, b], or one "- item" per line)`,
		`line 5: skipped: unknown key; the keys at the top level are: addr, items, name, on, port, raw, wait`,
		`line 7: name: given twice (first on line 6); keep one`,
	}
	if !slices.Equal(got, want) {
		t.Errorf("problems:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	for _, k := range []string{"wait", "port", "items", "name"} {
		if !d.Bad[k] {
			t.Errorf("Bad[%s] not set", k)
		}
	}
}

func TestLocateAndKeys(t *testing.T) {
	_, d := decode(t, "name: x\nwait: 1h\nitems:\n  - {addr: b}\n")
	errs := d.Locate(errors.Join(
		&configerr.Error{Field: "wait", Value: "1h0m0s", Err: errors.New("too long")},
		&configerr.Error{Field: "items[0].port", Value: "0", Err: errors.New("required")},
		errors.New("whole file"),
	))
	var got []string
	for _, e := range errs {
		got = append(got, e.Error())
	}
	want := []string{`line 2: wait: "1h": too long`, `line 4: items[0].port: "0": required`, "whole file"}
	if !slices.Equal(got, want) {
		t.Errorf("Locate: %q, want %q", got, want)
	}
	if got, want := Keys(reflect.TypeFor[toy]()), []string{"addr", "items", "items[].addr", "items[].port", "name", "on", "port", "raw", "wait"}; !slices.Equal(got, want) {
		t.Errorf("Keys=%q, want %q", got, want)
	}
}
