package ledger

import (
	"bytes"
	"errors"
	"testing"
)

// ParseBatch decodes what Reader.Next decodes, byte for byte, and refuses what it
// refuses: every prefix of a valid batch, and a few corrupt lengths.
func TestParseBatchMatchesReader(t *testing.T) {
	b := &Batch{Header: []byte(`{"v":1}`), Signature: []byte("sig"), Events: [][]byte{[]byte(`{"a":1}`), {}, []byte(`{"b":"two"}`)}}
	w := b.AppendWire(nil)
	got, rest, err := ParseBatch(append(w[:len(w):len(w)], "EAB1more"...))
	if err != nil {
		t.Fatal(err)
	}
	if string(rest) != "EAB1more" {
		t.Fatalf("rest=%q, want %q", rest, "EAB1more")
	}
	if !bytes.Equal(got.AppendWire(nil), w) {
		t.Fatalf("ParseBatch re-encodes to %x, want %x", got.AppendWire(nil), w)
	}
	for n := range len(w) {
		_, _, perr := ParseBatch(w[:n])
		_, rerr := NewReader(bytes.NewReader(w[:n])).Next()
		if perr == nil || !errors.Is(perr, ErrFormat) {
			t.Fatalf("prefix %d: ParseBatch err=%v, want ErrFormat", n, perr)
		}
		if rerr == nil {
			t.Fatalf("prefix %d: Reader accepted what ParseBatch refused", n)
		}
	}
	for _, tt := range []struct {
		name string
		mut  func([]byte)
	}{
		{"magic", func(w []byte) { w[0] = 'X' }},
		{"header length zero", func(w []byte) { copy(w[4:8], []byte{0, 0, 0, 0}) }},
		{"header length huge", func(w []byte) { copy(w[4:8], []byte{0, 1, 0, 1}) }},
		{"event count huge", func(w []byte) { i := 8 + len(b.Header) + 2 + len(b.Signature); copy(w[i:i+4], []byte{0xff, 0, 0, 0}) }},
	} {
		t.Run(tt.name, func(t *testing.T) {
			c := bytes.Clone(w)
			tt.mut(c)
			if _, _, err := ParseBatch(c); !errors.Is(err, ErrFormat) {
				t.Fatalf("ParseBatch err=%v, want ErrFormat", err)
			}
			if _, err := NewReader(bytes.NewReader(c)).Next(); err == nil {
				t.Fatal("Reader accepted it")
			}
		})
	}
}

// FuzzParseBatch: ParseBatch and Reader.Next agree on every input.
func FuzzParseBatch(f *testing.F) {
	b := &Batch{Header: []byte(`{"v":1}`), Signature: []byte("sig"), Events: [][]byte{[]byte(`{"a":1}`), {}}}
	f.Add(b.AppendWire(nil))
	f.Add([]byte("EAB1"))
	f.Fuzz(func(t *testing.T, in []byte) {
		pb, rest, perr := ParseBatch(in)
		rb, rerr := NewReader(bytes.NewReader(in)).Next()
		if len(in) == 0 {
			return // Reader: io.EOF, a clean end; ParseBatch: an error
		}
		if (perr == nil) != (rerr == nil) {
			t.Fatalf("ParseBatch err=%v, Reader err=%v", perr, rerr)
		}
		if perr != nil {
			return
		}
		if !bytes.Equal(pb.AppendWire(nil), rb.AppendWire(nil)) || len(rest) != len(in)-len(pb.AppendWire(nil)) {
			t.Fatal("ParseBatch and Reader decode differently")
		}
	})
}
