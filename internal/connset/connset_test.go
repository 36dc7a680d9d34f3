package connset

import (
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"testing"
	"testing/synctest"
	"time"
)

// pipe returns the server end of a net.Pipe; the client end is closed at cleanup.
func pipe(t testing.TB) (server, client net.Conn) {
	t.Helper()
	a, b := net.Pipe()
	t.Cleanup(func() { a.Close(); b.Close() })
	return a, b
}

// step is one action on a set in TestTrack: wait, then track a connection from ip (or
// mark the connection of an earlier step busy/waiting).
type step struct {
	wait    time.Duration
	ip      string
	busy    int // 1-based index of an earlier step to mark busy instead of tracking
	want    Result
	evicted int // 1-based index of the step whose connection is evicted, 0 for none
}

func TestTrack(t *testing.T) {
	for _, tt := range []struct {
		name  string
		lim   Limits
		steps []step
	}{
		{
			name: "refuses when full and nothing idle long enough",
			lim:  Limits{Max: 2, MinIdle: time.Second},
			steps: []step{
				{ip: "a", want: OK}, {ip: "b", want: OK},
				{wait: 500 * time.Millisecond, ip: "c", want: Full},
			},
		},
		{
			name: "evicts the longest idle when full",
			lim:  Limits{Max: 3, MinIdle: time.Second},
			steps: []step{
				{ip: "a", want: OK},
				{wait: time.Second, ip: "b", want: OK},
				{wait: time.Second, ip: "c", want: OK},
				{wait: time.Second, ip: "d", want: OK, evicted: 1},
				{ip: "e", want: OK, evicted: 2},
				{ip: "f", want: OK, evicted: 3}, // c has been idle exactly MinIdle
				{ip: "g", want: Full},           // d, e and f were just accepted
			},
		},
		{
			name: "a busy connection is never evicted",
			lim:  Limits{Max: 2, MinIdle: time.Second},
			steps: []step{
				{ip: "a", want: OK},
				{ip: "b", want: OK},
				{busy: 1},
				{wait: 5 * time.Second, ip: "c", want: OK, evicted: 2},
				{wait: 5 * time.Second, ip: "d", want: OK, evicted: 4},
			},
		},
		{
			name: "per-IP limit evicts only that IP's own longest idle",
			lim:  Limits{Max: 10, MaxPerIP: 2, MinIdle: time.Second},
			steps: []step{
				{ip: "x", want: OK},
				{wait: time.Second, ip: "a", want: OK},
				{wait: time.Second, ip: "a", want: OK},
				{wait: time.Second, ip: "a", want: OK, evicted: 2}, // x is idler, but not a's
			},
		},
		{
			name: "per-IP limit refuses when the IP's own are active",
			lim:  Limits{Max: 10, MaxPerIP: 2, MinIdle: time.Second},
			steps: []step{
				{ip: "x", want: OK},
				{wait: 5 * time.Second, ip: "a", want: OK},
				{ip: "a", want: OK},
				{wait: 500 * time.Millisecond, ip: "a", want: FullPerIP},
				{ip: "b", want: OK}, // other IPs are not affected
			},
		},
		{
			name: "MaxPerIP zero means Max",
			lim:  Limits{Max: 2, MinIdle: time.Hour},
			steps: []step{
				{ip: "a", want: OK}, {ip: "a", want: OK}, {ip: "a", want: Full},
			},
		},
	} {
		t.Run(tt.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				s := New(tt.lim)
				conns := make([]*Conn, len(tt.steps)+1)
				for i, st := range tt.steps {
					time.Sleep(st.wait)
					if st.busy > 0 {
						conns[st.busy].Busy()
						continue
					}
					srv, _ := pipe(t)
					c, adm := s.Track(srv, st.ip, "")
					if got, want := adm.Result, st.want; got != want {
						t.Fatalf("step %d: result=%v, want %v", i+1, got, want)
					}
					if (c != nil) != (st.want == OK) {
						t.Fatalf("step %d: conn=%v for result %v", i+1, c, adm.Result)
					}
					conns[i+1] = c
					var want *Conn
					if st.evicted > 0 {
						want = conns[st.evicted]
					}
					if got := adm.Evicted; got != want {
						t.Fatalf("step %d: evicted=%p, want step %d (%p)", i+1, got, st.evicted, want)
					}
					if want != nil {
						if !want.Evicted() {
							t.Fatalf("step %d: evicted conn does not say so", i+1)
						}
						if adm.EvictedIdle < s.Limits().MinIdle {
							t.Fatalf("step %d: evicted after %v idle, below MinIdle", i+1, adm.EvictedIdle)
						}
						if _, err := want.Conn.Write([]byte("x")); err == nil {
							t.Fatalf("step %d: evicted conn still open", i+1)
						}
					}
				}
			})
		})
	}
}

