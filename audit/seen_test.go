package audit

import (
	"runtime"
	"strconv"
	"sync"
	"testing"
)

// TestSeenSetMemory: the documented cost of an entry (about 60 bytes) holds for a full
// default set.
func TestSeenSetMemory(t *testing.T) {
	if testing.Short() {
		t.Skip("fills 100,000 entries")
	}
	tok := testTokenizer(t)
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	s := NewSeenSet(0)
	tok.SetSeen(s)
	for i := range DefaultSeenMax {
		tok.PatientToken("H"+strconv.Itoa(1_000_000+i), "")
	}
	runtime.GC()
	runtime.ReadMemStats(&after)
	if got, want := s.Len(), DefaultSeenMax; got != want {
		t.Fatalf("Len=%d, want %d", got, want)
	}
	per := float64(after.HeapAlloc-before.HeapAlloc) / float64(DefaultSeenMax)
	t.Logf("%.1f bytes an entry, %.1f MiB for %d", per, per*DefaultSeenMax/(1<<20), DefaultSeenMax)
	if per > 96 {
		t.Errorf("%.1f bytes an entry, want at most 96", per)
	}
	runtime.KeepAlive(s)
}

// TestSeenSetConcurrent: tokenizing (which adds) and redacting (which looks up) at
// once; run under -race.
func TestSeenSetConcurrent(t *testing.T) {
	tok := testTokenizer(t)
	s := NewSeenSet(500)
	tok.SetSeen(s)
	r, _ := NewRedactor(tok, DefaultRedactRules)
	r.SetSeen(s)
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Go(func() {
			for i := range 2000 {
				id := "ID" + strconv.Itoa(100000+(g*2000+i)%1500)
				tok.PatientToken(id, "")
				if got, _ := r.Redact("moved " + id + " now"); got == "moved "+id+" now" && s.Len() < 500 {
					t.Errorf("%s not redacted right after it was seen", id)
					return
				}
			}
		})
	}
	wg.Wait()
	if got := s.Len(); got > 500 {
		t.Errorf("Len=%d, want at most 500", got)
	}
}
