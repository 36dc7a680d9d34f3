// Package ratelog rate-limits repeated log lines per key, so that a sender in a loop or a
// full spool cannot flood the journal; the next line that gets through says how many
// were dropped (STYLE: at most one per 30 s, recovery logged once).
package ratelog

import (
	"sync"
	"time"
)

// Every is how often one kind of repeated message is logged at most.
const Every = 30 * time.Second

// maxKeys bounds the memory: keys often include peer addresses.
const maxKeys = 1024

// Limiter is safe for concurrent use; its zero value is ready.
type Limiter struct {
	mu   sync.Mutex
	keys map[string]*state
}

type state struct {
	last       time.Time
	suppressed int
}

// Allow reports whether a line for key may be logged now, and how many were suppressed
// since the last one.
func (l *Limiter) Allow(key string, now time.Time) (ok bool, suppressed int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.keys == nil {
		l.keys = make(map[string]*state)
	}
	st := l.keys[key]
	if st == nil {
		if len(l.keys) >= maxKeys {
			clear(l.keys)
		}
		st = &state{}
		l.keys[key] = st
	} else if now.Sub(st.last) < Every {
		st.suppressed++
		return false, 0
	}
	st.last = now
	n := st.suppressed
	st.suppressed = 0
	return true, n
}
