package central

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/edgeaudit/edgeaudit/ledger"
)

// TestEnrol: a new key is written 0600 in a 0700 folder; the same key again changes
// nothing; a different key is refused unless replaced; removal deletes it.
func TestEnrol(t *testing.T) {
	dir := t.TempDir()
	k1, k2 := genKey(t), genKey(t)
	kid1, _ := ledger.KeyID(&k1.PublicKey)
	kid2, _ := ledger.KeyID(&k2.PublicKey)
	res, err := Enrol(dir, "s1", "d1", &k1.PublicKey, false)
	if err != nil || !res.Changed || res.KeyID != kid1 || res.Previous != "" {
		t.Fatalf("first enrol: %+v, %v", res, err)
	}
	for _, p := range []struct {
		path string
		mode os.FileMode
	}{{filepath.Join(dir, "s1"), 0o700}, {filepath.Join(dir, "s1", "d1.pub"), 0o600}} {
		fi, err := os.Stat(p.path)
		if err != nil || fi.Mode().Perm() != p.mode {
			t.Errorf("%s: %v mode %v, want %v", p.path, err, fi.Mode().Perm(), p.mode)
		}
	}
	if res, err := Enrol(dir, "s1", "d1", &k1.PublicKey, false); err != nil || res.Changed {
		t.Errorf("same key again: %+v, %v; want unchanged, nil", res, err)
	}
	if res, err := Enrol(dir, "s1", "d1", &k2.PublicKey, false); !errors.Is(err, ErrKeyExists) || res.Previous != kid1 {
		t.Errorf("different key: %+v, %v; want ErrKeyExists naming %s", res, err, kid1)
	}
	if _, kid, _ := readKeyFile(filepath.Join(dir, "s1", "d1.pub")); kid != kid1 {
		t.Fatalf("key after a refused replacement: %s, want %s", kid, kid1)
	}
	if res, err := Enrol(dir, "s1", "d1", &k2.PublicKey, true); err != nil || !res.Changed || res.Previous != kid1 {
		t.Errorf("replace: %+v, %v", res, err)
	}
	if _, err := Enrol(dir, "s1", "../d1", &k2.PublicKey, false); err == nil {
		t.Error("a device name with a path in it was enrolled")
	}
	if _, err := Enrol(dir, "s2", "d7", &k1.PublicKey, false); err != nil {
		t.Fatal(err)
	}
	devs, err := ListDevices(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(devs) != 2 || devs[0].Site != "s1" || devs[0].KeyID != kid2 || devs[1].Device != "d7" || devs[1].KeyID != kid1 {
		t.Fatalf("list %+v, want s1/d1 %s and s2/d7 %s", devs, kid2, kid1)
	}
	if kid, err := Unenrol(dir, "s1", "d1"); err != nil || kid != kid2 {
		t.Fatalf("remove: %s, %v", kid, err)
	}
	if _, err := Unenrol(dir, "s1", "d1"); !errors.Is(err, ErrNotEnrolled) {
		t.Fatalf("remove twice: %v, want ErrNotEnrolled", err)
	}
}

// TestOffer: trust on first use takes a key only where none is enrolled.
func TestOffer(t *testing.T) {
	k := &TOFUKeys{}
	k.Folder.Dir = t.TempDir()
	k1, k2 := genKey(t), genKey(t)
	kid1, _ := ledger.KeyID(&k1.PublicKey)
	for _, tt := range []struct {
		name, device string
		pem          []byte
		want         string
		wantEnrolled string
		wantErr      bool
	}{
		{"first key", "d1", pubPEM(t, &k1.PublicKey), OfferEnrolled, "", false},
		{"same key again", "d1", pubPEM(t, &k1.PublicKey), OfferKnown, "", false},
		{"another key", "d1", pubPEM(t, &k2.PublicKey), OfferConflict, kid1, false},
		{"not PEM", "d2", []byte("hello"), "", "", true},
		{"two blocks", "d2", append(pubPEM(t, &k1.PublicKey), pubPEM(t, &k2.PublicKey)...), "", "", true},
		{"bad device name", "d 2", pubPEM(t, &k1.PublicKey), "", "", true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			got, _, enrolled, err := k.Offer("s1", tt.device, tt.pem)
			if (err != nil) != tt.wantErr || got != tt.want || enrolled != tt.wantEnrolled {
				t.Fatalf("Offer = %q, enrolled %q, %v; want %q, %q, error %v", got, enrolled, err, tt.want, tt.wantEnrolled, tt.wantErr)
			}
		})
	}
	pub, err := k.Key(t.Context(), "s1", "d1")
	if err != nil || !pub.Equal(&k1.PublicKey) {
		t.Fatalf("Key after the offers: %v, want the first key", err)
	}
}
