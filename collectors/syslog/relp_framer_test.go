package syslog

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

type relpWant struct {
	txnr int
	cmd  string
	data string
}

func TestRELPFramer(t *testing.T) {
	long := strings.Repeat("x", 100)
	tests := []struct {
		name   string
		in     string
		max    int
		buf    int // bufio size; 0 means readBufferSize
		frames []relpWant
		reason error // the error after the frames; nil means io.EOF
		fatal  bool
		size   int64 // FrameError.Size, when reason is set
	}{
		{name: "open", in: "1 open 30 relp_version=0\ncommands=syslog\n",
			frames: []relpWant{{1, "open", "relp_version=0\ncommands=syslog"}}},
		{name: "zero-datalen", in: "2 close 0\n", frames: []relpWant{{2, "close", ""}}},
		{name: "several", in: "1 syslog 3 abc\n2 syslog 1 d\n3 close 0\n",
			frames: []relpWant{{1, "syslog", "abc"}, {2, "syslog", "d"}, {3, "close", ""}}},
		{name: "lf-in-data", in: "7 syslog 3 a\nb\n", frames: []relpWant{{7, "syslog", "a\nb"}}},
		{name: "max-txnr", in: "999999999 syslog 1 a\n", frames: []relpWant{{999999999, "syslog", "a"}}},
		{name: "hint", in: "0 serverclose 0\n", frames: []relpWant{{0, "serverclose", ""}}},
		{name: "at-max", in: "1 syslog 4 abcd\n", max: 4, frames: []relpWant{{1, "syslog", "abcd"}}},
		{name: "spills-buffer", in: "1 syslog 100 " + long + "\n2 syslog 1 z\n", buf: 16,
			frames: []relpWant{{1, "syslog", long}, {2, "syslog", "z"}}},
		{name: "empty", in: ""},

		{name: "txnr-not-digit", in: "x open 0\n", reason: ErrRELPFrame, fatal: true, size: 1},
		{name: "txnr-negative", in: "-1 open 0\n", reason: ErrRELPFrame, fatal: true, size: 1},
		{name: "txnr-ten-digits", in: "1234567890 open 0\n", reason: ErrRELPFrame, fatal: true, size: 10},
		{name: "txnr-missing", in: " open 0\n", reason: ErrRELPFrame, fatal: true, size: 1},
		{name: "command-empty", in: "1  0\n", reason: ErrRELPFrame, fatal: true, size: 3},
		{name: "command-digit", in: "1 op3n 0\n", reason: ErrRELPFrame, fatal: true, size: 5},
		{name: "command-33", in: "1 " + strings.Repeat("a", 33) + " 0\n", reason: ErrRELPFrame, fatal: true, size: 35},
		{name: "datalen-alpha", in: "1 syslog abc\n", reason: ErrRELPFrame, fatal: true, size: 10},
		{name: "datalen-garbage", in: "1 syslog 5x hello\n", reason: ErrRELPFrame, fatal: true, size: 11},
		{name: "datalen-ten-digits", in: "1 syslog 1234567890 x\n", reason: ErrRELPFrame, fatal: true, size: 19},
		{name: "datalen-zero-then-space", in: "1 close 0 \n", reason: ErrRELPFrame, fatal: true, size: 10},
		{name: "datalen-missing", in: "1 syslog \n", reason: ErrRELPFrame, fatal: true, size: 10},
		{name: "missing-trailer", in: "1 syslog 5 helloX2 syslog 1 a\n", reason: ErrRELPFrame, fatal: true, size: 17},
		{name: "good-then-bad", in: "1 syslog 1 a\n2 syslog 1 bb\n", frames: []relpWant{{1, "syslog", "a"}},
			reason: ErrRELPFrame, fatal: true, size: 13},
		{name: "oversize-goes-on", in: "1 syslog 10 0123456789\n2 syslog 1 a\n", max: 4,
			frames: []relpWant{{1, "syslog", ""}, {2, "syslog", "a"}}, reason: ErrOversize, size: 10},
		{name: "oversize-missing-trailer", in: "1 syslog 10 0123456789X", max: 4, reason: ErrRELPFrame, fatal: true, size: 23},
		{name: "oversize-truncated", in: "1 syslog 10 01234", max: 4, reason: ErrTruncated, fatal: true, size: 17},
		{name: "truncated-header", in: "1 sysl", reason: ErrTruncated, fatal: true, size: 6},
		{name: "truncated-data", in: "1 syslog 10 hel", reason: ErrTruncated, fatal: true, size: 15},
		{name: "truncated-before-trailer", in: "1 syslog 3 abc", reason: ErrTruncated, fatal: true, size: 14},
		{name: "truncated-spilled", in: "1 syslog 100 " + long[:50], buf: 16, reason: ErrTruncated, fatal: true, size: 63},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			max, buf := tt.max, tt.buf
			if max == 0 {
				max = DefaultMaxMessageSize
			}
			if buf == 0 {
				buf = readBufferSize
			}
			fr := NewRELPFramer(bufio.NewReaderSize(strings.NewReader(tt.in), buf), max)
			var got []relpWant
			var ferr *FrameError
			for range 10 {
				f, err := fr.Next()
				if err == io.EOF {
					break
				}
				var fe *FrameError
				if err != nil && !errors.As(err, &fe) {
					t.Fatalf("Next: %v, want a *FrameError or io.EOF", err)
				}
				if fe != nil {
					if ferr != nil {
						t.Fatalf("second error %v after %v", fe, ferr)
					}
					ferr = fe
					if fe.Fatal() {
						// Sticky: the stream cannot go on.
						if _, err2 := fr.Next(); err2 != err {
							t.Errorf("Next after a fatal error = %v, want the same error", err2)
						}
						break
					}
				}
				if err == nil || fe.Reason == ErrOversize {
					got = append(got, relpWant{f.Txnr, string(f.Command), string(f.Data)})
				}
			}
			if len(got) != len(tt.frames) {
				t.Fatalf("frames = %+v, want %+v", got, tt.frames)
			}
			for i := range got {
				if got[i] != tt.frames[i] {
					t.Errorf("frame %d = %+v, want %+v", i, got[i], tt.frames[i])
				}
			}
			if tt.reason == nil {
				if ferr != nil {
					t.Fatalf("error %v, want none", ferr)
				}
				return
			}
			if ferr == nil {
				t.Fatalf("no error, want %v", tt.reason)
			}
			if ferr.Reason != tt.reason {
				t.Errorf("reason = %v, want %v", ferr.Reason, tt.reason)
			}
			if got, want := ferr.Fatal(), tt.fatal; got != want {
				t.Errorf("Fatal = %v, want %v", got, want)
			}
			if got, want := ferr.Size, tt.size; got != want {
				t.Errorf("Size = %d, want %d", got, want)
			}
			if len(ferr.SHA256) != 64 {
				t.Errorf("SHA256 = %q, want 64 hex digits", ferr.SHA256)
			}
		})
	}
}

