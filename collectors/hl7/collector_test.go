package hl7

import (
	"context"
	"crypto/tls"
	"errors"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
)

// TestACKOnlyAfterCommit pipelines messages against a sink whose commits are slow, and
// checks from the order log that every ACK arrived after its commit confirmation.
func TestACKOnlyAfterCommit(t *testing.T) {
	order := &orderLog{}
	sink := &fakeSink{commitDelay: 30 * time.Millisecond, order: order}
	c := startCollector(t, Config{}, sink, &fakeReporter{})
	cl := dialMLLP(t, c.Addr())
	const n = 5
	for i := range n {
		cl.send(t, adt("CTL"+strconv.Itoa(i)))
	}
	for i := range n {
		ack := cl.readACK(t)
		ctl := ack.Component(ack.Field("MSA", 2), 1)
		order.add("ack " + ctl)
		if got, want := ackCode(ack), AckAccept; got != want {
			t.Fatalf("ack %d code=%s, want %s", i, got, want)
		}
		if got, want := ctl, "CTL"+strconv.Itoa(i); got != want {
			t.Fatalf("ack %d MSA-2=%s, want %s (ACKs out of order)", i, got, want)
		}
	}
	log := order.get()
	pos := map[string]int{}
	for i, e := range log {
		pos[e] = i
	}
	for i := range n {
		ctl := "CTL" + strconv.Itoa(i)
		ci, ok1 := pos["commit "+ctl]
		ai, ok2 := pos["ack "+ctl]
		if !ok1 || !ok2 || ci > ai {
			t.Fatalf("%s: commit at %d (%v), ack at %d (%v); log %q", ctl, ci, ok1, ai, ok2, log)
		}
	}
	if got, want := sink.len(), n; got != want {
		t.Fatalf("committed %d, want %d", got, want)
	}
	waitFor(t, "stats", func() bool { return c.Stats().Received == n && c.Stats().ACKs == n })
}

func TestStoreErrorsGiveAE(t *testing.T) {
	tests := []struct {
		name string
		set  func(s *fakeSink)
	}{
		{"sink refuses", func(s *fakeSink) { s.refuseAll = true }},
		{"commit fails", func(s *fakeSink) { s.failCommit = true }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			sink := &fakeSink{}
			sink.set(tt.set)
			c := startCollector(t, Config{}, sink, &fakeReporter{})
			cl := dialMLLP(t, c.Addr())
			cl.send(t, adt("X1"))
			ack := cl.readACK(t)
			if got, want := ackCode(ack), AckError; got != want {
				t.Fatalf("code=%s, want %s", got, want)
			}
			if got, want := ack.Component(ack.Field("MSA", 3), 1), textStoreFailed; got != want {
				t.Fatalf("MSA-3=%q, want %q", got, want)
			}
			if ack.Segment("ERR") == nil {
				t.Fatal("no ERR segment")
			}
			// Once the sink recovers, the resent message is accepted.
			sink.set(func(s *fakeSink) { s.refuseAll, s.failCommit = false, false })
			cl.send(t, adt("X1"))
			if got, want := ackCode(cl.readACK(t)), AckAccept; got != want {
				t.Fatalf("after recovery code=%s, want %s", got, want)
			}
			if got, want := c.Stats().StoreErrors, uint64(1); got != want {
				t.Fatalf("StoreErrors=%d, want %d", got, want)
			}
		})
	}
}

