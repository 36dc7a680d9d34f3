package backoff

import (
	"context"
	"errors"
	"testing"
	"testing/synctest"
	"time"
)

var errDown = errors.New("down")

func TestNextGrowsAndCaps(t *testing.T) {
	tests := []struct {
		name string
		r    float64
		want []time.Duration
	}{
		{"no jitter (factor 1)", 0.5, []time.Duration{1 * time.Second, 2 * time.Second, 4 * time.Second, 8 * time.Second, 10 * time.Second, 10 * time.Second}},
		{"lowest jitter (factor 0.5)", 0, []time.Duration{500 * time.Millisecond, 1 * time.Second, 2 * time.Second, 4 * time.Second, 5 * time.Second, 5 * time.Second}},
		{"jitter above 1 is capped (factor 1.25)", 0.75, []time.Duration{1250 * time.Millisecond, 2500 * time.Millisecond, 5 * time.Second, 10 * time.Second, 10 * time.Second}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := &Backoff{Min: time.Second, Max: 10 * time.Second, Rand: func() float64 { return tt.r }}
			for i, want := range tt.want {
				if got := b.Next(); got != want {
					t.Fatalf("delay %d=%v, want %v", i, got, want)
				}
			}
			if got, want := b.Failures(), len(tt.want); got != want {
				t.Fatalf("failures=%d, want %d", got, want)
			}
		})
	}
}

func TestDefaultsAndManyFailures(t *testing.T) {
	b := &Backoff{Rand: func() float64 { return 0.5 }}
	if got, want := b.Next(), DefaultMin; got != want {
		t.Fatalf("first=%v, want %v", got, want)
	}
	for range 1000 { // no overflow after many failures
		b.Next()
	}
	if got, want := b.Next(), DefaultMax; got != want {
		t.Fatalf("after 1000 failures=%v, want %v", got, want)
	}
}

func TestJitterStaysInRange(t *testing.T) {
	b := New(100*time.Millisecond, time.Hour)
	for i := range 200 {
		b.Reset()
		for range i % 5 {
			b.Next()
		}
		base := 100 * time.Millisecond << (i % 5)
		if got := b.Next(); got < base/2 || got >= base*3/2 {
			t.Fatalf("delay=%v, want in [%v, %v)", got, base/2, base*3/2)
		}
	}
}

// TestBackOffSleeps runs under synctest: the fake clock shows exactly how long each
// BackOff slept, and that a reset starts again at Min.
func TestBackOffSleeps(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := &Backoff{Min: time.Second, Max: 4 * time.Second, Rand: func() float64 { return 0.5 }}
		ctx := t.Context()
		for _, want := range []time.Duration{time.Second, 2 * time.Second, 4 * time.Second, 4 * time.Second} {
			start := time.Now()
			if err := b.BackOff(ctx, errDown); err != nil {
				t.Fatalf("BackOff: %v", err)
			}
			if got := time.Since(start); got != want {
				t.Fatalf("slept %v, want %v", got, want)
			}
		}
		start := time.Now()
		if err := b.BackOff(ctx, nil); err != nil {
			t.Fatalf("BackOff(nil): %v", err)
		}
		if got := time.Since(start); got != 0 {
			t.Fatalf("BackOff(nil) slept %v, want 0", got)
		}
		if got, want := b.Failures(), 0; got != want {
			t.Fatalf("failures after success=%d, want %d", got, want)
		}
		start = time.Now()
		if err := b.BackOff(ctx, errDown); err != nil {
			t.Fatal(err)
		}
		if got, want := time.Since(start), time.Second; got != want {
			t.Fatalf("after reset slept %v, want %v", got, want)
		}
	})
}

func TestBackOffReturnsOnCancel(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := &Backoff{Min: time.Minute, Max: time.Hour, Rand: func() float64 { return 0.5 }}
		ctx, cancel := context.WithCancel(t.Context())
		done := make(chan error, 1)
		start := time.Now()
		go func() { done <- b.BackOff(ctx, errDown) }()
		time.Sleep(10 * time.Second)
		cancel()
		synctest.Wait()
		select {
		case err := <-done:
			if !errors.Is(err, context.Canceled) {
				t.Fatalf("err=%v, want context.Canceled", err)
			}
		default:
			t.Fatal("BackOff still sleeping after cancel")
		}
		if got, want := time.Since(start), 10*time.Second; got != want {
			t.Fatalf("returned after %v, want %v", got, want)
		}
	})
}
