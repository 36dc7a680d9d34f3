package integration

import (
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// rsyslogMessages is how many messages go through rsyslog.
const rsyslogMessages = 200

// TestRsyslogTLSForward runs the daemon's TLS listener with mutual authentication and
// forwards messages to it through a real rsyslogd (omfwd, GnuTLS, client certificate,
// octet-counted framing). It checks that every message arrived once over "tls", that
// clients without a certificate from the trusted CA are refused with nothing of theirs
// stored (and the refusal recorded), and that the chain verifies.
func TestRsyslogTLSForward(t *testing.T) {
	t.Parallel()
	rsyslogd := peer(t, "rsyslogd", "")
	logger := peer(t, "logger", "")
	requireGTLS(t)

	ca := newPKI(t, t.TempDir(), "trusted")
	rogue := newPKI(t, t.TempDir(), "rogue")
	d := startDaemon(t, daemonConfig{TLS: &serverTLS{Cert: ca.ServerCert, Key: ca.ServerKey, ClientCA: ca.CAFile}})

	refused := []struct {
		name   string
		marker string
		cfg    *tls.Config
	}{
		{"no-client-certificate", "tls-refused-nocert", ca.clientTLS(t, "", "")},
		{"certificate-from-another-ca", "tls-refused-rogue", ca.clientTLS(t, rogue.ClientCert, rogue.ClientKey)},
	}
	for _, tt := range refused {
		t.Run(tt.name, func(t *testing.T) {
			rejected := func() float64 {
				return d.metrics(t).sum("edgeaudit_input_rejected_total",
					"collector", "syslog", "transport", "tls", "reason", "tls_handshake")
			}
			before := rejected()
			err := tlsSendAndRead(t, d.tls, tt.cfg, tt.marker)
			if err == nil {
				t.Fatal("the daemon kept the connection open, want it refused")
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				t.Fatalf("no answer within the deadline, want a refusal: %v", err)
			}
			t.Logf("refused as expected: %v", err)
			d.waitMetric(t, before+1, "edgeaudit_input_rejected_total",
				"collector", "syslog", "transport", "tls", "reason", "tls_handshake")
		})
	}

	want := markers("rsyslog-tls", rsyslogMessages)
	t.Run("rsyslog-mutual-tls", func(t *testing.T) {
		rs := startRsyslog(t, rsyslogd, ca, d.tls)
		runLogger(t, logger, []string{"-n", "127.0.0.1", "-P", portOf(t, rs.input), "-T", "--rfc5424", "-t", "edgeaudit-it"},
			want, len(want), nil)
		d.waitMetric(t, float64(len(want)), "edgeaudit_syslog_received_total", "transport", "tls")
		rs.terminate(t, stopTimeout)
	})

	d.stop(t)
	evs := exportEvents(t, d.dataDir, false)
	byMsg := syslogByMessage(evs)
	checkMarkers(t, byMsg, want, "tls")
	for _, e := range evs {
		for _, tt := range refused {
			if strings.Contains(e.Message, tt.marker) {
				t.Errorf("a message of the refused client %s was stored: %+v", tt.name, e)
			}
		}
	}
	var handshakes int
	for _, e := range selfEvents(evs, "audit.input_rejected") {
		if e.Reason == "tls_handshake" && e.Detail["transport"] == "tls" && e.Source.IP == "127.0.0.1" {
			handshakes++
		}
	}
	if got, want := handshakes, len(refused); got != want {
		t.Errorf("chain has %d audit.input_rejected events for tls_handshake from 127.0.0.1, want %d", got, want)
	}
	mustVerifyData(t, d.dataDir)
}

// tlsSendAndRead connects with cfg, sends one message and reads. A refused client gets an
// error from the handshake (TLS 1.2) or from the first read (TLS 1.3, where the client
// finishes its side of the handshake before the server checks its certificate).
func tlsSendAndRead(t testing.TB, addr string, cfg *tls.Config, msg string) error {
	t.Helper()
	c := tls.Client(dial(t, "tcp", addr), cfg)
	defer c.Close()
	if err := c.SetDeadline(time.Now().Add(10 * time.Second)); err != nil {
		t.Fatal(err)
	}
	if err := c.Handshake(); err != nil {
		return err
	}
	if _, err := c.Write(octetFrame(rfc5424(msg))); err != nil {
		return err
	}
	_, err := c.Read(make([]byte, 1))
	return err
}

// requireGTLS checks that rsyslog's GnuTLS stream driver (Debian's rsyslog-gnutls) is
// installed.
func requireGTLS(t testing.TB) {
	t.Helper()
	for _, g := range []string{"/usr/lib/*/rsyslog/lmnsd_gtls.so", "/usr/lib/rsyslog/lmnsd_gtls.so"} {
		if m, _ := filepath.Glob(g); len(m) > 0 {
			return
		}
	}
	missingPeer(t, "rsyslog's GnuTLS driver lmnsd_gtls.so not found (package rsyslog-gnutls)")
}

// rsyslog is a running rsyslogd that forwards what it receives on input (plain TCP) to
// the daemon over TLS.
type rsyslog struct {
	*process
	input string
}

// startRsyslog runs rsyslogd in the foreground with its own config, work directory and
// pid file, listening with imtcp on a free 127.0.0.1 port and forwarding with omfwd over
// mutual TLS to target. It returns once the input port accepts connections.
func startRsyslog(t testing.TB, bin string, p *pki, target string) *rsyslog {
	t.Helper()
	mustLoopback(t, target)
	dir := t.TempDir()
	work := filepath.Join(dir, "work")
	if err := os.Mkdir(work, 0o700); err != nil {
		t.Fatal(err)
	}
	rs := &rsyslog{input: freeAddr(t, "tcp")}
	mustLoopback(t, rs.input)
	host, port, _ := net.SplitHostPort(target)
	// No imuxsock or imklog: this rsyslogd must not touch the machine's /dev/log. Its
	// input is bound to the forwarding ruleset, so its own start and stop messages
	// (default ruleset, no action) are not forwarded.
	conf := fmt.Sprintf(`global(
  workDirectory="%s"
  defaultNetstreamDriverCAFile="%s"
  defaultNetstreamDriverCertFile="%s"
  defaultNetstreamDriverKeyFile="%s"
)
module(load="imtcp")
input(type="imtcp" address="127.0.0.1" port="%s" ruleset="forward")
ruleset(name="forward") {
  action(type="omfwd" target="%s" port="%s" protocol="tcp"
         StreamDriver="gtls" StreamDriverMode="1" StreamDriverAuthMode="x509/name"
         StreamDriverPermittedPeers="%s" TCP_Framing="octet-counted"
         template="RSYSLOG_SyslogProtocol23Format"
         action.resumeRetryCount="-1" action.resumeInterval="1")
}
`, work, p.CAFile, p.ClientCert, p.ClientKey, portOf(t, rs.input), host, port, serverName)
	rs.process = runRsyslog(t, bin, dir, conf, rs.input)
	return rs
}

// runRsyslog checks conf with rsyslogd -N1, runs rsyslogd with it in the foreground
// (its own pid file in dir), and returns once its imtcp input accepts connections.
func runRsyslog(t testing.TB, bin, dir, conf, input string) *process {
	t.Helper()
	confPath := filepath.Join(dir, "rsyslog.conf")
	if err := os.WriteFile(confPath, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.CommandContext(t.Context(), bin, "-N1", "-f", confPath).CombinedOutput(); err != nil {
		t.Fatalf("rsyslogd -N1 (config check): %v\n%s\n%s", err, out, conf)
	}
	cmd := exec.Command(bin, "-n", "-f", confPath, "-i", filepath.Join(dir, "rsyslogd.pid"))
	p := startProcess(t, "rsyslogd", dir, cmd)
	eventually(t, startTimeout, func() (bool, string) {
		if p.done() {
			t.Fatalf("rsyslogd exited: %v\n%s", p.waitErr, p.log())
		}
		c, err := net.DialTimeout("tcp", input, time.Second)
		if err != nil {
			return false, fmt.Sprintf("rsyslogd input %s: %v\n%s", input, err, p.log())
		}
		c.Close()
		return true, ""
	})
	return p
}
