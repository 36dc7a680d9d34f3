package fhir

import (
	"bytes"
	"errors"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"strings"
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

// FuzzReadChunked reads data in pieces of step bytes with a body limit and a budget of
// budgetChunks chunks: the body comes back exactly when it fits both, the first limit
// bytes with errTooBig past the limit, errTooBig or errOverBudget only when the budget is
// too small for it, and the budget is whole again after releaseAll.
func FuzzReadChunked(f *testing.F) {
	f.Add([]byte(`{"resourceType":"AuditEvent"}`), uint32(4096), uint8(7), uint8(4))
	f.Add(bytes.Repeat([]byte("x"), 200<<10), uint32(100<<10), uint8(255), uint8(1))
	f.Add(bytes.Repeat([]byte("x"), 70<<10), uint32(70<<10), uint8(0), uint8(2))
	f.Fuzz(func(t *testing.T, data []byte, limit uint32, step, budgetChunks uint8) {
		lim := int64(limit % (1 << 20))
		b := newBudget(int64(budgetChunks) * reserveChunk)
		res := b.reserve()
		got, err := readChunked(&stepReader{data: data, step: int(step) + 1}, lim, res)
		switch {
		case err == nil:
			if !bytes.Equal(got, data) {
				t.Fatalf("read %d bytes, want the %d sent", len(got), len(data))
			}
			if int64(len(data)) > lim {
				t.Fatalf("%d bytes accepted over the limit %d", len(data), lim)
			}
		case errors.Is(err, errTooBig):
			if !bytes.HasPrefix(data, got) {
				t.Fatalf("errTooBig with %d bytes that are not what was sent", len(got))
			}
			// Either the limit was reached with more to come, or the next growth of the
			// buffer would not fit in the whole budget.
			overLimit := int64(len(got)) == lim && len(data) > len(got)
			overBudget := min(max(2*int64(len(got)), reserveChunk), lim) > b.max
			if !overLimit && !overBudget {
				t.Fatalf("errTooBig after %d of %d bytes, limit %d, budget %d", len(got), len(data), lim, b.max)
			}
		case errors.Is(err, errOverBudget):
			t.Fatalf("errOverBudget with nobody else holding the budget (%d bytes, limit %d)", len(data), lim)
		default:
			t.Fatalf("readChunked: %v", err)
		}
		if res.spent > res.held || res.held > b.max || b.inUse() != res.held {
			t.Fatalf("spent=%d held=%d inUse=%d max=%d", res.spent, res.held, b.inUse(), b.max)
		}
		res.releaseAll()
		if b.inUse() != 0 {
			t.Fatalf("inUse=%d after releaseAll", b.inUse())
		}
	})
}

// stepReader returns data step bytes at a time, like a body arriving in pieces.
type stepReader struct {
	data []byte
	step int
}

func (r *stepReader) Read(p []byte) (int, error) {
	if len(r.data) == 0 {
		return 0, io.EOF
	}
	n := copy(p[:min(len(p), r.step)], r.data)
	r.data = r.data[n:]
	return n, nil
}

// FuzzDecodeMetered decodes with a reservation of a budget of budgetKiB KiB: it must
// give the same tree as the unmetered decoder whenever what it charges fits, and
// errTooBig exactly when it does not; it never charges more than the budget.
func FuzzDecodeMetered(f *testing.F) {
	fuzzSeeds(f, ".json")
	fuzzSeeds(f, ".xml")
	f.Fuzz(func(t *testing.T, b []byte) {
		for _, xmlForm := range []bool{false, true} {
			dec := func(m *reservation) (*node, error) {
				if xmlForm {
					return decodeXMLMetered(b, m)
				}
				return decodeJSONMetered(b, m)
			}
			want, wantErr := dec(nil)
			big := newBudget(1 << 40)
			full := big.reserve()
			if root, err := dec(full); !reflect.DeepEqual(root, want) || !sameErr(err, wantErr) {
				t.Fatalf("xml=%v: metered with room to spare gave %v, unmetered %v", xmlForm, err, wantErr)
			}
			need := full.spent
			full.releaseAll()
			for _, room := range []int64{need, need - 1, need / 2} {
				if room < 0 {
					continue
				}
				small := newBudget(room)
				res := small.reserve()
				root, err := dec(res)
				switch {
				case errors.Is(err, errTooBig):
					if room >= need {
						t.Fatalf("xml=%v: errTooBig with a budget of %d for a charge of %d", xmlForm, room, need)
					}
				case errors.Is(err, errOverBudget):
					t.Fatalf("xml=%v: errOverBudget with nobody else holding the budget", xmlForm)
				default:
					if !reflect.DeepEqual(root, want) || !sameErr(err, wantErr) {
						t.Fatalf("xml=%v: budget %d of %d gave %v, unmetered %v", xmlForm, room, need, err, wantErr)
					}
				}
				if res.held > small.max {
					t.Fatalf("held %d of a budget of %d", res.held, small.max)
				}
				res.releaseAll()
			}
		}
	})
}

func sameErr(a, b error) bool {
	if a == nil || b == nil {
		return a == b
	}
	return a.Error() == b.Error()
}

// FuzzParseQuery checks the search reader on any bytes: it never panics, and what it
// keeps of a query (the endpoint) is only resource types, operation and parameter
// names and placeholders: no digit, so no identifier value, can reach the event.
func FuzzParseQuery(f *testing.F) {
	for _, s := range []string{
		"Observation?patient=Patient/123&code=1234-5",
		"GET https://ehr.example.org/fhir/R4/Patient?identifier=urn:oid:1.2|MRN-9",
		"POST /r4/Observation/_search HTTP/1.1\r\nHost: h\r\n\r\npatient=123&_count=10",
		"https://h.example.org/Patient/123/$everything?_since=2020",
		"Patient?family=MUSTERMANN&birthdate=1970-01-01",
		"MSH|^~\\&|A|B\rQPD|x|1|@PID.3.1^MRN-9\r",
		"/fhir/Patient?_id=123,456&subject:Patient.identifier=a|b",
	} {
		f.Add([]byte(s))
	}
	tok := testTokenizer(f)
	f.Fuzz(func(t *testing.T, b []byte) {
		qi := mapper{tok: tok}.parseQuery(b)
		if strings.ContainsAny(qi.endpoint, "0123456789") || len(qi.endpoint) > maxTextLen {
			t.Fatalf("endpoint %q keeps a digit or is too long", qi.endpoint)
		}
		if !qi.parsed && (qi.endpoint != "" || qi.method != "" || len(qi.patients) != 0) {
			t.Fatalf("unparsed query with results: %+v", qi)
		}
		for _, p := range qi.patients {
			if p.token != "" && !audit.IsToken(audit.IDPatient, p.token) {
				t.Fatalf("patient %q is not a token", p.token)
			}
		}
	})
}