// TestBadInputAndIsolation: a malformed message gets AR naming the reason, the same
// connection goes on, and another connection is not affected.
func TestBadInputAndIsolation(t *testing.T) {
	sink := &fakeSink{}
	rep := &fakeReporter{}
	c := startCollector(t, Config{MaxMessageSize: MinMaxMessageSize}, sink, rep)
	bad := dialMLLP(t, c.Addr())
	good := dialMLLP(t, c.Addr())

	bad.send(t, "PID|||SECRET-ID\r")
	ack := bad.readACK(t)
	if got, want := ackCode(ack), AckReject; got != want {
		t.Fatalf("code=%s, want %s", got, want)
	}
	if got, want := ack.Component(ack.Field("MSA", 3), 1), "rejected: missing_msh"; got != want {
		t.Fatalf("MSA-3=%q, want %q", got, want)
	}
	if strings.Contains(string(ack.Segments[0].Fields[0]), "SECRET") {
		t.Fatal("ack leaks content")
	}
	good.send(t, adt("G1"))
	if got, want := ackCode(good.readACK(t)), AckAccept; got != want {
		t.Fatalf("good code=%s, want %s", got, want)
	}

	// Bad MSH-12: AR, answered with the message's own control id.
	bad.send(t, "MSH|^~\\&|A|B|C|D|2026||ADT^A01|BADV|P|x\r")
	ack = bad.readACK(t)
	if ackCode(ack) != AckReject || ack.Component(ack.Field("MSA", 2), 1) != "BADV" {
		t.Fatalf("bad_msh ack: code %s MSA-2 %s", ackCode(ack), ack.Component(ack.Field("MSA", 2), 1))
	}
	// Oversize: AR with default delimiters, then the connection goes on.
	bad.send(t, adt("BIG")+"NTE|||"+strings.Repeat("x", MinMaxMessageSize)+"\r")
	if got, want := ackCode(bad.readACK(t)), AckReject; got != want {
		t.Fatalf("oversize code=%s, want %s", got, want)
	}
	// Junk outside a block: no ACK for it, the next block is served.
	if _, err := bad.conn.Write([]byte("junk")); err != nil {
		t.Fatal(err)
	}
	bad.send(t, adt("B2"))
	if got, want := ackCode(bad.readACK(t)), AckAccept; got != want {
		t.Fatalf("after junk code=%s, want %s", got, want)
	}
	reasons := []string{}
	for _, r := range rep.getRejects() {
		reasons = append(reasons, r.Reason)
		if r.Transport != "mllp" || r.Kind != "hl7" || r.IP != "127.0.0.1" {
			t.Fatalf("reject %+v", r)
		}
	}
	if got, want := strings.Join(reasons, ","), "missing_msh,bad_msh,oversize,no_start_block"; got != want {
		t.Fatalf("rejects %s, want %s", got, want)
	}
	if got, want := sink.len(), 2; got != want {
		t.Fatalf("committed %d, want %d", got, want)
	}
}

// TestEnhancedMode sends messages that ask for enhanced-mode acknowledgements under the
// default ack mode (auto) and checks what is answered, in order, on one connection.
func TestEnhancedMode(t *testing.T) {
	sink := &fakeSink{}
	rep := &fakeReporter{}
	c := startCollector(t, Config{}, sink, rep)
	cl := dialMLLP(t, c.Addr())
	msg := func(ctl, accept, app string) string {
		return "MSH|^~\\&|A|B|C|D|2026||ADT^A08|" + ctl + "|P|2.5|||" + accept + "|" + app + "\rPID|||1\r"
	}
	cl.send(t, msg("E0", "NE", "NE")) // never acknowledge
	cl.send(t, msg("E1", "ER", "NE")) // only errors: success is silent
	cl.send(t, msg("E2", "AL", "NE"))
	ack := cl.readACK(t)
	if got, want := ackCode(ack)+" "+ack.Component(ack.Field("MSA", 2), 1), "CA E2"; got != want {
		t.Fatalf("ack %q, want %q", got, want)
	}
	cl.send(t, msg("E3", "NE", "AL")) // no commit ACK, an application ACK
	ack = cl.readACK(t)
	if got, want := ackCode(ack)+" "+ack.Component(ack.Field("MSA", 2), 1), "AA E3"; got != want {
		t.Fatalf("ack %q, want %q", got, want)
	}
	cl.send(t, adt("E4")) // MSH-15 and MSH-16 empty: original mode
	if got, want := ackCode(cl.readACK(t)), AckAccept; got != want {
		t.Fatalf("code=%s, want %s", got, want)
	}
	sink.set(func(s *fakeSink) { s.refuseAll = true })
	cl.send(t, msg("E5", "SU", "NE")) // a failure the sender does not want to hear of
	cl.send(t, msg("E6", "AL", "NE"))
	ack = cl.readACK(t)
	if got, want := ackCode(ack)+" "+ack.Component(ack.Field("MSA", 2), 1), AckCommitError+" E6"; got != want {
		t.Fatalf("ack %q, want %q", got, want)
	}
	if got, want := sink.len(), 5; got != want {
		t.Fatalf("committed %d, want %d", got, want)
	}
	rep.mu.Lock()
	lost := rep.lost["mllp/"+LossStoreNoACK]
	rep.mu.Unlock()
	if got, want := lost, uint64(1); got != want {
		t.Fatalf("lost %s=%d, want %d (E5 refused, not acknowledged)", LossStoreNoACK, got, want)
	}
}

