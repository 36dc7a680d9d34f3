// Command relpload is a RELP load generator with loggen's command line, so that
// bench/anchors.sh (a copy of ../shared/bench/anchors.sh, extended) can drive RELP receivers (edgeaudit's syslog.relp and
// rsyslog's imrelp) with LOADGEN=relpload exactly as it drives TCP ones with loggen.
//
// Each connection opens a RELP session, sends RFC 5424 messages shaped like
// `loggen -P -s SIZE` (same header, "seq: ..., thread: ..., runid: ..., stamp: ..."
// body, PADD padding) as `syslog` commands with up to -w unanswered at once, and at the
// end of the interval closes the session after every answer has arrived. Only messages
// answered "200 OK" are counted. Like loggen it prints, on stderr,
//
//	average rate = R msg/sec, count=N, time=T, (average) msg size=S
//
// Accepted: -i -S -P -F (ignored; RELP frames are counted by DATALEN), -r RATE (msg/s per
// connection), -s SIZE, -I SECONDS, -n NUMBER, --active-connections=N, -w WINDOW, then
// host and port.
//
// With -D (loggen's datagram mode) it sends the same messages as UDP datagrams instead,
// paced evenly at RATE per connection (1 ms steps; a late step catches up by at most
// 10 ms of messages). loggen -D -r paces per second and starts with a burst: at -r 100000
// it sent some 118,000 datagrams in its first 0.2 s here, which a 4 MiB socket buffer
// cannot hold for any receiver (rsyslog's imudp lost 9,900 of them); the UDP target is
// about a steady 100k msgs/s.
package main

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "relpload:", err)
		os.Exit(1)
	}
}

type options struct {
	rate, size, conns, window int
	udp                       bool
	number                    int64
	interval                  time.Duration
	addr                      string
}

func parse(args []string) (options, error) {
	o := options{rate: 1000, size: 256, conns: 1, window: 128, interval: 10 * time.Second}
	var pos []string
	num := func(i *int, name string) (int, error) {
		*i++
		if *i >= len(args) {
			return 0, fmt.Errorf("%s needs a value", name)
		}
		return strconv.Atoi(args[*i])
	}
	for i := 0; i < len(args); i++ {
		a := args[i]
		var err error
		switch {
		case a == "-i" || a == "-S" || a == "-P" || a == "-F":
		case a == "-D":
			o.udp = true
		case a == "-r":
			o.rate, err = num(&i, a)
		case a == "-s":
			o.size, err = num(&i, a)
		case a == "-w":
			o.window, err = num(&i, a)
		case a == "-n":
			var n int
			n, err = num(&i, a)
			o.number = int64(n)
		case a == "-I":
			var s int
			s, err = num(&i, a)
			o.interval = time.Duration(s) * time.Second
		case strings.HasPrefix(a, "--active-connections="):
			o.conns, err = strconv.Atoi(strings.TrimPrefix(a, "--active-connections="))
		case strings.HasPrefix(a, "-"):
			return o, fmt.Errorf("unknown option %s", a)
		default:
			pos = append(pos, a)
		}
		if err != nil {
			return o, fmt.Errorf("%s: %w", a, err)
		}
	}
	if len(pos) != 2 {
		return o, fmt.Errorf("usage: relpload [-r RATE] [-s SIZE] [-I SECS] [-w WINDOW] [--active-connections=N] HOST PORT")
	}
	if o.rate < 1 || o.size < 64 || o.conns < 1 || o.window < 1 {
		return o, fmt.Errorf("rate, size (>= 64), connections and window must be positive")
	}
	o.addr = net.JoinHostPort(pos[0], pos[1])
	return o, nil
}

func run(args []string) error {
	o, err := parse(args)
	if err != nil {
		return err
	}
	var sent atomic.Int64
	start := time.Now()
	deadline := start.Add(o.interval)
	var wg sync.WaitGroup
	errs := make([]error, o.conns)
	for t := range o.conns {
		if o.udp {
			wg.Go(func() { errs[t] = datagrams(o, t, deadline, &sent) })
			continue
		}
		wg.Go(func() { errs[t] = session(o, t, deadline, &sent) })
	}
	wg.Wait()
	secs := time.Since(start).Seconds()
	n := sent.Load()
	fmt.Fprintf(os.Stderr, "average rate = %.2f msg/sec, count=%d, time=%.3f, (average) msg size=%d\n",
		float64(n)/secs, n, secs, o.size)
	for _, e := range errs {
		if e != nil {
			return e
		}
	}
	return nil
}

// message is loggen's -P message body for seq on thread t, padded to size bytes (no LF:
// RELP carries the length).
func message(buf []byte, seq int64, t, size int) []byte {
	now := time.Now().UTC().Format("2006-01-02T15:04:05")
	buf = fmt.Appendf(buf[:0], "<38>1 %s+00:00 localhost prg%05d 1234 - - \xef\xbb\xbfseq: %010d, thread: %04d, runid: %d, stamp: %s ",
		now, t, seq, t, start.Unix(), now)
	for len(buf) < size {
		buf = append(buf, "PADD"...)
	}
	return buf[:size]
}

var start = time.Now()

