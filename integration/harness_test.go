package integration

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// binPath is the edgeaudit binary that TestMain builds once for the whole package.
var binPath string

// Bounds of the waits in this package. They are failure limits, not expectations: a
// healthy run finishes each of them in a small fraction of the time.
const (
	startTimeout = 30 * time.Second // process start until /healthz and every listener answer
	stopTimeout  = 20 * time.Second // SIGTERM until exit (shutdown_timeout is 8s)
	waitTimeout  = 60 * time.Second // a metric reaching the count the test sent
	cliTimeout   = 2 * time.Minute  // one verify or export run
	pollInterval = 20 * time.Millisecond
)

// Config values every test daemon gets.
const (
	testSite   = "it-site"
	testDevice = "it-device"
)

func TestMain(m *testing.M) {
	os.Exit(runTests(m))
}

func runTests(m *testing.M) int {
	// Every HTTP request of this package goes to the daemon under test on loopback; a
	// request anywhere else is a bug in the test, and must not leave the machine.
	http.DefaultTransport = loopbackTransport()
	dir, err := os.MkdirTemp("", "edgeaudit-integration-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "integration:", err)
		return 1
	}
	defer os.RemoveAll(dir)
	defer cleanupReleases() // build_test.go
	if binPath, err = buildBinary(dir); err != nil {
		fmt.Fprintln(os.Stderr, "integration:", err)
		return 1
	}
	if raceEnabled {
		// A -race binary sleeps a second at exit by default, for reports from other
		// goroutines; every CLI run and daemon stop would pay it. Reports still print.
		os.Setenv("GORACE", strings.TrimSpace(os.Getenv("GORACE")+" atexit_sleep_ms=0"))
	}
	return m.Run()
}

// buildBinary builds cmd/edgeaudit into dir, with -race when the tests have it.
func buildBinary(dir string) (string, error) {
	goTool, err := exec.LookPath("go")
	if err != nil {
		return "", fmt.Errorf("the go tool is needed to build the daemon: %w", err)
	}
	bin := filepath.Join(dir, "edgeaudit")
	args := []string{"build", "-o", bin}
	if raceEnabled {
		args = append(args, "-race")
	}
	args = append(args, "github.com/edgeaudit/edgeaudit/cmd/edgeaudit")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	if out, err := exec.CommandContext(ctx, goTool, args...).CombinedOutput(); err != nil {
		return "", fmt.Errorf("go %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return bin, nil
}

// --- loopback only --------------------------------------------------------------------

// checkLoopback returns an error unless addr (host:port) is a loopback IP address.
func checkLoopback(addr string) error {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("address %q: %w", addr, err)
	}
	ip, err := netip.ParseAddr(host)
	if err != nil || !ip.IsLoopback() {
		return fmt.Errorf("refusing non-loopback address %q: integration tests talk to 127.0.0.1 only", addr)
	}
	return nil
}

// mustLoopback fails the test unless addr is a loopback address. Every peer and dial of
// this package goes through it.
func mustLoopback(t testing.TB, addr string) {
	t.Helper()
	if err := checkLoopback(addr); err != nil {
		t.Fatal(err)
	}
}

func loopbackTransport() *http.Transport {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.Proxy = nil
	var d net.Dialer
	tr.DialContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
		if err := checkLoopback(addr); err != nil {
			return nil, err
		}
		return d.DialContext(ctx, network, addr)
	}
	return tr
}

