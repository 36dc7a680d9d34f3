package integration

import (
	"cmp"
	"context"
	"fmt"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// loggerMessages is how many messages each logger case sends.
const loggerMessages = 200

// udpChunk is how many datagrams are sent before waiting for the daemon to account for
// them: far below what the default socket buffer holds, so loopback drops stay rare, and
// any that happen are counted in edgeaudit_input_lost_total.
const udpChunk = 25

// TestLoggerUDPAndTCP sends messages with util-linux logger, one process per case reading
// them from stdin, and checks that each arrived exactly once with the right transport and
// source address, that UDP loss (if any) was counted rather than silent, and that the
// chain verifies.
func TestLoggerUDPAndTCP(t *testing.T) {
	t.Parallel()
	logger := peer(t, "logger", "")
	tests := []struct {
		name      string
		transport string
		args      []string
		n         int // messages; loggerMessages when 0
		burst     bool
		udpBuffer int // syslog.udp_read_buffer; default when 0
	}{
		{name: "udp-rfc5424", transport: "udp", args: []string{"-d", "--rfc5424"}},
		{name: "udp-rfc3164", transport: "udp", args: []string{"-d", "--rfc3164"}},
		{name: "tcp-rfc5424", transport: "tcp", args: []string{"-T", "--rfc5424"}},
		{name: "tcp-rfc3164", transport: "tcp", args: []string{"-T", "--rfc3164"}},
		{name: "tcp-octet-count-rfc5424", transport: "tcp", args: []string{"-T", "--octet-count", "--rfc5424"}},
		// Unpaced into a tiny socket buffer: the kernel will likely drop datagrams, and
		// every drop must show in edgeaudit_input_lost_total.
		{name: "udp-burst-small-buffer", transport: "udp", args: []string{"-d", "--rfc5424"}, n: 2000, burst: true, udpBuffer: 4096},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			n := cmp.Or(tt.n, loggerMessages)
			d := startDaemon(t, daemonConfig{UDP: tt.transport == "udp", UDPReadBuffer: tt.udpBuffer})
			addr := d.tcp
			if tt.transport == "udp" {
				addr = d.udp
			}
			mustLoopback(t, addr)
			want := markers("logger-"+tt.name, n)
			args := append([]string{"-n", "127.0.0.1", "-P", portOf(t, addr), "-t", "edgeaudit-it"}, tt.args...)

			received := func() float64 {
				return d.metrics(t).sum("edgeaudit_syslog_received_total", "transport", tt.transport)
			}
			lost := func() float64 {
				return d.metrics(t).sum("edgeaudit_input_lost_total", "collector", "syslog", "transport", tt.transport)
			}
			sent := 0
			if tt.transport == "udp" {
				chunk := udpChunk
				if tt.burst {
					chunk = len(want)
				}
				runLogger(t, logger, args, want, chunk, func(n int) {
					sent = n
					// Pace the sender: wait (bounded, not failing) until the daemon has
					// seen or counted as lost what was sent so far.
					waitAccounted(t, received, lost, sent, 5*time.Second)
				})
				sent = flushUDPLoss(t, d, received, lost, sent, "logger-"+tt.name+"-probe")
			} else {
				runLogger(t, logger, args, want, len(want), nil)
				sent = len(want)
				d.waitMetric(t, float64(sent), "edgeaudit_syslog_received_total", "transport", tt.transport)
			}
			gotReceived, gotLost := received(), lost()
			if got, want := gotReceived+gotLost, float64(sent); got != want {
				t.Errorf("received %v + counted as lost %v = %v, want the %v sent", gotReceived, gotLost, got, want)
			}
			if tt.transport == "tcp" && gotLost != 0 {
				t.Errorf("tcp: %v messages counted as lost, want 0", gotLost)
			}
			if gotLost > 0 {
				t.Logf("%v of %d datagrams counted as lost (kernel drops on loopback)", gotLost, sent)
			} else if tt.burst {
				t.Logf("no datagram was lost: the loss accounting was not exercised this time")
			}
			d.stop(t)

			evs := exportEvents(t, d.dataDir, false)
			byMsg := syslogByMessage(evs)
			if tt.transport == "tcp" {
				checkMarkers(t, byMsg, want, tt.transport)
			} else {
				// Every datagram stored is one that was sent, once; what is missing was
				// counted as lost above.
				var stored []string
				for _, m := range want {
					if len(byMsg[m]) > 0 {
						stored = append(stored, m)
					}
				}
				checkMarkers(t, byMsg, stored, tt.transport)
				if missing := float64(len(want) - len(stored)); missing > gotLost {
					t.Errorf("%v messages missing from the chain, but only %v counted as lost", missing, gotLost)
				}
				if len(stored) == 0 {
					t.Errorf("no datagram of %d stored", len(want))
				}
			}
			// Loss is evidence: the chain itself records how many were lost.
			var lostInChain int
			for _, e := range selfEvents(evs, "audit.input_lost") {
				if e.Detail["transport"] == tt.transport {
					lostInChain += e.Count
				}
			}
			if got, want := float64(lostInChain), gotLost; got != want {
				t.Errorf("audit.input_lost events in the chain count %v lost, the daemon counted %v", got, want)
			}
			if got, want := float64(countKind(evs, "syslog")), gotReceived; got != want {
				t.Errorf("chain has %v syslog events, the daemon counted %v received", got, want)
			}
			for _, evs := range byMsg {
				if got, want := evs[0].Source.App, "edgeaudit-it"; got != want && !strings.Contains(evs[0].Message, "-probe-") {
					t.Errorf("message %q: app %q, want the logger tag %q", evs[0].Message, got, want)
					break
				}
			}
			v := mustVerifyData(t, d.dataDir)
			t.Logf("sent %d, stored %d, lost %v; chain: %d batches, %d events", sent, countKind(evs, "syslog"), gotLost, v.Batches, v.Events)
		})
	}
}

