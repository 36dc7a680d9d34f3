package pgstore_test

import (
	"context"
	"fmt"
	"os"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/edgeaudit/edgeaudit/internal/testpg"
	"github.com/edgeaudit/edgeaudit/receiver"
	"github.com/edgeaudit/edgeaudit/receiver/pgstore"
)

// BenchmarkAppend measures Append alone (verified entries, one goroutine) of 1000-event
// batches (events of about 300 bytes with patient, user and study tokens) on a cluster
// of its own with fsync on, as a receiver's commit claims durability: "copy" is the
// store's way (COPY of the event rows), "insert-batch" the alternative (a pgx.Batch of
// INSERTs). Reported: events/s and batches/s.
func BenchmarkAppend(b *testing.B) {
	const chainLen, perBatch = 16, 1000
	c := testpg.Start(b, testpg.Options{Fsync: true})
	s, err := pgstore.Open(b.Context(), c.DSN(), nil)
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	if err := s.Migrate(b.Context()); err != nil {
		b.Fatal(err)
	}
	if x := os.Getenv("PGSTORE_BENCH_SQL"); x != "" { // experiments: statements run after Migrate
		conn, err := pgx.Connect(b.Context(), c.DSN())
		if err != nil {
			b.Fatal(err)
		}
		if _, err := conn.Exec(b.Context(), x); err != nil {
			b.Fatal(err)
		}
		conn.Close(b.Context())
	}
	a := newAppliance(b, "s1", "d1")
	for seq := range chainLen {
		a.seal(b, fillEvents(perBatch, seq))
	}
	b.Logf("event size %d bytes, batch %d bytes", len(a.batches[0].Events[0]), len(a.batches[0].AppendWire(nil)))
	// Device names stay unique over every run of the sub-benchmarks on this cluster.
	round := 0
	for _, way := range []struct {
		name   string
		append func(context.Context, receiver.Entry) error
	}{
		{"copy", s.Append},
		{"insert-batch", func(ctx context.Context, e receiver.Entry) error { return pgstore.AppendInsertBatch(s, ctx, e) }},
	} {
		b.Run(way.name, func(b *testing.B) {
			round++
			i := 0
			device := func() string { return fmt.Sprintf("%s-%d", way.name, round) }
			cpu := startCPU(b, c.Dir)
			for b.Loop() {
				if i == chainLen { // the chain is used up: the same batches as another device
					round, i = round+1, 0
				}
				if err := way.append(b.Context(), entry(b, "s1", device(), a.batches[i], "receipt")); err != nil {
					b.Fatal(err)
				}
				i++
			}
			b.ReportMetric(float64(b.N*perBatch)/b.Elapsed().Seconds(), "events/s")
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "batches/s")
			cpu.report(b, b.N, perBatch)
			b.ReportMetric(0, "ns/op")
		})
	}
}
