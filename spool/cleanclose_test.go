package spool

import (
	"bytes"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

// openLogged is openSpool with the spool's log kept.
func openLogged(t *testing.T, path string, sig Signer) (*Spool, *bytes.Buffer) {
	t.Helper()
	var log bytes.Buffer
	s, err := Open(path, Config{MaxEvents: 50, MaxAge: time.Hour, MinFreeBytes: 1},
		Options{Site: "s1", Device: "d1", Signer: sig, Logger: slog.New(slog.NewTextHandler(&log, nil))})
	if err != nil {
		t.Fatal(err)
	}
	return s, &log
}

const checkSkipped = "page check skipped"

// TestCleanCloseSkipsPageCheck: a file as the last Close left it is opened without
// bbolt's full page check (the O(file size) step of a start); the record is used up
// by the Open, so a crash after it (no Close) means a full check again.
func TestCleanCloseSkipsPageCheck(t *testing.T) {
	sig := newSigner(t)
	path := buildSpool(t, sig, 300, 300)
	if _, err := os.Stat(cleanPath(path)); err != nil {
		t.Fatalf("no clean-close record after Close: %v", err)
	}
	s, log := openLogged(t, path, sig)
	if _, err := os.Stat(cleanPath(path)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("clean-close record still there while the spool is open (err %v)", err)
	}
	appendSync(t, s, ev(1))
	if err := s.Seal(t.Context()); err != nil {
		t.Fatal(err)
	}
	if got := verifyAll(t, s); len(got) != 301 {
		t.Fatalf("events=%d, want 301", len(got))
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(log.String(), checkSkipped) {
		t.Fatalf("page check not skipped for a cleanly closed file; log:\n%s", log)
	}
	// The reader skips it too, and leaves the record for the daemon.
	r, err := OpenReader(path)
	if err != nil {
		t.Fatal(err)
	}
	r.Close()
	if _, err := os.Stat(cleanPath(path)); err != nil {
		t.Fatalf("OpenReader used up the clean-close record: %v", err)
	}
}

// TestCleanCloseRecordGoesStale damages or changes the file after a clean Close in ways
// that keep its size: each must be checked in full again (and the damage quarantined).
func TestCleanCloseRecordGoesStale(t *testing.T) {
	defer func(d time.Duration) { checkBase = d }(checkBase)
	checkBase = 3 * time.Second
	sig := newSigner(t)
	orig := buildSpool(t, sig, 3000, 300)
	pageSize, first, _ := pagesOf(t, orig)
	origBytes, err := os.ReadFile(orig)
	if err != nil {
		t.Fatal(err)
	}
	record, err := os.ReadFile(cleanPath(orig))
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name   string
		change func(t *testing.T, path string)
		// damaged: Open must quarantine; else it must only check in full.
		damaged bool
	}{
		{"leaf page flipped in place", func(t *testing.T, path string) {
			f, err := os.OpenFile(path, os.O_RDWR, 0)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			b := []byte{origBytes[first[pageLeaf]*pageSize+10] ^ 0xff}
			if _, err := f.WriteAt(b, int64(first[pageLeaf]*pageSize+10)); err != nil {
				t.Fatal(err)
			}
		}, true},
		{"written by bbolt since", func(t *testing.T, path string) {
			editDB(t, path, func(tx *bolt.Tx) error { return nil })
		}, false},
		{"record from another file", func(t *testing.T, path string) {
			os.WriteFile(cleanPath(path), bytes.Replace(record, []byte(`"txid":`), []byte(`"txid":1`), 1), 0o600)
		}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := filepath.Join(t.TempDir(), "spool.db")
			if err := os.WriteFile(p, origBytes, 0o600); err != nil {
				t.Fatal(err)
			}
			// The copy as its own clean close left it: same record, same mtime.
			if err := os.WriteFile(cleanPath(p), record, 0o600); err != nil {
				t.Fatal(err)
			}
			fi, _ := os.Stat(orig)
			if err := os.Chtimes(p, time.Time{}, fi.ModTime()); err != nil {
				t.Fatal(err)
			}
			if _, ok := cleanSince(p, mustPrecheck(t, p)); !ok {
				t.Fatal("setup: the copy's record does not match")
			}
			tt.change(t, p)
			s, log := openLogged(t, p, sig)
			inc := s.Incidents()
			s.Close()
			if strings.Contains(log.String(), checkSkipped) {
				t.Fatalf("page check skipped after the file changed; log:\n%s", log)
			}
			if got := hasIncident(inc, ActionQuarantined); got != tt.damaged {
				t.Fatalf("quarantined=%v, want %v (incidents %+v)", got, tt.damaged, inc)
			}
		})
	}
}

func mustPrecheck(t *testing.T, path string) metaInfo {
	t.Helper()
	mi, err := precheck(path)
	if err != nil {
		t.Fatal(err)
	}
	return mi
}