// dial connects to a loopback address with a bounded timeout.
func dial(t testing.TB, network, addr string) net.Conn {
	t.Helper()
	mustLoopback(t, addr)
	d := net.Dialer{Timeout: 5 * time.Second}
	c, err := d.DialContext(t.Context(), network, addr)
	if err != nil {
		t.Fatalf("dial %s %s: %v", network, addr, err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// freeAddr returns 127.0.0.1:PORT with a port that was free a moment ago. Another process
// may take it before the daemon binds it; startDaemon retries with new ports then.
func freeAddr(t testing.TB, network string) string {
	t.Helper()
	var addr string
	switch network {
	case "tcp":
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr = ln.Addr().String()
		ln.Close()
	case "udp":
		pc, err := net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr = pc.LocalAddr().String()
		pc.Close()
	default:
		t.Fatalf("freeAddr: network %q", network)
	}
	return addr
}

func portOf(t testing.TB, addr string) string {
	t.Helper()
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatal(err)
	}
	return port
}

// --- peers ----------------------------------------------------------------------------

// peer returns the path of a peer program: $ENV when set (e.g. LOGGEN), else PATH, else
// the sbin folders that a non-root PATH lacks, else the extra paths given. When none has
// it, the test fails under CI=true and is skipped elsewhere.
func peer(t testing.TB, name, env string, extra ...string) string {
	t.Helper()
	if env != "" {
		if p := os.Getenv(env); p != "" {
			if !isExecutable(p) {
				missingPeer(t, "$%s=%s is not an executable file", env, p)
			}
			return p
		}
	}
	if p, err := exec.LookPath(name); err == nil {
		return p
	}
	cands := []string{"/usr/sbin/" + name, "/sbin/" + name}
	for _, p := range append(cands, extra...) {
		if isExecutable(p) {
			return p
		}
	}
	missingPeer(t, "%s not found on PATH (scripts/test.sh installs the test peers)", name)
	return ""
}

// missingPeer fails the test under CI=true, where every peer must be installed, and
// skips it elsewhere.
func missingPeer(t testing.TB, format string, args ...any) {
	t.Helper()
	if os.Getenv("CI") == "true" {
		t.Fatalf("peer missing under CI=true: "+format, args...)
	}
	t.Skipf("peer missing: "+format, args...)
}

func isExecutable(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && fi.Mode().IsRegular() && fi.Mode().Perm()&0o111 != 0
}

// process is a peer or daemon process with its output in a file.
type process struct {
	name    string
	cmd     *exec.Cmd
	logPath string
	exited  chan struct{}
	waitErr error // set before exited is closed
}

// startProcess starts cmd with stdout and stderr in a file of dir, and kills it at the
// end of the test if it still runs.
func startProcess(t testing.TB, name, dir string, cmd *exec.Cmd) *process {
	t.Helper()
	p := &process{name: name, cmd: cmd, logPath: filepath.Join(dir, name+".log"), exited: make(chan struct{})}
	f, err := os.OpenFile(p.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close() // the child has its own descriptor
	cmd.Stdout, cmd.Stderr = f, f
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	go func() {
		p.waitErr = cmd.Wait()
		close(p.exited)
	}()
	t.Cleanup(func() {
		if !p.done() {
			_ = cmd.Process.Kill()
			<-p.exited
		}
	})
	return p
}

func (p *process) done() bool {
	select {
	case <-p.exited:
		return true
	default:
		return false
	}
}

// log returns the process output, at most the last 16 KiB.
func (p *process) log() string {
	b, err := os.ReadFile(p.logPath)
	if err != nil {
		return fmt.Sprintf("(no log: %v)", err)
	}
	if len(b) > 16<<10 {
		b = append([]byte("...\n"), b[len(b)-16<<10:]...)
	}
	return string(b)
}

// terminate sends SIGTERM and waits at most bound for the exit. It returns how long the
// exit took; a process still running after bound is killed and the test fails.
func (p *process) terminate(t testing.TB, bound time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	if !p.done() {
		if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil && !errors.Is(err, os.ErrProcessDone) {
			t.Fatalf("SIGTERM %s: %v", p.name, err)
		}
	}
	timer := time.NewTimer(bound)
	defer timer.Stop()
	select {
	case <-p.exited:
	case <-timer.C:
		_ = p.cmd.Process.Kill()
		<-p.exited
		t.Fatalf("%s still running %v after SIGTERM; killed\n%s", p.name, bound, p.log())
	}
	return time.Since(start)
}

// --- the daemon -----------------------------------------------------------------------

// daemonConfig is what a test changes in the daemon's config; zero values keep the
// defaults. TCP is always on: the tests send over it, and it is how readiness shows.
type daemonConfig struct {
	UDP            bool
	RELP           bool       // syslog.relp on a free port
	TLS            *serverTLS // nil: no TLS listener
	MaxEvents      int
	MaxAge         time.Duration
	MaxMessageSize int
	UDPReadBuffer  int
	MaxConnections int
	// DataDir replaces the data folder in the test's temp dir (e.g. one on a tmpfs).
	DataDir string
	// Extra is YAML appended to the config (top-level sections such as uplink:).
	Extra string
	// Prepare runs on the empty data folder before the daemon starts (e.g. to put a
	// signing key there that central has enrolled already).
	Prepare func(dataDir string) error
}

// serverTLS are the PEM files of the daemon's TLS listener.
type serverTLS struct {
	Cert, Key, ClientCA string
}

// daemon is one running `edgeaudit run`.
type daemon struct {
	*process
	dir, config, dataDir       string
	tcp, udp, tls, relp, admin string // bound addresses; "" when off
}

// startDaemon writes a config into a new temp dir, starts the daemon, and returns once
// /healthz answers and every syslog listener is bound. The daemon is killed at the end of
// the test if it still runs.
func startDaemon(t testing.TB, cfg daemonConfig) *daemon {
	t.Helper()
	dir := t.TempDir()
	const attempts = 5
	for attempt := 1; ; attempt++ {
		d := &daemon{
			dir:     dir,
			config:  filepath.Join(dir, "edgeaudit.yaml"),
			dataDir: filepath.Join(dir, "data"),
			tcp:     freeAddr(t, "tcp"),
			admin:   freeAddr(t, "tcp"),
		}
		if cfg.DataDir != "" {
			d.dataDir = cfg.DataDir
		}
		if cfg.UDP {
			d.udp = freeAddr(t, "udp")
		}
		if cfg.TLS != nil {
			d.tls = freeAddr(t, "tcp")
		}
		if cfg.RELP {
			d.relp = freeAddr(t, "tcp")
		}
		for _, a := range []string{d.tcp, d.udp, d.tls, d.relp, d.admin} {
			if a != "" {
				mustLoopback(t, a)
			}
		}
		// A failed attempt may have created the spool; start from nothing.
		if err := os.RemoveAll(d.dataDir); err != nil {
			t.Fatal(err)
		}
		if cfg.Prepare != nil {
			if err := cfg.Prepare(d.dataDir); err != nil {
				t.Fatal(err)
			}
		}
		if err := os.WriteFile(d.config, []byte(d.yaml(cfg)), 0o600); err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command(binPath, "run", "--config", d.config)
		d.process = startProcess(t, fmt.Sprintf("edgeaudit-%d", attempt), dir, cmd)
		err := d.waitReady(t)
		if err == nil {
			return d
		}
		if d.done() && strings.Contains(d.log(), "address already in use") && attempt < attempts {
			t.Logf("daemon start %d: a port was taken meanwhile; retrying with new ports", attempt)
			continue
		}
		t.Fatalf("daemon did not start: %v\n%s", err, d.log())
	}
}

func (d *daemon) yaml(cfg daemonConfig) string {
	var b strings.Builder
	q := strconv.Quote
	fmt.Fprintf(&b, "site: %s\ndevice: %s\ndata_dir: %s\n", testSite, testDevice, q(d.dataDir))
	fmt.Fprintf(&b, "syslog:\n  tcp: %s\n", q(d.tcp))
	if d.udp != "" {
		fmt.Fprintf(&b, "  udp: %s\n", q(d.udp))
	}
	if d.relp != "" {
		fmt.Fprintf(&b, "  relp: %s\n", q(d.relp))
	}
	if cfg.TLS != nil {
		fmt.Fprintf(&b, "  tls: %s\n  tls_cert: %s\n  tls_key: %s\n", q(d.tls), q(cfg.TLS.Cert), q(cfg.TLS.Key))
		if cfg.TLS.ClientCA != "" {
			fmt.Fprintf(&b, "  tls_client_ca: %s\n", q(cfg.TLS.ClientCA))
		}
	}
	if cfg.MaxMessageSize != 0 {
		fmt.Fprintf(&b, "  max_message_size: %d\n", cfg.MaxMessageSize)
	}
	if cfg.UDPReadBuffer != 0 {
		fmt.Fprintf(&b, "  udp_read_buffer: %d\n", cfg.UDPReadBuffer)
	}
	if cfg.MaxConnections != 0 {
		fmt.Fprintf(&b, "  max_connections: %d\n  max_connections_per_ip: %d\n", cfg.MaxConnections, cfg.MaxConnections)
	}
	if cfg.MaxEvents != 0 || cfg.MaxAge != 0 {
		b.WriteString("batch:\n")
		if cfg.MaxEvents != 0 {
			fmt.Fprintf(&b, "  max_events: %d\n", cfg.MaxEvents)
		}
		if cfg.MaxAge != 0 {
			fmt.Fprintf(&b, "  max_age: %s\n", cfg.MaxAge)
		}
	}
	fmt.Fprintf(&b, "admin: %s\nlog_level: debug\n", q(d.admin))
	b.WriteString(cfg.Extra)
	return b.String()
}

// restart starts the daemon again on its config and data folder, after a stop or a
// kill, and waits until it is ready.
func (d *daemon) restart(t testing.TB) {
	t.Helper()
	// A log of its own: waitReady must not count an earlier run's "listening" lines.
	name := fmt.Sprintf("edgeaudit-restart-%d", time.Now().UnixNano())
	d.process = startProcess(t, name, d.dir, exec.Command(binPath, "run", "--config", d.config))
	if err := d.waitReady(t); err != nil {
		t.Fatalf("daemon did not restart: %v\n%s", err, d.log())
	}
}

// listeners is how many syslog listeners the daemon was configured with.
func (d *daemon) listeners() int {
	n := 0
	for _, a := range []string{d.tcp, d.udp, d.tls, d.relp} {
		if a != "" {
			n++
		}
	}
	return n
}

// waitReady polls until /healthz answers and the log shows every syslog listener bound.
// /healthz alone is not enough: the admin endpoint starts before the collectors.
func (d *daemon) waitReady(t testing.TB) error {
	t.Helper()
	deadline := time.Now().Add(startTimeout)
	for {
		if d.done() {
			return fmt.Errorf("exited: %v", d.waitErr)
		}
		if strings.Count(d.log(), "msg=listening ") >= d.listeners() {
			if _, err := d.healthz(t.Context()); err == nil {
				return nil
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("not ready after %v", startTimeout)
		}
		time.Sleep(pollInterval)
	}
}

// stop sends SIGTERM and requires exit status 0 within stopTimeout.
func (d *daemon) stop(t testing.TB) {
	t.Helper()
	d.stopWithin(t, stopTimeout)
}

// stopWithin sends SIGTERM and requires exit status 0 within bound, and no data race
// report in the log (the daemon is built with -race under go test -race).
func (d *daemon) stopWithin(t testing.TB, bound time.Duration) time.Duration {
	t.Helper()
	took := d.terminate(t, bound)
	if d.waitErr != nil {
		t.Fatalf("daemon exited with %v after SIGTERM, want status 0\n%s", d.waitErr, d.log())
	}
	if strings.Contains(d.log(), "WARNING: DATA RACE") {
		t.Errorf("the daemon reported a data race\n%s", d.log())
	}
	return took
}

// pubKey is the daemon's public signing key, the trust anchor of verify -key.
func (d *daemon) pubKey() string { return filepath.Join(d.dataDir, "keys", "signing.pub") }

var httpClient = &http.Client{Timeout: 5 * time.Second}

func (d *daemon) get(ctx context.Context, path string) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+d.admin+path, nil)
	if err != nil {
		return nil, err
	}
	resp, err := httpClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return nil, &httpStatusError{path: path, status: resp.Status, code: resp.StatusCode, body: body}
	}
	return body, nil
}

// health is the part of /healthz the tests read.
type health struct {
	Status     string   `json:"status"`
	HeadSeq    uint64   `json:"head_seq"`
	OpenEvents int      `json:"open_events"`
	Committed  uint64   `json:"events_committed"`
	SpoolFull  bool     `json:"spool_full"`
	Warnings   []string `json:"warnings"`
	Failures   []string `json:"failures"`
	Incidents  []struct {
		Action  string `json:"action"`
		Failure bool   `json:"failure"`
	} `json:"incidents"`
}

// healthz returns the daemon's health once it is up: ok, warning, or failure (which
// /healthz answers with 503 and the same JSON). "starting" is an error.
func (d *daemon) healthz(ctx context.Context) (health, error) {
	var h health
	b, err := d.get(ctx, "/healthz")
	var he *httpStatusError
	if errors.As(err, &he) && he.code == http.StatusServiceUnavailable {
		b, err = he.body, nil
	}
	if err != nil {
		return h, err
	}
	if err := json.Unmarshal(b, &h); err != nil {
		return h, err
	}
	switch h.Status {
	case "ok", "warning", "failure":
		return h, nil
	}
	return h, fmt.Errorf("/healthz status %q", h.Status)
}

// httpStatusError is a non-200 answer of the admin endpoint.
type httpStatusError struct {
	path, status string
	code         int
	body         []byte
}

func (e *httpStatusError) Error() string {
	return fmt.Sprintf("GET %s: %s: %s", e.path, e.status, e.body)
}

func (d *daemon) mustHealth(t testing.TB) health {
	t.Helper()
	h, err := d.healthz(t.Context())
	if err != nil {
		t.Fatalf("/healthz: %v\n%s", err, d.log())
	}
	return h
}

// metrics scrapes /metrics.
func (d *daemon) metrics(t testing.TB) metrics {
	t.Helper()
	b, err := d.get(t.Context(), "/metrics")
	if err != nil {
		t.Fatalf("/metrics: %v\n%s", err, d.log())
	}
	m, err := parseMetrics(b)
	if err != nil {
		t.Fatalf("/metrics: %v", err)
	}
	return m
}

// waitMetric polls /metrics until the sum of the matching series reaches want, and fails
// at once if it goes beyond it (more than was sent is a bug too).
func (d *daemon) waitMetric(t testing.TB, want float64, name string, labels ...string) {
	t.Helper()
	var got float64
	eventually(t, waitTimeout, func() (bool, string) {
		got = d.metrics(t).sum(name, labels...)
		return got >= want, fmt.Sprintf("%s%v = %v, want %v\n%s", name, labels, got, want, d.log())
	})
	if got != want {
		t.Fatalf("%s%v = %v, want %v", name, labels, got, want)
	}
}

// eventually polls cond until it reports true, failing the test with cond's description
// after timeout.
func eventually(t testing.TB, timeout time.Duration, cond func() (ok bool, status string)) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		ok, status := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("not reached after %v: %s", timeout, status)
		}
		select {
		case <-t.Context().Done():
			t.Fatalf("test ended while waiting: %s", status)
		case <-time.After(pollInterval):
		}
	}
}