// runLogger runs one logger process that reads lines from stdin, writing them chunk
// lines at a time and calling afterChunk (if not nil) with the number written so far.
func runLogger(t testing.TB, logger string, args, lines []string, chunk int, afterChunk func(sent int)) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, logger, args...)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	var out strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatalf("start logger: %v", err)
	}
	for i := 0; i < len(lines); i += chunk {
		end := min(i+chunk, len(lines))
		if _, err := stdin.Write([]byte(strings.Join(lines[i:end], "\n") + "\n")); err != nil {
			t.Fatalf("write to logger: %v", err)
		}
		if afterChunk != nil {
			afterChunk(end)
		}
	}
	stdin.Close()
	if err := cmd.Wait(); err != nil {
		t.Fatalf("logger %s: %v\n%s", strings.Join(args, " "), err, out.String())
	}
	if s := out.String(); s != "" {
		t.Logf("logger said: %s", s)
	}
}

// waitAccounted waits until received + lost reaches sent, or the counters stop moving
// for half a second, or bound passes. It does not fail: a kernel drop of the last
// datagrams shows only with the next datagram read.
func waitAccounted(t testing.TB, received, lost func() float64, sent int, bound time.Duration) {
	t.Helper()
	const quiet = 500 * time.Millisecond
	deadline := time.Now().Add(bound)
	last, lastChange := -1.0, time.Now()
	for time.Now().Before(deadline) {
		n := received() + lost()
		if n >= float64(sent) {
			return
		}
		if n != last {
			last, lastChange = n, time.Now()
		} else if time.Since(lastChange) > quiet {
			return
		}
		time.Sleep(pollInterval)
	}
}

// flushUDPLoss makes the daemon account for every datagram sent. The kernel reports
// drops on a UDP socket with the next datagram read, so if received + lost is short,
// probe datagrams (at most 5) are sent one at a time until it is not. It returns the
// number of datagrams sent, probes included.
func flushUDPLoss(t testing.TB, d *daemon, received, lost func() float64, sent int, probePrefix string) int {
	t.Helper()
	for i := 0; i < 5 && received()+lost() < float64(sent); i++ {
		c := dial(t, "udp", d.udp)
		if _, err := c.Write([]byte(rfc5424(fmt.Sprintf("%s-%d", probePrefix, i)))); err != nil {
			t.Fatalf("udp probe: %v", err)
		}
		c.Close()
		sent++
		waitAccounted(t, received, lost, sent, 5*time.Second)
	}
	return sent
}

func countKind(evs []event, kind string) int {
	n := 0
	for _, e := range evs {
		if e.Source.Kind == kind {
			n++
		}
	}
	return n
}

// loggenSeqRE finds the sequence number loggen writes into each message.
var loggenSeqRE = regexp.MustCompile(`seq: (\d+),`)

// TestLoggenOctetCounted sends a burst with syslog-ng's loggen (RFC 5424, octet-counted
// framing, one TCP connection) and checks that every message it reports sent was stored
// once, in the order sent, and that the chain verifies.
func TestLoggenOctetCounted(t *testing.T) {
	t.Parallel()
	loggen := peer(t, "loggen", "LOGGEN", "/var/cache/edgeaudit-test/bin/loggen")
	const n = 2000
	d := startDaemon(t, daemonConfig{})
	mustLoopback(t, d.tcp)

	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, loggen, "--stream", "--syslog-proto", "--number", strconv.Itoa(n),
		"--rate", "20000", "--size", "200", "--active-connections", "1", "127.0.0.1", portOf(t, d.tcp))
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("loggen: %v\n%s", err, out)
	}
	d.waitMetric(t, n, "edgeaudit_syslog_received_total", "transport", "tcp")
	d.stop(t)

	var seqs []int
	for _, e := range exportEvents(t, d.dataDir, false) {
		if e.Source.Kind != "syslog" {
			continue
		}
		m := loggenSeqRE.FindStringSubmatch(e.Message)
		if m == nil {
			t.Fatalf("message %.80q has no loggen seq", e.Message)
		}
		s, _ := strconv.Atoi(m[1])
		seqs = append(seqs, s)
		if e.Source.Transport != "tcp" || e.Source.IP != "127.0.0.1" {
			t.Fatalf("loggen message %d: transport %q from %q, want tcp from 127.0.0.1", s, e.Source.Transport, e.Source.IP)
		}
	}
	if got, want := len(seqs), n; got != want {
		t.Fatalf("chain has %d loggen messages, want %d", got, want)
	}
	for i, s := range seqs {
		if s != i {
			t.Fatalf("loggen message %d of the chain has seq %d, want %d (one connection keeps its order)", i, s, i)
		}
	}
	mustVerifyData(t, d.dataDir)
}
