package syslog

import (
	"bufio"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"strconv"
	"strings"
	"testing"
	"testing/iotest"
)

// frameTokens runs a framer to the end and describes what it returned: a frame as its
// quoted text, a FrameError as "!reason/size", the end as "EOF" (or "EOF*" when it came
// with a fatal FrameError).
func frameTokens(t testing.TB, r io.Reader, bufSize, maxSize int) []string {
	t.Helper()
	f := NewFramer(bufio.NewReaderSize(r, bufSize), maxSize)
	var out []string
	for i := 0; i < 10000; i++ {
		b, err := f.Next()
		var fe *FrameError
		switch {
		case err == nil:
			if len(b) > maxSize {
				t.Fatalf("frame of %d bytes, max %d", len(b), maxSize)
			}
			out = append(out, strconv.Quote(string(b)))
		case errors.As(err, &fe):
			out = append(out, "!"+fe.Reason.Error()+"/"+strconv.FormatInt(fe.Size, 10))
			if fe.Fatal() {
				// The same error is sticky.
				if _, err2 := f.Next(); err2 != err {
					t.Fatalf("after fatal %v, Next returned %v", err, err2)
				}
				return append(out, "END")
			}
		case err == io.EOF:
			return append(out, "EOF")
		default:
			t.Fatalf("Next: unexpected error %v", err)
		}
	}
	t.Fatal("framer did not end")
	return nil
}