// --- Prometheus text ------------------------------------------------------------------

type sample struct {
	name   string
	labels map[string]string
	value  float64
}

type metrics []sample

// sum adds the values of the series called name whose labels include the given
// key, value pairs.
func (m metrics) sum(name string, kv ...string) float64 {
	var total float64
next:
	for _, s := range m {
		if s.name != name {
			continue
		}
		for i := 0; i+1 < len(kv); i += 2 {
			if s.labels[kv[i]] != kv[i+1] {
				continue next
			}
		}
		total += s.value
	}
	return total
}

// parseMetrics reads the Prometheus text format as client_golang writes it (no
// timestamps).
func parseMetrics(b []byte) (metrics, error) {
	var m metrics
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || line[0] == '#' {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if i < 0 {
			return nil, fmt.Errorf("metrics line %q: no value", line)
		}
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			return nil, fmt.Errorf("metrics line %q: %v", line, err)
		}
		s := sample{name: line[:i], value: v, labels: map[string]string{}}
		if j := strings.IndexByte(s.name, '{'); j >= 0 {
			if s.labels, err = parseLabels(strings.TrimSuffix(s.name[j+1:], "}")); err != nil {
				return nil, fmt.Errorf("metrics line %q: %v", line, err)
			}
			s.name = s.name[:j]
		}
		m = append(m, s)
	}
	return m, sc.Err()
}

