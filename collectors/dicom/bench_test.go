package dicom

import (
	"os"
	"path/filepath"
	"testing"
)

// BenchmarkParse parses a typical 2-3 KiB instances-transferred message (study, patient,
// accession, SOP class counts) and encodes the event.
func BenchmarkParse(b *testing.B) {
	raw, err := os.ReadFile(filepath.Join("testdata", "instances-transferred", "input.xml"))
	if err != nil {
		b.Fatal(err)
	}
	tok := testTokenizer(b)
	base := baseEvent(raw)
	var buf []byte
	b.SetBytes(int64(len(raw)))
	b.ReportAllocs()
	for b.Loop() {
		ev := base
		ev.Detail = nil
		if err := Parse(raw, tok, &ev); err != nil {
			b.Fatal(err)
		}
		buf = ev.AppendJSON(buf[:0])
	}
}
