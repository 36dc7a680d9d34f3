package receiver_test

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/edgeaudit/edgeaudit/ledger"
	"github.com/edgeaudit/edgeaudit/receiver"
)

// testStore is the conformance suite every Store runs (STYLE 13): the folder store and
// the in-memory one of the tests.
func testStore(t *testing.T, newStore func(t *testing.T) receiver.Store) {
	a := newAppliance(t, "s1", "d1")
	chain := a.extend(t, nil, 3, "a")
	entry := func(i int) receiver.Entry {
		h, err := ledger.ParseHeader(chain[i].Header)
		if err != nil {
			t.Fatal(err)
		}
		return receiver.Entry{Site: "s1", Device: "d1", Header: h, Hash: hashOf(chain[i]), Batch: chain[i], Receipt: []byte("receipt " + hashOf(chain[i]))}
	}
	t.Run("empty", func(t *testing.T) {
		s := newStore(t)
		h, err := s.Head(t.Context(), "s1", "d1")
		if err != nil || h.Seq != 0 || h.Chain != "" {
			t.Fatalf("empty store head %+v err %v, want zero", h, err)
		}
		if _, err := s.Header(t.Context(), "s1", "d1", a.chain, 1); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("Header of an empty store: err=%v, want ErrNotExist", err)
		}
	})
	t.Run("append", func(t *testing.T) {
		s := newStore(t)
		for i := range chain {
			if err := s.Append(t.Context(), entry(i)); err != nil {
				t.Fatal(err)
			}
			h, err := s.Head(t.Context(), "s1", "d1")
			if err != nil {
				t.Fatal(err)
			}
			want := receiver.Head{Chain: a.chain, Seq: uint64(i + 1), Hash: hashOf(chain[i]), Receipt: entry(i).Receipt}
			if h.Chain != want.Chain || h.Seq != want.Seq || h.Hash != want.Hash || !bytes.Equal(h.Receipt, want.Receipt) {
				t.Fatalf("head %+v, want %+v", h, want)
			}
		}
		for i := range chain {
			hb, err := s.Header(t.Context(), "s1", "d1", a.chain, uint64(i+1))
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(hb, chain[i].Header) {
				t.Fatalf("header of seq %d differs", i+1)
			}
		}
		if _, err := s.Header(t.Context(), "s1", "d1", a.chain, 4); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("Header beyond the head: err=%v, want ErrNotExist", err)
		}
		// Devices are separate.
		if h, err := s.Head(t.Context(), "s1", "d2"); err != nil || h.Seq != 0 {
			t.Fatalf("other device head %+v err %v, want zero", h, err)
		}
	})
	t.Run("append group", func(t *testing.T) {
		s := newStore(t)
		gs, ok := s.(receiver.GroupStore)
		if !ok {
			t.Skip("no AppendGroup: the receiver appends one entry at a time")
		}
		a2 := newAppliance(t, "s1", "d2")
		chain2 := a2.extend(t, nil, 2, "b")
		entry2 := func(i int) receiver.Entry {
			h, err := ledger.ParseHeader(chain2[i].Header)
			if err != nil {
				t.Fatal(err)
			}
			return receiver.Entry{Site: "s1", Device: "d2", Header: h, Hash: hashOf(chain2[i]), Batch: chain2[i], Receipt: []byte("receipt " + hashOf(chain2[i]))}
		}
		if err := s.Append(t.Context(), entry(0)); err != nil {
			t.Fatal(err)
		}
		// Two devices interleaved, each in chain order, the first after its head.
		if err := gs.AppendGroup(t.Context(), []receiver.Entry{entry2(0), entry(1), entry2(1), entry(2)}); err != nil {
			t.Fatal(err)
		}
		for _, d := range []struct {
			dev   string
			chain []*ledger.Batch
		}{{"d1", chain}, {"d2", chain2}} {
			h, err := s.Head(t.Context(), "s1", d.dev)
			if err != nil {
				t.Fatal(err)
			}
			last := d.chain[len(d.chain)-1]
			if got, want := h.Seq, uint64(len(d.chain)); got != want || h.Hash != hashOf(last) || string(h.Receipt) != "receipt "+hashOf(last) {
				t.Fatalf("%s head %+v, want seq %d hash %s", d.dev, h, want, hashOf(last))
			}
			for i, bt := range d.chain {
				hb, err := s.Header(t.Context(), "s1", d.dev, h.Chain, uint64(i+1))
				if err != nil || !bytes.Equal(hb, bt.Header) {
					t.Fatalf("%s header of seq %d: err %v, differs %v", d.dev, i+1, err, !bytes.Equal(hb, bt.Header))
				}
			}
		}
		if err := gs.AppendGroup(t.Context(), nil); err != nil {
			t.Fatalf("empty group: %v", err)
		}
	})
	t.Run("append again after a failure", func(t *testing.T) {
		s := newStore(t)
		for _, i := range []int{0, 1, 1} { // the same seq twice, as after a failed head write
			if err := s.Append(t.Context(), entry(i)); err != nil {
				t.Fatal(err)
			}
		}
		if h, _ := s.Head(t.Context(), "s1", "d1"); h.Seq != 2 {
			t.Fatalf("head %d, want 2", h.Seq)
		}
	})
}