func parseLabels(s string) (map[string]string, error) {
	labels := map[string]string{}
	for s != "" {
		key, rest, ok := strings.Cut(s, "=")
		if !ok {
			return nil, fmt.Errorf("label %q without value", s)
		}
		quoted, err := strconv.QuotedPrefix(rest)
		if err != nil {
			return nil, fmt.Errorf("label %s: %v", key, err)
		}
		if labels[key], err = strconv.Unquote(quoted); err != nil {
			return nil, fmt.Errorf("label %s: %v", key, err)
		}
		s = strings.TrimPrefix(rest[len(quoted):], ",")
	}
	return labels, nil
}

// --- the CLI --------------------------------------------------------------------------

type cliResult struct {
	args           []string
	stdout, stderr string
	code           int
}

func (r cliResult) String() string {
	return fmt.Sprintf("edgeaudit %s: exit %d\nstdout: %s\nstderr: %s", strings.Join(r.args, " "), r.code, r.stdout, r.stderr)
}

// runCLI runs the binary with args and returns its output and exit status. Only a failure
// to run it at all fails the test.
func runCLI(t testing.TB, args ...string) cliResult {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), cliTimeout)
	defer cancel()
	var stdout, stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, binPath, args...)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	res := cliResult{args: args, stdout: stdout.String(), stderr: stderr.String()}
	var ee *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &ee) && ee.Exited():
		res.code = ee.ExitCode()
	default:
		t.Fatalf("edgeaudit %s: %v\n%s", strings.Join(args, " "), err, stderr.String())
	}
	return res
}

