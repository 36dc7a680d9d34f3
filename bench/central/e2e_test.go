// Package central holds the benchmarks of issue 11's central side that run real
// processes: the end-to-end latency from a syslog message's write to the receipt of its
// batch (e2e.sh runs it; run.sh prints every figure of the issue).
package central

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/edgeaudit/edgeaudit/attest"
	"github.com/edgeaudit/edgeaudit/internal/testmqtt"
	"github.com/edgeaudit/edgeaudit/ledger"
)

const (
	site, device             = "e2e-site", "e2e-dev"
	centralUser, centralPass = "central", "central-pw"
	devicePass               = "device-pw"
)

// acl confines the appliance to its own topics, as in the integration tests.
const acl = `user central
topic readwrite edgeaudit/#

pattern write edgeaudit/e2e-site/%u/batch
pattern readwrite edgeaudit/e2e-site/%u/status
pattern write edgeaudit/e2e-site/%u/key
pattern read edgeaudit/e2e-site/%u/ack
`

func envInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil && v > 0 {
		return v
	}
	return def
}

// TestEndToEnd sends syslog over TCP at E2E_RATE messages/s for E2E_SECONDS into the
// daemon binary (E2E_BIN), whose uplink publishes over TLS to a real mosquitto; the
// receiver binary (`edgeaudit receive`, folder store, or E2E_STORE=postgres://…)
// verifies, stores and publishes receipts. A message's latency is from its write to
// the daemon's socket until a watcher on the device's ack topic first sees a receipt
// covering its batch. It prints one line per figure.
func TestEndToEnd(t *testing.T) {
	bin := os.Getenv("E2E_BIN")
	if bin == "" {
		t.Skip("E2E_BIN (the edgeaudit binary) is not set; bench/central/e2e.sh sets it")
	}
	rate, secs := envInt("E2E_RATE", 80000), envInt("E2E_SECONDS", 30)
	dir := t.TempDir()
	b := testmqtt.Start(t, testmqtt.Options{
		Users: map[string]string{device: devicePass, centralUser: centralPass}, ACL: acl, TCPNoDelay: true,
	})
	p := b.PKI
	q := strconv.Quote

	// Central: keys enrolled before the first batch; its receipt key made at start.
	cdir := filepath.Join(dir, "central")
	ddir := filepath.Join(dir, "appliance")
	s, _, err := attest.LoadOrCreateSoftware(filepath.Join(ddir, "keys", "signing.key"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(cdir, "devices", site), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := attest.WritePublicPEM(filepath.Join(cdir, "devices", site, device+".pub"), s.Public()); err != nil {
		t.Fatal(err)
	}
	store := os.Getenv("E2E_STORE")
	storeLine := ""
	if store != "" {
		storeLine = "  store: " + q(store) + "\n"
	}
	ccfg := filepath.Join(dir, "central.yaml")
	write(t, ccfg, fmt.Sprintf("receive:\n  data_dir: %s\n  broker: %s\n  username: %s\n  password: %s\n  tls_ca: %s\n  tls_cert: %s\n  tls_key: %s\n  client_id: e2e-central\n%s",
		q(cdir), q(b.URL), centralUser, centralPass, q(p.CAFile), q(p.ClientCertFile), q(p.ClientKeyFile), storeLine))
	recv := start(t, dir, "receive", exec.Command(bin, "receive", "--config", ccfg))
	centralPub := filepath.Join(cdir, "keys", "central.pub")
	waitFor(t, 30*time.Second, func() bool { _, err := os.Stat(centralPub); return err == nil }, "central.pub", recv)

	// The watcher: when each seq is first covered by a receipt.
	var mu sync.Mutex
	covered := map[uint64]time.Time{}
	var high uint64
	o := mqtt.NewClientOptions().AddBroker(b.URL).SetClientID("e2e-watch").SetUsername(centralUser).
		SetPassword(centralPass).SetTLSConfig(b.ClientTLS()).SetAutoReconnect(false)
	w := mqtt.NewClient(o)
	if tok := w.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("watcher: %v", tok.Error())
	}
	defer w.Disconnect(100)
	if tok := w.Subscribe("edgeaudit/"+site+"/"+device+"/ack", 1, func(_ mqtt.Client, m mqtt.Message) {
		now := time.Now()
		rc, err := ledger.ParseReceipt(m.Payload())
		if err != nil {
			return
		}
		mu.Lock()
		for s := high + 1; s <= rc.Seq; s++ {
			covered[s] = now
		}
		high = max(high, rc.Seq)
		mu.Unlock()
	}); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("subscribe: %v", tok.Error())
	}

	// The appliance, default batching.
	tcp, admin := freeAddr(t), freeAddr(t)
	dcfg := filepath.Join(dir, "edgeaudit.yaml")
	write(t, dcfg, fmt.Sprintf("site: %s\ndevice: %s\ndata_dir: %s\nsyslog:\n  tcp: %s\nadmin: %s\nkeys: {tpm: \"off\"}\n"+
		"uplink:\n  broker: %s\n  ca: %s\n  cert: %s\n  key: %s\n  central_key: %s\n  username: %s\n  password: %s\n",
		site, device, q(ddir), q(tcp), q(admin), q(b.URL), q(p.CAFile), q(p.ClientCertFile), q(p.ClientKeyFile), q(centralPub), device, devicePass))
	if w := os.Getenv("E2E_WINDOW"); w != "" {
		// The uplink's window (default uplink.DefaultWindow), for runs that look at
		// what bounds the rate: a window of batches per receipt round trip.
		f, err := os.OpenFile(dcfg, os.O_APPEND|os.O_WRONLY, 0)
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(f, "  window: %s\n", w)
		f.Close()
	}
	daemon := start(t, dir, "daemon", exec.Command(bin, "run", "--config", dcfg))
	waitFor(t, 30*time.Second, func() bool {
		c, err := net.DialTimeout("tcp", tcp, time.Second)
		if err == nil {
			c.Close()
		}
		return err == nil
	}, "daemon's syslog port", daemon)

	// The load: one connection, octet-counted RFC 5424, in 1 ms ticks of rate/1000
	// messages; every message of a tick has the tick's write time.
	n := rate * secs
	sent := make([]int64, n)
	conn, err := net.Dial("tcp", tcp)
	if err != nil {
		t.Fatal(err)
	}
	bw := bufio.NewWriterSize(conn, 1<<20)
	t0 := time.Now()
	per := max(rate/1000, 1)
	for i := 0; i < n; {
		due := t0.Add(time.Duration(i) * time.Second / time.Duration(rate))
		if d := time.Until(due); d > 0 {
			time.Sleep(d)
		}
		for j := 0; j < per && i < n; j++ {
			msg := fmt.Sprintf("<110>1 2026-12-01T08:00:00.000Z e2e-host app - - - lat-%d user=u%d action=login", i, i%50)
			fmt.Fprintf(bw, "%d %s", len(msg), msg)
			i++
		}
		if err := bw.Flush(); err != nil {
			t.Fatal(err)
		}
		now := time.Now().UnixNano()
		for k := i - per; k < i; k++ {
			if k >= 0 && sent[k] == 0 {
				sent[k] = now
			}
		}
	}
	sendTime := time.Since(t0)
	conn.Close()

	// Wait until the last message is in a stored, receipted batch.
	lastTag := []byte(fmt.Sprintf("lat-%d ", n-1))
	var lastSeq uint64
	waitFor(t, 90*time.Second, func() bool {
		seq, ok := findTag(t, cdir, store, lastTag)
		if !ok {
			return false
		}
		mu.Lock()
		_, got := covered[seq]
		mu.Unlock()
		lastSeq = seq
		return got
	}, "the receipt of the last message", recv)
	_ = lastSeq

	lat := make([]time.Duration, 0, n)
	seen := make([]bool, n)
	mu.Lock()
	eachEvent(t, cdir, store, func(seq uint64, ev []byte) {
		i := bytes.Index(ev, []byte("lat-"))
		if i < 0 {
			return
		}
		j := i + 4
		for j < len(ev) && ev[j] >= '0' && ev[j] <= '9' {
			j++
		}
		k, err := strconv.Atoi(string(ev[i+4 : j]))
		if err != nil || k >= n || seen[k] {
			return
		}
		at, ok := covered[seq]
		if !ok {
			return
		}
		seen[k] = true
		lat = append(lat, at.Sub(time.Unix(0, sent[k])))
	})
	mu.Unlock()
	if len(lat) < n {
		t.Fatalf("%d of %d messages found in receipted batches", len(lat), n)
	}
	slices.Sort(lat)
	qt := func(p float64) float64 { return float64(lat[int(p*float64(len(lat)-1))]) / float64(time.Millisecond) }
	load, _ := os.ReadFile("/proc/loadavg")
	la := strings.Fields(string(load))[0]
	fmt.Printf("e2e rate_target=%d msg/s sent=%d in %.1fs (%.0f msg/s) load=%s\n", rate, n, sendTime.Seconds(), float64(n)/sendTime.Seconds(), la)
	fmt.Printf("e2e p50=%.0f ms\ne2e p99=%.0f ms\ne2e max=%.0f ms\ne2e batches=%d\n", qt(0.5), qt(0.99), qt(1), high)
}

