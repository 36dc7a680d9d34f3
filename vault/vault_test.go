package vault

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	bolt "go.etcd.io/bbolt"
)

func TestPutGet(t *testing.T) {
	p := filepath.Join(t.TempDir(), "vault.db")
	key := bytes.Repeat([]byte{3}, 32)
	v, err := Open(p, key, false)
	if err != nil {
		t.Fatal(err)
	}
	if err := v.Put([]Entry{{"pat_aa", "12345^^^HOSP"}, {"name_bb", "DOE^JANE"}}); err != nil {
		t.Fatal(err)
	}
	if err := v.Put([]Entry{{"pat_aa", "other"}}); err != nil { // first value stays
		t.Fatal(err)
	}
	got, err := v.Get("pat_aa")
	if err != nil || got != "12345^^^HOSP" {
		t.Fatalf("Get=%q,%v, want the first value", got, err)
	}
	if _, err := v.Get("pat_zz"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("missing token err=%v, want ErrNotFound", err)
	}
	v.Close()

	raw, _ := os.ReadFile(p)
	if bytes.Contains(raw, []byte("12345")) || bytes.Contains(raw, []byte("DOE^JANE")) {
		t.Fatal("vault file holds an identifier in clear")
	}
	// Wrong key: entries do not decrypt.
	w, err := Open(p, bytes.Repeat([]byte{4}, 32), true)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Get("pat_aa"); err == nil || !strings.Contains(err.Error(), "decrypt") {
		t.Fatalf("wrong key err=%v, want a decrypt error", err)
	}
	w.Close()
	// An entry moved to another token does not decrypt (the token is authenticated).
	db, _ := bolt.Open(p, 0o600, nil)
	db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucket)
		return b.Put([]byte("pat_cc"), bytes.Clone(b.Get([]byte("pat_aa"))))
	})
	db.Close()
	r, _ := Open(p, key, true)
	defer r.Close()
	if _, err := r.Get("pat_cc"); err == nil {
		t.Fatal("a value moved to another token decrypted")
	}
}