// verifyResult is the output of verify -json.
type verifyResult struct {
	OK      bool   `json:"ok"`
	Batches int    `json:"batches"`
	Events  int    `json:"events"`
	Chain   string `json:"chain"`
	LastSeq uint64 `json:"last_seq"`
	BadSeq  uint64 `json:"bad_seq"`
	Reason  string `json:"reason"`
	Error   string `json:"error"`
	Receipt *struct {
		Seq     uint64 `json:"seq"`
		Matched string `json:"matched"`
	} `json:"receipt"`
}

// verify runs `edgeaudit verify -json ARGS...` and decodes its answer.
func verify(t testing.TB, args ...string) (verifyResult, cliResult) {
	t.Helper()
	res := runCLI(t, append([]string{"verify", "-json"}, args...)...)
	var v verifyResult
	if err := json.Unmarshal([]byte(res.stdout), &v); err != nil {
		t.Fatalf("verify -json output: %v\n%s", err, res)
	}
	return v, res
}

// mustVerifyData requires `verify -data DIR [extra]` to exit 0 and report an intact
// chain. extra is e.g. -config FILE, where the data key that decrypts the spool is in a
// TPM that only the config names.
func mustVerifyData(t testing.TB, dataDir string, extra ...string) verifyResult {
	t.Helper()
	v, res := verify(t, append([]string{"-data", dataDir}, extra...)...)
	if res.code != 0 || !v.OK {
		t.Fatalf("verify -data: ok=%v, want an intact chain\n%s", v.OK, res)
	}
	return v
}

