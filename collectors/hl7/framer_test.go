package hl7

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// frameAll runs a framer over in and returns the blocks and error reasons in order,
// e.g. ["MSH|a", "!truncated"].
func frameAll(t testing.TB, in []byte, max int) []string {
	t.Helper()
	fr := NewFramer(bufio.NewReaderSize(bytes.NewReader(in), 16), max)
	var out []string
	for i := 0; i < 1000; i++ {
		b, err := fr.Next()
		if err == io.EOF {
			return out
		}
		if err != nil {
			var fe *FrameError
			if !errors.As(err, &fe) {
				t.Fatalf("Next: %v", err)
			}
			out = append(out, "!"+fe.Reason.Error())
			if fe.Fatal() {
				return out
			}
			continue
		}
		out = append(out, string(b))
	}
	t.Fatal("framer did not end")
	return nil
}

func TestFramer(t *testing.T) {
	long := strings.Repeat("x", 100)
	tests := []struct {
		name string
		in   string
		max  int
		want []string
	}{
		{"empty", "", 64, nil},
		{"one", "\x0bMSH|a\x1c\x0d", 64, []string{"MSH|a"}},
		{"two", "\x0bA\x1c\x0d\x0bB\x1c\x0d", 64, []string{"A", "B"}},
		{"no trailing CR", "\x0bA\x1c\x0bB\x1c", 64, []string{"A", "B"}},
		{"whitespace between", "\x0bA\x1c\x0d\r\n \x0bB\x1c\x0d\n", 64, []string{"A", "B"}},
		{"no start block", "MSH|junk\r\x0bB\x1c\x0d", 64, []string{"!no_start_block", "B"}},
		{"junk only", "garbage", 64, []string{"!no_start_block"}},
		{"truncated at EOF", "\x0bA\x1c\x0d\x0bMSH|half", 64, []string{"A", "!truncated"}},
		{"start block only", "\x0b", 64, []string{"!truncated"}},
		{"stray start block", "\x0bA-lost-end\x0bB\x1c\x0d\x0bC\x1c\x0d", 64, []string{"!truncated", "B", "C"}},
		{"oversize skipped", "\x0b" + long + "\x1c\x0d\x0bB\x1c\x0d", 64, []string{"!oversize", "B"}},
		{"exactly max", "\x0b" + long[:64] + "\x1c\x0d", 64, []string{long[:64]}},
		{"oversize at EOF", "\x0b" + long, 64, []string{"!oversize"}},
		{"empty block", "\x0b\x1c\x0d", 64, []string{""}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := frameAll(t, []byte(tt.in), tt.max)
			if strings.Join(got, "|") != strings.Join(tt.want, "|") || len(got) != len(tt.want) {
				t.Fatalf("got %q, want %q", got, tt.want)
			}
		})
	}
}

func TestFramerErrorDetails(t *testing.T) {
	in := []byte("junk\x0bA\x1c")
	fr := NewFramer(bufio.NewReader(bytes.NewReader(in)), 64)
	_, err := fr.Next()
	var fe *FrameError
	if !errors.As(err, &fe) || fe.Reason != ErrNoStartBlock {
		t.Fatalf("err=%v, want no_start_block", err)
	}
	if got, want := fe.Size, int64(4); got != want {
		t.Fatalf("size=%d, want %d", got, want)
	}
	if got, want := fe.SHA256, sum([]byte("junk")); got != want {
		t.Fatalf("sha256=%s, want %s", got, want)
	}
	if !errors.Is(err, ErrNoStartBlock) || fe.Fatal() {
		t.Fatalf("errors.Is/Fatal wrong for %v", err)
	}
	if b, err := fr.Next(); err != nil || string(b) != "A" {
		t.Fatalf("next block %q, %v", b, err)
	}
}

// TestFramerCorpus runs the framer over the shared MLLP corpus samples.
func TestFramerCorpus(t *testing.T) {
	dir := corpusDir(t)
	tests := []struct {
		file string
		want []string // reasons ("!x") or "ok" for a block
	}{
		{"bad/hl7v2-mllp-no-start-block.bin", []string{"!no_start_block"}},
		{"bad/hl7v2-mllp-missing-end-block.bin", []string{"!truncated"}},
		{"bad/hl7v2-python-hl7-ack-literal-backslash-r.bin", []string{"ok"}},
		{"hl7v2/mllp/python-hl7-mllp-frame.bin", []string{"ok"}},
	}
	for _, tt := range tests {
		t.Run(filepath.Base(tt.file), func(t *testing.T) {
			in, err := os.ReadFile(filepath.Join(dir, tt.file))
			if err != nil {
				t.Fatal(err)
			}
			got := frameAll(t, in, DefaultMaxMessageSize)
			for i := range got {
				if !strings.HasPrefix(got[i], "!") {
					got[i] = "ok"
				}
			}
			if strings.Join(got, ",") != strings.Join(tt.want, ",") {
				t.Fatalf("got %q, want %q", got, tt.want)
			}
		})
	}
}
