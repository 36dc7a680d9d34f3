package hl7

import (
	"net"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"
)

func newBare(t *testing.T, cfg Config, sink *fakeSink, rep *fakeReporter) *Collector {
	t.Helper()
	cfg.Timezone = "UTC"
	c, err := New(cfg, sink, rep, testTokenizer(t), nil)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// TestACKWaitsForSlowCommitFakeClock: with a commit that takes 10 s (fake clock), the
// ACK is not written one instant earlier.
func TestACKWaitsForSlowCommitFakeClock(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		sink := &fakeSink{commitDelay: 10 * time.Second}
		c := newBare(t, Config{}, sink, &fakeReporter{})
		server, client := net.Pipe()
		defer client.Close()
		done := make(chan struct{})
		go func() {
			defer close(done)
			defer server.Close()
			c.handleConn(t.Context(), server, "192.0.2.1")
		}()
		var acked atomic.Bool
		got := make(chan string, 1)
		go func() {
			cl := newClient(client)
			b, err := cl.fr.Next() // no deadline: the fake clock must not race the commit
			acked.Store(true)
			if err != nil {
				got <- err.Error()
				return
			}
			m, err := Parse(b)
			if err != nil {
				got <- err.Error()
				return
			}
			got <- ackCode(m)
		}()
		if _, err := client.Write(frame(adt("SLOW"))); err != nil {
			t.Fatal(err)
		}
		time.Sleep(10*time.Second - time.Millisecond)
		synctest.Wait()
		if acked.Load() || sink.len() != 0 {
			t.Fatal("ACK before the commit")
		}
		time.Sleep(time.Millisecond)
		synctest.Wait()
		if !acked.Load() || sink.len() != 1 {
			t.Fatal("no ACK after the commit")
		}
		if code := <-got; code != AckAccept {
			t.Fatalf("code=%s, want AA", code)
		}
		client.Close()
		<-done
	})
}

func TestIdleTimeoutFakeClock(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		sink := &fakeSink{}
		c := newBare(t, Config{IdleTimeout: time.Minute}, sink, &fakeReporter{})
		server, client := net.Pipe()
		defer client.Close()
		done := make(chan struct{})
		go func() {
			defer close(done)
			defer server.Close()
			c.handleConn(t.Context(), server, "192.0.2.1")
		}()
		cl := newClient(client)
		cl.send(t, adt("I1"))
		cl.readACK(t)
		time.Sleep(59 * time.Second)
		synctest.Wait()
		select {
		case <-done:
			t.Fatal("connection closed before the idle timeout")
		default:
		}
		time.Sleep(2 * time.Second)
		synctest.Wait()
		<-done
	})
}