// event is the part of an exported event JSON line the tests check.
type event struct {
	ID     string `json:"id"`
	Source struct {
		Kind      string `json:"kind"`
		Host      string `json:"host"`
		IP        string `json:"ip"`
		App       string `json:"app"`
		Transport string `json:"transport"`
	} `json:"source"`
	Action    string `json:"action"`
	Outcome   string `json:"outcome"`
	Patient   string `json:"patient"`
	Reason    string `json:"reason"`
	Count     int    `json:"count"`
	Message   string `json:"message"`
	Malformed bool   `json:"malformed"`
	// ClockUnsynced: received while the appliance's clock was not known right.
	ClockUnsynced bool              `json:"clock_unsynced"`
	Detail        map[string]string `json:"detail"`
	RawSHA256     string            `json:"raw_sha256"`
}

// exportEvents runs `export -events` (with -open: also the unsealed events) on a stopped
// daemon's data folder and decodes the lines. Each export is recorded in the chain
// (audit.export); those records are left out, so that counts compare across exports:
// exportAllEvents keeps them.
func exportEvents(t testing.TB, dataDir string, open bool, extra ...string) []event {
	t.Helper()
	var out []event
	for _, e := range exportAllEvents(t, dataDir, open, extra...) {
		if e.Action != "audit.export" {
			out = append(out, e)
		}
	}
	return out
}