// findTag returns the seq of the stored batch whose events hold tag (newest first).
func findTag(t *testing.T, cdir, store string, tag []byte) (uint64, bool) {
	if store != "" {
		return 0, false // see eachEvent
	}
	files := eventFiles(t, cdir)
	for i := len(files) - 1; i >= 0 && i >= len(files)-4; i-- {
		b, err := os.ReadFile(files[i].path)
		if err == nil && bytes.Contains(b, tag) {
			return files[i].seq, true
		}
	}
	return 0, false
}

type eventFile struct {
	seq  uint64
	path string
}

// eventFiles are the folder store's <store>/<site>/<device>/<chain>/events/<seq>.jsonl.
func eventFiles(t *testing.T, cdir string) []eventFile {
	paths, _ := filepath.Glob(filepath.Join(cdir, "store", site, device, "*", "events", "*.jsonl"))
	var out []eventFile
	for _, p := range paths {
		seq, err := strconv.ParseUint(strings.TrimSuffix(filepath.Base(p), ".jsonl"), 10, 64)
		if err == nil {
			out = append(out, eventFile{seq, p})
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].seq < out[j].seq })
	return out
}

func eachEvent(t *testing.T, cdir, store string, fn func(seq uint64, ev []byte)) {
	for _, f := range eventFiles(t, cdir) {
		b, err := os.ReadFile(f.path)
		if err != nil {
			t.Fatal(err)
		}
		for _, line := range bytes.Split(b, []byte("\n")) {
			fn(f.seq, line)
		}
	}
}