func TestFramer(t *testing.T) {
	tests := []struct {
		name  string
		in    string
		max   int
		want  []string
		octet bool
	}{
		{name: "empty stream", in: "", max: 100, want: []string{"EOF"}},
		{name: "octet single", in: "5 hello", max: 100, octet: true, want: []string{`"hello"`, "EOF"}},
		{name: "octet several", in: "5 hello3 abc1 x", max: 100, octet: true, want: []string{`"hello"`, `"abc"`, `"x"`, "EOF"}},
		{name: "octet counts bytes not runes", in: "6 hellø2 ok", max: 100, octet: true, want: []string{`"hellø"`, `"ok"`, "EOF"}},
		{name: "octet frame keeps inner LF", in: "7 <1>a\nb\n", max: 100, octet: true, want: []string{`"<1>a\nb\n"`, "EOF"}},
		{name: "octet tolerates trailers between frames", in: "5 hello\n3 abc\r\n\x004 abcd", max: 100, octet: true, want: []string{`"hello"`, `"abc"`, `"abcd"`, "EOF"}},
		{name: "octet exactly max", in: "4 abcd", max: 4, octet: true, want: []string{`"abcd"`, "EOF"}},
		{name: "octet oversize then continue", in: "5 hello3 abc", max: 4, octet: true, want: []string{"!oversize/5", `"abc"`, "EOF"}},
		{name: "octet oversize cut by EOF", in: "10 hello", max: 4, octet: true, want: []string{"!oversize/5", "END"}},
		{name: "octet letter in length", in: "2a4 hello", max: 100, octet: true, want: []string{"!bad_octet_count/2", "END"}},
		{name: "octet garbage after frame", in: "5 helloabc", max: 100, octet: true, want: []string{`"hello"`, "!bad_octet_count/1", "END"}},
		{name: "octet space where length expected", in: "5 hello -", max: 100, octet: true, want: []string{`"hello"`, "!bad_octet_count/1", "END"}},
		{name: "octet zero length", in: "0 x", max: 100, octet: true, want: []string{"!bad_octet_count/1", "END"}},
		{name: "octet leading zero", in: "05 hello", max: 100, octet: true, want: []string{"!bad_octet_count/1", "END"}},
		{name: "octet eleven digits", in: "12345678901 x", max: 100, octet: true, want: []string{"!bad_octet_count/11", "END"}},
		{name: "octet ten digits is a length", in: "1234567890 x", max: 100, octet: true, want: []string{"!oversize/1", "END"}},
		{name: "octet missing space", in: "5hello", max: 100, octet: true, want: []string{"!bad_octet_count/2", "END"}},
		{name: "octet truncated body", in: "10 hello", max: 100, octet: true, want: []string{"!truncated/5", "END"}},
		{name: "octet truncated length", in: "5 hello12", max: 100, octet: true, want: []string{`"hello"`, "!truncated/2", "END"}},
		{name: "octet truncated before space", in: "5 hello12 ", max: 100, octet: true, want: []string{`"hello"`, "!truncated/0", "END"}},
		{name: "lf two lines", in: "<1>a\n<2>b\n", max: 100, want: []string{`"<1>a"`, `"<2>b"`, "EOF"}},
		{name: "lf no final LF", in: "<1>a\n<2>b", max: 100, want: []string{`"<1>a"`, `"<2>b"`, "EOF"}},
		{name: "lf keeps CR for the parser to trim", in: "<1>a\r\n<2>b\r\n", max: 100, want: []string{`"<1>a\r"`, `"<2>b\r"`, "EOF"}},
		{name: "lf NUL trailers", in: "<1>a\x00<2>b\x00\n<3>c", max: 100, want: []string{`"<1>a"`, `"<2>b"`, `"<3>c"`, "EOF"}},
		{name: "lf blank lines are empty frames", in: "\n\n<1>a\n", max: 100, want: []string{`""`, `""`, `"<1>a"`, "EOF"}},
		{name: "lf leading spaces kept", in: " <1>a\n   <2>b\n", max: 100, want: []string{`" <1>a"`, `"   <2>b"`, "EOF"}},
		{name: "lf exactly max", in: "<1>ab\n", max: 5, want: []string{`"<1>ab"`, "EOF"}},
		{name: "lf oversize then continue", in: "<1>abcdef\n<2>b\n", max: 5, want: []string{"!oversize/9", `"<2>b"`, "EOF"}},
		{name: "lf oversize at EOF", in: "<1>a\n<1>abcdef", max: 5, want: []string{`"<1>a"`, "!oversize/9", "END"}},
		{name: "lf long line within max", in: strings.Repeat("x", 60) + "\n<1>a\n", max: 100, want: []string{strconv.Quote(strings.Repeat("x", 60)), `"<1>a"`, "EOF"}},
		{name: "lf very long oversize", in: strings.Repeat("y", 1000) + "\nok\n", max: 100, want: []string{"!oversize/1000", `"ok"`, "EOF"}},
		{name: "octet frame longer than buffer", in: "60 " + strings.Repeat("z", 60) + "2 ok", max: 100, octet: true, want: []string{strconv.Quote(strings.Repeat("z", 60)), `"ok"`, "EOF"}},
		{name: "octet long oversize", in: "1000 " + strings.Repeat("y", 1000) + "2 ok", max: 100, octet: true, want: []string{"!oversize/1000", `"ok"`, "EOF"}},
	}
	readers := []struct {
		name    string
		bufSize int
		wrap    func(io.Reader) io.Reader
	}{
		{"64k", readBufferSize, func(r io.Reader) io.Reader { return r }},
		{"16", 16, func(r io.Reader) io.Reader { return r }},
		{"16-onebyte", 16, iotest.OneByteReader},
		{"64k-half", readBufferSize, iotest.HalfReader},
	}
	for _, tt := range tests {
		for _, rd := range readers {
			t.Run(tt.name+"/"+rd.name, func(t *testing.T) {
				got := frameTokens(t, rd.wrap(strings.NewReader(tt.in)), rd.bufSize, tt.max)
				if strings.Join(got, " ") != strings.Join(tt.want, " ") {
					t.Fatalf("tokens = %q, want %q", got, tt.want)
				}
			})
		}
		t.Run(tt.name+"/mode", func(t *testing.T) {
			f := NewFramer(bufio.NewReader(strings.NewReader(tt.in)), tt.max)
			_, _ = f.Next()
			if got, want := f.OctetCounting(), tt.octet; got != want {
				t.Fatalf("OctetCounting() = %v, want %v", got, want)
			}
		})
	}
}

