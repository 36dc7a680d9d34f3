package integration

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/edgeaudit/edgeaudit/attest"
	"github.com/edgeaudit/edgeaudit/internal/testmqtt"
	"github.com/edgeaudit/edgeaudit/ledger"
	"github.com/edgeaudit/edgeaudit/receiver"
)

// receiveProc is one `edgeaudit receive` process on a real mosquitto.
type receiveProc struct {
	*process
	dir, config string
}

// startReceive writes central's config (its data folder under dir) and starts
// `edgeaudit receive`, returning once it says it started.
func startReceive(t testing.TB, b *testmqtt.Broker, dir string) *receiveProc {
	t.Helper()
	q := strconv.Quote
	p := b.PKI
	cfg := fmt.Sprintf("receive:\n  data_dir: %s\n  broker: %s\n  username: %s\n  password: %s\n  tls_ca: %s\n  tls_cert: %s\n  tls_key: %s\n  client_id: central-proc\n  log_level: debug\n",
		q(dir), q(b.URL), centralUser, centralPass, q(p.CAFile), q(p.ClientCertFile), q(p.ClientKeyFile))
	r := &receiveProc{dir: dir, config: filepath.Join(dir, "central.yaml")}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(r.config, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	r.start(t)
	return r
}

func (r *receiveProc) start(t testing.TB) {
	t.Helper()
	name := fmt.Sprintf("edgeaudit-receive-%d", time.Now().UnixNano()) // a log per run
	r.process = startProcess(t, name, r.dir, exec.Command(binPath, "receive", "-config", r.config))
	eventually(t, startTimeout, func() (bool, string) {
		if r.done() {
			t.Fatalf("edgeaudit receive exited: %v\n%s", r.waitErr, r.log())
		}
		return strings.Contains(r.log(), "central receiver started"), r.log()
	})
}

// stop ends the receiver with SIGTERM and requires a clean exit.
func (r *receiveProc) stop(t testing.TB) {
	t.Helper()
	r.cmd.Process.Signal(syscall.SIGTERM)
	<-r.exited
	if r.waitErr != nil {
		t.Fatalf("edgeaudit receive exited with %v after SIGTERM\n%s", r.waitErr, r.log())
	}
}

// exportWire runs `edgeaudit export` on a stopped daemon's data folder and returns the
// file of its sealed batches in the wire format; extra goes to export (-config when the
// data key is in a TPM).
func exportWire(t testing.TB, dataDir string, extra ...string) string {
	t.Helper()
	out := filepath.Join(t.TempDir(), "export.eab")
	if res := runCLI(t, append([]string{"export", "-data", dataDir, "-out", out}, extra...)...); res.code != 0 {
		t.Fatalf("%s", res)
	}
	return out
}

func (r *receiveProc) kill(t testing.TB) {
	t.Helper()
	r.cmd.Process.Signal(syscall.SIGKILL)
	<-r.exited
}

// startCentralProc starts a real mosquitto and `edgeaudit receive` on it, with
// central's key created beforehand (so that the appliance can be given central.pub).
// The returned central describes its folders; its in-process receiver is nil.
func startCentralProc(t testing.TB) (*central, *receiveProc) {
	t.Helper()
	b := testmqtt.Start(t, testmqtt.Options{
		Users: map[string]string{testDevice: devicePass, centralUser: centralPass},
		ACL:   uplinkACL, TCPNoDelay: true,
	})
	cdir := filepath.Join(t.TempDir(), "central")
	csigner, _, err := attest.LoadOrCreateSoftware(filepath.Join(cdir, "keys", "central.key"))
	if err != nil {
		t.Fatal(err)
	}
	cpub := filepath.Join(cdir, "keys", "central.pub")
	if err := attest.WritePublicPEM(cpub, csigner.Public()); err != nil {
		t.Fatal(err)
	}
	c := &central{broker: b, dir: cdir, store: receiver.FolderStore{Dir: filepath.Join(cdir, "store")},
		keys: filepath.Join(cdir, "devices"), pubPath: cpub, signer: csigner}
	return c, startReceive(t, b, cdir)
}

// kill9 kills the daemon at once and waits for the exit.
func (d *daemon) kill9(t testing.TB) {
	t.Helper()
	d.cmd.Process.Signal(syscall.SIGKILL)
	<-d.exited
}

// kill -9 of the appliance and of the receiver at random moments during upload, under
// syslog load: at the end central's store verifies end to end with the appliance's key
// and holds, byte for byte, the batches the appliance sealed.
func TestUplinkKill9BothSides(t *testing.T) {
	c, rp := startCentralProc(t)
	cdir := c.dir
	d := startDaemon(t, daemonConfig{MaxAge: 200 * time.Millisecond, Prepare: c.enrolledKey(), Extra: c.uplinkYAML("")})

	// The load: numbered messages at a steady rate over one connection at a time, which
	// is re-dialled when the appliance is down; bounded in count and time.
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var sent int
	wg.Go(func() {
		deadline := time.Now().Add(2 * time.Minute)
		for sent < 200000 && time.Now().Before(deadline) {
			select {
			case <-stop:
				return
			default:
			}
			conn, err := net.DialTimeout("tcp", d.tcp, time.Second)
			if err != nil {
				time.Sleep(50 * time.Millisecond)
				continue
			}
			for {
				select {
				case <-stop:
					conn.Close()
					return
				default:
				}
				var buf bytes.Buffer
				for range 20 {
					msg := fmt.Sprintf("<110>1 2026-12-01T08:00:00.000Z it-host killtest - - - kill-%d", sent)
					fmt.Fprintf(&buf, "%d %s", len(msg), msg)
					sent++
				}
				conn.SetWriteDeadline(time.Now().Add(2 * time.Second))
				if _, err := conn.Write(buf.Bytes()); err != nil {
					conn.Close()
					break
				}
				time.Sleep(10 * time.Millisecond) // ~2000 messages/s
			}
		}
	})

	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 8))
	const rounds = 8
	var kills [2]int
	for round := range rounds {
		time.Sleep(time.Duration(300+rng.IntN(1200)) * time.Millisecond)
		if rng.IntN(2) == 0 {
			kills[0]++
			d.kill9(t)
			d.restart(t)
		} else {
			kills[1]++
			rp.kill(t)
			rp.start(t)
		}
		t.Logf("round %d: appliance killed %d, receiver killed %d", round+1, kills[0], kills[1])
	}
	close(stop)
	wg.Wait()
	d.waitAllReceipted(t, 0, 2*waitTimeout)
	d.stop(t)
	rp.stop(t)

	// The appliance's sealed batches, as export writes them.
	f, err := os.Open(exportWire(t, d.dataDir))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var local [][]byte
	for rd := ledger.NewReader(f); ; {
		bt, err := rd.Next()
		if err != nil {
			break
		}
		local = append(local, bt.AppendWire(nil))
	}
	chain, batches := c.storedBatches(t)
	if len(batches) > len(local) {
		t.Fatalf("central holds %d batches, the appliance sealed %d", len(batches), len(local))
	}
	// The stop event's batch is sealed after the last wait; the stop's drain usually
	// delivers it, and at most it is missing.
	if len(batches) < len(local)-1 {
		t.Fatalf("central holds %d batches, the appliance sealed %d", len(batches), len(local))
	}
	for _, sb := range batches {
		got, err := os.ReadFile(filepath.Join(c.store.Dir, testSite, testDevice, chain, "batches", receiver.SeqName(sb.seq)+".eab"))
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, local[sb.seq-1]) {
			t.Fatalf("central's batch %d differs from the appliance's", sb.seq)
		}
	}
	files, _ := filepath.Glob(filepath.Join(c.store.Dir, testSite, testDevice, chain, "batches", "*.eab"))
	res, out := verify(t, append([]string{"-key", d.pubKey()}, files...)...)
	if out.code != 0 || !res.OK {
		t.Fatalf("central's copy does not verify: %s", out)
	}
	if q, _ := filepath.Glob(filepath.Join(cdir, "quarantine", "*", "*", "*.eab")); len(q) != 0 {
		t.Fatalf("central quarantined %d batches of a healthy appliance: %v", len(q), q)
	}
	t.Logf("%d messages offered, %d batches sealed, %d at central; kills: appliance %d, receiver %d",
		sent, len(local), len(batches), kills[0], kills[1])
}
