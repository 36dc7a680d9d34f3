package spool

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

// FuzzHeadFile: any bytes in the head file give a record whose slot validates, or an
// error; never a panic, and never a record from a slot that does not validate.
func FuzzHeadFile(f *testing.F) {
	good := encodeHead(headRecord{Chain: "0123456789abcdef0123456789abcdef", Seq: 7, Written: time.Unix(1, 0)})
	f.Add(append(good, make([]byte, headSlot)...))
	f.Add(append(make([]byte, headSlot), good...))
	f.Add([]byte("EAH1"))
	f.Fuzz(func(t *testing.T, b []byte) {
		p := filepath.Join(t.TempDir(), "spool.db.head")
		if err := os.WriteFile(p, b, 0o600); err != nil {
			t.Fatal(err)
		}
		rec, ok, err := readHeadFile(p)
		if !ok {
			t.Fatal("an existing head file reported as missing")
		}
		if err != nil {
			return
		}
		for i := 0; i+headSlot <= len(b) && i < 2*headSlot; i += headSlot {
			if r, err := decodeHead(b[i : i+headSlot]); err == nil && r.Seq == rec.Seq && r.Chain == rec.Chain {
				return
			}
		}
		t.Fatalf("record %+v from no valid slot", rec)
	})
}

// FuzzPrecheck: any file the precheck passes is at least as long as the meta page it
// would use says; it never panics.
func FuzzPrecheck(f *testing.F) {
	f.Add(make([]byte, 8192))
	f.Add([]byte("not a bbolt file"))
	// A real bbolt file, so the fuzzer starts from valid meta pages.
	seed := filepath.Join(f.TempDir(), "seed.db")
	db, err := bolt.Open(seed, 0o600, nil)
	if err != nil {
		f.Fatal(err)
	}
	db.Update(func(tx *bolt.Tx) error { _, err := tx.CreateBucket([]byte("b")); return err })
	db.Close()
	if b, err := os.ReadFile(seed); err == nil {
		f.Add(b[:min(len(b), 32<<10)])
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		p := filepath.Join(t.TempDir(), "spool.db")
		if err := os.WriteFile(p, b, 0o600); err != nil {
			t.Fatal(err)
		}
		mi, err := precheck(p)
		if err != nil || len(b) == 0 {
			return
		}
		if need := int64(mi.use.hwm) * int64(mi.use.pageSize); int64(len(b)) < need {
			t.Fatalf("passed a %d-byte file whose meta says %d bytes", len(b), need)
		}
	})
}