// TestFramerRejectHash checks that each reason carries the SHA-256 of exactly the bytes
// it refused, which is what the self-audit event will say.
func TestFramerRejectHash(t *testing.T) {
	sum := func(s string) string { h := sha256.Sum256([]byte(s)); return hex.EncodeToString(h[:]) }
	tests := []struct {
		name   string
		in     string
		max    int
		reason error
		hashed string
	}{
		{"octet oversize", "8 abcdefgh2 ok", 4, ErrOversize, "abcdefgh"},
		{"lf oversize", "abcdefgh\nok\n", 4, ErrOversize, "abcdefgh"},
		{"lf oversize CR kept", "abcdefgh\r\nok\n", 4, ErrOversize, "abcdefgh\r"},
		{"bad count", "12x hello", 100, ErrBadOctetCount, "12x"},
		{"truncated", "20 partial", 100, ErrTruncated, "partial"},
	}
	for _, tt := range tests {
		for _, bufSize := range []int{16, readBufferSize} {
			t.Run(tt.name+"/"+strconv.Itoa(bufSize), func(t *testing.T) {
				f := NewFramer(bufio.NewReaderSize(iotest.HalfReader(strings.NewReader(tt.in)), bufSize), tt.max)
				_, err := f.Next()
				var fe *FrameError
				if !errors.As(err, &fe) {
					t.Fatalf("Next error = %v, want a *FrameError", err)
				}
				if !errors.Is(err, tt.reason) {
					t.Fatalf("error %v is not %v", err, tt.reason)
				}
				if got, want := fe.SHA256, sum(tt.hashed); got != want {
					t.Fatalf("SHA256 = %s, want sha256(%q) = %s", got, tt.hashed, want)
				}
				if got, want := fe.Size, int64(len(tt.hashed)); got != want {
					t.Fatalf("Size = %d, want %d", got, want)
				}
				if strings.Contains(fe.Error(), tt.hashed) {
					t.Fatalf("error text %q contains the refused bytes", fe.Error())
				}
			})
		}
	}
}

// TestFramerReadError checks that a read error other than EOF (a timeout, a reset) ends
// the stream with that error, and still reports the frame it cut.
func TestFramerReadError(t *testing.T) {
	boom := errors.New("boom")
	tests := []struct {
		name string
		in   string
		want []string
	}{
		{"octet mid-frame", "5 hel", []string{"!truncated/3"}},
		{"octet boundary", "5 hello", []string{`"hello"`, "boom"}},
		{"lf partial line delivered", "<1>a\n<2>b", []string{`"<1>a"`, `"<2>b"`, "boom"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := io.MultiReader(strings.NewReader(tt.in), iotest.ErrReader(boom))
			f := NewFramer(bufio.NewReader(r), 100)
			var got []string
			for len(got) < 10 {
				b, err := f.Next()
				var fe *FrameError
				if err == nil {
					got = append(got, strconv.Quote(string(b)))
					continue
				}
				if errors.As(err, &fe) {
					got = append(got, "!"+fe.Reason.Error()+"/"+strconv.FormatInt(fe.Size, 10))
					if !errors.Is(err, boom) {
						t.Fatalf("FrameError %v does not wrap the read error", err)
					}
				} else {
					got = append(got, err.Error())
				}
				break
			}
			if strings.Join(got, " ") != strings.Join(tt.want, " ") {
				t.Fatalf("got %q, want %q", got, tt.want)
			}
		})
	}
}

func TestFrameErrorFatal(t *testing.T) {
	tests := []struct {
		err  *FrameError
		want bool
	}{
		{&FrameError{Reason: ErrOversize}, false},
		{&FrameError{Reason: ErrOversize, Err: io.EOF}, true},
		{&FrameError{Reason: ErrBadOctetCount}, true},
		{&FrameError{Reason: ErrTruncated, Err: io.EOF}, true},
	}
	for _, tt := range tests {
		if got := tt.err.Fatal(); got != tt.want {
			t.Errorf("%v Fatal() = %v, want %v", tt.err, got, tt.want)
		}
	}
}
