package integration

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestBadInputIsRecorded sends broken TCP frames (too large, a broken octet count, cut
// off by the sender) while good senders run in parallel on other connections. It checks
// that every good message is stored once, that the bad frames are counted per reason in
// edgeaudit_input_rejected_total, that the chain holds an audit.input_rejected event for
// each with the SHA-256 of the refused bytes, and that nothing of them is stored.
func TestBadInputIsRecorded(t *testing.T) {
	t.Parallel()
	const (
		maxSize     = 4096
		goodConns   = 4
		goodPerConn = 50
	)
	d := startDaemon(t, daemonConfig{MaxMessageSize: maxSize})

	// The framer hashes the MSG bytes of a refused octet-counted frame: the frame after
	// "MSG-LEN SP", as far as it was read.
	oversize := rfc5424("badinput-oversize " + strings.Repeat("x", maxSize))
	truncated := rfc5424("badinput-truncated")
	const truncatedLen = 500 // announced; fewer bytes are sent
	want := []string{"badinput-after-oversize", "badinput-before-bad-count"}

	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		errs []error
	)
	fail := func(err error) {
		mu.Lock()
		errs = append(errs, err)
		mu.Unlock()
	}
	for c := range goodConns {
		msgs := markers(fmt.Sprintf("badinput-good-%d", c), goodPerConn)
		want = append(want, msgs...)
		wg.Go(func() {
			if err := writeOctet(d.tcp, msgs); err != nil {
				fail(fmt.Errorf("good connection %d: %w", c, err))
			}
		})
	}
	bad := []struct {
		name       string
		stream     []byte
		senderEnds bool // the sender ends its side after the stream; else the daemon must close first
	}{
		{
			// Refused and skipped; the stream goes on with the next frame.
			name:       "oversize",
			stream:     append(octetFrame(oversize), octetFrame(rfc5424("badinput-after-oversize"))...),
			senderEnds: true,
		},
		{
			// The frame boundaries are lost: the daemon must close the connection.
			name:   "bad_octet_count",
			stream: append(octetFrame(rfc5424("badinput-before-bad-count")), "12x badinput-bad-count"...),
		},
		{
			// The stream ends inside a frame.
			name:       "truncated",
			stream:     []byte(strconv.Itoa(truncatedLen) + " " + truncated),
			senderEnds: true,
		},
	}
	for _, b := range bad {
		wg.Go(func() {
			if err := sendAndAwaitClose(d.tcp, b.stream, b.senderEnds); err != nil {
				fail(fmt.Errorf("%s connection: %w", b.name, err))
			}
		})
	}
	wg.Wait()
	for _, err := range errs {
		t.Error(err)
	}
	if len(errs) > 0 {
		t.FailNow()
	}

	for _, b := range bad {
		d.waitMetric(t, 1, "edgeaudit_input_rejected_total", "collector", "syslog", "transport", "tcp", "reason", b.name)
	}
	d.waitMetric(t, float64(len(want)), "edgeaudit_syslog_received_total", "transport", "tcp")
	d.stop(t)

	evs := exportEvents(t, d.dataDir, false)
	checkMarkers(t, syslogByMessage(evs), want, "tcp")
	for _, e := range evs {
		for _, refused := range []string{"badinput-oversize", "badinput-truncated", "badinput-bad-count"} {
			if e.Source.Kind == "syslog" && strings.Contains(e.Message, refused) {
				t.Errorf("refused input %s was stored: %.100q", refused, e.Message)
			}
		}
	}

	rejected := map[string][]event{}
	for _, e := range selfEvents(evs, "audit.input_rejected") {
		rejected[e.Reason] = append(rejected[e.Reason], e)
	}
	sum := func(s string) string { h := sha256.Sum256([]byte(s)); return hex.EncodeToString(h[:]) }
	tests := []struct {
		reason   string
		wantSHA  string // "" when not checked
		wantSize int
	}{
		{"oversize", sum(oversize), len(oversize)},
		{"truncated", sum(truncated), len(truncated)},
		{"bad_octet_count", "", 0},
	}
	for _, tt := range tests {
		t.Run(tt.reason, func(t *testing.T) {
			evs := rejected[tt.reason]
			if got, want := len(evs), 1; got != want {
				t.Fatalf("%d audit.input_rejected events with reason %s, want %d: %+v", got, tt.reason, want, evs)
			}
			e := evs[0]
			if e.Source.IP != "127.0.0.1" || e.Detail["transport"] != "tcp" || e.Detail["collector"] != "syslog" {
				t.Errorf("source ip %q, detail %v; want 127.0.0.1, transport tcp, collector syslog", e.Source.IP, e.Detail)
			}
			if tt.wantSHA != "" && e.RawSHA256 != tt.wantSHA {
				t.Errorf("raw_sha256 %s, want %s (SHA-256 of the refused frame's MSG bytes)", e.RawSHA256, tt.wantSHA)
			}
			if tt.wantSize != 0 && e.Detail["size"] != strconv.Itoa(tt.wantSize) {
				t.Errorf("detail.size %q, want %d", e.Detail["size"], tt.wantSize)
			}
			if tt.wantSHA == "" && len(e.RawSHA256) != 64 {
				t.Errorf("raw_sha256 %q, want a hex SHA-256", e.RawSHA256)
			}
		})
	}
	mustVerifyData(t, d.dataDir)
}

// sendAndAwaitClose writes stream on a new connection, ends the sending side if
// senderEnds, and waits up to 10s for the daemon to close the connection: a broken
// stream must not stay open, and a finished one must be let go.
func sendAndAwaitClose(addr string, stream []byte, senderEnds bool) error {
	if err := checkLoopback(addr); err != nil {
		return err
	}
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	if err := c.SetDeadline(time.Now().Add(10 * time.Second)); err != nil {
		return err
	}
	if _, err := c.Write(stream); err != nil {
		return err
	}
	if senderEnds {
		if err := c.(*net.TCPConn).CloseWrite(); err != nil {
			return err
		}
	}
	n, err := c.Read(make([]byte, 1))
	var ne net.Error
	switch {
	case n > 0:
		return errors.New("the daemon sent data on a syslog connection")
	case errors.As(err, &ne) && ne.Timeout():
		return fmt.Errorf("connection still open 10s after the stream: %w", err)
	}
	return nil // io.EOF or a reset: the daemon closed it
}
