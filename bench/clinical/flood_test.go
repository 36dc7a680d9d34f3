package clinical

import (
	"bufio"
	"fmt"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// BenchmarkHL7AckUnderSyslogFlood: one HL7 sender at 100 msgs/s while 4 syslog TCP
// connections send as fast as the appliance takes them. It reports the HL7 ACK latency
// (p50, p99, max) and the syslog rate meanwhile: an acknowledging sender must not wait
// behind bulk syslog (issue 11: p99 at most 20 ms). b.N is the number of HL7 messages.
//
//	go test ./bench/clinical -run '^$' -bench HL7AckUnderSyslogFlood -benchtime 300x -count 3
func BenchmarkHL7AckUnderSyslogFlood(b *testing.B) {
	s := startDaemon(b)
	mllp, _ := s.d.ClinicalAddrs()
	_, tcp, _ := s.d.SyslogAddrs()

	stop := make(chan struct{})
	var sent atomic.Int64
	var wg sync.WaitGroup
	for c := range 4 {
		conn, err := net.Dial("tcp", tcp.String())
		if err != nil {
			b.Fatal(err)
		}
		defer conn.Close()
		wg.Go(func() {
			w := bufio.NewWriterSize(conn, 64<<10)
			for i := 0; ; i++ {
				select {
				case <-stop:
					w.Flush()
					return
				default:
				}
				msg := fmt.Sprintf("<134>1 2026-12-02T08:00:00.000Z modality%d flood - - - bulk syslog message %d of connection %d, padded to a typical audit line length", c, i, c)
				fmt.Fprintf(w, "%d %s", len(msg), msg)
				sent.Add(1)
			}
		})
	}
	// Let the flood fill the appliance's queues before measuring.
	time.Sleep(time.Second)

	hc, err := net.Dial("tcp", mllp.String())
	if err != nil {
		b.Fatal(err)
	}
	defer hc.Close()
	r := bufio.NewReader(hc)
	lat := make([]time.Duration, 0, b.N)
	before := s.metrics(b)
	start := time.Now()
	b.ResetTimer()
	for i := range b.N {
		due := start.Add(time.Duration(i) * 10 * time.Millisecond) // 100 msgs/s
		time.Sleep(time.Until(due))
		t0 := time.Now()
		hc.SetDeadline(t0.Add(30 * time.Second))
		if _, err := hc.Write(adtA08(0, i)); err != nil {
			b.Fatal(err)
		}
		if _, err := r.ReadBytes(0x1c); err != nil {
			b.Fatal(err)
		}
		r.ReadByte() // the trailing 0x0d
		lat = append(lat, time.Since(t0))
	}
	b.StopTimer()
	elapsed := time.Since(start)
	after := s.metrics(b)
	close(stop)
	wg.Wait()
	slices.Sort(lat)
	q := func(p float64) float64 { return float64(lat[int(p*float64(len(lat)-1))].Microseconds()) / 1000 }
	b.ReportMetric(q(0.5), "p50-ms")
	b.ReportMetric(q(0.99), "p99-ms")
	b.ReportMetric(float64(lat[len(lat)-1].Microseconds())/1000, "max-ms")
	syslogRate := (after["edgeaudit_spool_events_committed_total"] - before["edgeaudit_spool_events_committed_total"] - float64(b.N)) / elapsed.Seconds()
	b.ReportMetric(syslogRate, "syslog-events/s")
}
