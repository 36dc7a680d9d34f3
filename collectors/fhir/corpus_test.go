package fhir

import (
	"bytes"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"

	"github.com/edgeaudit/edgeaudit/audit"
)

const corpusDir = "../../../shared/corpus"

func corpusFiles(t *testing.T, pattern string) []string {
	t.Helper()
	if _, err := os.Stat(corpusDir); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("corpus missing under CI: %v", err)
		}
		t.Skipf("corpus not available: %v", err)
	}
	files, err := filepath.Glob(filepath.Join(corpusDir, pattern))
	if err != nil {
		t.Fatal(err)
	}
	sort.Strings(files)
	return files
}

// post sends body to the handler and returns the recorder.
func post(t testing.TB, h http.Handler, path, ct string, body []byte) *httptest.ResponseRecorder {
	t.Helper()
	req := httptest.NewRequest(http.MethodPost, path, bytes.NewReader(body))
	req.Header.Set("Content-Type", ct)
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	return rec
}

// TestCorpus posts every FHIR sample of the shared corpus. AuditEvents must give 201.
// Bundles of type batch/transaction must give 200; the corpus holds only searchset
// Bundles (search results, not a feed), which are refused with 400 unsupported_bundle
// — by design — and their AuditEvents are then re-posted inside a transaction Bundle,
// which must be accepted. No committed event may contain a patient identifier, name or
// birth date found in the sample.
func TestCorpus(t *testing.T) {
	files := corpusFiles(t, "fhir/*/*")
	var events, bundles, refusedSearchsets int
	for _, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) {
			body := readFile(t, f)
			ct := contentTypeFor(f)
			root, err := decode(body, mediaFormat(ct), nil)
			if err != nil {
				t.Fatalf("decode: %v", err)
			}
			sink := &fakeSink{}
			rep := &fakeReporter{}
			c := newTestCollector(t, Config{}, sink, rep)
			h := c.Handler()
			switch rt := root.str("resourceType"); rt {
			case "AuditEvent":
				rec := post(t, h, "/AuditEvent", ct, body)
				if rec.Code != http.StatusCreated {
					t.Fatalf("status=%d, want 201: %s", rec.Code, rec.Body)
				}
				events++
			case "Bundle":
				bundles++
				rec := post(t, h, "/", ct, body)
				typ := root.str("type")
				if typ == "batch" || typ == "transaction" {
					if rec.Code != http.StatusOK {
						t.Fatalf("status=%d, want 200: %s", rec.Code, rec.Body)
					}
				} else {
					if rec.Code != http.StatusBadRequest {
						t.Fatalf("%s Bundle: status=%d, want 400", typ, rec.Code)
					}
					refusedSearchsets++
					tx := asTransaction(root)
					rec = post(t, h, "/", "application/fhir+json", tx)
					if rec.Code != http.StatusOK {
						t.Fatalf("re-posted transaction: status=%d, want 200: %s", rec.Code, rec.Body)
					}
					if n := strings.Count(rec.Body.String(), "201 Created"); n == 0 {
						t.Fatalf("no entry created: %s", rec.Body)
					}
					events += strings.Count(rec.Body.String(), "201 Created")
				}
			default:
				t.Fatalf("unexpected resourceType %q", rt)
			}
			raw := sink.raw()
			if len(raw) == 0 {
				t.Fatal("no event committed")
			}
			secrets := phiValues(root)
			for _, b := range raw {
				ev, err := audit.Decode(b)
				if err != nil {
					t.Fatal(err)
				}
				if ev.Source.Kind != audit.KindFHIR || ev.Action == "" || ev.Outcome == "" || ev.RawSHA256 == "" {
					t.Errorf("incomplete event: %s", b)
				}
				t.Logf("%s %s outcome=%s user=%q patient=%t study=%d; %d PHI values checked",
					ev.Action, ev.ActionCode, ev.Outcome, ev.Actor.User, ev.Patient != "", len(ev.Study), len(secrets))
				delete(ev.Detail, "fhir.id") // the sender's resource id, not PHI (see README)
				enc := string(ev.AppendJSON(nil))
				for _, s := range secrets {
					if strings.Contains(enc, s) {
						t.Errorf("event contains PHI value %q: %s", s, enc)
					}
				}
			}
		})
	}
	t.Logf("corpus: %d files, %d AuditEvents committed, %d Bundles (%d searchsets refused and re-posted as transactions)",
		len(files), events, bundles, refusedSearchsets)
}

// asTransaction wraps the AuditEvents of a Bundle into a transaction Bundle (JSON).
func asTransaction(root *node) []byte {
	var entries []any
	for _, e := range root.all("entry") {
		res := e.get("resource")
		if res.str("resourceType") != "AuditEvent" {
			continue
		}
		entries = append(entries, map[string]any{
			"resource": nodeToAny(res),
			"request":  map[string]any{"method": "POST", "url": "AuditEvent"},
		})
	}
	b, _ := json.Marshal(map[string]any{"resourceType": "Bundle", "type": "transaction", "entry": entries})
	return b
}

