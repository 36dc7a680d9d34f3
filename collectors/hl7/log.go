package hl7

import (
	"sync"
	"time"
)

// Log attribute keys, in one place so that log queries stay stable. No key ever carries
// message content: only sizes, reasons, counts and peer addresses.
const (
	attrTransport  = "transport"
	attrAddr       = "addr"
	attrPeer       = "peer"
	attrReason     = "reason"
	attrSize       = "size"
	attrErr        = "err"
	attrCount      = "count"
	attrDuration   = "duration"
	attrSuppressed = "suppressed"
)

// logEvery is how often one kind of repeated message is logged at most.
const logEvery = 30 * time.Second

// limiter rate-limits repeated log lines per key, so a sender in a loop or a full spool
// cannot flood the journal; the next line that gets through says how many were dropped.
type limiter struct {
	mu   sync.Mutex
	keys map[string]*limitState
}

type limitState struct {
	last       time.Time
	suppressed int
}

// allow reports whether a line for key may be logged now, and how many were suppressed
// since the last one.
func (l *limiter) allow(key string, now time.Time) (ok bool, suppressed int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.keys == nil {
		l.keys = make(map[string]*limitState)
	}
	st := l.keys[key]
	if st == nil {
		if len(l.keys) >= 1024 {
			clear(l.keys) // keys include peer addresses; bound the memory
		}
		st = &limitState{}
		l.keys[key] = st
	} else if now.Sub(st.last) < logEvery {
		st.suppressed++
		return false, 0
	}
	st.last = now
	n := st.suppressed
	st.suppressed = 0
	return true, n
}
