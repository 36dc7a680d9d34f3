package syslog

import (
	"context"
	"fmt"
	"net"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/edgeaudit/edgeaudit/audit"
)

// The stop-in-a-burst tests of issue 6 item 1: after cancellation, every message a
// sender wrote is either appended or counted, exactly (appended + counted == sent), and
// what was appended is a prefix of what was sent, in order.

// slowSink is a fakeSink that pauses every `every` appends, so that a fast sender builds
// a backlog in the socket buffers, as a busy spool does.
type slowSink struct {
	fakeSink
	every int64
	pause time.Duration
	n     atomic.Int64
}

func (s *slowSink) Append(ctx context.Context, e *audit.Event, done func(error)) error {
	if s.n.Add(1)%s.every == 0 {
		time.Sleep(s.pause)
	}
	return s.fakeSink.Append(ctx, e, done)
}

// runUntil runs c until the returned stop is called; stop cancels and waits for Run.
func runUntil(t *testing.T, c *Collector) (stop func() error) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- c.Run(ctx) }()
	select {
	case <-c.Ready():
	case err := <-errc:
		t.Fatalf("Run: %v", err)
	}
	var stopped bool
	stop = func() error {
		if stopped {
			return nil
		}
		stopped = true
		cancel()
		select {
		case err := <-errc:
			return err
		case <-time.After(30 * time.Second):
			t.Fatal("Run did not return 30s after cancel")
			return nil
		}
	}
	t.Cleanup(func() { stop() })
	return stop
}

// checkPrefix asserts that the sink holds messages 0..len-1 in order.
func checkPrefix(t *testing.T, events []audit.Event) {
	t.Helper()
	for i, e := range events {
		n, err := strconv.Atoi(strings.TrimPrefix(e.Message, "message "))
		if err != nil || n != i {
			t.Fatalf("event %d is %q, want message %d: the stored events are not a prefix of the sent ones", i, e.Message, i)
		}
	}
}

func TestDrainTCPBurst(t *testing.T) {
	for _, tt := range []struct {
		name   string
		drain  time.Duration
		every  int64
		pause  time.Duration
		unread bool // the budget is too short: some must be counted, not stored
	}{
		{"drained into the sink", 3 * time.Second, 2000, time.Millisecond, false},
		{"budget spent, the rest counted", 50 * time.Millisecond, 200, 5 * time.Millisecond, true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			const sent = 50_000
			sink, rep := &slowSink{every: tt.every, pause: tt.pause}, &fakeReporter{}
			cfg := Config{TCP: "127.0.0.1:0"}
			setDrainTimeout(&cfg, tt.drain)
			c, err := New(cfg, sink, rep, nil)
			if err != nil {
				t.Fatal(err)
			}
			stop := runUntil(t, c)
			conn, err := net.Dial("tcp", c.TCPAddr().String())
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			var buf []byte
			for i := range sent {
				buf = fmt.Appendf(buf, "%s", octet(msg5424(i)))
			}
			// One big write: it returns once the kernel holds every byte.
			if _, err := conn.Write(buf); err != nil {
				t.Fatal(err)
			}
			atStop := sink.len()
			if err := stop(); err != nil {
				t.Fatalf("Run: %v", err)
			}
			stored := sink.len()
			counted := rep.getLost("tcp/"+LossShutdown) + rep.getLost("tcp/shutdown_unread")
			t.Logf("sent %d, stored %d (%d at the stop), counted %d", sent, stored, atStop, counted)
			if got := uint64(stored) + counted; got != sent {
				t.Fatalf("stored %d + counted %d = %d, want %d sent", stored, counted, got, sent)
			}
			checkPrefix(t, sink.decoded(t))
			if tt.unread {
				prefix := 0
				for i := range stored {
					prefix += len(octet(msg5424(i)))
				}
				checkUnread(t, c, rep, sent-stored, int64(len(buf)-prefix))
			} else if stored != sent {
				t.Logf("the drain did not finish within %v on this machine; the count still balances", tt.drain)
			}
		})
	}
}

// TestDrainUDP: datagrams queued in the socket when the stop comes are appended, not
// dropped with the socket.
func TestDrainUDP(t *testing.T) {
	const sent = 200
	sink, rep := &fakeSink{}, &fakeReporter{}
	c, err := New(Config{UDP: "127.0.0.1:0"}, sink, rep, nil)
	if err != nil {
		t.Fatal(err)
	}
	block := make(chan struct{})
	sink.setBlock(block) // the first datagram's append waits; the rest queue in the socket
	stop := runUntil(t, c)
	conn, err := net.Dial("udp", c.UDPAddr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	for i := range sent {
		if _, err := fmt.Fprint(conn, msg5424(i)); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, "the first datagram read", func() bool { return c.Stats().Datagrams >= 1 })
	time.Sleep(100 * time.Millisecond) // the rest are in the socket's queue
	go func() {
		time.Sleep(200 * time.Millisecond)
		sink.setBlock(nil)
		close(block)
	}()
	if err := stop(); err != nil {
		t.Fatalf("Run: %v", err)
	}
	stored := sink.len()
	counted := rep.getLost("udp/"+LossShutdown) + rep.getLost("udp/shutdown_unread") + rep.getLost("udp/"+LossKernelDrop)
	if got := uint64(stored) + counted; got != sent {
		t.Fatalf("stored %d + counted %d = %d, want %d sent", stored, counted, got, sent)
	}
	checkPrefix(t, sink.decoded(t))
}
