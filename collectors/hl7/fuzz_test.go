package hl7

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/edgeaudit/edgeaudit/audit"
)

// fuzzSeeds returns the golden inputs and, when present, the shared corpus samples.
func fuzzSeeds(f *testing.F) [][]byte {
	var seeds [][]byte
	files, _ := filepath.Glob(filepath.Join("testdata", "*", "input.hl7"))
	dir := filepath.Join("..", "..", "..", "shared", "corpus")
	for _, g := range []string{"hl7v2/*.hl7", "hl7v2/mllp/*.bin", "bad/hl7v2-*"} {
		m, _ := filepath.Glob(filepath.Join(dir, g))
		files = append(files, m...)
	}
	for _, p := range files {
		b, err := os.ReadFile(p)
		if err != nil {
			f.Fatal(err)
		}
		seeds = append(seeds, b)
	}
	return seeds
}

func FuzzFramer(f *testing.F) {
	for _, s := range fuzzSeeds(f) {
		if !bytes.ContainsRune(s, endBlock) {
			s = frame(string(s))
		}
		f.Add(s)
	}
	f.Add([]byte("\x0bA\x1c\x0bB\x1c\rjunk\x0b\x0bC"))
	f.Fuzz(func(t *testing.T, data []byte) {
		const max = 256
		fr := NewFramer(bufio.NewReaderSize(bytes.NewReader(data), 16), max)
		var total int64
		for i := 0; ; i++ {
			if i > len(data)+1 {
				t.Fatalf("framer did not end after %d calls on %d bytes", i, len(data))
			}
			b, err := fr.Next()
			if err != nil {
				var fe *FrameError
				if !errors.As(err, &fe) {
					break // clean EOF
				}
				if fe.Size < 0 || len(fe.SHA256) != 64 {
					t.Fatalf("bad FrameError %+v", fe)
				}
				total += fe.Size
				if fe.Fatal() {
					break
				}
				continue
			}
			if len(b) > max {
				t.Fatalf("block of %d bytes over max %d", len(b), max)
			}
			if bytes.IndexByte(b, startBlock) >= 0 || bytes.IndexByte(b, endBlock) >= 0 {
				t.Fatalf("block holds a block character: %q", b)
			}
			total += int64(len(b))
		}
		if total > int64(len(data)) {
			t.Fatalf("accounted %d bytes of %d", total, len(data))
		}
	})
}

func FuzzParse(f *testing.F) {
	for _, s := range fuzzSeeds(f) {
		f.Add(s)
	}
	tok, err := audit.NewTokenizer(testKey)
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		if msgs, err := ParseAll(data); err == nil && len(msgs) == 0 {
			t.Fatal("ParseAll returned no message and no error")
		}
		m, err := Parse(data)
		if err != nil {
			if !documentedReasons[ReasonOf(err)] {
				t.Fatalf("undocumented error %v", err)
			}
		} else {
			var ev audit.Event
			Map(&ev, m, tok, time.UTC, fixedNow)
			enc := ev.AppendJSON(nil)
			if !utf8.Valid(enc) || !json.Valid(enc) {
				t.Fatalf("event JSON invalid: %q", enc)
			}
			checkEventShape(t, &ev)
			for _, o := range []outcome{outcomeAccepted, outcomeStoreFailed, outcomeRejected} {
				for _, mode := range []string{ACKModeAuto, ACKModeOriginal, ACKModeEnhanced} {
					if code, ok := ackCodeFor(mode, m, o); ok && len(code) != 2 {
						t.Fatalf("ack code %q", code)
					}
				}
			}
		}
		// Whatever was read of the MSH, the ACK must be a parseable HL7 message.
		ack := AppendACK(nil, m, AckReject, ReasonMalformed, "", fixedNow)
		body := ack[1 : len(ack)-2]
		if bytes.IndexByte(body, endBlock) >= 0 || bytes.IndexByte(body, startBlock) >= 0 {
			return // the message itself held block characters (never so behind the framer)
		}
		a, err := Parse(body)
		if err != nil && ReasonOf(err) != ReasonInvalidUTF8 {
			t.Fatalf("ack %q does not parse: %v", body, err)
		}
		if err == nil && a.Component(a.Field("MSA", 1), 1) != AckReject {
			t.Fatalf("ack %q lost its MSA-1", body)
		}
	})
}

// checkEventShape asserts what holds for every mapped event, whatever the input: patient
// fields hold tokens only, the query scope is one of its values, query fields are field
// names, and an actor has no more than an ID.
func checkEventShape(t *testing.T, ev *audit.Event) {
	t.Helper()
	if ev.Patient != "" && !audit.IsToken(audit.IDPatient, ev.Patient) {
		t.Fatalf("patient %q is not a token", ev.Patient)
	}
	for _, k := range []string{"patient_ids", "prior_patient_ids"} {
		if v := ev.Detail[k]; v != "" {
			for _, p := range strings.Split(v, ",") {
				if !audit.IsToken(audit.IDPatient, p) {
					t.Fatalf("detail.%s holds %q, not a token", k, p)
				}
			}
		}
	}
	switch ev.QueryScope {
	case "", ScopeBroad:
	case ScopePatient:
		if ev.Patient == "" {
			t.Fatal("query_scope patient without a patient token")
		}
	default:
		t.Fatalf("query_scope %q", ev.QueryScope)
	}
	if v := ev.Detail["query_fields"]; v != "" {
		for _, f := range strings.Split(v, ",") {
			if !isFieldPath(f) {
				t.Fatalf("query_fields holds %q", f)
			}
		}
	}
	if len(ev.Actor.User) > maxActorLen || strings.ContainsFunc(ev.Actor.User, unicode.IsControl) {
		t.Fatalf("actor.user %q", ev.Actor.User)
	}
}
