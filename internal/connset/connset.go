// Package connset tracks a listener's open connections: it enforces the connection
// limit and lets shutdown close every connection, so that a collector's Run can return
// only after all of its connection goroutines have ended.
package connset

import (
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// Result of Track.
type Result int

// Track results.
const (
	OK      Result = iota // tracked; call Untrack when done
	Full                  // the limit is reached; close the connection
	Closing               // shutdown has begun; close the connection
)

// Set is a bounded set of connections. Its zero value is not usable; use New.
type Set struct {
	max     int
	mu      sync.Mutex
	conns   map[net.Conn]struct{}
	closing bool
	open    atomic.Int64
}

// New returns a set that holds at most max connections.
func New(max int) *Set { return &Set{max: max, conns: make(map[net.Conn]struct{})} }

// Track adds conn unless the set is full or closing.
func (s *Set) Track(conn net.Conn) Result {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closing {
		return Closing
	}
	if len(s.conns) >= s.max {
		return Full
	}
	s.conns[conn] = struct{}{}
	s.open.Add(1)
	return OK
}

// Untrack closes conn and removes it.
func (s *Set) Untrack(conn net.Conn) {
	conn.Close()
	s.mu.Lock()
	delete(s.conns, conn)
	s.mu.Unlock()
	s.open.Add(-1)
}

// CloseAll refuses new connections and closes the tracked ones, which ends their reads.
func (s *Set) CloseAll() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closing = true
	for conn := range s.conns {
		conn.Close()
	}
}

// Open is the number of tracked connections.
func (s *Set) Open() int64 { return s.open.Load() }

// DeadlineReader renews the read deadline before each read, which makes the timeout an
// idle timeout: a slow sender that keeps sending is never cut off, a silent one is.
type DeadlineReader struct {
	Conn    net.Conn
	Timeout time.Duration
}

func (d *DeadlineReader) Read(p []byte) (int, error) {
	if err := d.Conn.SetReadDeadline(time.Now().Add(d.Timeout)); err != nil {
		return 0, err
	}
	return d.Conn.Read(p)
}
