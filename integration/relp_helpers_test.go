package integration

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// requireOmrelp checks that rsyslog's RELP output module (Debian's rsyslog-relp) is
// installed.
func requireOmrelp(t testing.TB) {
	t.Helper()
	for _, g := range []string{"/usr/lib/*/rsyslog/omrelp.so", "/usr/lib/rsyslog/omrelp.so"} {
		if m, _ := filepath.Glob(g); len(m) > 0 {
			return
		}
	}
	missingPeer(t, "rsyslog's omrelp.so not found (package rsyslog-relp)")
}

// relpRsyslog is a running rsyslogd that forwards what it receives on input (imtcp, LF
// framing) to the daemon's RELP listener with omrelp. rsyslogd keeps every frame the
// daemon has not acknowledged and resends it after reconnecting, which is what the
// kill -9 test relies on.
type relpRsyslog struct {
	*process
	input string
}

// startRsyslogRELP runs rsyslogd in the foreground with its own config, work folder and
// pid file. tlsOpts are extra omrelp parameters ("" for plain RELP). It returns once
// imtcp accepts connections.
func startRsyslogRELP(t testing.TB, bin, target, tlsOpts string) *relpRsyslog {
	t.Helper()
	mustLoopback(t, target)
	dir := t.TempDir()
	rs := &relpRsyslog{input: freeAddr(t, "tcp")}
	mustLoopback(t, rs.input)
	host, port, _ := net.SplitHostPort(target)
	// No imuxsock or imklog: this rsyslogd must not touch the machine's /dev/log. The
	// input is bound to its own ruleset, so rsyslogd's own messages are not forwarded.
	// resumeRetryCount -1: never give up on the daemon (it is killed and restarted).
	conf := fmt.Sprintf(`global(workDirectory=%q)
module(load="imtcp")
module(load="omrelp")
input(type="imtcp" address="127.0.0.1" port=%q ruleset="fwd")
ruleset(name="fwd") {
  action(type="omrelp" target=%q port=%q template="RSYSLOG_SyslogProtocol23Format"
         windowSize="128" timeout="30" conn.timeout="5"
         action.resumeRetryCount="-1" action.resumeInterval="1" %s)
}
`, dir, portOf(t, rs.input), host, port, tlsOpts)
	rs.process = runRsyslog(t, bin, dir, conf, rs.input)
	return rs
}

// relpLine is one message as the tests feed it to rsyslogd's imtcp.
func relpLine(msg string) string { return rfc5424(msg) + "\n" }

// feedRsyslog writes msgs to rsyslogd's input over one connection.
func feedRsyslog(t testing.TB, rs *relpRsyslog, msgs []string) {
	t.Helper()
	c := dial(t, "tcp", rs.input)
	defer c.Close()
	var b strings.Builder
	for _, m := range msgs {
		b.WriteString(relpLine(m))
	}
	_ = c.SetWriteDeadline(time.Now().Add(30 * time.Second))
	if _, err := c.Write([]byte(b.String())); err != nil {
		t.Fatalf("write to rsyslogd: %v", err)
	}
}

// relpDaemon is one `edgeaudit run` with a RELP listener on a fixed port: rsyslogd's
// omrelp target does not change across the restarts of the kill -9 test.
type relpDaemon struct {
	*process
	config, dataDir string
}

// relpDaemonConfig is the config of the RELP tests: small batches and a short max_age
// so that kills land in commits that also seal. extra is appended to the syslog section.
func relpDaemonConfig(dataDir, relp, admin, extra string) string {
	q := strconv.Quote
	return fmt.Sprintf(`site: %s
device: %s
data_dir: %s
syslog:
  tcp: "127.0.0.1:0"
  relp: %s
%sbatch:
  max_events: 50
  max_age: 100ms
admin: %s
shutdown_timeout: 8s
log_level: info
`, testSite, testDevice, q(dataDir), q(relp), extra, q(admin))
}

// startRELPDaemon starts the daemon on config and returns once its RELP listener is
// bound (the log line "listening transport=relp..." or transport=relp+tls). A daemon
// that exits first or never opens it fails the test, with its log: until syslog.relp is
// wired into the syslog collector's Config and Run, this is where the RELP tests fail.
func startRELPDaemon(t testing.TB, dir, config, dataDir, transport string) *relpDaemon {
	t.Helper()
	d := &relpDaemon{config: config, dataDir: dataDir}
	cmd := exec.Command(binPath, "run", "--config", config)
	// A log file per start: the listening line of an earlier run must not count.
	d.process = startProcess(t, fmt.Sprintf("edgeaudit-relp-%d", relpStarts.Add(1)), dir, cmd)
	want := "transport=" + transport + " "
	deadline := time.Now().Add(startTimeout)
	for {
		log := d.log()
		for _, line := range strings.Split(log, "\n") {
			if strings.Contains(line, "msg=listening") && strings.Contains(line+" ", want) {
				return d
			}
		}
		if d.done() {
			t.Fatalf("daemon exited before its RELP listener (%s) was bound: %v (is syslog.relp wired into the syslog collector's config and Run?)\n%s",
				transport, d.waitErr, log)
		}
		if time.Now().After(deadline) {
			t.Fatalf("daemon logged no \"msg=listening %s\" within %v (is syslog.relp wired into the syslog collector's config and Run?)\n%s",
				want, startTimeout, log)
		}
		time.Sleep(pollInterval)
	}
}

var relpStarts atomic.Int64