// TestEnhancedACKOnlyAfterCommit pipelines enhanced-mode messages (commit ACK, application
// ACK, none) against slow commits: each ACK that is sent follows its commit, and a
// message answered with nothing is still committed before the next one's ACK.
func TestEnhancedACKOnlyAfterCommit(t *testing.T) {
	order := &orderLog{}
	sink := &fakeSink{commitDelay: 30 * time.Millisecond, order: order}
	c := startCollector(t, Config{}, sink, &fakeReporter{})
	cl := dialMLLP(t, c.Addr())
	msgs := []struct{ ctl, accept, app, want string }{
		{"X0", "AL", "NE", AckCommitAccept},
		{"X1", "NE", "NE", ""},
		{"X2", "NE", "AL", AckAccept},
		{"X3", "ER", "NE", ""},
		{"X4", "SU", "AL", AckCommitAccept},
	}
	for _, m := range msgs {
		cl.send(t, "MSH|^~\\&|A|B|C|D|2026||ADT^A08|"+m.ctl+"|P|2.5|||"+m.accept+"|"+m.app+"\rPID|||1\r")
	}
	var prev string // the last message before this ACK that got none
	for _, m := range msgs {
		if m.want == "" {
			prev = m.ctl
			continue
		}
		ack := cl.readACK(t)
		ctl := ack.Component(ack.Field("MSA", 2), 1)
		order.add("ack " + ctl)
		if got, want := ackCode(ack)+" "+ctl, m.want+" "+m.ctl; got != want {
			t.Fatalf("ack %q, want %q", got, want)
		}
		log := order.get()
		pos := map[string]int{}
		for i, e := range log {
			pos[e] = i
		}
		ci, ok := pos["commit "+m.ctl]
		if !ok || ci > pos["ack "+m.ctl] {
			t.Fatalf("%s acknowledged before its commit; log %q", m.ctl, log)
		}
		if prev != "" {
			if pi, ok := pos["commit "+prev]; !ok || pi > ci {
				t.Fatalf("unacknowledged %s not committed before %s; log %q", prev, m.ctl, log)
			}
			prev = ""
		}
	}
	if got, want := sink.len(), len(msgs); got != want {
		t.Fatalf("committed %d, want %d", got, want)
	}
	waitFor(t, "stats", func() bool {
		st := c.Stats()
		return st.Received == 5 && st.ACKs == 3 && st.NotAcknowledged == 2
	})
}

// TestACKModeOverride checks that ack_mode original and enhanced override what the
// message asks.
func TestACKModeOverride(t *testing.T) {
	tests := []struct {
		mode, accept, app, want string
	}{
		{ACKModeOriginal, "NE", "NE", AckAccept},
		{ACKModeOriginal, "AL", "AL", AckAccept},
		{ACKModeEnhanced, "", "", AckCommitAccept},
		{ACKModeEnhanced, "NE", "AL", AckAccept},
		{ACKModeAuto, "", "", AckAccept},
	}
	for _, tt := range tests {
		t.Run(tt.mode+"/"+tt.accept+"/"+tt.app, func(t *testing.T) {
			c := startCollector(t, Config{ACKMode: tt.mode}, &fakeSink{}, &fakeReporter{})
			cl := dialMLLP(t, c.Addr())
			cl.send(t, "MSH|^~\\&|A|B|C|D|2026||ADT^A08|O1|P|2.5|||"+tt.accept+"|"+tt.app+"\rPID|||1\r")
			if got := ackCode(cl.readACK(t)); got != tt.want {
				t.Fatalf("code=%s, want %s", got, tt.want)
			}
		})
	}
}

