package connset

import (
	"net"
	"testing"
)

func TestSet(t *testing.T) {
	s := New(2)
	a1, b1 := net.Pipe()
	a2, b2 := net.Pipe()
	a3, b3 := net.Pipe()
	defer b1.Close()
	defer b2.Close()
	defer b3.Close()
	for i, tt := range []struct {
		conn net.Conn
		want Result
	}{{a1, OK}, {a2, OK}, {a3, Full}} {
		if got := s.Track(tt.conn); got != tt.want {
			t.Fatalf("track %d: %v, want %v", i, got, tt.want)
		}
	}
	if got, want := s.Open(), int64(2); got != want {
		t.Fatalf("open=%d, want %d", got, want)
	}
	s.Untrack(a1)
	if got := s.Track(a3); got != OK {
		t.Fatalf("after untrack: %v, want OK", got)
	}
	s.CloseAll()
	if _, err := b2.Write([]byte("x")); err == nil {
		t.Fatal("CloseAll left a connection open")
	}
	if got := s.Track(a1); got != Closing {
		t.Fatalf("after CloseAll: %v, want Closing", got)
	}
}
