// Package testmqtt starts a real mosquitto for tests: on a free 127.0.0.1 port, TLS with
// the throw-away CA of internal/testpki, client certificates required, users with
// passwords and an ACL file. Tests only.
package testmqtt

import (
	"crypto/rand"
	"crypto/sha512"
	"crypto/tls"
	"encoding/base64"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/edgeaudit/edgeaudit/internal/testpki"
)

// Options configure the broker.
type Options struct {
	// Users maps user names to passwords (the password file). Clients must present the
	// test client certificate too; the user name is their identity for the ACL.
	Users map[string]string
	// ACL is the content of the acl_file (mosquitto's syntax). Empty denies everything
	// to everyone, as mosquitto does with an empty ACL file.
	ACL string
	// MaxPacketSize is mosquitto's max_packet_size; 0 leaves mosquitto's default.
	MaxPacketSize int
	// TCPNoDelay sets set_tcp_nodelay: mosquitto's default (false) leaves Nagle's
	// algorithm on, which holds a small message behind an unacknowledged one (a receipt
	// behind a PUBACK) until the client's delayed ACK, up to 40 ms on Linux.
	TCPNoDelay bool
}

// Broker is one running mosquitto.
type Broker struct {
	Addr string // 127.0.0.1:port
	URL  string // tls://127.0.0.1:port
	PKI  *testpki.PKI

	t    testing.TB
	dir  string
	conf string
	cmd  *exec.Cmd
	done chan struct{}
	logs int
}

// Binary finds mosquitto: on PATH, else Debian's /usr/sbin. When it is missing the test
// fails under CI=true and is skipped otherwise.
func Binary(t testing.TB) string {
	t.Helper()
	if p, err := exec.LookPath("mosquitto"); err == nil {
		return p
	}
	for _, p := range []string{"/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto"} {
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	if os.Getenv("CI") == "true" {
		t.Fatal("mosquitto not found (CI=true: a missing peer is a failure; apt-get install mosquitto)")
	}
	t.Skip("mosquitto not found; apt-get install mosquitto to run this test")
	return ""
}

// Start writes the config into a temp folder and runs mosquitto in the foreground until
// the test ends.
func Start(t testing.TB, o Options) *Broker {
	t.Helper()
	bin := Binary(t)
	b := &Broker{t: t, dir: t.TempDir(), PKI: testpki.New(t)}
	port := freePort(t)
	b.Addr = fmt.Sprintf("127.0.0.1:%d", port)
	b.URL = "tls://" + b.Addr

	pw := filepath.Join(b.dir, "passwd")
	var lines []string
	for u, p := range o.Users {
		lines = append(lines, u+":"+passwordHash(t, p))
	}
	write(t, pw, strings.Join(lines, "\n")+"\n")
	acl := filepath.Join(b.dir, "acl")
	write(t, acl, o.ACL+"\n")
	var conf strings.Builder
	if os.Geteuid() == 0 {
		// Otherwise mosquitto drops to user "mosquitto" and cannot read the 0600 files.
		conf.WriteString("user root\n")
	}
	fmt.Fprintf(&conf, "persistence false\nlog_dest stderr\nlog_type error\nlog_type warning\nlog_type notice\n")
	fmt.Fprintf(&conf, "listener %d 127.0.0.1\n", port)
	fmt.Fprintf(&conf, "cafile %s\ncertfile %s\nkeyfile %s\n", b.PKI.CAFile, b.PKI.CertFile, b.PKI.KeyFile)
	conf.WriteString("require_certificate true\nuse_identity_as_username false\nallow_anonymous false\n")
	fmt.Fprintf(&conf, "password_file %s\nacl_file %s\n", pw, acl)
	if o.TCPNoDelay {
		conf.WriteString("set_tcp_nodelay true\n")
	}
	if o.MaxPacketSize > 0 {
		fmt.Fprintf(&conf, "max_packet_size %d\n", o.MaxPacketSize)
	}
	b.conf = filepath.Join(b.dir, "mosquitto.conf")
	write(t, b.conf, conf.String())
	b.start(bin)
	t.Cleanup(b.Stop)
	return b
}

// ClientTLS trusts the test CA and presents the test client certificate.
func (b *Broker) ClientTLS() *tls.Config { return b.PKI.ClientConfig(true) }

func (b *Broker) start(bin string) {
	t := b.t
	t.Helper()
	b.logs++
	logf, err := os.Create(filepath.Join(b.dir, fmt.Sprintf("mosquitto-%d.log", b.logs)))
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "-c", b.conf)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		logf.Close()
		t.Fatalf("start mosquitto: %v", err)
	}
	b.cmd, b.done = cmd, make(chan struct{})
	done := b.done
	go func() { cmd.Wait(); logf.Close(); close(done) }()
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", b.Addr, 200*time.Millisecond)
		if err == nil {
			c.Close()
			break
		}
		select {
		case <-done:
			t.Fatalf("mosquitto exited at start:\n%s", b.Log())
		default:
		}
		if time.Now().After(deadline) {
			b.Stop()
			t.Fatalf("mosquitto not listening on %s after 10s:\n%s", b.Addr, b.Log())
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("mosquitto log:\n%s", b.Log())
		}
	})
}

// Stop kills the broker (as a crash would) and waits for it. Stopping twice is fine.
func (b *Broker) Stop() {
	if b.cmd == nil {
		return
	}
	b.cmd.Process.Kill()
	<-b.done
	b.cmd = nil
}

// Restart starts the broker again on the same port with the same config.
func (b *Broker) Restart() {
	b.t.Helper()
	b.Stop()
	b.start(Binary(b.t))
}

// Log returns what mosquitto wrote, over all its starts.
func (b *Broker) Log() string {
	var out strings.Builder
	for i := 1; i <= b.logs; i++ {
		data, _ := os.ReadFile(filepath.Join(b.dir, fmt.Sprintf("mosquitto-%d.log", i)))
		out.Write(data)
	}
	return out.String()
}

// passwordHash is mosquitto's "$6$" password file entry: base64 salt and base64
// SHA-512(password || salt).
func passwordHash(t testing.TB, password string) string {
	salt := make([]byte, 12)
	if _, err := rand.Read(salt); err != nil {
		t.Fatal(err)
	}
	h := sha512.New()
	h.Write([]byte(password))
	h.Write(salt)
	return "$6$" + base64.StdEncoding.EncodeToString(salt) + "$" + base64.StdEncoding.EncodeToString(h.Sum(nil))
}

func freePort(t testing.TB) int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

func write(t testing.TB, path, data string) {
	if err := os.WriteFile(path, []byte(data), 0o600); err != nil {
		t.Fatal(err)
	}
}
