package fhir

import (
	"bytes"
	"encoding/json"
	"flag"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "rewrite testdata/*/expected.json from the current output")

// TestGolden runs every testdata/<case>/ with a request.json or request.xml: the request
// is POSTed over a real socket (to [base]AuditEvent, or to [base] when it is a Bundle)
// and the status, response body, committed events and rejects are compared with
// expected.json. Run with -update to rewrite the expected files.
func TestGolden(t *testing.T) {
	dirs, err := filepath.Glob("testdata/*/request.*")
	if err != nil {
		t.Fatal(err)
	}
	if len(dirs) == 0 {
		t.Fatal("no golden cases found")
	}
	for _, req := range dirs {
		dir := filepath.Dir(req)
		t.Run(filepath.Base(dir), func(t *testing.T) { runGolden(t, dir, req) })
	}
}

type goldenResult struct {
	Status   int               `json:"status"`
	Location string            `json:"location,omitempty"`
	Response json.RawMessage   `json:"response,omitempty"`
	XML      string            `json:"response_xml,omitempty"`
	Events   []json.RawMessage `json:"events"`
	Rejects  []rejectRecord    `json:"rejects"`
}

func runGolden(t *testing.T, dir, reqPath string) {
	body := readFile(t, reqPath)
	sink := &fakeSink{}
	rep := &fakeReporter{}
	c := newTestCollector(t, Config{HTTP: "127.0.0.1:0"}, sink, rep)
	startCollector(t, c)

	path := "/AuditEvent"
	ct := contentTypeFor(reqPath)
	if root, err := decode(body, mediaFormat(ct), nil); err == nil && root.str("resourceType") == "Bundle" {
		path = "/"
	}
	req, err := http.NewRequestWithContext(t.Context(), http.MethodPost, "http://"+c.Addr().String()+path, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", ct)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	rb, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		t.Fatal(err)
	}
	res := goldenResult{Status: resp.StatusCode, Location: resp.Header.Get("Location"), Events: []json.RawMessage{}, Rejects: rep.get()}
	if strings.Contains(ct, "xml") {
		res.XML = string(rb)
	} else {
		res.Response = rb
	}
	for _, e := range sink.raw() {
		res.Events = append(res.Events, e)
	}
	got, err := json.MarshalIndent(res, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	got = append(got, '\n')
	exp := filepath.Join(dir, "expected.json")
	if *update {
		if err := os.WriteFile(exp, got, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(exp)
	if err != nil {
		t.Fatalf("%v (run with -update to create it)", err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("output differs from %s (run with -update and review the diff):\n got:\n%s\nwant:\n%s", exp, got, want)
	}
}
