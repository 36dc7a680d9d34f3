package daemon

import (
	"bytes"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
)

// OpenDataKey, for export and verify: the software data key without the signing key (a
// chain whose signing key is lost still reads), and no key made where there is none.
func TestOpenDataKey(t *testing.T) {
	cfg := testConfig(t)
	log := slog.New(slog.DiscardHandler)
	if _, err := OpenDataKey(&cfg, log); err == nil {
		t.Fatal("OpenDataKey on an empty data folder succeeded")
	}
	if _, err := os.Stat(filepath.Join(cfg.DataDir, "keys")); !os.IsNotExist(err) {
		t.Fatalf("keys folder after OpenDataKey: %v, want none made", err)
	}
	keys, err := OpenKeys(&cfg, log)
	if err != nil {
		t.Fatal(err)
	}
	want := bytes.Clone(keys.DataKey)
	keys.Close()
	if err := os.Remove(cfg.KeyPath()); err != nil {
		t.Fatal(err)
	}
	got, err := OpenDataKey(&cfg, log)
	if err != nil {
		t.Fatalf("without the signing key: %v", err)
	}
	if !bytes.Equal(got, want) {
		t.Fatal("OpenDataKey returned another key than OpenKeys")
	}
}