// nodeToAny re-encodes a node as JSON values: lists of one become single values, which
// decodeJSON reads back the same way.
func nodeToAny(n *node) any {
	if len(n.kids) == 0 {
		return n.val
	}
	m := make(map[string]any, len(n.kids))
	for _, kv := range n.kids {
		k, l := kv.name, kv.vals
		if len(l) == 1 {
			m[k] = nodeToAny(l[0])
			continue
		}
		var a []any
		for _, c := range l {
			a = append(a, nodeToAny(c))
		}
		m[k] = a
	}
	return m
}

var patientRef = regexp.MustCompile(`(?:^|/)Patient/([^/?#]+)`)

// phiValues collects what must never appear in clear: ids of Patient references,
// identifier values, names and displays of patient entities, identifiers and names
// (HumanName parts) of Patient resources, and every birth date.
func phiValues(root *node) []string {
	set := make(map[string]struct{})
	observer := root.get("source").get("observer").str("display")
	addV := func(v string) {
		v = strings.TrimSpace(v)
		if len(v) >= 3 {
			set[v] = struct{}{}
		}
	}
	var walk func(key string, n *node, inPatient bool)
	walk = func(key string, n *node, inPatient bool) {
		if n.str("resourceType") == "Patient" {
			inPatient = true
			if id := n.str("id"); id != "" {
				set[`"`+id+`"`] = struct{}{}
			}
		}
		switch key {
		case "reference":
			if m := patientRef.FindStringSubmatch(n.val); m != nil {
				// A bare logical id like "example" also occurs in unrelated references
				// ("Device/example"), so look for it as a whole string or as Patient/<id>.
				set["Patient/"+m[1]] = struct{}{}
				set[`"`+m[1]+`"`] = struct{}{}
			}
		case "birthDate":
			addV(n.val)
		case "name":
			// HumanName of a Patient resource. Agent names (staff, devices) and names of
			// non-patient entities ("Grahame's Laptop", also the observer's display)
			// are not patient data; patient entity names are collected below.
			if !inPatient {
				break
			}
			addV(n.val)
			for _, k := range []string{"text", "family", "given"} {
				for _, c := range n.all(k) {
					addV(c.val)
				}
			}
		case "entity":
			role := n.get("role")
			isPat := false
			for _, c := range codings(role) {
				isPat = isPat || c.code == "1"
			}
			what := n.get("what")
			if refType(what) == "Patient" {
				isPat = true
			}
			if isPat {
				addV(what.get("identifier").str("value"))
			}
			// ParticipantObjectName: a patient's name, or a KVNR (gematik puts the
			// insurance number there). Never stored, whatever the entity; only the
			// observer's own name may coincide with it ("Grahame's Laptop").
			if v := firstNonEmpty(n.str("name"), what.str("display")); v != "" && v != observer {
				addV(v)
			}
		case "identifier":
			if inPatient {
				addV(n.str("value"))
			}
		}
		for _, kv := range n.kids {
			for _, c := range kv.vals {
				walk(kv.name, c, inPatient)
			}
		}
	}
	walk("", root, false)
	out := make([]string, 0, len(set))
	for v := range set {
		out = append(out, v)
	}
	sort.Strings(out)
	return out
}

// TestCorpusBad posts the bad FHIR samples: each gets its status and reason.
func TestCorpusBad(t *testing.T) {
	want := map[string]struct {
		status int
		reason string
	}{
		// Duplicate members are refused outright (FHIR JSON forbids them; last-wins would
		// smuggle a second resourceType).
		"fhir-json-duplicate-keys.json":      {400, ReasonBadJSON},
		"fhir-json-invalid-utf8.json":        {400, ReasonInvalidUTF8},
		"fhir-json-truncated.json":           {400, ReasonBadJSON},
		"fhir-json-wrong-resource-type.json": {400, ReasonWrongResourceType},
	}
	files := corpusFiles(t, "bad/fhir-*")
	if len(files) == 0 {
		t.Fatal("no bad FHIR samples")
	}
	for _, f := range files {
		name := filepath.Base(f)
		t.Run(name, func(t *testing.T) {
			w, ok := want[name]
			if !ok {
				t.Fatalf("no expectation for %s", name)
			}
			sink := &fakeSink{}
			rep := &fakeReporter{}
			c := newTestCollector(t, Config{}, sink, rep)
			body := readFile(t, f)
			rec := post(t, c.Handler(), "/AuditEvent", contentTypeFor(f), body)
			if got := rec.Code; got != w.status {
				t.Fatalf("status=%d, want %d: %s", got, w.status, rec.Body)
			}
			if !strings.Contains(rec.Body.String(), `"OperationOutcome"`) {
				t.Errorf("no OperationOutcome: %s", rec.Body)
			}
			rj := rep.get()
			if len(rj) != 1 || rj[0].Reason != w.reason || rj[0].SHA256 != sha256Hex(body) || rj[0].Size != int64(len(body)) {
				t.Fatalf("rejects=%+v, want one %s of %d bytes", rj, w.reason, len(body))
			}
			if n := len(sink.raw()); n != 0 {
				t.Fatalf("%d events committed", n)
			}
		})
	}
}

