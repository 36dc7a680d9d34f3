package daemon

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/edgeaudit/edgeaudit/internal/atomicfile"
)

// adminUnixPrefix marks an admin endpoint on a unix socket: admin: unix:/run/edgeaudit/admin.sock.
// A socket is reached only by who may open its file (mode 0660: root and the service's
// group), where any local user reaches a loopback port.
const adminUnixPrefix = "unix:"

// AdminNetwork splits the admin: value into its network ("tcp" or "unix") and address.
func AdminNetwork(admin string) (network, addr string) {
	if p, ok := strings.CutPrefix(admin, adminUnixPrefix); ok {
		return "unix", p
	}
	return "tcp", admin
}

// AdminClient returns an HTTP client that reaches the admin endpoint admin, and the base
// URL of its requests.
func AdminClient(admin string, timeout time.Duration) (*http.Client, string) {
	return &http.Client{Timeout: timeout, Transport: AdminTransport(admin)}, AdminBase(admin)
}

// AdminTransport is an HTTP transport to the admin endpoint admin: over TCP, or to the
// unix socket whatever the URL's host.
func AdminTransport(admin string) *http.Transport {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	if network, addr := AdminNetwork(admin); network == "unix" {
		tr.DialContext = func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", addr)
		}
	}
	return tr
}

// AdminBase is the base URL of requests to the admin endpoint admin.
func AdminBase(admin string) string {
	if network, _ := AdminNetwork(admin); network == "unix" {
		return "http://edgeaudit-admin"
	}
	return "http://" + admin
}

// adminSpec is how a bound admin listener is written in admin: (and in admin.addr).
func adminSpec(a net.Addr) string {
	if a.Network() == "unix" {
		return adminUnixPrefix + a.String()
	}
	return a.String()
}

// checkAdmin is the admin: key's rule: a loopback host:port or unix:ABSOLUTE-PATH.
func checkAdmin(admin string, checkTCP func(string) error) error {
	network, addr := AdminNetwork(admin)
	if network == "unix" {
		if !filepath.IsAbs(addr) {
			return errors.New("a unix socket needs an absolute path, e.g. unix:/run/edgeaudit/admin.sock")
		}
		return nil
	}
	return checkTCP(addr)
}

// listenAdmin binds the admin endpoint. A socket file left by a daemon that died is
// removed first (only when nothing answers on it); the new one is mode 0660.
func listenAdmin(admin string) (net.Listener, error) {
	network, addr := AdminNetwork(admin)
	if network != "unix" {
		return net.Listen("tcp", addr)
	}
	if fi, err := os.Lstat(addr); err == nil && fi.Mode()&os.ModeSocket != 0 {
		if c, err := net.DialTimeout("unix", addr, time.Second); err == nil {
			c.Close()
			return nil, fmt.Errorf("%s: another process answers on this socket (a daemon already running?)", addr)
		}
		if err := os.Remove(addr); err != nil {
			return nil, fmt.Errorf("remove the stale socket %s: %w", addr, err)
		}
	}
	ln, err := net.Listen("unix", addr)
	if err != nil {
		return nil, err
	}
	if err := os.Chmod(addr, 0o660); err != nil {
		ln.Close()
		return nil, fmt.Errorf("chmod %s: %w", addr, err)
	}
	// Close of a unix listener removes the socket file (net.UnixListener unlinks it).
	return ln, nil
}

// RunErrorFile in the data folder says why the last run of the daemon ended with an
// error (written by `edgeaudit run`, removed once a run is ready), for health.
const RunErrorFile = "run.error"

// RecordRunError keeps err as the reason the last run ended, in a data folder that
// exists (a refused start makes none). It is best effort: the error is also on stderr,
// which journald keeps.
func RecordRunError(dataDir string, err error) {
	if fi, serr := os.Stat(dataDir); serr != nil || !fi.IsDir() {
		return
	}
	msg := time.Now().UTC().Format(time.RFC3339) + " " + strings.ReplaceAll(err.Error(), "\n", "; ") + "\n"
	atomicfile.WriteFile(filepath.Join(dataDir, RunErrorFile), []byte(msg), 0o600)
}

// ClearRunError removes the reason of an earlier failed run.
func ClearRunError(dataDir string) { os.Remove(filepath.Join(dataDir, RunErrorFile)) }

// LastRunError returns when and why the last run ended with an error, or "".
func LastRunError(dataDir string) string {
	b, err := os.ReadFile(filepath.Join(dataDir, RunErrorFile))
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
}
