package integration

import (
	"bytes"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/edgeaudit/edgeaudit/internal/diskspace"
	"github.com/edgeaudit/edgeaudit/internal/testtpm"
)

// health against each failure it reports: the line a field tech reads and the exit
// status (1 warning, 2 failure), on a real daemon.
func TestHealthFailures(t *testing.T) {
	t.Run("broker away", func(t *testing.T) {
		c := startCentral(t)
		d := startDaemon(t, daemonConfig{MaxAge: 200 * time.Millisecond, Prepare: c.enrolledKey(), Extra: c.uplinkYAML("")})
		healthWant(t, d, 0, "ok   uplink         uplink connected")
		c.broker.Stop()
		healthWant(t, d, 1, "WARN uplink         uplink ", "WARN edgeaudit")
	})
	t.Run("TPM away", func(t *testing.T) {
		tpm := testtpm.Start(t)
		d := startDaemon(t, daemonConfig{MaxEvents: 5, Extra: fmt.Sprintf("keys: {tpm: require, tpm_device: %s}\n", strconv.Quote(tpm.Spec))})
		healthWant(t, d, 0, "ok   keys           signing key ", "in the TPM, loaded and signing")
		tpm.Stop()
		// Batches close and wait for a signature the TPM cannot give; events are still
		// committed.
		sendSyslog(t, d.tcp, "tpm-away", 0, 20, 0)
		healthWant(t, d, 2, "FAIL keys           the signer fails")
		tpm.Restart()
		// Signing again; the outage stays on the list as a warning until the next start.
		healthWant(t, d, 1, "ok   keys           signing key ", "WARN chain          audit.signing_failed: ", "(recovered at ")
	})
	t.Run("certificate expiring", func(t *testing.T) {
		// A leaf that lives ten days: inside the 30 days that warn.
		ca := newPKI(t, t.TempDir(), "health")
		cert, key := ca.leaf(t, "expiring", &x509.Certificate{
			Subject: pkix.Name{CommonName: serverName}, DNSNames: []string{serverName},
			ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}, NotAfter: time.Now().Add(10*24*time.Hour + time.Hour),
		})
		d := startDaemon(t, daemonConfig{TLS: &serverTLS{Cert: cert, Key: key}})
		healthWant(t, d, 1, "WARN cert.syslog.tls_cert syslog.tls_cert "+cert, "expires in 10 days", "renew it")
		// Monitoring sees the same: the check's level, the overall status, the expiry.
		m := d.metrics(t)
		if got := m.sum("edgeaudit_health_check", "check", "cert.syslog.tls_cert"); got != 1 {
			t.Errorf("edgeaudit_health_check{check=cert.syslog.tls_cert}=%v, want 1 (warning)", got)
		}
		if got := m.sum("edgeaudit_health_status"); got != 1 {
			t.Errorf("edgeaudit_health_status=%v, want 1", got)
		}
		if got := m.sum("edgeaudit_cert_expiry_timestamp_seconds", "key", "syslog.tls_cert"); got < float64(time.Now().Add(9*24*time.Hour).Unix()) {
			t.Errorf("edgeaudit_cert_expiry_timestamp_seconds=%v, want about ten days ahead", got)
		}
		if got := m.sum("edgeaudit_listener_up", "listener", "syslog.tls"); got != 1 {
			t.Errorf("edgeaudit_listener_up{listener=syslog.tls}=%v, want 1", got)
		}
	})
	t.Run("connection limit", func(t *testing.T) {
		d := startDaemon(t, daemonConfig{MaxConnections: 2})
		for range 2 {
			conn := dialTCP(t, d.tcp)
			t.Cleanup(func() { conn.Close() })
		}
		healthWant(t, d, 1, "WARN listener.syslog.connections syslog: all 2 connections in use")
	})
	t.Run("chain broken at start", func(t *testing.T) {
		d := startDaemon(t, daemonConfig{MaxEvents: 10})
		sendSyslog(t, d.tcp, "health", 0, 50, 0)
		waitHead(t, d, 4)
		d.stop(t)
		flipStoredEvent(t, filepath.Join(d.dataDir, "spool.db"), 2)
		d.restart(t)
		healthWant(t, d, 2, "FAIL chain          audit.spool_quarantined: chain broken: seq 2", "FAIL edgeaudit")
	})
	t.Run("chain damaged while running", func(t *testing.T) {
		d := startDaemon(t, daemonConfig{MaxEvents: 10, Extra: "spool:\n  scrub_interval: 1s\n"})
		sendSyslog(t, d.tcp, "health", 0, 50, 0)
		waitHead(t, d, 4)
		healthWant(t, d, 0, "ok   scrub          the last full check of the chain ended")
		// Under the running daemon, as a failing disk or an intruder would: the next
		// pass of the scrub finds it.
		flipLiveEvent(t, filepath.Join(d.dataDir, "spool.db"), 2)
		healthWant(t, d, 2, "FAIL scrub          the last full check of the chain", "found 1 damaged", "FAIL edgeaudit")
	})
	t.Run("disk nearly full", func(t *testing.T) {
		dir := tmpfs(t, 32<<20)
		d := startDaemon(t, daemonConfig{DataDir: filepath.Join(dir, "data"),
			Extra: "spool:\n  min_free_bytes: 1048576\n  evidence_reserve_bytes: 65536\n"})
		healthWant(t, d, 0, "ok   disk ")
		// Up to 1.5 MiB free: under the 10% warning, above min_free_bytes. (The size is
		// read, not assumed: the spool and its journal hold some of the 32 MiB.)
		u, err := diskspace.Of(dir)
		if err != nil {
			t.Fatal(err)
		}
		fill(t, filepath.Join(dir, "filler"), int(u.Free)-3<<19)
		healthWant(t, d, 1, "WARN disk           the file system of data_dir", "is nearly full")
	})
}