func TestTLS(t *testing.T) {
	pki := newTestPKI(t)
	sink := &fakeSink{}
	rep := &fakeReporter{}
	c := startCollector(t, Config{TLSCert: pki.CertFile, TLSKey: pki.KeyFile, TLSClientCA: pki.CAFile}, sink, rep)

	conn, err := tls.Dial("tcp", c.Addr().String(), pki.ClientConfig(true))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	cl := newClient(conn)
	cl.send(t, adt("T1"))
	if got, want := ackCode(cl.readACK(t)), AckAccept; got != want {
		t.Fatalf("code=%s, want %s", got, want)
	}
	if ev := string(sink.raw()[0]); !strings.Contains(ev, `"transport":"mllp+tls"`) {
		t.Fatalf("event transport: %s", ev)
	}

	// Without a client certificate the handshake fails and is reported.
	conn2, err := tls.Dial("tcp", c.Addr().String(), pki.ClientConfig(false))
	if err == nil {
		_, err = conn2.Write(frame(adt("T2")))
		if err == nil {
			_ = conn2.SetReadDeadline(time.Now().Add(5 * time.Second))
			_, err = conn2.Read(make([]byte, 1))
		}
		conn2.Close()
	}
	if err == nil {
		t.Fatal("client without certificate was served")
	}
	waitFor(t, "tls reject", func() bool {
		for _, r := range rep.getRejects() {
			if r.Reason == ReasonTLSHandshake {
				return true
			}
		}
		return false
	})
}

func TestMaxConnections(t *testing.T) {
	rep := &fakeReporter{}
	c := startCollector(t, Config{MaxConnections: 1}, &fakeSink{}, rep)
	first := dialMLLP(t, c.Addr())
	first.send(t, adt("M1"))
	first.readACK(t)
	second := dialMLLP(t, c.Addr())
	second.expectClosed(t)
	if got, want := c.Stats().ConnsRefused, uint64(1); got != want {
		t.Fatalf("ConnsRefused=%d, want %d", got, want)
	}
}

// TestShutdownFinishesMessageInHand: when Run stops while a commit is pending, the
// message in hand is still committed and acknowledged (within drain_timeout), and Run
// returns after it; with a budget shorter than the commit, the sender gets no ACK (it
// will resend) and the message is reported as lost to shutdown.
func TestShutdownFinishesMessageInHand(t *testing.T) {
	for _, tt := range []struct {
		name     string
		drain    time.Duration
		wantACK  bool
		wantLost uint64
	}{
		{"commit within the budget", 3 * time.Second, true, 0},
		{"budget spent first", 100 * time.Millisecond, false, 1},
	} {
		t.Run(tt.name, func(t *testing.T) {
			sink := &fakeSink{commitDelay: 500 * time.Millisecond}
			rep := &fakeReporter{}
			c, err := New(Config{MLLP: "127.0.0.1:0", DrainTimeout: tt.drain}, sink, rep, testTokenizer(t), nil)
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			done := make(chan error, 1)
			go func() { done <- c.Run(ctx) }()
			<-c.Ready()
			idle := dialMLLP(t, c.Addr()) // waiting for a message: ends at once
			cl := dialMLLP(t, c.Addr())
			cl.send(t, adt("S1"))
			waitFor(t, "two connections", func() bool { return c.Stats().ConnsOpen == 2 })
			time.Sleep(100 * time.Millisecond) // the message is in the sink, its commit pending
			if sink.len() != 0 {
				t.Fatal("committed before the stop; the test needs a longer commitDelay")
			}
			cancel()
			if tt.wantACK {
				if got := ackCode(cl.readACK(t)); got != AckAccept {
					t.Fatalf("ACK after stop = %q, want %q", got, AckAccept)
				}
			}
			if err := <-done; err != nil {
				t.Fatalf("Run: %v", err)
			}
			cl.expectClosed(t)
			idle.expectClosed(t)
			if got := c.Stats().Shutdown; got != tt.wantLost {
				t.Fatalf("Shutdown=%d, want %d", got, tt.wantLost)
			}
			if got, want := c.Stats().ACKs, uint64(0); !tt.wantACK && got != want {
				t.Fatalf("ACKs=%d, want %d", got, want)
			}
			time.Sleep(600 * time.Millisecond) // let the fake's commit goroutine finish
		})
	}
}

