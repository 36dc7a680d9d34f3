package spool

import (
	"encoding/binary"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// inBackground makes every unclean Open of the test check its spool in the background.
func inBackground(t *testing.T) {
	t.Helper()
	old, oldBase, oldWait := bgCheckMinBytes, checkBase, snapshotWait
	bgCheckMinBytes, checkBase, snapshotWait = 0, 3*time.Second, 5*time.Second
	t.Cleanup(func() { bgCheckMinBytes, checkBase, snapshotWait = old, oldBase, oldWait })
}

// crashed copies the closed spool at src to a new folder without its clean-close record,
// as a kill -9 leaves it.
func crashed(t *testing.T, src string, damage func([]byte) []byte) string {
	t.Helper()
	b, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	if damage != nil {
		b = damage(b)
	}
	p := filepath.Join(t.TempDir(), "spool.db")
	if err := os.WriteFile(p, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// waitPageCheck waits until the background check of s has been handled.
func waitPageCheck(t *testing.T, s *Spool) {
	t.Helper()
	select {
	case <-s.pc.done:
	case <-time.After(30 * time.Second):
		t.Fatal("background page check did not end")
	}
}

// A sound spool after an unclean stop opens before its page check ends, takes events
// meanwhile, and once the check has passed its clean Close lets the next Open skip it.
func TestBackgroundPageCheckPasses(t *testing.T) {
	inBackground(t)
	sig := newSigner(t)
	p := crashed(t, buildSpool(t, sig, 3000, 300), nil)
	s, logs := openLogged(t, p, sig)
	if s.pc == nil {
		t.Fatalf("no background check after an unclean stop; log:\n%s", logs)
	}
	for i := range 200 { // writes while the child reads its snapshot
		appendSync(t, s, ev(i))
	}
	waitPageCheck(t, s)
	if !s.pc.passed.Load() {
		t.Fatalf("background check of a sound file did not pass; incidents %+v", s.Incidents())
	}
	if err := s.Seal(t.Context()); err != nil {
		t.Fatal(err)
	}
	if got, want := len(verifyAll(t, s)), 3000+200; got < want {
		t.Fatalf("chain holds %d events, want at least %d", got, want)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(cleanPath(p)); err != nil {
		t.Fatalf("no clean-close record after the check passed: %v", err)
	}
	s, logs = openLogged(t, p, sig)
	defer s.Close()
	if s.pc != nil || !strings.Contains(logs.String(), "page check skipped") {
		t.Fatalf("the Open after a clean close checked again; log:\n%s", logs)
	}
}

// A Close before the background check ends writes no clean-close record: the next
// start checks again.
func TestBackgroundPageCheckStoppedChecksAgain(t *testing.T) {
	inBackground(t)
	sig := newSigner(t)
	p := crashed(t, buildSpool(t, sig, 3000, 300), nil)
	checkDelay = time.Minute
	s := openSpool(t, p, Config{MaxEvents: 50, MaxAge: time.Hour}, sig)
	checkDelay = 0
	if s.pc == nil {
		t.Fatal("no background check after an unclean stop")
	}
	appendSync(t, s, ev(1))
	if err := s.Close(); err != nil { // stops the check (its child sleeps a minute)
		t.Fatal(err)
	}
	if s.pc.passed.Load() {
		t.Fatal("the check passed, though its child was still asleep")
	}
	if _, err := os.Stat(cleanPath(p)); err == nil {
		t.Fatal("clean-close record written although the page check never ended")
	}
	s = openSpool(t, p, Config{MaxEvents: 50, MaxAge: time.Hour}, sig)
	defer s.Close()
	if s.pc == nil {
		t.Fatal("the next Open did not check again")
	}
}

// Damage on a spool checked in the background: the start finds it at once when it lies
// on the paths the start reads (quarantine, as before), the background check finds the
// rest. Those are recorded (health, the chain, the recheck file), and the next start
// quarantines the file.
func TestBackgroundPageCheckFindsDamage(t *testing.T) {
	inBackground(t)
	sig := newSigner(t)
	orig := buildSpool(t, sig, 3000, 300)
	pageSize, first, last := pagesOf(t, orig)
	flip := func(page, off int) func([]byte) []byte {
		return func(b []byte) []byte { b[page*pageSize+off] ^= 0xff; return b }
	}
	everyBranch := func(f func(b []byte, p int)) func([]byte) []byte {
		return func(b []byte) []byte {
			for p := 2; p <= last; p++ {
				if binary.LittleEndian.Uint16(b[p*pageSize+8:])&pageBranch != 0 {
					f(b, p)
				}
			}
			return b
		}
	}
	tests := []struct {
		name   string
		damage func([]byte) []byte
	}{
		{"freelist page entry flipped", flip(first[pageFreelist], boltPageHeader+1)},
		{"leaf page element flipped", flip(first[pageLeaf], boltPageHeader+4)},
		{"leaf page count flipped", flip(first[pageLeaf], 10)},
		{"branch page elements flipped", everyBranch(func(b []byte, p int) { b[p*pageSize+boltPageHeader+8] ^= 0xff })},
		{"branch page pointing at itself", everyBranch(func(b []byte, p int) {
			binary.LittleEndian.PutUint64(b[p*pageSize+boltPageHeader+8:], uint64(p))
		})},
	}
	inBackgroundFound := 0
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := crashed(t, orig, tt.damage)
			s := openSpool(t, p, Config{MaxEvents: 50, MaxAge: time.Hour}, sig)
			if hasIncident(s.Incidents(), ActionQuarantined) {
				// Found before the start: the tail walk, or bbolt's open, met it.
				t.Log("quarantined at the start")
				if err := s.Close(); err != nil {
					t.Fatal(err)
				}
				return
			}
			if s.pc == nil {
				t.Fatal("neither quarantined nor checked in the background")
			}
			waitPageCheck(t, s)
			inc := s.Incidents()
			if !hasIncident(inc, ActionPageCheckFailed) {
				t.Fatalf("incidents %+v, passed %v; want %s", inc, s.pc.passed.Load(), ActionPageCheckFailed)
			}
			// The event is appended to this (damaged) chain; the restart below quarantines it.
			if err := s.Close(); err != nil {
				t.Fatal(err)
			}
			if _, err := os.Stat(recheckPath(p)); err != nil {
				t.Fatalf("no recheck file: %v", err)
			}
			inBackgroundFound++
			t.Log("found by the background check")
			// The next start checks before it opens, and quarantines.
			s = openSpool(t, p, Config{MaxEvents: 50, MaxAge: time.Hour}, sig)
			inc = s.Incidents()
			if err := s.Close(); err != nil {
				t.Fatal(err)
			}
			if !hasIncident(inc, ActionQuarantined) {
				t.Fatalf("restart after damage found in the background: incidents %+v, want %s", inc, ActionQuarantined)
			}
			if _, err := os.Stat(recheckPath(p)); err == nil {
				t.Fatal("recheck file still there after the quarantine")
			}
		})
	}
	if inBackgroundFound == 0 {
		t.Fatal("no damage was left to the background check: the test does not exercise it")
	}
}
