// Package testntp starts a real chronyd for tests as an NTP server on a free 127.0.0.1
// port, with -x (it never touches the system clock), optionally with a skewed clock
// through libfaketime. Tests only.
package testntp

import (
	"bytes"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/beevik/ntp"
)

// Options configure the server.
type Options struct {
	// Offset skews the server's clock by this much (libfaketime's FAKETIME="+5s"), so
	// that a client measures an offset of about +Offset. Zero runs chronyd unskewed.
	Offset time.Duration
	// Unsynchronized leaves out `local stratum`: chronyd then answers stratum 0 with
	// leap 3 (alarm), a real server that is up but has no time to give.
	Unsynchronized bool
	// Stratum is the `local stratum` (default 8).
	Stratum int
}

// Server is one running chronyd.
type Server struct {
	Addr string // 127.0.0.1:port

	t    testing.TB
	dir  string
	bin  string
	env  []string
	opts Options
	cmd  *exec.Cmd
	done chan struct{}
	log  *syncBuffer
}

// missing fails under CI=true (a missing peer is a failure there) and skips otherwise.
func missing(t testing.TB, what, pkg string) {
	t.Helper()
	if os.Getenv("CI") == "true" {
		t.Fatalf("%s not found (CI=true: a missing peer is a failure; apt-get install %s)", what, pkg)
	}
	t.Skipf("%s not found; apt-get install %s to run this test", what, pkg)
}

// Binary finds chronyd: on PATH, else Debian's /usr/sbin.
func Binary(t testing.TB) string {
	t.Helper()
	if p, err := exec.LookPath("chronyd"); err == nil {
		return p
	}
	for _, p := range []string{"/usr/sbin/chronyd", "/usr/local/sbin/chronyd"} {
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	missing(t, "chronyd", "chrony")
	return ""
}

// FakeTimeLib finds libfaketime.so.1 (Debian package libfaketime). The library is
// preloaded into chronyd itself: the faketime wrapper forks chronyd as a child, so
// killing the wrapper would leave chronyd running.
func FakeTimeLib(t testing.TB) string {
	t.Helper()
	pats := []string{"/usr/lib/*/faketime/libfaketime.so.1", "/usr/lib/faketime/libfaketime.so.1", "/usr/local/lib/faketime/libfaketime.so.1"}
	for _, p := range pats {
		if m, _ := filepath.Glob(p); len(m) > 0 {
			return m[0]
		}
	}
	missing(t, "libfaketime.so.1", "libfaketime")
	return ""
}

// Start runs chronyd in the foreground until the test ends and returns once it answers
// NTP queries (bounded: the test fails after 10 s).
func Start(t testing.TB, o Options) *Server {
	t.Helper()
	bin := Binary(t)
	var env []string
	if o.Offset != 0 {
		env = append(env, "LD_PRELOAD="+FakeTimeLib(t), "FAKETIME="+fakeTime(o.Offset))
	}
	if o.Stratum == 0 {
		o.Stratum = 8
	}
	var last error
	for range 3 { // the free port may be taken between probing and chronyd's bind
		s := &Server{t: t, dir: t.TempDir(), bin: bin, env: env, opts: o, log: &syncBuffer{}}
		s.Addr = fmt.Sprintf("127.0.0.1:%d", freeUDPPort(t))
		if last = s.start(); last == nil {
			t.Cleanup(s.Stop)
			return s
		}
		s.Stop()
	}
	t.Fatalf("start chronyd: %v", last)
	return nil
}

// fakeTime is libfaketime's relative offset syntax: "+5s", "-1.5s".
func fakeTime(d time.Duration) string {
	sign := "+"
	if d < 0 {
		sign, d = "-", -d
	}
	return fmt.Sprintf("%s%gs", sign, d.Seconds())
}

func (s *Server) start() error {
	bin, env, o := s.bin, s.env, s.opts
	_, port, _ := net.SplitHostPort(s.Addr)
	var conf strings.Builder
	fmt.Fprintf(&conf, "port %s\nbindaddress 127.0.0.1\nallow 127.0.0.1\n", port)
	if !o.Unsynchronized {
		fmt.Fprintf(&conf, "local stratum %d\n", o.Stratum)
	}
	// No chronyc command port and no Unix command socket: several servers run at once
	// and none may touch /run/chrony.
	conf.WriteString("cmdport 0\nbindcmdaddress /\n")
	fmt.Fprintf(&conf, "pidfile %s\ndriftfile %s\n", filepath.Join(s.dir, "chronyd.pid"), filepath.Join(s.dir, "drift"))
	cf := filepath.Join(s.dir, "chrony.conf")
	if err := os.WriteFile(cf, []byte(conf.String()), 0o600); err != nil {
		return err
	}
	args := []string{"-x", "-d", "-f", cf}
	if os.Geteuid() == 0 {
		args = append(args, "-u", "root") // otherwise it drops to _chrony, which cannot read the temp dir
	}
	cmd := exec.Command(bin, args...)
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdout, cmd.Stderr = s.log, s.log
	if err := cmd.Start(); err != nil {
		return err
	}
	s.cmd, s.done = cmd, make(chan struct{})
	done := s.done
	go func() { cmd.Wait(); close(done) }()
	deadline := time.Now().Add(10 * time.Second)
	for {
		// Any answer counts, a stratum 0 one too (Unsynchronized).
		if _, err := ntp.QueryWithOptions(s.Addr, ntp.QueryOptions{Timeout: 200 * time.Millisecond}); err == nil {
			break
		}
		select {
		case <-done:
			return fmt.Errorf("chronyd exited at start:\n%s", s.Log())
		default:
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("chronyd not answering on %s after 10s:\n%s", s.Addr, s.Log())
		}
		time.Sleep(20 * time.Millisecond)
	}
	t := s.t
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("chronyd log:\n%s", s.Log())
		}
	})
	return nil
}

// Stop kills chronyd and waits for it. Stopping twice is fine.
func (s *Server) Stop() {
	if s.cmd == nil {
		return
	}
	s.cmd.Process.Kill()
	<-s.done
	s.cmd = nil
}

// Restart starts chronyd again on the same port with the same config (after Stop, or
// as a crash and restart).
func (s *Server) Restart() {
	s.t.Helper()
	s.Stop()
	if err := s.start(); err != nil {
		s.t.Fatalf("restart chronyd: %v", err)
	}
}

// Log is what chronyd wrote (-d logs to stderr).
func (s *Server) Log() string { return s.log.String() }

// ClosedPort is a 127.0.0.1 UDP address nothing listens on: a query there fails at once
// with "connection refused".
func ClosedPort(t testing.TB) string {
	t.Helper()
	return fmt.Sprintf("127.0.0.1:%d", freeUDPPort(t))
}

// BlackHole is a 127.0.0.1 UDP address bound by the test that never answers: a query
// there times out. It is closed when the test ends.
func BlackHole(t testing.TB) string {
	t.Helper()
	c, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c.LocalAddr().String()
}

func freeUDPPort(t testing.TB) int {
	t.Helper()
	c, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	return c.LocalAddr().(*net.UDPAddr).Port
}

// syncBuffer collects chronyd's output while tests read it.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}
