package fhir

import (
	"bytes"
	"net/http"
	"net/http/httptest"
	"testing"
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