// exportAllEvents is exportEvents with the records of exports.
func exportAllEvents(t testing.TB, dataDir string, open bool, extra ...string) []event {
	t.Helper()
	out := filepath.Join(t.TempDir(), "events.jsonl")
	args := append([]string{"export", "-data", dataDir, "-out", out, "-events"}, extra...)
	if open {
		args = append(args, "-open")
	}
	if res := runCLI(t, args...); res.code != 0 {
		t.Fatalf("export failed\n%s", res)
	}
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	var evs []event
	for i, line := range bytes.Split(bytes.TrimSuffix(b, []byte("\n")), []byte("\n")) {
		if len(line) == 0 {
			continue
		}
		var e event
		if err := json.Unmarshal(line, &e); err != nil {
			t.Fatalf("exported event %d: %v: %.200s", i, err, line)
		}
		evs = append(evs, e)
	}
	return evs
}

// syslogByMessage indexes the syslog events (not the daemon's own) by message.
func syslogByMessage(evs []event) map[string][]event {
	m := map[string][]event{}
	for _, e := range evs {
		if e.Source.Kind == "syslog" {
			m[e.Message] = append(m[e.Message], e)
		}
	}
	return m
}

// selfEvents returns the daemon's own events with the given action.
func selfEvents(evs []event, action string) []event {
	var out []event
	for _, e := range evs {
		if e.Source.Kind == "self" && e.Action == action {
			out = append(out, e)
		}
	}
	return out
}

// checkMarkers requires each of want to be in byMsg exactly once, over transport from
// 127.0.0.1. It reports at most a few failures of each kind.
func checkMarkers(t testing.TB, byMsg map[string][]event, want []string, transport string) {
	t.Helper()
	var missing, dup, wrong int
	for _, m := range want {
		evs := byMsg[m]
		switch {
		case len(evs) == 0:
			if missing++; missing <= 5 {
				t.Errorf("message %q not in the chain", m)
			}
			continue
		case len(evs) > 1:
			if dup++; dup <= 5 {
				t.Errorf("message %q is in the chain %d times, want once", m, len(evs))
			}
		}
		if e := evs[0]; e.Source.Transport != transport || e.Source.IP != "127.0.0.1" {
			if wrong++; wrong <= 5 {
				t.Errorf("message %q: transport %q from %q, want %q from 127.0.0.1", m, e.Source.Transport, e.Source.IP, transport)
			}
		}
	}
	if missing+dup+wrong > 0 {
		t.Errorf("of %d messages: %d missing, %d duplicated, %d with the wrong source", len(want), missing, dup, wrong)
	}
}

// --- senders --------------------------------------------------------------------------

// rfc5424 returns an RFC 5424 message whose MSG is msg.
func rfc5424(msg string) string {
	return "<110>1 2026-11-27T08:00:00.000Z it-host ittest - - - " + msg
}

// octetFrame returns msg framed with octet counting (RFC 6587 3.4.1).
func octetFrame(msg string) []byte {
	return append(strconv.AppendInt(nil, int64(len(msg)), 10), append([]byte{' '}, msg...)...)
}

// sendOctet sends msgs over one new TCP connection, octet-counted, and closes it.
func sendOctet(t testing.TB, addr string, msgs []string) {
	t.Helper()
	if err := writeOctet(addr, msgs); err != nil {
		t.Fatal(err)
	}
}

// writeOctet is sendOctet for goroutines other than the test's: it returns the error.
func writeOctet(addr string, msgs []string) error {
	if err := checkLoopback(addr); err != nil {
		return err
	}
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	var buf []byte
	for _, m := range msgs {
		buf = append(buf, octetFrame(rfc5424(m))...)
	}
	if err := c.SetWriteDeadline(time.Now().Add(30 * time.Second)); err != nil {
		return err
	}
	if _, err := c.Write(buf); err != nil {
		return fmt.Errorf("send to %s: %w", addr, err)
	}
	return c.Close()
}

// markers returns n unique messages prefix-0 .. prefix-(n-1).
func markers(prefix string, n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("%s-%d", prefix, i)
	}
	return out
}
