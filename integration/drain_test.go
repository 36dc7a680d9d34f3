package integration

import (
	"fmt"
	"net"
	"os"
	"regexp"
	"strconv"
	"testing"
	"time"
)

// drainMessages is how many messages TestStopInBurst sends over one connection: the
// 300,000 of issue 6 item 1 (50,000 under -race, where the daemon ingests about 12,000
// a second), or EDGEAUDIT_DRAIN_MESSAGES (at least 50,000 in CI).
func drainMessages(t testing.TB) int {
	n := 300_000
	if raceEnabled {
		n = 50_000
	}
	if v := os.Getenv("EDGEAUDIT_DRAIN_MESSAGES"); v != "" {
		var err error
		if n, err = strconv.Atoi(v); err != nil || n < 1 {
			t.Fatalf("EDGEAUDIT_DRAIN_MESSAGES=%q: want a positive count", v)
		}
	}
	if os.Getenv("CI") == "true" && n < 50_000 {
		t.Fatalf("EDGEAUDIT_DRAIN_MESSAGES=%d: CI needs at least 50000", n)
	}
	return n
}

// drainedLine is the syslog collector's log line at the end of its drain.
var drainedLine = regexp.MustCompile(`msg=drained .*conns=(\d+) count=(\d+) unread_frames=(\d+) unread_bytes=(\d+) duration=(\S+)`)

// TestStopInBurst (issue 6 item 1): one TCP connection sends octet-counted RFC 5424
// messages as fast as it can, and SIGTERM comes right after its last write returned,
// with the connection still open. Whatever the kernel held then must be drained into
// the chain or counted: stored + recorded lost == sent, and what is stored is exactly
// the first messages, in order. Before the drain, the tail (11,000 to 16,000 of
// 300,000) vanished and the chain recorded one lost event.
func TestStopInBurst(t *testing.T) {
	n := drainMessages(t)
	d := startDaemon(t, daemonConfig{MaxEvents: 10000})
	want := markers("burst", n)
	var buf []byte
	for _, m := range want {
		buf = append(buf, octetFrame(rfc5424(m))...)
	}
	conn, err := net.DialTimeout("tcp", d.tcp, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetWriteDeadline(time.Now().Add(5 * time.Minute))
	start := time.Now()
	// Writes of 64 KiB, as a busy sender's would be; the last one returns once the
	// kernel holds every byte, in our send queue or the daemon's receive queue.
	for off := 0; off < len(buf); off += 64 << 10 {
		if _, err := conn.Write(buf[off:min(off+64<<10, len(buf))]); err != nil {
			t.Fatalf("write at byte %d: %v", off, err)
		}
	}
	wrote := time.Since(start)
	took := d.stopWithin(t, sigtermBound)

	evs := exportEvents(t, d.dataDir, true)
	byMsg := syslogByMessage(evs)
	stored := 0
	for stored < n && len(byMsg[want[stored]]) > 0 {
		stored++
	}
	checkMarkers(t, byMsg, want[:stored], "tcp")
	for _, m := range want[stored:] {
		if len(byMsg[m]) > 0 {
			t.Fatalf("%q is stored but %q is not: the stored messages are not a prefix", m, want[stored])
		}
	}
	var lost int
	for _, e := range selfEvents(evs, "audit.input_lost") {
		if e.Detail["collector"] == "syslog" && e.Detail["transport"] == "tcp" && (e.Reason == "shutdown" || e.Reason == "shutdown_unread") {
			lost += e.Count
		}
	}
	var unreadBytes int64
	for _, e := range selfEvents(evs, "audit.input_rejected") {
		if e.Reason == "shutdown_unread" {
			b, _ := strconv.ParseInt(e.Detail["size"], 10, 64)
			unreadBytes += b
		}
	}
	figures := fmt.Sprintf("sent %d (%d bytes in %v), stored %d, recorded lost %d (%d bytes), daemon stopped in %v",
		n, len(buf), wrote.Round(time.Millisecond), stored, lost, unreadBytes, took.Round(time.Millisecond))
	if m := drainedLine.FindStringSubmatch(d.log()); m != nil {
		figures += fmt.Sprintf("; drain: %s events in %s, %s frames / %s bytes left unread", m[2], m[5], m[3], m[4])
	} else {
		t.Error("the syslog collector logged no drain summary")
	}
	t.Log(figures)
	if stored+lost != n {
		t.Fatalf("stored %d + recorded lost %d = %d, want %d sent", stored, lost, stored+lost, n)
	}
}
