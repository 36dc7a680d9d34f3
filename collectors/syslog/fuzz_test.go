package syslog

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	gosyslog "github.com/leodido/go-syslog/v4"
	"github.com/leodido/go-syslog/v4/rfc5424"

	"github.com/edgeaudit/edgeaudit/audit"
)

// fuzzSeeds returns the golden inputs and, when present, the shared corpus files.
func fuzzSeeds(f *testing.F) [][]byte {
	f.Helper()
	var seeds [][]byte
	paths, _ := filepath.Glob(filepath.Join("testdata", "*", "input.txt"))
	more, _ := filepath.Glob(filepath.Join(corpusDir, "*", "*"))
	paths = append(paths, more...)
	more, _ = filepath.Glob(badGlob)
	paths = append(paths, more...)
	for _, p := range paths {
		if b, err := os.ReadFile(p); err == nil {
			seeds = append(seeds, b)
		}
	}
	return append(seeds,
		[]byte("5 hello3 abc"), []byte("12345678901 x"), []byte("0 x"), []byte("<1>a\x00\n<2>b\r\n"),
		[]byte("10 hel"), []byte("\n\n\n"), []byte(" <13>Feb 29 10:00:00 h a: x"),
	)
}

func FuzzFramer(f *testing.F) {
	for i, s := range fuzzSeeds(f) {
		f.Add(s, uint8(i))
	}
	f.Fuzz(func(t *testing.T, data []byte, sel uint8) {
		maxSize := 1 + int(sel)*8
		bufSize := readBufferSize
		if sel&1 == 1 {
			bufSize = 16
		}
		fr := NewFramer(bufio.NewReaderSize(bytes.NewReader(data), bufSize), maxSize)
		var seen int64
		for i := 0; ; i++ {
			if i > len(data)+1 {
				t.Fatalf("framer did not end after %d calls on %d bytes", i, len(data))
			}
			frame, err := fr.Next()
			var fe *FrameError
			if errors.As(err, &fe) {
				seen += fe.Size
				if fe.Reason == ErrOversize && fe.Size <= int64(maxSize) && fe.Err == nil {
					t.Fatalf("oversize reject of %d bytes, max %d", fe.Size, maxSize)
				}
				if fe.Fatal() {
					break
				}
				continue
			}
			if err == io.EOF {
				break
			}
			if err != nil {
				t.Fatalf("unexpected error %v", err)
			}
			if len(frame) > maxSize {
				t.Fatalf("frame of %d bytes, max %d", len(frame), maxSize)
			}
			seen += int64(len(frame))
		}
		if seen > int64(len(data)) {
			t.Fatalf("framer accounted for %d bytes of %d", seen, len(data))
		}
	})
}

func FuzzParse(f *testing.F) {
	for _, s := range fuzzSeeds(f) {
		f.Add(s)
		// Also each line alone, as an LF-framed sender would deliver it.
		for _, l := range bytes.Split(s, []byte("\n")) {
			f.Add(l)
		}
	}
	p := newParser(time.UTC)
	f.Fuzz(func(t *testing.T, frame []byte) {
		var ev audit.Event
		resetEvent(&ev, "tcp", "127.0.0.1")
		if !p.parse(&ev, frame, fixedNow) {
			if len(bytes.Trim(trimFrame(frame), " \t")) != 0 {
				t.Fatalf("non-blank frame %q skipped", frame)
			}
			return
		}
		enc := ev.AppendJSON(nil)
		if !json.Valid(enc) {
			t.Fatalf("invalid JSON: %s", enc)
		}
		if _, err := audit.Decode(enc); err != nil {
			t.Fatalf("Decode: %v", err)
		}
		sum := sha256.Sum256(frame)
		if got, want := ev.RawSHA256, hex.EncodeToString(sum[:]); got != want {
			t.Fatalf("RawSHA256 = %s, want %s", got, want)
		}
		if ev.Time.Location() != time.UTC || ev.Time.IsZero() {
			t.Fatalf("Time = %v, want a UTC time", ev.Time)
		}
		if ev.Malformed && ev.Message == "" && ev.Detail[DetailDICOMError] == "" {
			t.Fatal("malformed event without the frame as message")
		}
		switch {
		case ev.Action == ActionLog && ev.Outcome == audit.OutcomeUnknown:
		case ev.Source.Kind == audit.KindSyslog && (ev.Action == audit.ActionLogin || ev.Action == audit.ActionLogout) && ev.Outcome != audit.OutcomeUnknown:
		case ev.Source.Kind == audit.KindDICOM:
		default:
			t.Fatalf("action %q outcome %q", ev.Action, ev.Outcome)
		}
	})
}