// healthWant runs edgeaudit health until it exits with code, then checks its lines.
func healthWant(t *testing.T, d *daemon, code int, want ...string) {
	t.Helper()
	var res cliResult
	eventually(t, waitTimeout, func() (bool, string) {
		res = runCLI(t, "health", "-config", d.config)
		return res.code == code && strings.Contains(res.stdout, want[0]), res.String()
	})
	for _, w := range want[1:] {
		if !strings.Contains(res.stdout, w) {
			t.Errorf("health output lacks %q\n%s", w, res.stdout)
		}
	}
}

// flipStoredEvent changes one byte in the middle of the first event of batch seq of a
// stopped daemon's spool.
func flipStoredEvent(t *testing.T, path string, seq uint64) {
	t.Helper()
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	err = db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket([]byte("events"))
		key := eventKey(seq, 0)
		v := bytes.Clone(b.Get(key))
		if v == nil {
			return fmt.Errorf("no event %x", key)
		}
		v[len(v)/2] ^= 0x01
		return b.Put(key, v)
	})
	if err != nil {
		t.Fatal(err)
	}
}

// tmpfs mounts a tmpfs of size bytes for the test (the tests run as root).
func tmpfs(t *testing.T, size int) string {
	t.Helper()
	dir := t.TempDir()
	out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size="+strconv.Itoa(size)+",mode=0700", "tmpfs", dir).CombinedOutput()
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("mount tmpfs: %v: %s", err, out)
		}
		t.Skipf("mount tmpfs (needs root): %v: %s", err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("umount", "-l", dir).CombinedOutput(); err != nil {
			t.Errorf("umount %s: %v: %s", dir, err, out)
		}
	})
	return dir
}

// fill writes n bytes into a new file.
func fill(t *testing.T, path string, n int) {
	t.Helper()
	if err := os.WriteFile(path, bytes.Repeat([]byte{0xa5}, n), 0o600); err != nil {
		t.Fatal(err)
	}
}

