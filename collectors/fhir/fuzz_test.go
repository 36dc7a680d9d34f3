package fhir

import (
	"os"
	"path/filepath"
	"testing"
	"unicode/utf8"

	"github.com/edgeaudit/edgeaudit/audit"
)

// fuzzSeeds adds the golden requests and the shared corpus samples matching ext.
func fuzzSeeds(f *testing.F, ext string) {
	var files []string
	for _, pat := range []string{"testdata/*/request" + ext, corpusDir + "/fhir/*/*" + ext, corpusDir + "/bad/fhir-*" + ext} {
		m, _ := filepath.Glob(pat)
		files = append(files, m...)
	}
	for _, p := range files {
		if b, err := os.ReadFile(p); err == nil {
			f.Add(b)
		}
	}
}

// fuzzMap maps every AuditEvent of a decoded resource and checks the event encodes to
// JSON that decodes again.
func fuzzMap(t *testing.T, tok *audit.Tokenizer, root *node) {
	res := []*node{root}
	if root.str("resourceType") == "Bundle" {
		res = nil
		for _, e := range root.all("entry") {
			if r := e.get("resource"); r != nil {
				res = append(res, r)
			}
		}
	}
	m := mapper{tok: tok}
	for _, r := range res {
		var ev audit.Event
		m.event(r, &ev)
		ev.ID = "x"
		ev.RawSHA256 = "00"
		b := ev.AppendJSON(nil)
		if _, err := audit.Decode(b); err != nil {
			t.Fatalf("event does not decode: %v: %s", err, b)
		}
		if ev.Action == "" || ev.Outcome == "" {
			t.Fatalf("event without action or outcome: %s", b)
		}
	}
}

func FuzzParseJSON(f *testing.F) {
	fuzzSeeds(f, ".json")
	tok := testTokenizer(f)
	f.Fuzz(func(t *testing.T, b []byte) {
		root, err := decodeJSON(b)
		if err != nil {
			if _, ok := err.(*parseError); !ok {
				t.Fatalf("error of type %T: %v", err, err)
			}
			return
		}
		if !utf8.Valid(b) {
			return // the handler refuses these before decoding
		}
		fuzzMap(t, tok, root)
	})
}

func FuzzParseXML(f *testing.F) {
	fuzzSeeds(f, ".xml")
	tok := testTokenizer(f)
	f.Fuzz(func(t *testing.T, b []byte) {
		root, err := decodeXML(b)
		if err != nil {
			if _, ok := err.(*parseError); !ok {
				t.Fatalf("error of type %T: %v", err, err)
			}
			return
		}
		if !utf8.Valid(b) {
			return
		}
		fuzzMap(t, tok, root)
	})
}
