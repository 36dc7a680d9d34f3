package central

import (
	"testing"
	"time"

	"github.com/edgeaudit/edgeaudit/internal/testmqtt"
	"github.com/edgeaudit/edgeaudit/uplink"
)

// BenchmarkDrain: one appliance (the real uplink, window 8) drains a backlog of
// benchBatches batches of 100 events of about 300 bytes into central (folder store) until the last is
// receipted; through the embedded broker and through mosquitto (TLS).
func BenchmarkDrain(b *testing.B) {
	const benchBatches, events = 200, 100
	for _, broker := range []string{"embedded", "mosquitto"} {
		b.Run(broker, func(b *testing.B) {
			var total time.Duration
			for range b.N {
				cfg := Config{DataDir: b.TempDir(), AuditDevice: "c1"}
				var up uplink.Config
				if broker == "embedded" {
					pw := writePasswords(b, map[string]string{"s1/d1": "pw1"})
					cfg.EmbeddedBroker, cfg.EmbeddedBrokerPasswords = "127.0.0.1:0", pw
					up = uplink.Config{Username: "s1/d1", Password: "pw1"}
				} else {
					mb := testmqtt.Start(b, testmqtt.Options{Users: map[string]string{"central": "cpw", "d1": "pw1"}, ACL: mosquittoACL, TCPNoDelay: true})
					certFile, keyFile := writeClientCert(b, mb)
					cfg.Broker, cfg.Username, cfg.Password = mb.URL, "central", "cpw"
					cfg.TLSCA, cfg.TLSCert, cfg.TLSKey = mb.PKI.CAFile, certFile, keyFile
					up = uplink.Config{Broker: mb.URL, TLS: mb.ClientTLS(), Username: "d1", Password: "pw1"}
				}
				cfg.SetDefaults()
				c := newChain(b, "s1", "d1")
				c.pad = 300
				c.add(b, benchBatches, events)
				enrol(b, cfg, c)
				srv, err := New(cfg, testLogger())
				if err != nil {
					b.Fatal(err)
				}
				stop := runServer(b, srv)
				if broker == "embedded" {
					up.Broker = "tcp://" + srv.Broker().Addr()
				}
				start := time.Now()
				a := runAppliance(b, c, readCentralPub(b, cfg), up)
				eventually(b, "drained", func() bool { return a.src.ackedSeq() == benchBatches })
				total += time.Since(start)
				if err := stop(); err != nil {
					b.Fatal(err)
				}
			}
			s := total.Seconds() / float64(b.N)
			b.ReportMetric(benchBatches/s, "batches/s")
			b.ReportMetric(benchBatches*events/s, "events/s")
		})
	}
}