// dialTCP opens a TCP connection to a loopback listener of the daemon.
func dialTCP(t *testing.T, addr string) net.Conn {
	t.Helper()
	mustLoopback(t, addr)
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// waitHead waits until the daemon has sealed batch seq.
func waitHead(t *testing.T, d *daemon, seq uint64) {
	t.Helper()
	eventually(t, waitTimeout, func() (bool, string) {
		res := runCLI(t, "health", "-config", d.config, "-json")
		var h struct {
			HeadSeq uint64 `json:"head_seq"`
		}
		json.Unmarshal([]byte(res.stdout), &h)
		return h.HeadSeq >= seq, res.String()
	})
}

// flipLiveEvent changes one byte of the first event of batch seq in the file of a
// running daemon's spool: it finds the stored bytes in a copy (the daemon holds the
// file's lock), then writes beside bbolt, which reads the page cache through its map.
func flipLiveEvent(t *testing.T, path string, seq uint64) {
	t.Helper()
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	cp := filepath.Join(t.TempDir(), "copy.db")
	if err := os.WriteFile(cp, raw, 0o600); err != nil {
		t.Fatal(err)
	}
	db, err := bolt.Open(cp, 0o600, &bolt.Options{ReadOnly: true, Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	var v []byte
	db.View(func(tx *bolt.Tx) error {
		v = bytes.Clone(tx.Bucket([]byte("events")).Get(eventKey(seq, 0)))
		return nil
	})
	db.Close()
	if len(v) < 16 {
		t.Fatalf("event %d/0 not found in the copy", seq)
	}
	off := bytes.Index(raw, v)
	if off < 0 || bytes.Contains(raw[off+1:], v) {
		t.Fatalf("event %d/0 not found once in the file (at %d)", seq, off)
	}
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	at := int64(off + len(v)/2)
	if _, err := f.WriteAt([]byte{raw[at] ^ 0x01}, at); err != nil {
		t.Fatal(err)
	}
}

// health -probe sends a message through every listener (syslog UDP, TCP, TLS, RELP,
// HL7 MLLP, FHIR) and confirms each was committed; the probe is in the chain.
func TestHealthProbe(t *testing.T) {
	ca := newPKI(t, t.TempDir(), "probe")
	mllp, fhirAddr := freeAddr(t, "tcp"), freeAddr(t, "tcp")
	for _, a := range []string{mllp, fhirAddr} {
		mustLoopback(t, a)
	}
	q := strconv.Quote
	d := startDaemon(t, daemonConfig{UDP: true, RELP: true, TLS: &serverTLS{Cert: ca.ServerCert, Key: ca.ServerKey},
		Extra: fmt.Sprintf("hl7:\n  mllp: %s\nfhir:\n  http: %s\n", q(mllp), q(fhirAddr))})

	res := runCLI(t, "health", "-config", d.config, "-probe")
	for _, l := range []string{"syslog.udp", "syslog.tcp", "syslog.tls", "syslog.relp", "hl7.mllp", "fhir.http"} {
		if !strings.Contains(res.stdout, "ok   probe "+l+" ") {
			t.Errorf("probe of %s not ok\n%s", l, res)
		}
	}
	if res.code != 0 {
		t.Fatalf("health -probe exit %d, want 0\n%s", res.code, res)
	}
	js := runCLI(t, "health", "-config", d.config, "-probe", "-json")
	var h struct {
		Status string `json:"status"`
		Probe  []struct {
			Listener, Result string
		} `json:"probe"`
	}
	if err := json.Unmarshal([]byte(js.stdout), &h); err != nil || len(h.Probe) != 6 || h.Status != "ok" {
		t.Fatalf("health -probe -json: %+v %v\n%s", h, err, js)
	}
	d.stop(t)
	evs := exportClinical(t, d.dataDir, true)
	var probes, probeMsgs int
	for _, e := range evs {
		if e.Action == "audit.health_probe" {
			probes++
			if e.Detail["syslog.relp"] != "committed" || e.Outcome != "success" {
				t.Errorf("probe event %+v", e)
			}
		}
		// Syslog keeps the message text; HL7 keeps MSH (facility PROBE), FHIR the
		// AuditEvent's agent.
		switch {
		case strings.Contains(e.line, "edgeaudit health probe ") && e.Source.Kind == "syslog",
			e.Source.Kind == "hl7" && strings.Contains(e.line, `"host":"PROBE"`),
			e.Source.Kind == "fhir" && e.Action == "system.app_activity" && strings.Contains(e.line, `"user":"edgeaudit"`):
			probeMsgs++
		}
	}
	if probes != 2 || probeMsgs != 12 {
		t.Fatalf("chain holds %d probe events and %d probe messages, want 2 and 12", probes, probeMsgs)
	}
}

// The admin endpoint on a unix socket (admin: unix:PATH): health and -probe reach the
// daemon through it, the socket is mode 0660, a clean stop removes it, and one left by
// a kill -9 does not keep the next start from binding.
func TestAdminUnixSocket(t *testing.T) {
	d := startDaemon(t, daemonConfig{})
	d.stop(t)
	sock := filepath.Join(d.dir, "admin.sock")
	cfg, err := os.ReadFile(d.config)
	if err != nil {
		t.Fatal(err)
	}
	cfg = bytes.Replace(cfg, []byte("admin: "+strconv.Quote(d.admin)), []byte("admin: "+strconv.Quote("unix:"+sock)), 1)
	if err := os.WriteFile(d.config, cfg, 0o600); err != nil {
		t.Fatal(err)
	}
	start := func() {
		d.process = startProcess(t, fmt.Sprintf("edgeaudit-unix-%d", time.Now().UnixNano()), d.dir, exec.Command(binPath, "run", "-config", d.config))
		healthWant(t, d, 0, "OK   edgeaudit")
	}
	start()
	fi, err := os.Stat(sock)
	if err != nil || fi.Mode()&os.ModeSocket == 0 || fi.Mode().Perm() != 0o660 {
		t.Fatalf("admin socket %s: %v %v, want a socket of mode 0660", sock, fi.Mode(), err)
	}
	if res := runCLI(t, "health", "-config", d.config, "-probe"); res.code != 0 || !strings.Contains(res.stdout, "ok   probe syslog.tcp") {
		t.Fatalf("health -probe over the socket\n%s", res)
	}
	d.terminate(t, stopTimeout)
	if _, err := os.Lstat(sock); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("socket left after a clean stop: %v", err)
	}
	start()
	d.kill9(t)
	if _, err := os.Lstat(sock); err != nil {
		t.Fatalf("after kill -9 the socket should be left behind: %v", err)
	}
	start()
	d.stop(t)
}

// A listener that cannot be bound keeps the daemon from running at all: health then
// says the daemon is not running and why its last run ended (the port and the key), and
// forgets it once a run starts.
func TestHealthListenerDown(t *testing.T) {
	d := startDaemon(t, daemonConfig{})
	d.stop(t)
	ln, err := net.Listen("tcp", d.tcp)
	if err != nil {
		t.Fatal(err)
	}
	d.process = startProcess(t, "edgeaudit-port-taken", d.dir, exec.Command(binPath, "run", "-config", d.config))
	<-d.exited
	res := runCLI(t, "health", "-config", d.config)
	if res.code != 2 || !strings.Contains(res.stderr, "not running") || !strings.Contains(res.stderr, "syslog.tcp: "+d.tcp+": address already in use") {
		t.Fatalf("health with syslog.tcp taken: want exit 2, not running, and the port named\n%s", res)
	}
	ln.Close()
	d.restart(t)
	healthWant(t, d, 0, "ok   listener.syslog.tcp")
	if _, err := os.Stat(filepath.Join(d.dataDir, "run.error")); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("run.error left after a good start: %v", err)
	}
}