func TestStores(t *testing.T) {
	t.Run("folder", func(t *testing.T) {
		testStore(t, func(t *testing.T) receiver.Store { return receiver.FolderStore{Dir: t.TempDir()} })
	})
	t.Run("mem", func(t *testing.T) {
		testStore(t, func(*testing.T) receiver.Store { return newMemStore() })
	})
}

func TestFolderStoreDamagedHead(t *testing.T) {
	dir := t.TempDir()
	s := receiver.FolderStore{Dir: dir}
	tests := []struct{ name, content string }{
		{"truncated", `{"chain":"ab`},
		{"unknown field", `{"chain":"abababababababababababababababab","seq":1,"hash":"` + string(bytes.Repeat([]byte("0"), 64)) + `","receipt":"","extra":1}`},
		{"seq 0", `{"chain":"abababababababababababababababab","seq":0,"hash":"","receipt":""}`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			os.MkdirAll(filepath.Join(dir, "s1", "d1"), 0o700)
			if err := os.WriteFile(filepath.Join(dir, "s1", "d1", "head"), []byte(tt.content), 0o600); err != nil {
				t.Fatal(err)
			}
			// A damaged head is an error, never an empty store that would accept a
			// new chain from seq 1.
			if h, err := s.Head(t.Context(), "s1", "d1"); err == nil {
				t.Fatalf("head %+v from a damaged file, want an error", h)
			}
		})
	}
}

func TestFolderStoreFileModes(t *testing.T) {
	dir := t.TempDir()
	s := receiver.FolderStore{Dir: dir}
	a := newAppliance(t, "s1", "d1")
	chain := a.extend(t, nil, 1, "a")
	h, _ := ledger.ParseHeader(chain[0].Header)
	if err := s.Append(t.Context(), receiver.Entry{Site: "s1", Device: "d1", Header: h, Hash: hashOf(chain[0]), Batch: chain[0], Receipt: []byte("r")}); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{"s1/d1/head", "s1/d1/" + a.chain + "/batches/" + receiver.SeqName(1) + ".eab", "s1/d1/" + a.chain + "/events/" + receiver.SeqName(1) + ".jsonl"} {
		fi, err := os.Stat(filepath.Join(dir, p))
		if err != nil {
			t.Fatal(err)
		}
		if got := fi.Mode().Perm(); got != 0o600 {
			t.Fatalf("%s mode %o, want 600", p, got)
		}
	}
	fi, err := os.Stat(filepath.Join(dir, "s1", "d1", a.chain, "batches"))
	if err != nil {
		t.Fatal(err)
	}
	if got := fi.Mode().Perm(); got != 0o700 {
		t.Fatalf("batches folder mode %o, want 700", got)
	}
	if tmp, _ := filepath.Glob(filepath.Join(dir, "s1", "d1", "*.tmp")); len(tmp) != 0 {
		t.Fatalf("temp files left: %v", tmp)
	}
}