func TestCloseAndCount(t *testing.T) {
	s := New(Limits{Max: 2})
	a, _ := pipe(t)
	b, _ := pipe(t)
	ca, _ := s.Track(a, "1", "")
	cb, _ := s.Track(b, "1", "")
	if got, want := s.Open(), int64(2); got != want {
		t.Fatalf("open=%d, want %d", got, want)
	}
	if err := ca.Close(); err != nil {
		t.Fatal(err)
	}
	if err := ca.Close(); err != nil { // idempotent
		t.Fatal(err)
	}
	if got, want := s.Open(), int64(1); got != want {
		t.Fatalf("after close: open=%d, want %d", got, want)
	}
	conns := s.Shutdown()
	if len(conns) != 1 || conns[0] != cb {
		t.Fatalf("Shutdown returned %v, want [cb]", conns)
	}
	c3, _ := pipe(t)
	if _, adm := s.Track(c3, "2", ""); adm.Result != Closing {
		t.Fatalf("after Shutdown: %v, want closing", adm.Result)
	}
	s.CloseAll()
	if _, err := b.Write([]byte("x")); err == nil {
		t.Fatal("CloseAll left a connection open")
	}
	if err := cb.Close(); err != nil {
		t.Fatalf("Close after CloseAll: %v", err)
	}
	if got := s.Open(); got != 0 {
		t.Fatalf("open=%d after all closed", got)
	}
}

// TestConcurrent tracks, evicts and closes from many goroutines; run under -race. The
// counts must balance: every Track that said OK is one Close or one eviction.
func TestConcurrent(t *testing.T) {
	s := New(Limits{Max: 8, MaxPerIP: 3, MinIdle: -1})
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			ip := string(rune('a' + g%4))
			for range 200 {
				srv, cl := net.Pipe()
				c, _ := s.Track(srv, ip, "")
				if c == nil {
					srv.Close()
					cl.Close()
					continue
				}
				c.Waiting()
				_ = c.Idle()
				c.Busy()
				c.Waiting()
				c.Close()
				cl.Close()
			}
		})
	}
	wg.Wait()
	if got := s.Open(); got != 0 {
		t.Fatalf("open=%d after every goroutine closed its conns", got)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.conns) != 0 || len(s.perIP) != 0 {
		t.Fatalf("leftovers: %d conns, per-IP %v", len(s.conns), s.perIP)
	}
}

// TestDeadlineReaderIdle: a connection reading through DeadlineReader is idle while it
// waits and busy after bytes came.
func TestDeadlineReaderIdle(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		s := New(Limits{Max: 1})
		srv, cl := pipe(t)
		c, _ := s.Track(srv, "a", "")
		time.Sleep(3 * time.Second)
		if got, want := c.Idle(), 3*time.Second; got != want {
			t.Fatalf("idle since accept=%v, want %v", got, want)
		}
		r := &DeadlineReader{Conn: c.Conn, Timeout: time.Minute, Track: c}
		go cl.Write([]byte("hello"))
		buf := make([]byte, 5)
		if _, err := io.ReadFull(r, buf); err != nil {
			t.Fatal(err)
		}
		if got := c.Idle(); got != 0 {
			t.Fatalf("idle after a read=%v, want 0 (busy)", got)
		}
		go func() {
			time.Sleep(2 * time.Second)
			if got, want := c.Idle(), 2*time.Second; got != want {
				t.Errorf("idle while blocked in read=%v, want %v", got, want)
			}
			cl.Write([]byte("x"))
		}()
		if _, err := r.Read(buf); err != nil {
			t.Fatal(err)
		}
	})
}

