package daemon

import (
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
