package daemon

import (
	"path/filepath"
	"reflect"
	"regexp"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"
)

// commentedSection is a section of the sample that is shown commented out ("# hl7:"),
// with its keys on the lines below ("#   mllp: ...").
var commentedSection = regexp.MustCompile(`^# ([a-z][a-z0-9_]*):`)

// uncommented is the sample with its commented-out sections (hl7, fhir) turned on, as
// an admin who uncomments them gets.
func uncommented(sample string) string {
	var out []string
	in := false
	for _, line := range strings.Split(sample, "\n") {
		switch {
		case commentedSection.MatchString(line):
			in = true
			line = strings.TrimPrefix(line, "# ")
		case in && strings.HasPrefix(line, "#   "):
			line = strings.TrimPrefix(line, "# ")
			if strings.HasPrefix(strings.TrimSpace(line), "#") {
				line = "" // a continued comment
			}
		default:
			in = false
		}
		out = append(out, line)
	}
	return strings.Join(out, "\n")
}

// The sample shows the defaults: every value in it, its commented sections included, is
// what SetDefaults gives the zero-config daemon (which has every listener on). A default
// changed in code without the sample, or the other way round, fails here.
func TestSampleIsTheDefaults(t *testing.T) {
	p := writeConfig(t, uncommented(SampleConfig))
	got, err := LoadConfig(p)
	if err != nil {
		t.Fatalf("the uncommented sample does not load: %v", err)
	}
	want := DefaultConfig()
	// What only a file can say: its site (it has none to show), its folder.
	got.Site, want.Site = "s1", "s1"
	want.DataDir = filepath.Join(filepath.Dir(p), DefaultDataDir)
	got.src = nil
	got.SetDefaults()
	want.SetDefaults()
	if !reflect.DeepEqual(got, want) {
		g, _ := yaml.Marshal(&got)
		w, _ := yaml.Marshal(&want)
		gl, wl := strings.Split(string(g), "\n"), strings.Split(string(w), "\n")
		for i := range max(len(gl), len(wl)) {
			var a, b string
			if i < len(gl) {
				a = gl[i]
			}
			if i < len(wl) {
				b = wl[i]
			}
			if a != b {
				t.Errorf("sample and defaults differ near line %d of the effective config:\nsample:   %s\ndefaults: %s", i+1, a, b)
				break
			}
		}
		t.Fatalf("sample.yaml is not the defaults")
	}
}

// The sample names every key there is (the yaml tags, by reflection), so that an admin
// finds each one; keys of list items are shown in its comments.
func TestSampleNamesEveryKey(t *testing.T) {
	var root yaml.Node
	if err := yaml.Unmarshal([]byte(uncommented(SampleConfig)), &root); err != nil {
		t.Fatal(err)
	}
	have := map[string]bool{}
	var walk func(n *yaml.Node, path string)
	walk = func(n *yaml.Node, path string) {
		if n.Kind == yaml.DocumentNode {
			walk(n.Content[0], path)
			return
		}
		if n.Kind != yaml.MappingNode {
			return
		}
		for i := 0; i+1 < len(n.Content); i += 2 {
			p := n.Content[i].Value
			if path != "" {
				p = path + "." + p
			}
			have[p] = true
			walk(n.Content[i+1], p)
		}
	}
	walk(&root, "")
	for _, k := range Keys() {
		if strings.Contains(k, "[]") || k == "receive" {
			continue
		}
		if !have[k] {
			t.Errorf("sample.yaml does not show %s", k)
		}
	}
	for _, k := range []string{"privacy.redact_rules[].pattern", "privacy.id_domains[].authorities", "privacy.identifier_patterns[].kind"} {
		if !slicesContains(Keys(), k) {
			t.Errorf("Keys() lacks %s", k)
		}
	}
}

func slicesContains(s []string, v string) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}

// The sample as printed is refused only for the site it cannot know.
func TestSampleAsPrintedNeedsOnlyASite(t *testing.T) {
	c, err := LoadConfig(writeConfig(t, SampleConfig))
	if err != nil {
		t.Fatal(err)
	}
	c.SetDefaults()
	err = Preflight(&c)
	if err == nil || !strings.Contains(err.Error(), "site: required") || strings.Count(err.Error(), "\n") > 0 {
		t.Fatalf("err=%v, want only site: required", err)
	}
	c, err = LoadConfig(writeConfig(t, strings.Replace(SampleConfig, `site: ""`, "site: radiology-east", 1)))
	if err != nil {
		t.Fatal(err)
	}
	c.SetDefaults()
	if err := Preflight(&c); err != nil {
		t.Fatalf("the sample with a site: %v", err)
	}
}