// TestRELPFramerOversizeHash checks that an oversize frame's hash covers the whole
// frame as sent (header and data), so a report can be matched to the sender's bytes.
func TestRELPFramerOversizeHash(t *testing.T) {
	frame := "5 syslog 10 0123456789"
	fr := NewRELPFramer(bufio.NewReaderSize(strings.NewReader(frame+"\n"), 16), 4)
	_, err := fr.Next()
	var fe *FrameError
	if !errors.As(err, &fe) || fe.Reason != ErrOversize {
		t.Fatalf("Next: %v, want oversize", err)
	}
	sum := sha256.Sum256([]byte(frame))
	if got, want := fe.SHA256, hex.EncodeToString(sum[:]); got != want {
		t.Errorf("SHA256 = %s, want %s (header and data)", got, want)
	}
}

func TestAppendRELPFrame(t *testing.T) {
	tests := []struct {
		name string
		txnr int
		cmd  string
		data string
		want string
	}{
		{"with-data", 12, "syslog", "<13>x", "12 syslog 5 <13>x\n"},
		{"no-data", 0, "serverclose", "", "0 serverclose 0\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := string(AppendRELPFrame(nil, tt.txnr, tt.cmd, []byte(tt.data))); got != tt.want {
				t.Errorf("AppendRELPFrame = %q, want %q", got, tt.want)
			}
		})
	}
}

func TestAppendRSP(t *testing.T) {
	if got, want := string(appendRSP(nil, 3, "200 OK", nil)), "3 rsp 6 200 OK\n"; got != want {
		t.Errorf("appendRSP = %q, want %q", got, want)
	}
	if got, want := string(appendRSP(nil, 1, "200 OK", []byte("relp_version=0"))), "1 rsp 21 200 OK\nrelp_version=0\n"; got != want {
		t.Errorf("appendRSP with offers = %q, want %q", got, want)
	}
}

