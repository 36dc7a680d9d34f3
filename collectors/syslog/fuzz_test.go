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
	"testing"
	"time"

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
