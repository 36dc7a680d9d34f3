package evidence_test

import (
	"bytes"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/edgeaudit/edgeaudit/evidence"
	"github.com/edgeaudit/edgeaudit/receiver"
)

// FuzzVerify replaces one file of a valid package with fuzzed bytes and fixes the
// manifest, as a forger would: Verify must never panic, must pass the original bytes,
// and must never pass other events. Its seeds run as a normal test.
func FuzzVerify(f *testing.F) {
	fx := newFixture(f)
	src, _ := fx.write(f, receiver.Query{Patient: "P1"})
	names := []string{evidence.EventsFile, evidence.ProofsFile, evidence.ReceiptsFile, evidence.CentralFile}
	orig := map[string][]byte{}
	for i, n := range names {
		b, err := os.ReadFile(filepath.Join(src, n))
		if err != nil {
			f.Fatal(err)
		}
		orig[n] = b
		f.Add(uint8(i), b)
		f.Add(uint8(i), bytes.ReplaceAll(b, []byte("1"), []byte("2")))
		f.Add(uint8(i), b[:len(b)/2])
	}
	f.Add(uint8(0), []byte(`{"site":"s1","device":"d1","chain":"../../../../etc","seq":1,"index":0,"event":{}}`+"\n"))
	f.Fuzz(func(t *testing.T, which uint8, content []byte) {
		name := names[int(which)%len(names)]
		dir := filepath.Join(t.TempDir(), "p")
		if err := os.CopyFS(dir, os.DirFS(src)); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, name), content, 0o600); err != nil {
			t.Fatal(err)
		}
		rehash(t, dir)
		_, err := evidence.Verify(dir)
		if bytes.Equal(content, orig[name]) && err != nil {
			t.Fatalf("%s unchanged: %v", name, err)
		}
		// Bytes may differ and still say the same (JSON spacing, PEM around the key);
		// what must never pass is another event.
		if err == nil && name == evidence.EventsFile {
			where, evs := packaged(t, dir)
			wantWhere, wantEvs := packaged(t, src)
			if !slices.Equal(where, wantWhere) || !slices.EqualFunc(evs, wantEvs, bytes.Equal) {
				t.Fatalf("a package with other events verified: %q", content)
			}
		}
	})
}
