package audit

import (
	"path/filepath"
	"testing"
)

// TestRedactPHICorpus2: the second PHI set (forms the first set does not use).
func TestRedactPHICorpus2(t *testing.T) {
	lines := readPHICorpus(t, filepath.Join("testdata", "redact", "phi-lines-2.txt"))
	r, _ := corpusRedactor(t)
	leaked := 0
	for _, l := range lines {
		got, _ := r.Redact(l.text)
		for _, v := range l.phi {
			if lk := leaks(got, v); len(lk) > 0 {
				leaked++
				t.Errorf("line %d: %q leaks %q in %q", l.no, v, lk, got)
			}
		}
	}
	t.Logf("%d lines, %d leaks", len(lines), leaked)
}
