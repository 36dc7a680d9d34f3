package syslog

import (
	"bufio"
	"net"
	"testing"
)

// BenchmarkRELPSession measures one RELP session end to end over loopback: a client
// that keeps the window full, the listener's framing, parsing and answering, and a sink
// that commits at once. It is the listener's own cost; rsyslogd and the spool add theirs.
func BenchmarkRELPSession(b *testing.B) {
	sink := &heldSink{auto: true}
	s := newRELPServer(b, Config{}, RELPConfig{RELP: "127.0.0.1:0"}, sink, &fakeReporter{})
	serveRELP(b, s)
	conn, err := net.Dial("tcp", s.Addr().String())
	if err != nil {
		b.Fatal(err)
	}
	defer conn.Close()
	p := newRELPPeer(b, conn)
	p.open()
	msg := []byte("<134>1 2026-03-15T10:00:00Z host app - - - " + "a typical audit line of about two hundred bytes, padded: xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx")
	b.SetBytes(int64(len(msg)))
	b.ReportAllocs()
	window := make(chan struct{}, DefaultRELPWindow)
	errc := make(chan error, 1)
	go func() {
		w := bufio.NewWriterSize(conn, 64<<10)
		var buf []byte
		txnr := 2
		for range b.N {
			window <- struct{}{}
			buf = AppendRELPFrame(buf[:0], txnr, "syslog", msg)
			txnr = nextTxnr(txnr)
			if _, err := w.Write(buf); err != nil {
				errc <- err
				return
			}
			if len(window) == cap(window) || w.Buffered() > 32<<10 {
				if err := w.Flush(); err != nil {
					errc <- err
					return
				}
			}
		}
		errc <- w.Flush()
	}()
	b.ResetTimer()
	for i := range b.N {
		r, err := p.read()
		if err != nil || r.cmd != "rsp" || r.data != relpOK {
			b.Fatalf("answer %d: %v %v", i, r, err)
		}
		<-window
	}
	b.StopTimer()
	if err := <-errc; err != nil {
		b.Fatal(err)
	}
}
