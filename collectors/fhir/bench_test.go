package fhir

import (
	"bytes"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/edgeaudit/edgeaudit/audit"
)

// BenchmarkPostAuditEvent posts one R4 login AuditEvent through the handler into a fake
// sink that commits at once; it reports requests per second.
func BenchmarkPostAuditEvent(b *testing.B) {
	c := newTestCollector(b, Config{}, &nopSink{}, &fakeReporter{})
	h := c.Handler()
	body := []byte(loginJSON)
	b.SetBytes(int64(len(body)))
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		req := httptest.NewRequest(http.MethodPost, "/AuditEvent", bytes.NewReader(body))
		req.Header.Set("Content-Type", "application/fhir+json")
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		if rec.Code != http.StatusCreated {
			b.Fatalf("status=%d", rec.Code)
		}
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "req/s")
}

// BenchmarkMapEvent maps decoded AuditEvents (no HTTP): a login, and a BALP search
// whose query is read for its patient and endpoint.
func BenchmarkMapEvent(b *testing.B) {
	tok := testTokenizer(b)
	for _, bc := range []struct{ name, file string }{
		{"login", "testdata/r4-login-json/request.json"},
		{"balp-query-post-xml", "testdata/r4-balp-query-post-xml/request.xml"},
		{"dicom-extensions", "testdata/r4-dicom-extensions-json/request.json"},
	} {
		b.Run(bc.name, func(b *testing.B) {
			root, err := decode(readFile(b, bc.file), mediaFormat(contentTypeFor(bc.file)), nil)
			if err != nil {
				b.Fatal(err)
			}
			m := mapper{tok: tok}
			b.ReportAllocs()
			for b.Loop() {
				var ev audit.Event
				m.event(root, &ev)
			}
		})
	}
}
