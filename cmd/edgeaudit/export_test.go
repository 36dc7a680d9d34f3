package main

import (
	"bytes"
	"errors"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/edgeaudit/edgeaudit/ledger"
)

func TestParseWhen(t *testing.T) {
	now := time.Date(2026, 12, 2, 12, 0, 0, 0, time.UTC)
	tests := []struct {
		in      string
		want    time.Time
		wantErr bool
	}{
		{"", time.Time{}, false},
		{"2026-12-01T08:00:00Z", time.Date(2026, 12, 1, 8, 0, 0, 0, time.UTC), false},
		{"2026-12-01T09:00:00+01:00", time.Date(2026, 12, 1, 8, 0, 0, 0, time.UTC), false},
		{"24h", now.Add(-24 * time.Hour), false},
		{"90m", now.Add(-90 * time.Minute), false},
		{"-1h", time.Time{}, true},
		{"yesterday", time.Time{}, true},
		{"2026-12-01", time.Time{}, true},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := parseWhen(tt.in, now)
			if gotErr := err != nil; gotErr != tt.wantErr {
				t.Fatalf("err=%v, want error %v", err, tt.wantErr)
			}
			if !got.Equal(tt.want) {
				t.Fatalf("got %v, want %v", got, tt.want)
			}
		})
	}
}

// A wire file cut anywhere names the byte offset and the last whole batch, not a bare
// "unexpected EOF".
func TestVerifyStreamNamesTheCut(t *testing.T) {
	var wire []byte
	var ends []int
	for seq := range 3 {
		b := &ledger.Batch{Header: []byte(`{"seq":` + strconv.Itoa(seq+1) + `}`), Signature: []byte("sig"), Events: [][]byte{[]byte(`{"a":1}`), []byte(`{"b":2}`)}}
		wire = b.AppendWire(wire)
		if got, want := wireSize(b), int64(len(b.AppendWire(nil))); got != want {
			t.Fatalf("wireSize=%d, want %d", got, want)
		}
		ends = append(ends, len(wire))
	}
	tests := []struct {
		name string
		cut  int
		want string // "" = no error
	}{
		{"whole", len(wire), ""},
		{"at a batch boundary", ends[1], ""},
		{"inside the first", 10, "the first batch, at byte offset 0, is cut short"},
		{"inside the third", ends[1] + 5, "the batch after seq 2, at byte offset " + strconv.Itoa(ends[1]) + ", is cut short"},
		{"last byte missing", len(wire) - 1, "the batch after seq 2, at byte offset " + strconv.Itoa(ends[1]) + ", is cut short"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			n := 0
			err := verifyStream(bytes.NewReader(wire[:tt.cut]), func(*ledger.Batch) error { n++; return nil })
			if tt.want == "" {
				if err != nil {
					t.Fatalf("err=%v, want none", err)
				}
				return
			}
			var ce *cutError
			if !errors.As(err, &ce) || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err=%v, want a cutError saying %q", err, tt.want)
			}
			if !errors.Is(err, ledger.ErrFormat) {
				t.Fatalf("err=%v does not wrap ledger.ErrFormat", err)
			}
		})
	}
	garbage := append(bytes.Clone(wire[:ends[0]]), "JUNKJUNKJUNK"...)
	err := verifyStream(bytes.NewReader(garbage), func(*ledger.Batch) error { return nil })
	if err == nil || !strings.Contains(err.Error(), "the batch after seq 1, at byte offset "+strconv.Itoa(ends[0])+", is broken") {
		t.Fatalf("err=%v, want the broken batch after seq 1 named", err)
	}
}