// kill sends SIGKILL and waits until the process is gone.
func (d *relpDaemon) kill(t testing.TB) {
	t.Helper()
	if err := d.cmd.Process.Signal(syscall.SIGKILL); err != nil && !d.done() {
		t.Fatalf("kill -9: %v", err)
	}
	select {
	case <-d.exited:
	case <-time.After(stopTimeout):
		t.Fatalf("daemon still running %v after SIGKILL", stopTimeout)
	}
}

// relpCount returns, for each marker with prefix, how often it is in the chain over
// transport, and the number of syslog events with another transport or source.
func relpCount(evs []event, prefix, transport string) (count map[string]int, wrong int) {
	count = map[string]int{}
	for _, e := range evs {
		if e.Source.Kind != "syslog" || !strings.HasPrefix(e.Message, prefix) {
			continue
		}
		if e.Source.Transport != transport || e.Source.IP != "127.0.0.1" || e.Malformed {
			wrong++
			continue
		}
		count[e.Message]++
	}
	return count, wrong
}

// startRELPDaemonCmd is startRELPDaemon for a prepared command (the daemon under
// strace) with its own start bound.
func startRELPDaemonCmd(t testing.TB, dir string, cmd *exec.Cmd, transport string, bound time.Duration) *relpDaemon {
	t.Helper()
	d := &relpDaemon{}
	d.process = startProcess(t, fmt.Sprintf("edgeaudit-relp-%d", relpStarts.Add(1)), dir, cmd)
	want := "transport=" + transport + " "
	deadline := time.Now().Add(bound)
	for {
		log := d.log()
		for _, line := range strings.Split(log, "\n") {
			if strings.Contains(line, "msg=listening") && strings.Contains(line+" ", want) {
				return d
			}
		}
		if d.done() {
			t.Fatalf("daemon exited before its RELP listener was bound: %v\n%s", d.waitErr, log)
		}
		if time.Now().After(deadline) {
			t.Fatalf("daemon logged no \"msg=listening %s\" within %v\n%s", want, bound, log)
		}
		time.Sleep(pollInterval)
	}
}

// stopTracedProcess sends SIGTERM to strace's child, the daemon (strace would detach on
// its own SIGTERM and leave the daemon running), and waits for strace to end with it.
func stopTracedProcess(t testing.TB, p *process) {
	t.Helper()
	spid := p.cmd.Process.Pid
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", spid, spid))
	if err != nil {
		t.Fatalf("find the traced daemon: %v", err)
	}
	f := strings.Fields(string(b))
	if len(f) == 0 {
		t.Fatal("strace has no child")
	}
	pid, err := strconv.Atoi(f[0])
	if err != nil {
		t.Fatal(err)
	}
	proc, err := os.FindProcess(pid)
	if err != nil {
		t.Fatal(err)
	}
	if err := proc.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case <-p.exited:
	case <-time.After(2 * stopTimeout):
		t.Fatalf("traced daemon did not stop\n%s", p.log())
	}
	if p.waitErr != nil {
		t.Fatalf("traced daemon exited with %v\n%s", p.waitErr, p.log())
	}
}

// relpClient is a minimal RELP client: one command at a time, each answer read before
// the next command, so that in a trace the first rsp written after a command's read is
// its answer.
type relpClient struct {
	conn net.Conn
	br   *bufio.Reader
	txnr int
}

func dialRELPClient(t testing.TB, addr string) *relpClient {
	t.Helper()
	c := dial(t, "tcp", addr)
	_ = c.SetDeadline(time.Now().Add(2 * time.Minute))
	return &relpClient{conn: c, br: bufio.NewReader(c), txnr: 1}
}

// command sends one command and returns the data of its rsp.
func (c *relpClient) command(t testing.TB, cmd, data string) string {
	t.Helper()
	n := c.txnr
	c.txnr++
	frame := fmt.Sprintf("%d %s %d", n, cmd, len(data))
	if data != "" {
		frame += " " + data
	}
	if _, err := io.WriteString(c.conn, frame+"\n"); err != nil {
		t.Fatalf("relp %s: %v", cmd, err)
	}
	var txnr, size int
	var word string
	if _, err := fmt.Fscanf(c.br, "%d %s %d", &txnr, &word, &size); err != nil {
		t.Fatalf("relp answer to %s: %v", cmd, err)
	}
	if txnr != n || word != "rsp" {
		t.Fatalf("relp answer to %d %s: %d %s, want %d rsp", n, cmd, txnr, word, n)
	}
	body := make([]byte, size+1) // the SP before the data (when any) or the LF trailer
	if size == 0 {
		body = body[:1]
	} else {
		body = append(body, 0)
	}
	if _, err := io.ReadFull(c.br, body); err != nil {
		t.Fatalf("relp answer to %s: %v", cmd, err)
	}
	if size == 0 {
		return ""
	}
	return string(body[1 : 1+size])
}

func (c *relpClient) open(t testing.TB) {
	t.Helper()
	rsp := c.command(t, "open", "relp_version=0\nrelp_software=edgeaudit-it\ncommands=syslog")
	if !strings.HasPrefix(rsp, "200 OK\n") {
		t.Fatalf("relp open: %q, want 200 OK and offers", rsp)
	}
}

func (c *relpClient) syslog(t testing.TB, msg string) string {
	t.Helper()
	return c.command(t, "syslog", msg)
}

func (c *relpClient) close(t testing.TB) {
	t.Helper()
	if rsp := c.command(t, "close", ""); !strings.HasPrefix(rsp, "200") {
		t.Fatalf("relp close: %q, want 200", rsp)
	}
	c.conn.Close()
}
