package fhir

import (
	"bytes"
	"encoding/json"
	"mime"
	"strings"
	"testing"
)

// FuzzFastPaths checks the allocation-free paths against what they stand for:
// jsonString against json.Marshal, mediaFormat without parameters against
// mime.ParseMediaType, refTail against strings.Split.
func FuzzFastPaths(f *testing.F) {
	for _, s := range []string{
		"", "AuditEvent stored as 0196a1e7c2f03b9e4a1d000000000001", `a"b`, `a\b`, "<x>&", "é", "\x7f",
		"application/fhir+json", " Application/FHIR+JSON ", "application/fhir+jſon", "text/xml", "application/json; charset=utf-8",
		"Patient/1", "https://x/fhir/Patient/1/_history/2", "a/_history/1", "/", "Patient/1?x#y", "x/y/_history/z/w",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		var b bytes.Buffer
		jsonString(&b, s)
		if want, _ := json.Marshal(s); !bytes.Equal(b.Bytes(), want) {
			t.Fatalf("jsonString(%q)=%s, json.Marshal %s", s, b.Bytes(), want)
		}
		if !strings.Contains(s, ";") {
			want := formatNone
			if mt, _, err := mime.ParseMediaType(s); err == nil {
				want = mediaTypeFormat(mt)
			}
			if got := mediaFormat(s); got != want {
				t.Fatalf("mediaFormat(%q)=%v, with ParseMediaType %v", s, got, want)
			}
		}
		typ, id, ok := refTail(s)
		p := s
		if i := strings.IndexAny(p, "?#"); i >= 0 {
			p = p[:i]
		}
		parts := strings.Split(p, "/")
		if len(parts) >= 4 && parts[len(parts)-2] == "_history" {
			parts = parts[:len(parts)-2]
		}
		if wantOK := len(parts) >= 2; ok != wantOK || ok && (typ != parts[len(parts)-2] || id != parts[len(parts)-1]) {
			t.Fatalf("refTail(%q)=%q,%q,%v; split gives %q", s, typ, id, ok, parts)
		}
	})
}
