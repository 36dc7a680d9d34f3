package syslog

import (
	"fmt"
	"net"
	"testing"
	"testing/synctest"
	"time"
)

// TestDrainWakesIdleConnection: a connection waiting for its sender when the drain
// begins does not wait for its idle timeout: it takes what arrives within drainQuiet,
// then ends by itself, well before the drain budget.
func TestDrainWakesIdleConnection(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		sink, rep := &fakeSink{}, &fakeReporter{}
		c := newBare(t, Config{}, sink, rep)
		server, client := net.Pipe()
		defer client.Close()
		tc, _ := c.conns.Track(server, "192.0.2.1", "tcp")
		done := make(chan struct{})
		go func() {
			defer close(done)
			defer tc.Close()
			c.handleConn(t.Context(), tc, transportTCP, "192.0.2.1")
		}()
		fmt.Fprint(client, octet(msg5424(0)))
		time.Sleep(time.Minute) // idle, well inside the 5-minute idle timeout
		synctest.Wait()
		start := time.Now()
		c.drain.Begin(start.Add(c.cfg.DrainTimeout), c.conns.Shutdown())
		time.Sleep(drainQuiet / 2)
		fmt.Fprint(client, octet(msg5424(1))) // arrives during the drain: kept
		<-done
		if got, want := time.Since(start), drainQuiet/2+drainQuiet; got != want {
			t.Errorf("connection ended %v after the drain began, want %v (quiet after the last bytes)", got, want)
		}
		if got, want := sink.len(), 2; got != want {
			t.Errorf("events = %d, want %d", got, want)
		}
		if got, want := c.Stats().Drained, uint64(1); got != want {
			t.Errorf("Drained = %d, want %d", got, want)
		}
		if got := len(rep.getRejects()); got != 0 {
			t.Errorf("rejects = %+v, want none", rep.getRejects())
		}
	})
}

// TestDrainBudgetSpentCounts: when the budget is spent, what the connection has queued
// is counted (frames and bytes after the last stored frame), not stored.
func TestDrainBudgetSpentCounts(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		sink, rep := &fakeSink{}, &fakeReporter{}
		c := newBare(t, Config{}, sink, rep)
		server, client := net.Pipe()
		defer client.Close()
		tc, _ := c.conns.Track(server, "192.0.2.1", "tcp")
		block := make(chan struct{})
		sink.setBlock(block) // the first append waits: backpressure
		done := make(chan struct{})
		go func() {
			defer close(done)
			defer tc.Close()
			c.handleConn(t.Context(), tc, transportTCP, "192.0.2.1")
		}()
		var rest []byte
		for i := range 5 {
			rest = fmt.Appendf(rest, "%s", octet(msg5424(i)))
		}
		go client.Write(rest) // a pipe write returns once all of it was read
		synctest.Wait()
		c.drain.Begin(time.Now().Add(time.Second), c.conns.Shutdown())
		time.Sleep(time.Second)
		c.hardCancel() // the budget is spent while the first event still waits
		<-done
		if got := sink.len(); got != 0 {
			t.Fatalf("events = %d, want 0", got)
		}
		if got, want := rep.getLost("tcp/"+LossShutdown), uint64(1); got != want {
			t.Errorf("lost in hand = %d, want %d", got, want)
		}
		if got, want := rep.getLost("tcp/"+LossShutdownUnread), uint64(4); got != want {
			t.Errorf("lost unread = %d, want %d", got, want)
		}
		if got, want := c.Stats().UnreadBytes, uint64(len(rest)); got != want {
			t.Errorf("UnreadBytes = %d, want %d (everything after the last stored frame)", got, want)
		}
		close(block)
	})
}
