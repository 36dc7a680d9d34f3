package uplink

import (
	"context"
	"fmt"
	"testing"
	"time"
)

// BenchmarkDrain measures how fast a backlog leaves the box: sealed batches of 100 events
// of 300 bytes (about 31 KiB each; and 1000 of 200 bytes), published over TLS to a local mosquitto, receipted by
// a fake central, until the source is acked to the last. Reported as batches/s and
// events/s, per window, against mosquitto with set_tcp_nodelay (backlog 2000) and with
// its default, Nagle on (backlog 200: each receipt round waits for a delayed ACK there).
func BenchmarkDrain(b *testing.B) {
	for _, bc := range []struct {
		broker       string
		noDelay      bool
		backlog      int
		events, size int
		windows      []int
	}{
		{"nodelay", true, 2000, 100, 300, []int{1, 8, 32}},
		{"default", false, 200, 100, 300, []int{8, 32}},
		// Full batches (batch.max_events 1000) of small events, about 215 KiB each.
		{"nodelay/events=1000", true, 200, 1000, 200, []int{8}},
	} {
		events, size := bc.events, bc.size
		br := startBrokerOpts(b, bc.noDelay)
		v := hmacVerifier{key: []byte("central")}
		src := newSource(b)
		src.add(b, "d1", bc.backlog, events, size)
		for _, window := range bc.windows {
			b.Run(fmt.Sprintf("broker=%s/window=%d", bc.broker, window), func(b *testing.B) {
				var total time.Duration
				for range b.N {
					b.StopTimer()
					ce := startCentral(b, br, v)
					src.mu.Lock()
					src.acked, src.acks = 0, nil
					src.mu.Unlock()
					cfg := testConfig(br, "d1", "d1", "pw1")
					cfg.Window = window
					u, err := New(cfg, src, v, nil, nil)
					if err != nil {
						b.Fatal(err)
					}
					ctx, cancel := context.WithCancel(b.Context())
					done := make(chan error, 1)
					b.StartTimer()
					start := time.Now()
					go func() { done <- u.Run(ctx) }()
					for src.ackedSeq() < uint64(bc.backlog) {
						time.Sleep(200 * time.Microsecond)
					}
					total += time.Since(start)
					b.StopTimer()
					cancel()
					<-done
					ce.stop()
					if got := u.Stats().Resends; got != 0 {
						b.Logf("%d resends", got)
					}
				}
				sec := total.Seconds()
				b.ReportMetric(float64(bc.backlog*b.N)/sec, "batches/s")
				b.ReportMetric(float64(bc.backlog*events*b.N)/sec, "events/s")
				b.ReportMetric(0, "ns/op")
			})
		}
	}
}
