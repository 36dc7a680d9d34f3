package daemon

import (
	"errors"
	"log/slog"
	"os"
	"testing"

	"github.com/edgeaudit/edgeaudit/attest"
)

// A rotation interrupted by a crash: a staged key the chain never named is thrown away;
// one the marker announces (the chain holds the rotation) replaces the current key.
func TestFinishRotation(t *testing.T) {
	for _, tc := range []struct {
		name     string
		marker   bool
		wantNext bool // the staged key became the current one
	}{
		{"staged, not recorded", false, false},
		{"recorded, not switched", true, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := testConfig(t)
			cur, _, err := attest.LoadOrCreateSoftware(cfg.KeyPath())
			if err != nil {
				t.Fatal(err)
			}
			next, _, err := attest.LoadOrCreateSoftware(cfg.nextKeyPath())
			if err != nil {
				t.Fatal(err)
			}
			if tc.marker {
				if err := os.WriteFile(cfg.rotationMarker(), []byte(cur.KeyID()+" "+next.KeyID()+"\n"), 0o600); err != nil {
					t.Fatal(err)
				}
			}
			if err := finishRotation(&cfg, slog.New(slog.DiscardHandler)); err != nil {
				t.Fatal(err)
			}
			got, _, err := attest.LoadOrCreateSoftware(cfg.KeyPath())
			if err != nil {
				t.Fatal(err)
			}
			want := cur.KeyID()
			if tc.wantNext {
				want = next.KeyID()
			}
			if got.KeyID() != want {
				t.Fatalf("current key %s, want %s", got.KeyID(), want)
			}
			for _, p := range []string{cfg.nextKeyPath(), cfg.rotationMarker()} {
				if _, err := os.Stat(p); !os.IsNotExist(err) {
					t.Errorf("%s left behind (%v)", p, err)
				}
			}
		})
	}
}

// A data key lost while a chain exists is never replaced silently: a new one would
// change every token and lock the events encrypted under the old one.
func TestDataKeyMissingRefused(t *testing.T) {
	cfg := testConfig(t)
	cfg.Keys.TPM = TPMOff
	k, err := OpenKeys(&cfg, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	k.Close()
	if err := os.WriteFile(cfg.SpoolPath(), []byte("a chain"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(cfg.DataKeyPath()); err != nil {
		t.Fatal(err)
	}
	if _, err := OpenKeys(&cfg, slog.New(slog.DiscardHandler)); !errors.Is(err, ErrDataKeyMissing) {
		t.Fatalf("OpenKeys without the data key: %v, want ErrDataKeyMissing", err)
	}
	if _, err := os.Stat(cfg.DataKeyPath()); !os.IsNotExist(err) {
		t.Fatalf("a new data key was made: %v", err)
	}
}