type proc struct {
	name string
	cmd  *exec.Cmd
	log  *bytes.Buffer
	mu   *sync.Mutex
}

type lockedBuf struct {
	mu *sync.Mutex
	b  *bytes.Buffer
}

func (l lockedBuf) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.b.Len() > 1<<20 {
		return len(p), nil
	}
	return l.b.Write(p)
}

// start runs cmd until the test ends (then SIGTERM, and a kill after 10 s).
func start(t *testing.T, dir, name string, cmd *exec.Cmd) *proc {
	p := &proc{name: name, cmd: cmd, log: &bytes.Buffer{}, mu: &sync.Mutex{}}
	cmd.Dir = dir
	cmd.Stdout = lockedBuf{p.mu, p.log}
	cmd.Stderr = lockedBuf{p.mu, p.log}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		cmd.Process.Signal(os.Interrupt)
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
			<-done
		}
		if t.Failed() {
			p.mu.Lock()
			t.Logf("%s log (tail):\n%s", name, tail(p.log.String(), 3000))
			p.mu.Unlock()
		}
	})
	return p
}

func tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}

func waitFor(t *testing.T, d time.Duration, cond func() bool, what string, p *proc) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			p.mu.Lock()
			log := tail(p.log.String(), 3000)
			p.mu.Unlock()
			t.Fatalf("no %s after %v; %s log:\n%s", what, d, p.name, log)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func freeAddr(t *testing.T) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

func write(t *testing.T, path, s string) {
	if err := os.WriteFile(path, []byte(s), 0o600); err != nil {
		t.Fatal(err)
	}
}

var _ = context.Background
