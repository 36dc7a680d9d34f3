package integration

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// fhirDaemon is an `edgeaudit run` with plain syslog TCP and the FHIR listener, whose
// fhir section the test writes itself (the clinical helpers only set max_body_bytes).
type fhirDaemon struct {
	*daemon
	fhir string
}

// startFHIRDaemon starts a daemon whose config has a fhir section with http set and
// the given extra keys (YAML lines without indentation, e.g. "max_inflight_bytes: 1024"),
// and waits until both listeners are bound. Taken ports are retried like startDaemon.
func startFHIRDaemon(t testing.TB, fhirKeys ...string) *fhirDaemon {
	t.Helper()
	dir := t.TempDir()
	for attempt := 1; ; attempt++ {
		d := &fhirDaemon{daemon: &daemon{
			dir:     dir,
			config:  filepath.Join(dir, "edgeaudit.yaml"),
			dataDir: filepath.Join(dir, "data"),
			tcp:     freeAddr(t, "tcp"),
			admin:   freeAddr(t, "tcp"),
		}, fhir: freeAddr(t, "tcp")}
		for _, a := range []string{d.tcp, d.fhir, d.admin} {
			mustLoopback(t, a)
		}
		if err := os.RemoveAll(d.dataDir); err != nil {
			t.Fatal(err)
		}
		var b strings.Builder
		q := strconv.Quote
		fmt.Fprintf(&b, "site: %s\ndevice: %s\ndata_dir: %s\n", testSite, testDevice, q(d.dataDir))
		fmt.Fprintf(&b, "syslog:\n  tcp: %s\n", q(d.tcp))
		fmt.Fprintf(&b, "fhir:\n  http: %s\n", q(d.fhir))
		for _, k := range fhirKeys {
			fmt.Fprintf(&b, "  %s\n", k)
		}
		fmt.Fprintf(&b, "admin: %s\nlog_level: debug\n", q(d.admin))
		if err := os.WriteFile(d.config, []byte(b.String()), 0o600); err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command(binPath, "run", "--config", d.config)
		d.process = startProcess(t, fmt.Sprintf("edgeaudit-fhir-%d", attempt), dir, cmd)
		err := d.waitListening(t, 2)
		if err == nil {
			return d
		}
		if d.done() && strings.Contains(d.log(), "address already in use") && attempt < 5 {
			t.Logf("daemon start %d: a port was taken meanwhile; retrying with new ports", attempt)
			continue
		}
		t.Fatalf("daemon did not start: %v\n%s", err, d.log())
	}
}

// waitListening polls until the log shows n listeners bound and /healthz answers.
func (d *fhirDaemon) waitListening(t testing.TB, n int) error {
	t.Helper()
	deadline := time.Now().Add(startTimeout)
	for {
		if d.done() {
			return fmt.Errorf("exited: %v", d.waitErr)
		}
		if strings.Count(d.log(), "msg=listening ") >= n {
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

// procStatusKiB reads one "<key>: <n> kB" line of /proc/<pid>/status.
func procStatusKiB(t testing.TB, pid int, key string) int64 {
	t.Helper()
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if !ok || k != key {
			continue
		}
		n, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
		if err != nil {
			t.Fatalf("/proc/%d/status %s: %v", pid, key, err)
		}
		return n
	}
	t.Fatalf("/proc/%d/status has no %s", pid, key)
	return 0
}

// fhirPost is the answer to one ordinary POST.
type fhirPost struct {
	status     int
	retryAfter string
	location   string
	body       string
}

// postAuditEvent posts body to {base}AuditEvent on a connection of its own, with a
// bounded timeout, with a bearer token unless token is empty.
func postAuditEvent(ctx context.Context, base, token, body string) (fhirPost, error) {
	ctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, base+"AuditEvent", strings.NewReader(body))
	if err != nil {
		return fhirPost{}, err
	}
	req.Header.Set("Content-Type", "application/fhir+json")
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	req.Close = true
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fhirPost{}, err
	}
	defer resp.Body.Close()
	var sb strings.Builder
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		sb.WriteString(sc.Text())
	}
	return fhirPost{resp.StatusCode, resp.Header.Get("Retry-After"), resp.Header.Get("Location"), sb.String()}, nil
}

// stallDialer dials from the given loopback source address, so that a flood can come
// from several "hosts" while every address stays on 127.0.0.0/8.
func stallDialer(src string) *net.Dialer {
	return &net.Dialer{Timeout: 5 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}}
}
