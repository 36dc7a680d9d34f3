package receiver_test

import (
	"fmt"
	"path/filepath"
	"strings"
	"testing"

	"github.com/edgeaudit/edgeaudit/ledger"
	"github.com/edgeaudit/edgeaudit/receiver"
)

// BenchmarkHandle measures verify-and-store of 1000-event batches (events of about 350
// bytes, the size of the ledger vectors' events) on one goroutine: "mem" is the
// verification alone (an in-memory store), "folder" adds the folder store (three
// atomic file writes, each with its fsyncs), "folder-group" the folder store with the
// 16 batches of a chain stored as one group (one set of fsyncs, as Run does with what
// it has queued). Reported: events/s.
func BenchmarkHandle(b *testing.B) {
	const chainLen, perBatch = 16, 1000
	a := newAppliance(b, "s1", "d1")
	a.events = perBatch
	pad := strings.Repeat("x", 250)
	chain := a.extend(b, nil, chainLen, pad)
	payloads := make([][]byte, chainLen)
	for i, bt := range chain {
		payloads[i] = wire(bt)
	}
	b.Logf("event size %d bytes, batch %d bytes", len(chain[0].Events[0]), len(payloads[0]))
	for _, kind := range []string{"mem", "folder", "folder-group"} {
		b.Run(kind, func(b *testing.B) {
			var e *env
			round := 0
			var cpu *cpuMeter
			fresh := func() {
				if cpu != nil {
					cpu.pause()
					defer cpu.resume()
				}
				var store receiver.Store = newMemStore()
				if kind != "mem" {
					store = receiver.FolderStore{Dir: filepath.Join(b.TempDir(), fmt.Sprint(round))}
				}
				e = newEnv(b, receiver.Config{}, store)
				enroll(b, e.keysDir, "s1", "d1", &a.key.PublicKey)
				round++
			}
			fresh()
			i := 0
			cpu = startCPU(b)
			var queued [][]byte
			flush := func() {
				if len(queued) == 0 {
					return
				}
				rc, err := receiver.HandleGroup(b.Context(), e.r, "s1", "d1", queued)
				if err != nil || rc == nil {
					b.Fatalf("group of %d up to seq %d: %v", len(queued), i, err)
				}
				queued = queued[:0]
			}
			for b.Loop() {
				if kind == "folder-group" {
					if i == chainLen {
						fresh()
						i = 0
					}
					queued = append(queued, payloads[i])
					if i++; i == chainLen {
						flush()
					}
					continue
				}
				if i == chainLen {
					fresh()
					i = 0
				}
				rc, err := e.r.Handle(b.Context(), "s1", "d1", payloads[i])
				if err != nil || rc == nil {
					b.Fatalf("seq %d: %v", i+1, err)
				}
				i++
			}
			flush() // a last partial group, outside the timer (none with -benchtime 16x, 32x, …)
			b.ReportMetric(float64(b.N*perBatch)/b.Elapsed().Seconds(), "events/s")
			cpu.report(b, b.N*perBatch)
			b.ReportMetric(0, "ns/op")
		})
	}
}

// BenchmarkVerifyOnly is the floor: ledger's verification of one 1000-event batch
// without the receiver (decode, signature, Merkle root).
func BenchmarkVerifyOnly(b *testing.B) {
	a := newAppliance(b, "s1", "d1")
	a.events = 1000
	chain := a.extend(b, nil, 1, strings.Repeat("x", 250))
	payload := wire(chain[0])
	cpu := startCPU(b)
	for b.Loop() {
		bt, err := ledger.NewReader(strings.NewReader(string(payload))).Next()
		if err != nil {
			b.Fatal(err)
		}
		v, _ := ledger.NewVerifier(&a.key.PublicKey)
		if _, err := v.Verify(bt); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N*1000)/b.Elapsed().Seconds(), "events/s")
	cpu.report(b, b.N*1000)
}
