package dicom

import (
	"bytes"
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "rewrite testdata/*/expected.json and expected.err from the current output")

// TestGolden parses each testdata/<case>/input.xml and compares the encoded event with
// expected.json, or the reason keyword of the error with expected.err. Run with -update
// to rewrite the expected files, then review the diff.
func TestGolden(t *testing.T) {
	inputs, err := filepath.Glob(filepath.Join("testdata", "*", "input.xml"))
	if err != nil {
		t.Fatal(err)
	}
	if len(inputs) == 0 {
		t.Fatal("no golden cases in testdata")
	}
	tok := testTokenizer(t)
	for _, in := range inputs {
		dir := filepath.Dir(in)
		t.Run(filepath.Base(dir), func(t *testing.T) {
			input, err := os.ReadFile(in)
			if err != nil {
				t.Fatal(err)
			}
			ev := baseEvent(input)
			perr := Parse(input, tok, &ev)
			errPath := filepath.Join(dir, "expected.err")
			jsonPath := filepath.Join(dir, "expected.json")
			if *update {
				if perr != nil {
					writeFile(t, errPath, []byte(Reason(perr)+"\n"))
					_ = os.Remove(jsonPath)
				} else {
					writeFile(t, jsonPath, indentJSON(t, ev.AppendJSON(nil)))
					_ = os.Remove(errPath)
				}
				return
			}
			if want, err := os.ReadFile(errPath); err == nil {
				if got, want := Reason(perr), strings.TrimSpace(string(want)); got != want {
					t.Fatalf("reason=%q (err %v), want %q", got, perr, want)
				}
				return
			}
			if perr != nil {
				t.Fatalf("Parse: %v", perr)
			}
			want, err := os.ReadFile(jsonPath)
			if err != nil {
				t.Fatalf("%v (run with -update to create it)", err)
			}
			if got := indentJSON(t, ev.AppendJSON(nil)); !bytes.Equal(got, want) {
				t.Fatalf("output differs from %s (run with -update and review the diff):\n got:\n%s\nwant:\n%s", jsonPath, got, want)
			}
		})
	}
}

func indentJSON(tb testing.TB, b []byte) []byte {
	tb.Helper()
	if !json.Valid(b) {
		tb.Fatalf("encoder wrote invalid JSON: %s", b)
	}
	var buf bytes.Buffer
	if err := json.Indent(&buf, b, "", "  "); err != nil {
		tb.Fatal(err)
	}
	buf.WriteByte('\n')
	return buf.Bytes()
}

func writeFile(tb testing.TB, path string, b []byte) {
	tb.Helper()
	if err := os.WriteFile(path, b, 0o644); err != nil {
		tb.Fatal(err)
	}
}