// FuzzParseFast5424 checks the RFC 5424 fast path against go-syslog: whatever
// parseFast5424 accepts, go-syslog must parse without error into the same fields.
func FuzzParseFast5424(f *testing.F) {
	for _, s := range fuzzSeeds(f) {
		f.Add(s)
	}
	for _, s := range []string{
		string(loggenMessage()), string(message256("-")),
		"<0>1 2026-02-28T23:59:59.5-05:30 h a p m - hi", "<191>1 2024-02-29T00:00:00Z - - - - -",
		"<13>1 2025-02-29T00:00:00Z h a p m - x", "<13>1 0000-01-01T00:00:00Z h a p m - x",
		"<13>1 2026-03-15T10:00:00.1234567Z h a p m - x", "<013>1 2026-03-15T10:00:00Z h a p m - x",
		"<13>1 2026-03-15T10:00:00Z h a p m -", "<13>1 2026-03-15T10:00:00Z h a p m - ",
		"<13>1 2026-03-15T10:00:00Z h a p m - \xef\xbb\xbf\xff", "<13>1 2026-03-15T24:00:00Z h a p m - x",
		"<13>1 2026-03-15T10:00:60Z h a p m - x", "<13>1 2026-03-15T10:00:00+24:00 h a p m - x",
	} {
		f.Add([]byte(s))
	}
	ref := rfc5424.NewParser(rfc5424.WithBestEffort())
	f.Fuzz(func(t *testing.T, data []byte) { checkFast5424(t, ref, trimFrame(data)) })
}

// TestParseFast5424Mutations runs the FuzzParseFast5424 check over every one-byte change
// (replacement by a byte that matters to the grammar, or deletion) of valid messages.
func TestParseFast5424Mutations(t *testing.T) {
	ref := rfc5424.NewParser(rfc5424.WithBestEffort())
	bytesThatMatter := []byte(" -09:.TZ+<>1a\x7f\xff\x00\"]")
	for _, m := range []string{
		string(trimFrame(loggenMessage())), string(message256("-")),
		"<0>1 2026-02-28T23:59:59.5-05:30 h a p m - hi", "<191>1 2024-02-29T00:00:00.123456Z - - - - - x",
	} {
		for i := range len(m) {
			checkFast5424(t, ref, []byte(m[:i]+m[i+1:]))
			for _, c := range bytesThatMatter {
				checkFast5424(t, ref, []byte(m[:i]+string(c)+m[i+1:]))
			}
		}
	}
}

// TestParseFast5424Lengths checks the field length limits at and beyond each bound.
func TestParseFast5424Lengths(t *testing.T) {
	ref := rfc5424.NewParser(rfc5424.WithBestEffort())
	for _, n := range []int{1, 31, 32, 33, 47, 48, 49, 127, 128, 129, 254, 255, 256} {
		v := strings.Repeat("h", n)
		for _, m := range []string{
			"<13>1 2026-03-15T10:00:00Z " + v + " a p m - x", "<13>1 2026-03-15T10:00:00Z h " + v + " p m - x",
			"<13>1 2026-03-15T10:00:00Z h a " + v + " m - x", "<13>1 2026-03-15T10:00:00Z h a p " + v + " - x",
		} {
			checkFast5424(t, ref, []byte(m))
		}
	}
}

func checkFast5424(t *testing.T, ref gosyslog.Machine, msg []byte) {
	t.Helper()
	{
		got, ok := parseFast5424(string(msg))
		if !ok {
			return
		}
		m, err := ref.Parse(msg)
		if err != nil {
			t.Fatalf("fast path accepted %q, go-syslog: %v", msg, err)
		}
		sm, isSM := m.(*rfc5424.SyslogMessage)
		if !isSM || sm == nil {
			t.Fatalf("fast path accepted %q, go-syslog gave %T", msg, m)
		}
		b := sm.Base
		if b.Facility == nil || *b.Facility != got.facility || b.Severity == nil || *b.Severity != got.severity {
			t.Fatalf("%q: PRI %v/%v, fast path %d/%d", msg, b.Facility, b.Severity, got.facility, got.severity)
		}
		if b.Timestamp == nil || !b.Timestamp.Equal(got.ts) {
			t.Fatalf("%q: timestamp %v, fast path %v", msg, b.Timestamp, got.ts)
		}
		if (b.Timestamp.Year() == 0) != (got.ts.Year() == 0) {
			t.Fatalf("%q: year %d, fast path %d", msg, b.Timestamp.Year(), got.ts.Year())
		}
		for _, p := range []struct {
			name string
			ref  *string
			got  string
		}{{"host", b.Hostname, got.host}, {"app", b.Appname, got.app}, {"procid", b.ProcID, got.procID}, {"msgid", b.MsgID, got.msgID}} {
			if deref(p.ref) != p.got {
				t.Fatalf("%q: %s %q, fast path %q", msg, p.name, deref(p.ref), p.got)
			}
		}
		if sm.StructuredData != nil && len(*sm.StructuredData) > 0 {
			t.Fatalf("%q: go-syslog found structured data", msg)
		}
		if (b.Message != nil) != got.hasMsg || deref(b.Message) != got.msg {
			t.Fatalf("%q: message %v, fast path %q (%v)", msg, b.Message, got.msg, got.hasMsg)
		}
	}
}
