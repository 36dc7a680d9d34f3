// Package testtpm starts a real swtpm (TPM 2.0) for tests: on free 127.0.0.1 ports, its
// state in a temp folder, in the foreground, owned and killed by the test. Tests only.
package testtpm

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-tpm/tpm2/transport"
	"github.com/google/go-tpm/tpm2/transport/tcp"
)

// TPM is one running swtpm. Its data port speaks the TCP framing of the reference
// simulator (go-tpm's transport/tcp); the control port at Port+1 speaks swtpm's own
// protocol and must never get power commands (so no mssim).
type TPM struct {
	Addr     string // data (command) port, 127.0.0.1:P
	CtrlAddr string // control port, 127.0.0.1:P+1
	Spec     string // "tcp://127.0.0.1:P", as attest.OpenTPM takes it
	Dir      string // --tpmstate folder: seeds and NV survive Restart
	// Socket is the data socket of StartUnix (Addr and CtrlAddr are empty then).
	Socket string

	t    testing.TB
	logs int
	cmd  *exec.Cmd
	done chan struct{}
}

// Binary finds swtpm. When it is missing the test fails under CI=true and is skipped
// otherwise.
func Binary(t testing.TB) string {
	t.Helper()
	if p, err := exec.LookPath("swtpm"); err == nil {
		return p
	}
	if os.Getenv("CI") == "true" {
		t.Fatal("swtpm not found (CI=true: a missing peer is a failure; apt-get install swtpm swtpm-tools)")
	}
	t.Skip("swtpm not found; apt-get install swtpm swtpm-tools to run this test")
	return ""
}

// Start runs a fresh swtpm (new state folder, so new seeds: another TPM) until the test
// ends.
func Start(t testing.TB) *TPM {
	t.Helper()
	bin := Binary(t)
	s := &TPM{t: t, Dir: filepath.Join(t.TempDir(), "tpmstate")}
	if err := os.Mkdir(s.Dir, 0o700); err != nil {
		t.Fatal(err)
	}
	// Another process may take a port between the probe and swtpm's bind; try again on
	// other ports then.
	var err error
	for range 5 {
		p := freePortPair(t)
		s.Addr, s.CtrlAddr = fmt.Sprintf("127.0.0.1:%d", p), fmt.Sprintf("127.0.0.1:%d", p+1)
		s.Spec = "tcp://" + s.Addr
		if err = s.start(bin); err == nil {
			break
		}
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Stop)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("swtpm log:\n%s", s.Log())
		}
	})
	return s
}

// StartUnix is Start with swtpm's data and control channels on unix sockets
// (--server type=unixio), for go-tpm's linuxudstpm; Spec is "unix://<socket>".
func StartUnix(t testing.TB) *TPM {
	t.Helper()
	bin := Binary(t)
	base := t.TempDir()
	s := &TPM{t: t, Dir: filepath.Join(base, "tpmstate"), Socket: filepath.Join(base, "swtpm.sock")}
	if err := os.Mkdir(s.Dir, 0o700); err != nil {
		t.Fatal(err)
	}
	s.Spec = "unix://" + s.Socket
	if err := s.start(bin); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Stop)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("swtpm log:\n%s", s.Log())
		}
	})
	return s
}

// Open connects to the data port (and the control port, which go-tpm dials but this
// package never uses) of a Start swtpm. The connection is closed when the test ends.
func (s *TPM) Open(t testing.TB) transport.TPMCloser {
	t.Helper()
	tp, err := tcp.Open(tcp.Config{CommandAddress: s.Addr, PlatformAddress: s.CtrlAddr})
	if err != nil {
		t.Fatalf("open swtpm %s: %v", s.Addr, err)
	}
	t.Cleanup(func() { tp.Close() })
	return tp
}

// TCTI is the tpm2-tools TCTI string for this swtpm (TPM2TOOLS_TCTI).
func (s *TPM) TCTI() string {
	host, port, _ := net.SplitHostPort(s.Addr)
	return fmt.Sprintf("swtpm:host=%s,port=%s", host, port)
}

// Restart kills swtpm (a power loss: volatile state is gone, PCRs reset) and starts it
// again on the same ports with the same state folder, so the seeds, and with them every
// key derived from them, come back. Connections opened before are dead.
func (s *TPM) Restart() {
	s.t.Helper()
	s.Stop()
	var err error
	// The killed process's sockets may hold the port for a moment.
	for range 50 {
		if err = s.start(Binary(s.t)); err == nil {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	s.t.Fatalf("restart swtpm: %v", err)
}

// Stop kills swtpm and waits for it. Stopping twice is fine.
func (s *TPM) Stop() {
	if s.cmd == nil {
		return
	}
	s.cmd.Process.Kill()
	<-s.done
	s.cmd = nil
}

// Log returns what swtpm wrote, over all its starts.
func (s *TPM) Log() string {
	var out strings.Builder
	for i := 1; i <= s.logs; i++ {
		b, _ := os.ReadFile(filepath.Join(filepath.Dir(s.Dir), fmt.Sprintf("swtpm-%d.log", i)))
		out.Write(b)
	}
	return out.String()
}

// start runs swtpm in the foreground and waits until its data port accepts.
func (s *TPM) start(bin string) error {
	s.logs++
	logPath := filepath.Join(filepath.Dir(s.Dir), fmt.Sprintf("swtpm-%d.log", s.logs))
	logf, err := os.Create(logPath)
	if err != nil {
		return err
	}
	server := []string{"--server", "type=unixio,path=" + s.Socket, "--ctrl", "type=unixio,path=" + s.Socket + ".ctrl"}
	network, addr := "unix", s.Socket
	if s.Socket == "" {
		_, port, _ := net.SplitHostPort(s.Addr)
		_, ctrl, _ := net.SplitHostPort(s.CtrlAddr)
		server = []string{"--server", "type=tcp,port=" + port + ",bindaddr=127.0.0.1", "--ctrl", "type=tcp,port=" + ctrl + ",bindaddr=127.0.0.1"}
		network, addr = "tcp", s.Addr
	}
	args := append([]string{"socket", "--tpm2"}, server...)
	cmd := exec.Command(bin, append(args,
		"--tpmstate", "dir="+s.Dir,
		// swtpm has run TPM2_Startup(CLEAR) itself: nobody sends Startup or power
		// commands.
		"--flags", "not-need-init,startup-clear",
		"--log", "file="+logPath+",level=1")...)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		logf.Close()
		return fmt.Errorf("start swtpm: %w", err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); logf.Close(); close(done) }()
	s.cmd, s.done = cmd, done
	deadline := time.Now().Add(10 * time.Second)
	for {
		select {
		case <-done:
			s.cmd = nil
			return fmt.Errorf("swtpm exited at start on %s:\n%s", addr, s.Log())
		default:
		}
		// A connection that is closed unused costs swtpm nothing; it serves the next.
		if c, err := net.DialTimeout(network, addr, 200*time.Millisecond); err == nil {
			c.Close()
			return nil
		}
		if time.Now().After(deadline) {
			s.Stop()
			return fmt.Errorf("swtpm not listening on %s after 10s", addr)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// freePortPair returns a port P such that P and P+1 were both free a moment ago.
func freePortPair(t testing.TB) int {
	t.Helper()
	for range 100 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		p := l.Addr().(*net.TCPAddr).Port
		l2, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", p+1))
		l.Close()
		if err == nil {
			l2.Close()
			return p
		}
	}
	t.Fatal("no two consecutive free ports on 127.0.0.1")
	return 0
}