// TestDrainWakesReader: a reader blocked for its idle timeout stops waiting for it when
// the drain begins: it reads what comes within Quiet, then reports the timeout.
func TestDrainWakesReader(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		s := New(Limits{Max: 1})
		srv, cl := pipe(t)
		c, _ := s.Track(srv, "a", "")
		d := &Drain{Quiet: 100 * time.Millisecond}
		r := &DeadlineReader{Conn: c.Conn, Timeout: time.Hour, Track: c, Drain: d}
		start := time.Now()
		type result struct {
			n   int
			err error
			at  time.Duration
		}
		done := make(chan result, 1)
		read := func() {
			n, err := r.Read(make([]byte, 8))
			done <- result{n, err, time.Since(start)}
		}
		go read()
		time.Sleep(time.Second)
		synctest.Wait()
		d.Begin(time.Now().Add(3*time.Second), s.Shutdown())
		// Bytes that come within Quiet of the wake-up are read, not lost to it.
		time.Sleep(50 * time.Millisecond)
		go cl.Write([]byte("late"))
		if got := <-done; got.n != 4 || got.err != nil {
			t.Fatalf("read across Begin: n=%d err=%v, want 4 bytes", got.n, got.err)
		}
		go read()
		got := <-done
		if !errors.Is(got.err, os.ErrDeadlineExceeded) {
			t.Fatalf("read in a quiet drain: %v, want a deadline error", got.err)
		}
		if want := time.Second + 150*time.Millisecond; got.at != want {
			t.Fatalf("quiet read ended at %v, want %v (Quiet after the last bytes)", got.at, want)
		}
		if d.Over(time.Now()) {
			t.Fatal("drain over before its end")
		}
		time.Sleep(3 * time.Second)
		if !d.Over(time.Now()) {
			t.Fatal("drain not over after its end")
		}
	})
}

// TestDrainQuietZero: with Quiet 0 (MLLP), every read after Begin fails at once.
func TestDrainQuietZero(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		srv, cl := pipe(t)
		d := &Drain{}
		r := &DeadlineReader{Conn: srv, Timeout: time.Hour, Drain: d}
		done := make(chan error, 1)
		go func() {
			_, err := r.Read(make([]byte, 1))
			done <- err
		}()
		synctest.Wait()
		d.Begin(time.Now().Add(time.Second), nil)
		srv.SetReadDeadline(time.Now())
		if err := <-done; !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("read after Begin: %v, want a deadline error", err)
		}
		go cl.Write([]byte("x"))
		synctest.Wait()
		if _, err := r.Read(make([]byte, 1)); !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("read after Begin with bytes queued: %v, want a deadline error", err)
		}
	})
}

func TestListener(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	s := New(Limits{Max: 4, MaxPerIP: 1, MinIdle: time.Hour})
	type refusal struct{ ip, reason string }
	refusals := make(chan refusal, 4)
	l := Listener(ln, s, func(ip, reason string) { refusals <- refusal{ip, reason} })
	accepted := make(chan net.Conn, 4)
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				close(accepted)
				return
			}
			accepted <- c
		}
	}()
	d1, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer d1.Close()
	c1 := <-accepted
	if _, ok := c1.(*Conn); !ok {
		t.Fatalf("Accept returned %T, want *Conn", c1)
	}
	d2, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer d2.Close()
	if got, want := <-refusals, (refusal{"127.0.0.1", ReasonTooManyPerIP}); got != want {
		t.Fatalf("refusal=%v, want %v", got, want)
	}
	// The refused connection is closed: its peer reads EOF.
	if _, err := d2.Read(make([]byte, 1)); err == nil {
		t.Fatal("refused connection still open")
	}
	if got, want := s.Open(), int64(1); got != want {
		t.Fatalf("open=%d, want %d", got, want)
	}
	c1.Close()
	if got := s.Open(); got != 0 {
		t.Fatalf("open=%d after Close", got)
	}
}

func TestPeerIP(t *testing.T) {
	for _, tt := range []struct {
		addr net.Addr
		want string
	}{
		{&net.TCPAddr{IP: net.ParseIP("::ffff:10.0.0.1"), Port: 5}, "10.0.0.1"},
		{&net.TCPAddr{IP: net.ParseIP("::1"), Port: 5}, "::1"},
		{nil, ""},
		{&net.UnixAddr{Name: "/x", Net: "unix"}, "/x"},
	} {
		if got := PeerIP(tt.addr); got != tt.want {
			t.Errorf("PeerIP(%v)=%q, want %q", tt.addr, got, tt.want)
		}
	}
}
