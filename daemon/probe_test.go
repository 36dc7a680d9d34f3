package daemon

import (
	"errors"
	"net"
	"testing"

	"github.com/edgeaudit/edgeaudit/audit"
)

// A probe learns of its own message's commit, and only of that: the result the spool
// gives (nil or an error) reaches it, other events keep their callback untouched.
func TestProbeWatch(t *testing.T) {
	var w probeWatch
	ev := func(msg string) *audit.Event { return &audit.Event{Message: msg} }
	calls := 0
	done := func(error) { calls++ }

	if got := w.wrap(ev(probeText("aaaa")), done); got == nil {
		t.Fatal("wrap returned nil")
	}
	ch := w.expect("aaaa")
	other := w.wrap(ev("some message"), done)
	other(nil)
	select {
	case <-ch:
		t.Fatal("another event's commit reached the probe")
	default:
	}
	for _, tt := range []struct {
		name string
		err  error
	}{{"committed", nil}, {"refused", errors.New("spool full")}} {
		t.Run(tt.name, func(t *testing.T) {
			wrapped := w.wrap(ev(probeText("aaaa")), done)
			before := calls
			wrapped(tt.err)
			if calls != before+1 {
				t.Fatal("the sender's own callback was not called")
			}
			if got := <-ch; !errors.Is(got, tt.err) {
				t.Fatalf("probe got %v, want %v", got, tt.err)
			}
		})
	}
	w.forget("aaaa")
	if w.active.Load() != 0 {
		t.Fatalf("active=%d after forget", w.active.Load())
	}
	var nilWatch *probeWatch
	if nilWatch.wrap(ev(probeText("aaaa")), nil) != nil {
		t.Fatal("a nil watch changed the callback")
	}
}

func TestDialable(t *testing.T) {
	for _, tt := range []struct{ in, want string }{
		{"0.0.0.0:514", "127.0.0.1:514"},
		{"[::]:514", "[::1]:514"},
		{"127.0.0.1:5514", "127.0.0.1:5514"},
		{"192.0.2.7:514", "192.0.2.7:514"},
	} {
		a, err := net.ResolveTCPAddr("tcp", tt.in)
		if err != nil {
			t.Fatal(err)
		}
		if got := dialable(a); got != tt.want {
			t.Errorf("dialable(%s)=%s, want %s", tt.in, got, tt.want)
		}
	}
}
