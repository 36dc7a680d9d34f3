package syslog

import (
	"context"
	"fmt"
	"io"
	"net"
	"testing"
	"testing/synctest"
	"time"
)

// newBare returns a collector that is not running, for tests that drive handleConn
// directly over net.Pipe, whose deadlines follow synctest's fake clock.
func newBare(t *testing.T, cfg Config, sink *fakeSink, rep *fakeReporter) *Collector {
	t.Helper()
	c, err := New(cfg, sink, rep, nil)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestIdleTimeoutFakeClock(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		sink, rep := &fakeSink{}, &fakeReporter{}
		c := newBare(t, Config{IdleTimeout: time.Minute}, sink, rep)
		server, client := net.Pipe()
		defer client.Close()
		done := make(chan struct{})
		go func() {
			defer close(done)
			defer server.Close()
			c.handleConn(t.Context(), server, transportTCP, "192.0.2.1")
		}()
		fmt.Fprint(client, octet(msg5424(1)))
		time.Sleep(59 * time.Second)
		synctest.Wait()
		select {
		case <-done:
			t.Fatal("connection closed before the idle timeout")
		default:
		}
		// Activity renews the deadline.
		fmt.Fprint(client, octet(msg5424(2)))
		time.Sleep(59 * time.Second)
		synctest.Wait()
		select {
		case <-done:
			t.Fatal("connection closed although it was active")
		default:
		}
		time.Sleep(2 * time.Second)
		synctest.Wait()
		<-done
		if got, want := sink.len(), 2; got != want {
			t.Errorf("events = %d, want %d", got, want)
		}
		if got := len(rep.getRejects()); got != 0 {
			t.Errorf("rejects = %d, want 0 (idle at a frame boundary is not a reject)", got)
		}
	})
}

// TestBackoffFakeClock checks the retry schedule while the sink refuses: 2 ms doubling,
// capped at 1 s, and that the event then arrives.
func TestBackoffFakeClock(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		sink, rep := &fakeSink{refuse: 12}, &fakeReporter{}
		c := newBare(t, Config{}, sink, rep)
		server, client := net.Pipe()
		defer client.Close()
		start := time.Now()
		done := make(chan struct{})
		go func() {
			defer close(done)
			defer server.Close()
			c.handleConn(t.Context(), server, transportTCP, "192.0.2.1")
		}()
		go fmt.Fprint(client, octet(msg5424(1)))
		for sink.len() == 0 {
			time.Sleep(time.Millisecond)
		}
		// 2+4+...+512 ms for ten retries, then 1 s and 1 s: the 13th append succeeds.
		want := time.Duration(2+4+8+16+32+64+128+256+512+1000+1000+1000) * time.Millisecond
		if got := time.Since(start); got < want || got > want+10*time.Millisecond {
			t.Errorf("event arrived after %v, want about %v", got, want)
		}
		if got, want := c.Stats().BackpressureWaits, uint64(12); got != want {
			t.Errorf("BackpressureWaits = %d, want %d", got, want)
		}
		client.Close()
		<-done
	})
}

// TestShutdownDuringBackpressure checks that a spent drain budget (the hard context)
// ends a connection that is waiting for the sink, and that the waiting event is reported
// lost. A cancelled ctx alone only begins the drain: the event is still retried.
func TestShutdownDuringBackpressure(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		sink, rep := &fakeSink{refuseAll: true}, &fakeReporter{}
		c := newBare(t, Config{}, sink, rep)
		server, client := net.Pipe()
		defer client.Close()
		ctx, cancel := context.WithCancel(t.Context())
		done := make(chan struct{})
		go func() {
			defer close(done)
			defer server.Close()
			c.handleConn(ctx, server, transportTCP, "192.0.2.1")
		}()
		go fmt.Fprint(client, octet(msg5424(1)))
		time.Sleep(10 * time.Second)
		cancel()
		time.Sleep(10 * time.Second)
		synctest.Wait()
		select {
		case <-done:
			t.Fatal("the connection gave up its event when only ctx was cancelled")
		default:
		}
		c.hardCancel()
		<-done
		if got, want := rep.getLost("tcp/"+LossShutdown), uint64(1); got != want {
			t.Errorf("lost = %d, want %d", got, want)
		}
		_, _ = io.Copy(io.Discard, client)
	})
}