func TestNextTxnr(t *testing.T) {
	for _, tt := range []struct{ in, want int }{{1, 2}, {998_999_999, 999_000_000}, {RELPMaxTxnr, 1}} {
		if got := nextTxnr(tt.in); got != tt.want {
			t.Errorf("nextTxnr(%d) = %d, want %d", tt.in, got, tt.want)
		}
	}
}

// relpSeeds are the RELP sessions kept in testdata/relp (recorded from rsyslog's omrelp
// and written by hand for the corner cases).
func relpSeeds(tb testing.TB) [][]byte {
	tb.Helper()
	paths, err := filepath.Glob(filepath.Join("testdata", "relp", "*.relp"))
	if err != nil || len(paths) == 0 {
		tb.Fatalf("no RELP seeds in testdata/relp: %v", err)
	}
	var seeds [][]byte
	for _, p := range paths {
		b, err := os.ReadFile(p)
		if err != nil {
			tb.Fatal(err)
		}
		seeds = append(seeds, b)
	}
	return seeds
}

// TestRELPSeedsFrame checks that every seed session frames to its end, so the fuzzer
// starts from valid sessions (and that the files were not mangled, e.g. by an editor
// adding a CR).
func TestRELPSeedsFrame(t *testing.T) {
	for i, s := range relpSeeds(t) {
		fr := NewRELPFramer(bufio.NewReader(bytes.NewReader(s)), DefaultMaxMessageSize)
		n := 0
		for {
			_, err := fr.Next()
			if err == io.EOF {
				break
			}
			if err != nil {
				t.Fatalf("seed %d frame %d: %v", i, n, err)
			}
			n++
		}
		if n < 2 {
			t.Errorf("seed %d has %d frames, want a session (open and more)", i, n)
		}
	}
}

func FuzzRELPFrame(f *testing.F) {
	for _, s := range relpSeeds(f) {
		f.Add(s, uint8(0))
		f.Add(s, uint8(3))
	}
	f.Add([]byte("1 syslog 10 0123456789\n2 close 0\n"), uint8(1))
	f.Add([]byte("1 open 0\n"), uint8(255))
	f.Fuzz(func(t *testing.T, data []byte, sel uint8) {
		max := 1 + int(sel)*4
		bufSize := readBufferSize
		if sel&1 == 1 {
			bufSize = 16
		}
		fr := NewRELPFramer(bufio.NewReaderSize(bytes.NewReader(data), bufSize), max)
		var seen int64
		for i := 0; ; i++ {
			if i > len(data)+1 {
				t.Fatalf("framer did not end after %d calls on %d bytes", i, len(data))
			}
			f, err := fr.Next()
			if err == io.EOF {
				break
			}
			var fe *FrameError
			if err != nil {
				if !errors.As(err, &fe) {
					t.Fatalf("Next: %T %v, want a *FrameError or io.EOF", err, err)
				}
				if fe.Size < 0 || fe.Size > int64(len(data)) && fe.Reason != ErrOversize {
					t.Fatalf("error size %d on %d bytes of input", fe.Size, len(data))
				}
				if fe.Fatal() {
					break
				}
				if fe.Reason != ErrOversize || fe.Size <= int64(max) {
					t.Fatalf("non-fatal %v of %d bytes, max %d", fe.Reason, fe.Size, max)
				}
				seen += fe.Size
				continue
			}
			if f.Txnr < 0 || f.Txnr > RELPMaxTxnr {
				t.Fatalf("txnr %d out of range", f.Txnr)
			}
			if n := len(f.Command); n < 1 || n > relpMaxCommand {
				t.Fatalf("command %q of %d letters", f.Command, n)
			}
			for _, c := range f.Command {
				if !isAlpha(c) {
					t.Fatalf("command %q has a non-letter", f.Command)
				}
			}
			if len(f.Data) > max {
				t.Fatalf("data of %d bytes, max %d", len(f.Data), max)
			}
			seen += int64(len(f.Data))
			// A frame re-encoded frames to itself.
			enc := AppendRELPFrame(nil, f.Txnr, string(f.Command), f.Data)
			again, err := NewRELPFramer(bufio.NewReader(bytes.NewReader(enc)), max).Next()
			if err != nil || again.Txnr != f.Txnr || !bytes.Equal(again.Command, f.Command) || !bytes.Equal(again.Data, f.Data) {
				t.Fatalf("re-encoded %q framed to %+v, %v", enc, again, err)
			}
		}
		if seen > int64(len(data)) {
			t.Fatalf("framer delivered %d bytes from %d bytes of input", seen, len(data))
		}
	})
}