// TestLifecycle checks Run's contract: it binds, serves, returns nil on cancel, closes
// open connections, and leaves no goroutine behind.
func TestLifecycle(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	sink := &fakeSink{}
	c, err := New(Config{MLLP: "127.0.0.1:0"}, sink, &fakeReporter{}, testTokenizer(t), nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	<-c.Ready()
	var clients []*mllpClient
	for i := range 3 {
		conn, err := net.Dial("tcp", c.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		cl := newClient(conn)
		cl.send(t, adt("L"+strconv.Itoa(i)))
		cl.readACK(t)
		clients = append(clients, cl)
	}
	// One connection sits in the middle of a block.
	if _, err := clients[0].conn.Write([]byte{startBlock, 'M', 'S'}); err != nil {
		t.Fatal(err)
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Run: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return")
	}
	for _, cl := range clients {
		cl.expectClosedOrReset(t)
	}
	if err := c.Run(context.Background()); err == nil {
		t.Fatal("second Run succeeded")
	}
	if got := c.Stats().ConnsOpen; got != 0 {
		t.Fatalf("ConnsOpen=%d after Run", got)
	}
}

func (c *mllpClient) expectClosedOrReset(t testing.TB) {
	t.Helper()
	_ = c.conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	_, err := c.fr.Next()
	var ne net.Error
	if err == nil || (errors.As(err, &ne) && ne.Timeout()) {
		t.Fatalf("connection still open after Run: %v", err)
	}
}

func TestRunBindError(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	c, err := New(Config{MLLP: ln.Addr().String()}, &fakeSink{}, &fakeReporter{}, testTokenizer(t), nil)
	if err != nil {
		t.Fatal(err)
	}
	err = c.Run(t.Context())
	if err == nil || !strings.Contains(err.Error(), ln.Addr().String()) {
		t.Fatalf("Run=%v, want a bind error naming the address", err)
	}
}

func TestConfigValidate(t *testing.T) {
	tests := []struct {
		name  string
		cfg   Config
		field string // "" = valid
	}{
		{"defaults", Config{MLLP: "127.0.0.1:2575"}, ""},
		{"disabled", Config{}, ""},
		{"bad addr", Config{MLLP: "localhost"}, "hl7.mllp"},
		{"cert without key", Config{MLLP: ":2575", TLSCert: "c.pem"}, "hl7.tls_key"},
		{"client ca without tls", Config{MLLP: ":2575", TLSClientCA: "ca.pem"}, "hl7.tls_client_ca"},
		{"tiny size", Config{MaxMessageSize: 10}, "hl7.max_message_size"},
		{"negative conns", Config{MaxConnections: -1}, "hl7.max_connections"},
		{"negative idle", Config{IdleTimeout: -time.Second}, "hl7.idle_timeout"},
		{"ack mode", Config{ACKMode: "sometimes"}, "hl7.ack_mode"},
		{"timezone", Config{Timezone: "Mars/Olympus"}, "hl7.timezone"},
		{"per-IP over the global limit", Config{MaxConnections: 8, MaxConnectionsPerIP: 9}, "hl7.max_connections_per_ip"},
		{"negative per-IP", Config{MaxConnectionsPerIP: -1}, "hl7.max_connections_per_ip"},
		{"negative handshake timeout", Config{HandshakeTimeout: -time.Second}, "hl7.handshake_timeout"},
		{"drain timeout too long", Config{DrainTimeout: 2 * time.Minute}, "hl7.drain_timeout"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.cfg.SetDefaults()
			err := tt.cfg.Validate()
			if tt.field == "" {
				if err != nil {
					t.Fatalf("Validate: %v", err)
				}
				return
			}
			var ce *ConfigError
			if !errors.As(err, &ce) || ce.Field != tt.field {
				t.Fatalf("Validate=%v, want error on %s", err, tt.field)
			}
		})
	}
	var d Config
	d.SetDefaults()
	if d.MaxConnectionsPerIP != DefaultMaxConnections/4 || d.HandshakeTimeout != DefaultHandshakeTimeout || d.DrainTimeout != DefaultDrainTimeout {
		t.Errorf("defaults: per-IP %d, handshake %v, drain %v; want %d, %v, %v", d.MaxConnectionsPerIP, d.HandshakeTimeout, d.DrainTimeout,
			DefaultMaxConnections/4, DefaultHandshakeTimeout, DefaultDrainTimeout)
	}
	if _, err := New(Config{}, &fakeSink{}, &fakeReporter{}, nil, nil); err == nil {
		t.Fatal("New without tokenizer succeeded")
	}
}
