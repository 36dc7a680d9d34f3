package hl7

import (
	"testing"
	"time"

	"github.com/edgeaudit/edgeaudit/audit"
)

func BenchmarkParseADT(b *testing.B) {
	raw := []byte(adt("BENCH1"))
	tok := testTokenizer(b)
	b.SetBytes(int64(len(raw)))
	b.ReportAllocs()
	for b.Loop() {
		m, err := Parse(raw)
		if err != nil {
			b.Fatal(err)
		}
		var ev audit.Event
		Map(&ev, m, tok, time.UTC, fixedNow)
	}
}

// BenchmarkSocket measures end to end over one connection: frame, parse, map, append,
// commit (the fake confirms at once), ACK, in lock step as an MLLP sender works.
func BenchmarkSocket(b *testing.B) {
	c := startCollector(b, Config{}, &fakeSink{}, &fakeReporter{})
	cl := dialMLLP(b, c.Addr())
	msg := frame(adt("BENCH1"))
	b.ReportAllocs()
	start := time.Now()
	for b.Loop() {
		if _, err := cl.conn.Write(msg); err != nil {
			b.Fatal(err)
		}
		if _, err := cl.fr.Next(); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "msgs/s")
}
