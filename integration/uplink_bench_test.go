package integration

import (
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/edgeaudit/edgeaudit/ledger"
)

// BenchmarkEndToEndLatency measures, at a steady syslog load and default batching
// (max_age 2s, max_events 1000), the time from a message's write to the daemon's TCP
// socket until central's receipt covering its batch is published back on the device's
// ack topic: everything in between (commit, seal, publish over TLS, verify, store in
// the folder store, sign the receipt) on real parts. b.N is the number of messages,
// sent at latencyRate per second. Reports p50 and p99 in milliseconds.
func BenchmarkEndToEndLatency(b *testing.B) {
	const latencyRate = 1000
	c := startCentral(b)
	d := startDaemon(b, daemonConfig{Prepare: c.enrolledKey(), Extra: c.uplinkYAML("")})

	// The receipts as the appliance gets them: a watcher on the ack topic notes when
	// each seq is first covered.
	var mu sync.Mutex
	covered := map[uint64]time.Time{}
	var high uint64
	o := mqtt.NewClientOptions().AddBroker(c.broker.URL).SetClientID("latency-watch").SetUsername(centralUser).
		SetPassword(centralPass).SetTLSConfig(c.broker.ClientTLS()).SetAutoReconnect(false)
	w := mqtt.NewClient(o)
	if tok := w.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		b.Fatalf("watcher: %v", tok.Error())
	}
	defer w.Disconnect(100)
	ack := "edgeaudit/" + testSite + "/" + testDevice + "/ack"
	if tok := w.Subscribe(ack, 1, func(_ mqtt.Client, m mqtt.Message) {
		now := time.Now()
		rc, err := ledger.ParseReceipt(m.Payload())
		if err != nil {
			return
		}
		mu.Lock()
		for s := high + 1; s <= rc.Seq; s++ {
			covered[s] = now
		}
		high = max(high, rc.Seq)
		mu.Unlock()
	}); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		b.Fatalf("subscribe: %v", tok.Error())
	}

	sent := make([]int64, b.N) // unix ns of each message's write
	b.ResetTimer()
	conn := dial(b, "tcp", d.tcp)
	start := time.Now()
	for i := range b.N {
		if due := start.Add(time.Duration(i) * time.Second / latencyRate); time.Until(due) > 0 {
			time.Sleep(time.Until(due))
		}
		msg := fmt.Sprintf("<110>1 2026-12-01T08:00:00.000Z it-host latency - - - lat-%d", i)
		sent[i] = time.Now().UnixNano()
		if _, err := fmt.Fprintf(conn, "%d %s", len(msg), msg); err != nil {
			b.Fatal(err)
		}
	}
	conn.Close()
	d.waitAllReceipted(b, uint64(b.N), waitTimeout)
	eventually(b, waitTimeout, func() (bool, string) {
		h := d.uplinkHealth(b)
		mu.Lock()
		defer mu.Unlock()
		return high >= h.HeadSeq, fmt.Sprintf("watcher saw receipts up to %d, head %d", high, h.HeadSeq)
	})
	b.StopTimer()
	d.stop(b)

	_, batches := c.storedBatches(b)
	var lat []time.Duration
	mu.Lock()
	defer mu.Unlock()
	for _, sb := range batches {
		at, ok := covered[sb.seq]
		if !ok {
			b.Fatalf("no receipt seen for seq %d", sb.seq)
		}
		for _, n := range tagged(b, sb.events, "lat") {
			lat = append(lat, at.Sub(time.Unix(0, sent[n])))
		}
	}
	if len(lat) != b.N {
		b.Fatalf("%d latencies for %d messages", len(lat), b.N)
	}
	slices.Sort(lat)
	q := func(p float64) float64 { return float64(lat[int(p*float64(len(lat)-1))]) / float64(time.Millisecond) }
	b.ReportMetric(q(0.50), "p50-ms")
	b.ReportMetric(q(0.99), "p99-ms")
	b.ReportMetric(q(1), "max-ms")
}
