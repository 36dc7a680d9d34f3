package syslog

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/edgeaudit/edgeaudit/audit"
)

// The shared corpus lives beside the repository (../../../shared from this package).
var (
	corpusDir = filepath.Join("..", "..", "..", "shared", "corpus", "syslog")
	badGlob   = filepath.Join("..", "..", "..", "shared", "corpus", "bad", "syslog-*")
)

// corpusFiles lists the corpus files, skipping when the corpus is absent, except under
// CI=true, where a missing corpus is a failure.
func corpusFiles(t testing.TB) (good, bad []string) {
	t.Helper()
	if _, err := os.Stat(corpusDir); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("corpus missing under CI: %v", err)
		}
		t.Skipf("corpus not found: %v", err)
	}
	err := filepath.WalkDir(corpusDir, func(p string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			good = append(good, p)
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	bad, err = filepath.Glob(badGlob)
	if err != nil {
		t.Fatal(err)
	}
	if len(good) == 0 || len(bad) == 0 {
		t.Fatalf("corpus has %d syslog and %d bad/syslog-* files, want some of each", len(good), len(bad))
	}
	return good, bad
}

// corpusResult is what one stream gave: events and reject reasons, in order.
type corpusResult struct {
	events  []audit.Event
	reasons []string
}

// runStream frames and parses b as a TCP connection would.
func runStream(t testing.TB, b []byte, maxSize int) corpusResult {
	t.Helper()
	var res corpusResult
	f := NewFramer(bufio.NewReader(bytes.NewReader(b)), maxSize)
	p := newTestParser(t)
	for i := 0; ; i++ {
		if i > len(b)+1 {
			t.Fatal("framer does not terminate")
		}
		frame, err := f.Next()
		var fe *FrameError
		if errors.As(err, &fe) {
			res.reasons = append(res.reasons, fe.Reason.Error())
			if fe.Fatal() {
				return res
			}
			continue
		}
		if err == io.EOF {
			return res
		}
		if err != nil {
			t.Fatalf("Next: %v", err)
		}
		if ev, ok := parseOne(t, p, frame); ok {
			res.events = append(res.events, ev)
		}
	}
}

// runDatagram parses b as one UDP datagram.
func runDatagram(t testing.TB, b []byte) (audit.Event, bool) {
	t.Helper()
	return parseOne(t, newTestParser(t), b)
}

func parseOne(t testing.TB, p *parser, frame []byte) (audit.Event, bool) {
	t.Helper()
	var ev audit.Event
	resetEvent(&ev, "tcp", "127.0.0.1")
	if !p.parse(&ev, frame, fixedNow) {
		return ev, false
	}
	if enc := ev.AppendJSON(nil); !json.Valid(enc) {
		t.Fatalf("encoder wrote invalid JSON: %s", enc)
	}
	return ev, true
}

// isStream tells corpus streams (framing/, and the octet-counted ATNA captures) from
// single messages.
func isStream(path string) bool {
	b := filepath.Base(path)
	return strings.Contains(path, string(filepath.Separator)+"framing"+string(filepath.Separator)) ||
		strings.Contains(b, "octet-count")
}

func TestCorpus(t *testing.T) {
	good, bad := corpusFiles(t)
	for _, path := range good {
		t.Run(filepath.Base(path), func(t *testing.T) {
			b, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			if isStream(path) {
				res := runStream(t, b, DefaultMaxMessageSize)
				if len(res.reasons) > 0 {
					t.Fatalf("valid stream rejected: %v", res.reasons)
				}
				if len(res.events) == 0 {
					t.Fatal("valid stream produced no event")
				}
				for i, ev := range res.events {
					if strings.Contains(filepath.Base(path), "octet") && ev.Malformed {
						t.Errorf("event %d of an octet-counted stream is malformed: %q (%s)", i, ev.Message, ev.Detail[DetailDICOMError])
					}
					checkATNA(t, path, ev)
				}
				return
			}
			ev, ok := runDatagram(t, b)
			if !ok {
				t.Fatal("valid sample produced no event")
			}
			checkATNA(t, path, ev)
			// The RFC 5424 samples are valid messages: none may come out malformed but
			// the one with an SD-ID repeated, which RFC 5424 §6.3.2 forbids.
			if strings.Contains(path, "rfc5424") && ev.Malformed && !strings.Contains(path, "duplicate-sd-ids") {
				t.Errorf("RFC 5424 sample marked malformed")
			}
		})
	}

	// The octet-counted bad samples, and what each must give.
	wantBad := map[string]struct {
		events  int
		reasons []string
	}{
		"syslog-atna-octet-count-not-a-number.txt":        {0, []string{ReasonBadOctetCount}},
		"syslog-atna-octet-count-too-large.txt":           {0, []string{ReasonTruncated}},
		"syslog-atna-octet-count-too-small.txt":           {1, []string{ReasonBadOctetCount}},
		"syslog-octet-counted-length-mismatch.txt":        {1, []string{ReasonBadOctetCount}},
		"syslog-octet-counted-second-frame-malformed.txt": {3, nil},
	}
	for _, path := range bad {
		name := filepath.Base(path)
		t.Run("bad/"+name, func(t *testing.T) {
			b, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			want, counted := wantBad[name]
			if !counted {
				// A single broken message: kept, marked malformed.
				ev, ok := runDatagram(t, b)
				if !ok {
					t.Fatal("bad sample dropped, want it kept as malformed")
				}
				if !ev.Malformed && !strings.Contains(name, "bom-then-invalid-utf8") {
					t.Errorf("bad sample not marked malformed: %+v", ev)
				}
				return
			}
			res := runStream(t, b, DefaultMaxMessageSize)
			if got := len(res.events); got != want.events {
				t.Errorf("events = %d, want %d", got, want.events)
			}
			if got, want := strings.Join(res.reasons, ","), strings.Join(want.reasons, ","); got != want {
				t.Errorf("reasons = %q, want %q", got, want)
			}
			if name == "syslog-octet-counted-second-frame-malformed.txt" && len(res.events) == 3 {
				if got := []bool{res.events[0].Malformed, res.events[1].Malformed, res.events[2].Malformed}; got[0] || !got[1] || got[2] {
					t.Errorf("malformed flags = %v, want [false true false]", got)
				}
			}
		})
	}
	for name := range wantBad {
		found := false
		for _, p := range bad {
			found = found || filepath.Base(p) == name
		}
		if !found {
			t.Errorf("corpus file bad/%s is missing", name)
		}
	}
}

// TestCorpusActors pins the actor of the corpus samples that name one.
func TestCorpusActors(t *testing.T) {
	corpusFiles(t)
	tests := []struct{ file, user string }{
		{filepath.Join("rfc5424", "ipf-sd-two-params.log"), "admin"}, // [sdID@123 event="test" user="admin"]
		{filepath.Join("rfc3164", "rfc3164-ex1-su.log"), ""},         // 'su root' failed for lonvick: no rule names him
	}
	for _, tt := range tests {
		t.Run(tt.file, func(t *testing.T) {
			b, err := os.ReadFile(filepath.Join(corpusDir, tt.file))
			if err != nil {
				t.Fatal(err)
			}
			ev, ok := runDatagram(t, b)
			if !ok {
				t.Fatal("no event")
			}
			if got, want := ev.Actor.User, tt.user; got != want {
				t.Fatalf("actor.user=%q, want %q", got, want)
			}
		})
	}
}
