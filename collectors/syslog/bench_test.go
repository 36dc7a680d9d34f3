package syslog

import (
	"bytes"
	"context"
	"net"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/edgeaudit/edgeaudit/audit"
)

// encodeSink does what the spool does on the collector's goroutine (set the id, encode)
// and nothing else, so the benchmark measures the collector.
type encodeSink struct {
	buf    []byte
	n      atomic.Int64
	target int64
	done   chan struct{}
}

func (s *encodeSink) Append(_ context.Context, e *audit.Event, _ func(error)) error {
	if e.ID == "" {
		e.ID = audit.NewID(e.Received)
	}
	s.buf = e.AppendJSON(s.buf[:0])
	if s.n.Add(1) == s.target {
		close(s.done)
	}
	return nil
}

type nopReporter struct{}

func (nopReporter) Reject(string, string, string, string, string, int64) {}
func (nopReporter) Lost(string, string, string, uint64)                  {}

// message256 is an RFC 5424 message of exactly 256 bytes.
func message256(sd string) []byte {
	head := "<134>1 2026-03-15T10:00:00.123456Z modality1.example.org ctscanner 4711 ID47 " + sd + " "
	body := "Study viewed by user radiologist1 from workstation WS-0042; "
	msg := head + body
	msg += strings.Repeat("x", 256-len(msg))
	return []byte(msg)
}

func BenchmarkTCPIngest(b *testing.B) {
	for _, tc := range []struct{ name, sd string }{
		{"nosd", "-"},
		{"sd", `[origin ip="192.0.2.1"]`},
	} {
		b.Run(tc.name, func(b *testing.B) {
			msg := message256(tc.sd)
			frame := append([]byte(strconv.Itoa(len(msg))+" "), msg...)
			const perChunk = 256
			chunk := bytes.Repeat(frame, perChunk)

			sink := &encodeSink{target: int64(b.N), done: make(chan struct{})}
			c := startCollector(b, Config{TCP: "127.0.0.1:0", RFC3164TimeZone: "UTC"}, sink, nopReporter{}, nil)
			conn, err := net.Dial("tcp", c.TCPAddr().String())
			if err != nil {
				b.Fatal(err)
			}
			defer conn.Close()
			b.SetBytes(int64(len(frame)))
			b.ReportAllocs()
			b.ResetTimer()
			go func() {
				for left := b.N; left > 0; left -= perChunk {
					n := min(left, perChunk)
					if _, err := conn.Write(chunk[:n*len(frame)]); err != nil {
						return
					}
				}
			}()
			select {
			case <-sink.done:
			case <-time.After(5 * time.Minute):
				b.Fatalf("only %d of %d events arrived", sink.n.Load(), b.N)
			}
			b.StopTimer()
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "events/s")
		})
	}
}

func benchParse(b *testing.B, frame []byte) {
	p := newParser(time.UTC)
	var ev audit.Event
	b.SetBytes(int64(len(frame)))
	b.ReportAllocs()
	now := fixedNow
	for b.Loop() {
		resetEvent(&ev, "tcp", "127.0.0.1")
		if !p.parse(&ev, frame, now) {
			b.Fatal("frame skipped")
		}
	}
	if ev.Malformed {
		b.Fatalf("benchmark frame is malformed: %q", frame)
	}
}

func BenchmarkParse5424(b *testing.B) { benchParse(b, message256("-")) }

func BenchmarkParse5424SD(b *testing.B) {
	benchParse(b, message256(`[exampleSDID@32473 iut="3" eventSource="Application" eventID="1011"]`))
}

func BenchmarkParse3164(b *testing.B) {
	benchParse(b, []byte("<38>Mar 15 11:58:01 pacs01 sshd[1234]: Accepted publickey for admin from 192.0.2.9 port 52311 ssh2"))
}

// loggenMessage is one message as `loggen -i -S -P -s 256` sends it (without the
// octet count): the load of bench/loggen.sh.
func loggenMessage() []byte {
	now := "2026-11-27T08:10:51"
	msg := "<38>1 " + now + "+00:00 localhost prg00000 1234 - - \xef\xbb\xbfseq: 0000000042, thread: 0000, runid: 1795767051, stamp: " + now + " "
	for len(msg) < 255 {
		msg += "PADD"
	}
	return []byte(msg[:255] + "\n")
}

func BenchmarkParseLoggen(b *testing.B) { benchParse(b, loggenMessage()) }