// TestCorpusActorsAndQueries pins issue 7's rules on the real samples: the person is
// the actor and the other agent's machine the workstation, searches are phi.query with
// their scope, REST calls have method and endpoint, purposes and error codes are kept.
func TestCorpusActorsAndQueries(t *testing.T) {
	corpusFiles(t, "fhir/*/*") // skips without the corpus
	tok := testTokenizer(t)
	tests := []struct {
		file                                         string
		action, user, workstation, object, scope     string
		method, endpoint, purpose, errorCode, correl string
		breakGlass                                   bool
	}{
		{file: "r4/r4-example-search-rest.json", action: audit.ActionPHIQuery, user: "95", workstation: "Workstation1.ehr.familyclinic.com",
			object: "Encounter", scope: "broad", method: "GET", endpoint: "/Encounter?participant"},
		{file: "r5/r5-example-search.json", action: audit.ActionPHIQuery, user: "95", workstation: "Workstation1.ehr.familyclinic.com",
			object: "Encounter", scope: "broad", method: "GET", endpoint: "/Encounter?participant"},
		{file: "r4/r4-example-rest-vread.json", action: audit.ActionPHIView, user: "95", workstation: "Workstation1.ehr.familyclinic.com",
			object: "Patient", method: "GET", endpoint: "/Patient/{id}/_history/{id}"},
		{file: "r4/r4-example-login-110114.json", action: audit.ActionLogin, user: "95", workstation: "Workstation1.ehr.familyclinic.com"},
		{file: "r4/r4-example-media-110106.json", action: audit.ActionPHIExport, user: "95", workstation: "ExportToMedia.app", object: "DocumentManifest"},
		{file: "r4/r4-example-pixquery-110112.json", action: audit.ActionDICOMQuery, user: "95", workstation: "Workstation1.ehr.familyclinic.com",
			object: "Patient", scope: "patient"},
		{file: "r4/r4-example-disclosure-110106.json", action: audit.ActionPHIExport, user: "SomeIdiot@nowhere", object: "Patient", purpose: "HMARKT"},
		{file: "r4/r4-example-error-rest-create.json", action: audit.ActionPHICreate, user: "95", workstation: "Workstation1.ehr.familyclinic.com",
			method: "POST", errorCode: "invalid"},
		{file: "r5/r5-example-breakglass-start.json", action: audit.ActionSecurityAlert, user: "Practitioner/f001", workstation: "custodian.net",
			object: "Patient", purpose: "ETREAT", breakGlass: true},
		{file: "r5/r5-example-rest-create-traceid.json", action: audit.ActionPHICreate, user: "95", workstation: "Workstation1.ehr.familyclinic.com",
			object: "Patient", method: "POST", endpoint: "/Patient", correl: "6b507ee2d716780372c255df69ece653"},
		{file: "r5/r5-example-advanced-create.json", action: audit.ActionPHICreate, user: "Betty Jones",
			workstation: "urn:ipv6:2001:0db8:85a3:0000:0000:8a2e:0370:7334", object: "List", method: "POST", endpoint: "/List", purpose: "TREAT"},
		// The requestor has only agent.name, which is not kept: no user, its role still.
		{file: "xml/ch-atc-doc-read-export-110106.xml", action: audit.ActionPHIExport, user: "", object: "Patient", purpose: "EMER"},
	}
	for _, tt := range tests {
		t.Run(tt.file, func(t *testing.T) {
			f := filepath.Join(corpusDir, "fhir", tt.file)
			root, err := decode(readFile(t, f), mediaFormat(contentTypeFor(f)), nil)
			if err != nil {
				t.Fatal(err)
			}
			var ev audit.Event
			mapper{tok: tok}.event(root, &ev)
			for _, c := range []struct{ field, got, want string }{
				{"action", ev.Action, tt.action}, {"actor.user", ev.Actor.User, tt.user},
				{"source.workstation", ev.Source.Workstation, tt.workstation}, {"object", ev.Object, tt.object},
				{"query_scope", ev.QueryScope, tt.scope}, {"method", ev.Method, tt.method},
				{"endpoint", ev.Endpoint, tt.endpoint}, {"purpose", ev.Purpose, tt.purpose},
				{"error_code", ev.ErrorCode, tt.errorCode}, {"correlation_id", ev.CorrelationID, tt.correl},
			} {
				if c.got != c.want {
					t.Errorf("%s=%q, want %q", c.field, c.got, c.want)
				}
			}
			if got, want := ev.BreakGlass, tt.breakGlass; got != want {
				t.Errorf("break_glass=%v, want %v", got, want)
			}
		})
	}
}