// datagrams sends o.rate messages a second as UDP datagrams until deadline.
func datagrams(o options, t int, deadline time.Time, sent *atomic.Int64) error {
	conn, err := net.Dial("udp", o.addr)
	if err != nil {
		return err
	}
	defer conn.Close()
	began := time.Now()
	tick := time.NewTicker(time.Millisecond)
	defer tick.Stop()
	var n int64
	buf := make([]byte, 0, o.size)
	for now := began; now.Before(deadline); now = <-tick.C {
		due := int64(now.Sub(began).Seconds()*float64(o.rate)) - n
		due = min(due, int64(o.rate/100)+1)
		for range due {
			if o.number > 0 && n >= o.number {
				return nil
			}
			buf = message(buf, n, t, o.size)
			if _, err := conn.Write(buf); err != nil {
				continue // ECONNREFUSED from an earlier datagram: UDP goes on
			}
			n++
			sent.Add(1)
		}
	}
	return nil
}

func frame(buf []byte, txnr int, cmd string, data []byte) []byte {
	buf = strconv.AppendInt(buf, int64(txnr), 10)
	buf = append(buf, ' ')
	buf = append(buf, cmd...)
	buf = append(buf, ' ')
	buf = strconv.AppendInt(buf, int64(len(data)), 10)
	if len(data) > 0 {
		buf = append(buf, ' ')
		buf = append(buf, data...)
	}
	return append(buf, '\n')
}

// readRsp reads one answer frame and returns its txnr and data.
func readRsp(r *bufio.Reader) (int, string, error) {
	head, err := r.ReadString(' ')
	if err != nil {
		return 0, "", err
	}
	txnr, err := strconv.Atoi(strings.TrimSpace(head))
	if err != nil {
		return 0, "", fmt.Errorf("bad txnr %q", head)
	}
	cmd, err := r.ReadString(' ')
	if err != nil {
		return 0, "", err
	}
	var lenStr string
	for {
		c, err := r.ReadByte()
		if err != nil {
			return 0, "", err
		}
		if c == ' ' || c == '\n' {
			if c == '\n' {
				r.UnreadByte()
			}
			break
		}
		lenStr += string(c)
	}
	n, err := strconv.Atoi(lenStr)
	if err != nil {
		return 0, "", fmt.Errorf("bad datalen %q", lenStr)
	}
	data := make([]byte, n)
	if _, err := io.ReadFull(r, data); err != nil {
		return 0, "", err
	}
	if c, err := r.ReadByte(); err != nil || c != '\n' {
		return 0, "", fmt.Errorf("missing trailer after %s", strings.TrimSpace(cmd))
	}
	if strings.TrimSpace(cmd) == "serverclose" {
		return txnr, "serverclose", nil
	}
	return txnr, string(data), nil
}

func session(o options, t int, deadline time.Time, sent *atomic.Int64) error {
	conn, err := net.Dial("tcp", o.addr)
	if err != nil {
		return fmt.Errorf("connect %s: %w", o.addr, err)
	}
	defer conn.Close()
	r := bufio.NewReaderSize(conn, 64<<10)
	w := bufio.NewWriterSize(conn, 64<<10)
	offer := []byte("relp_version=0\nrelp_software=relpload\ncommands=syslog")
	if _, err := w.Write(frame(nil, 1, "open", offer)); err != nil {
		return err
	}
	if err := w.Flush(); err != nil {
		return err
	}
	if _, data, err := readRsp(r); err != nil || !strings.HasPrefix(data, "200") {
		return fmt.Errorf("open: %q %v", data, err)
	}
	window := make(chan struct{}, o.window)
	done := make(chan error, 1)
	var acked int64
	go func() {
		for {
			_, data, err := readRsp(r)
			if err != nil {
				done <- err
				return
			}
			if data == "serverclose" {
				done <- fmt.Errorf("server closed the session")
				return
			}
			if strings.HasPrefix(data, "200") {
				if len(window) == 0 { // the answer to close
					done <- nil
					return
				}
				acked++
				sent.Add(1)
			} else {
				done <- fmt.Errorf("answer %q", data)
				return
			}
			<-window
		}
	}()
	var buf, msg []byte
	txnr := 2
	perMsg := time.Second / time.Duration(o.rate)
	begin := time.Now()
	var i int64
	for ; time.Now().Before(deadline) && (o.number == 0 || i < o.number); i++ {
		if o.rate < 100000000 {
			if due := begin.Add(time.Duration(i) * perMsg); time.Until(due) > time.Millisecond {
				w.Flush()
				time.Sleep(time.Until(due))
			}
		}
		select {
		case window <- struct{}{}:
		default:
			if err := w.Flush(); err != nil {
				return err
			}
			select {
			case window <- struct{}{}:
			case err := <-done:
				return fmt.Errorf("session: %v", err)
			}
		}
		msg = message(msg, i, t, o.size)
		buf = frame(buf[:0], txnr, "syslog", msg)
		txnr = txnr%999999999 + 1
		if _, err := w.Write(buf); err != nil {
			return err
		}
	}
	if err := w.Flush(); err != nil {
		return err
	}
	// wait for every answer, then close
	for len(window) > 0 {
		select {
		case err := <-done:
			return fmt.Errorf("session: %v", err)
		case <-time.After(time.Millisecond):
		}
		if time.Since(deadline) > 30*time.Second {
			return fmt.Errorf("%d answers missing", len(window))
		}
	}
	if _, err := w.Write(frame(buf[:0], txnr, "close", nil)); err != nil {
		return err
	}
	if err := w.Flush(); err != nil {
		return err
	}
	select {
	case err := <-done:
		if err != nil && acked < i {
			return err
		}
	case <-time.After(5 * time.Second):
	}
	return nil
}
