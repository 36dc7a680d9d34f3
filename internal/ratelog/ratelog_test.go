package ratelog

import (
	"testing"
	"time"
)

func TestAllow(t *testing.T) {
	var l Limiter
	t0 := time.Unix(1000, 0)
	steps := []struct {
		key        string
		at         time.Duration
		ok         bool
		suppressed int
	}{
		{"a", 0, true, 0},
		{"a", time.Second, false, 0},
		{"b", time.Second, true, 0},
		{"a", 2 * time.Second, false, 0},
		{"a", Every + time.Second, true, 2},
		{"a", Every + 2*time.Second, false, 0},
	}
	for i, s := range steps {
		ok, n := l.Allow(s.key, t0.Add(s.at))
		if ok != s.ok || n != s.suppressed {
			t.Fatalf("step %d: ok=%v suppressed=%d, want %v %d", i, ok, n, s.ok, s.suppressed)
		}
	}
}
