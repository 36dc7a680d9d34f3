package integration

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/edgeaudit/edgeaudit/attest"
	"github.com/edgeaudit/edgeaudit/internal/testmqtt"
	"github.com/edgeaudit/edgeaudit/ledger"
	"github.com/edgeaudit/edgeaudit/receiver"
)

// These tests run the whole path on real parts: the daemon binary (built with -race)
// takes syslog over TCP, seals, and uploads over TLS with a client certificate to a
// real mosquitto whose ACL confines the device to its topics; a receiver verifies,
// stores in the folder store, and answers with signed receipts.

const (
	centralUser = "central"
	centralPass = "central-pw"
	devicePass  = "device-pw"
)

// uplinkACL confines the appliance (user testDevice) to its own topics.
const uplinkACL = `user central
topic readwrite edgeaudit/#

pattern write edgeaudit/it-site/%u/batch
pattern readwrite edgeaudit/it-site/%u/status
pattern write edgeaudit/it-site/%u/key
pattern read edgeaudit/it-site/%u/ack
`

// central is a receiver on a real mosquitto, with the folder store.
type central struct {
	broker  *testmqtt.Broker
	dir     string
	store   receiver.FolderStore
	keys    string // devices folder
	pubPath string // central.pub, the appliance's uplink.central_key
	signer  *attest.SoftwareSigner
	recv    *receiver.Receiver

	mu     sync.Mutex
	cancel context.CancelFunc
	done   chan error
}

func startCentral(t testing.TB) *central {
	t.Helper()
	b := testmqtt.Start(t, testmqtt.Options{
		Users: map[string]string{testDevice: devicePass, centralUser: centralPass},
		ACL:   uplinkACL, TCPNoDelay: true,
	})
	dir := t.TempDir()
	c := &central{broker: b, dir: dir, store: receiver.FolderStore{Dir: filepath.Join(dir, "store")},
		keys: filepath.Join(dir, "devices"), pubPath: filepath.Join(dir, "central.pub")}
	var err error
	if c.signer, _, err = attest.LoadOrCreateSoftware(filepath.Join(dir, "central.key")); err != nil {
		t.Fatal(err)
	}
	if err := attest.WritePublicPEM(c.pubPath, c.signer.Public()); err != nil {
		t.Fatal(err)
	}
	c.start(t)
	return c
}

// start runs the receiver until stop or the end of the test.
func (c *central) start(t testing.TB) {
	t.Helper()
	r, err := receiver.New(receiver.Config{Quarantine: filepath.Join(c.dir, "quarantine"), Broker: c.broker.URL,
		TLS: c.broker.ClientTLS(), Username: centralUser, Password: centralPass, ClientID: "central-it"},
		c.store, receiver.FolderKeys{Dir: c.keys}, c.signer, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	c.mu.Lock()
	c.recv, c.cancel, c.done = r, cancel, done
	c.mu.Unlock()
	t.Cleanup(func() { c.stop(t) })
}

func (c *central) stop(t testing.TB) {
	c.mu.Lock()
	cancel, done := c.cancel, c.done
	c.cancel = nil
	c.mu.Unlock()
	if cancel == nil {
		return
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("receiver: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Errorf("receiver did not stop 30s after cancel")
	}
}

// enrolledKey returns a Prepare hook that gives the appliance a signing key and enrols
// its public half at central before the daemon's first batch.
func (c *central) enrolledKey() func(dataDir string) error {
	return func(dataDir string) error {
		s, _, err := attest.LoadOrCreateSoftware(filepath.Join(dataDir, "keys", "signing.key"))
		if err != nil {
			return err
		}
		if err := os.MkdirAll(filepath.Join(c.keys, testSite), 0o700); err != nil {
			return err
		}
		return attest.WritePublicPEM(filepath.Join(c.keys, testSite, testDevice+".pub"), s.Public())
	}
}

// uplinkYAML is the appliance's uplink section for c.
func (c *central) uplinkYAML(extra string) string {
	q := strconv.Quote
	p := c.broker.PKI
	return fmt.Sprintf("uplink:\n  broker: %s\n  ca: %s\n  cert: %s\n  key: %s\n  central_key: %s\n  username: %s\n  password: %s\n"+
		"  ack_timeout: 3s\n  backoff_min: 100ms\n  backoff_max: 1s\n  connect_timeout: 3s\n%s",
		q(c.broker.URL), q(p.CAFile), q(p.ClientCertFile), q(p.ClientKeyFile), q(c.pubPath), testDevice, devicePass, extra)
}

// storedBatch is one batch of the central store: its seq and its events.
type storedBatch struct {
	seq    uint64
	events [][]byte
}

// storedBatches reads the central store's batches of the appliance, in chain order,
// and checks that they form one contiguous chain from seq 1 up to the stored head.
func (c *central) storedBatches(t testing.TB) (chain string, batches []storedBatch) {
	t.Helper()
	devDir := filepath.Join(c.store.Dir, testSite, testDevice)
	h, err := c.store.Head(t.Context(), testSite, testDevice)
	if err != nil {
		t.Fatal(err)
	}
	if h.Chain == "" {
		return "", nil
	}
	files, err := filepath.Glob(filepath.Join(devDir, h.Chain, "events", "*.jsonl"))
	if err != nil {
		t.Fatal(err)
	}
	sort.Strings(files)
	for i, f := range files {
		seq, err := strconv.ParseUint(strings.TrimSuffix(filepath.Base(f), ".jsonl"), 10, 64)
		if err != nil {
			t.Fatal(err)
		}
		if seq != uint64(i+1) {
			t.Fatalf("central store: batch file %d is seq %d, not contiguous from 1", i, seq)
		}
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		sb := storedBatch{seq: seq}
		for _, line := range bytes.Split(bytes.TrimSuffix(b, []byte("\n")), []byte("\n")) {
			if len(line) > 0 {
				sb.events = append(sb.events, line)
			}
		}
		batches = append(batches, sb)
	}
	if n := uint64(len(batches)); n != h.Seq {
		t.Fatalf("central head seq %d, %d batch files", h.Seq, n)
	}
	return h.Chain, batches
}

// storedEvents is storedBatches flattened: the seqs and all events in chain order.
func (c *central) storedEvents(t testing.TB) (chain string, seqs []uint64, events [][]byte) {
	t.Helper()
	chain, batches := c.storedBatches(t)
	for _, b := range batches {
		seqs = append(seqs, b.seq)
		events = append(events, b.events...)
	}
	return chain, seqs, events
}

// uplinkHealth is the uplink block of /healthz.
type uplinkHealth struct {
	HeadSeq  uint64 `json:"head_seq"`
	AckedSeq uint64 `json:"acked_seq"`
	Uplink   *struct {
		State       string  `json:"state"`
		Unsent      uint64  `json:"unsent_batches"`
		Oldest      float64 `json:"oldest_unsent_seconds"`
		Receipts    uint64  `json:"receipts"`
		BadReceipts uint64  `json:"bad_receipts"`
		ReceiptSeq  uint64  `json:"receipt_seq"`
	} `json:"uplink"`
	Failures []string `json:"failures"`
}

func (d *daemon) uplinkHealth(t testing.TB) uplinkHealth {
	t.Helper()
	b, err := d.get(t.Context(), "/healthz")
	var he *httpStatusError
	if err != nil && !errors.As(err, &he) {
		t.Fatalf("/healthz: %v", err)
	}
	if he != nil {
		b = he.body
	}
	var h uplinkHealth
	if err := json.Unmarshal(b, &h); err != nil {
		t.Fatalf("/healthz: %v: %s", err, b)
	}
	if h.Uplink == nil {
		t.Fatalf("/healthz has no uplink block: %s", b)
	}
	return h
}

// waitAllReceipted waits until central has receipted every sealed batch and the spool
// holds no open events, after at least minEvents were committed.
func (d *daemon) waitAllReceipted(t testing.TB, minEvents uint64, timeout time.Duration) uplinkHealth {
	t.Helper()
	var h uplinkHealth
	eventually(t, timeout, func() (bool, string) {
		hh := d.mustHealth(t)
		h = d.uplinkHealth(t)
		return hh.Committed >= minEvents && hh.OpenEvents == 0 && h.HeadSeq > 0 && h.AckedSeq == h.HeadSeq && h.Uplink.Unsent == 0,
			fmt.Sprintf("committed %d (want >= %d), open %d, head %d, acked %d, uplink %+v\n%s",
				hh.Committed, minEvents, hh.OpenEvents, h.HeadSeq, h.AckedSeq, *h.Uplink, d.log())
	})
	return h
}

// sendSyslog sends count octet-counted RFC 5424 messages tagged tag-<n> over one TCP
// connection, at most rate per second (0: as fast as it goes), and closes it.
func sendSyslog(t testing.TB, addr, tag string, from, count, rate int) {
	t.Helper()
	conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Errorf("dial %s: %v", addr, err)
		return
	}
	defer conn.Close()
	bw := bufio.NewWriterSize(conn, 64<<10)
	start := time.Now()
	for i := from; i < from+count; i++ {
		if rate > 0 {
			if due := time.Duration(float64(i-from) / float64(rate) * float64(time.Second)); time.Since(start) < due {
				bw.Flush()
				time.Sleep(due - time.Since(start))
			}
		}
		msg := fmt.Sprintf("<110>1 2026-12-01T08:00:00.000Z it-host uplinktest - - - %s-%d", tag, i)
		fmt.Fprintf(bw, "%d %s", len(msg), msg)
	}
	conn.SetWriteDeadline(time.Now().Add(30 * time.Second))
	if err := bw.Flush(); err != nil {
		t.Errorf("send: %v", err)
	}
}

// tagged returns the numbers n of the messages tag-n among events, in stored order.
func tagged(t testing.TB, events [][]byte, tag string) []int {
	t.Helper()
	var out []int
	for _, e := range events {
		var ev struct {
			Message string `json:"message"`
		}
		if err := json.Unmarshal(e, &ev); err != nil {
			t.Fatalf("stored event does not parse: %v", err)
		}
		if n, ok := strings.CutPrefix(ev.Message, tag+"-"); ok {
			i, err := strconv.Atoi(n)
			if err != nil {
				t.Fatalf("message %q", ev.Message)
			}
			out = append(out, i)
		}
	}
	return out
}

// checkExactlyOnce: every message 0..count-1 is stored once, in the order sent (one
// TCP connection per range keeps the order).
func checkExactlyOnce(t testing.TB, got []int, count int) {
	t.Helper()
	if len(got) != count {
		t.Fatalf("central holds %d tagged messages, want %d", len(got), count)
	}
	for i, n := range got {
		if n != i {
			t.Fatalf("stored message %d is number %d: lost, duplicated or reordered", i, n)
		}
	}
}

// The whole path: syslog in, sealed, uploaded, verified, stored once, receipted; the
// appliance keeps the receipt, acks, and prunes past retention; central's copy verifies
// with the appliance's key and holds every message once, in order.
func TestUplinkEndToEnd(t *testing.T) {
	c := startCentral(t)
	d := startDaemon(t, daemonConfig{MaxAge: 200 * time.Millisecond, Prepare: c.enrolledKey(),
		Extra: c.uplinkYAML("") + "spool:\n  retention: 1s\n"})
	const n = 5000
	sendSyslog(t, d.tcp, "e2e", 0, n, 0)
	h := d.waitAllReceipted(t, n, waitTimeout)
	if h.Uplink.State != "connected" || h.Uplink.BadReceipts != 0 || h.Uplink.ReceiptSeq != h.HeadSeq {
		t.Fatalf("uplink health %+v, head %d", *h.Uplink, h.HeadSeq)
	}
	// Acked batches past the 1s retention are pruned.
	eventually(t, waitTimeout, func() (bool, string) {
		p := d.metrics(t).sum("edgeaudit_spool_batches_pruned_total")
		return p > 0, fmt.Sprintf("pruned %v", p)
	})
	d.stop(t)

	chain, seqs, events := c.storedEvents(t)
	checkExactlyOnce(t, tagged(t, events, "e2e"), n)
	// The stored chain verifies with the appliance's key, as a security team checks it.
	batches, _ := filepath.Glob(filepath.Join(c.store.Dir, testSite, testDevice, chain, "batches", "*.eab"))
	res, out := verify(t, append([]string{"-key", d.pubKey()}, batches...)...)
	if out.code != 0 || !res.OK || res.Batches != len(seqs) {
		t.Fatalf("verify of central's copy: %+v\n%s", res, out)
	}
	// The kept receipt verifies with central's key and covers the appliance's last
	// receipted seq (the stop event's batch may come after it).
	rb, err := os.ReadFile(filepath.Join(d.dataDir, "receipts", chain+".receipt"))
	if err != nil {
		t.Fatal(err)
	}
	rc, err := ledger.VerifyReceipt(rb, c.signer.Public())
	if err != nil {
		t.Fatal(err)
	}
	if rc.Seq < h.HeadSeq || rc.Site != testSite || rc.Device != testDevice {
		t.Fatalf("kept receipt %+v, want site/device %s/%s and seq >= %d", rc, testSite, testDevice, h.HeadSeq)
	}
}

// Broker outage under load: while mosquitto is down, the appliance keeps committing
// and sealing; after it returns, every batch arrives once and in order, and the unsent
// count goes back to zero.
func TestUplinkBrokerOutage(t *testing.T) {
	c := startCentral(t)
	d := startDaemon(t, daemonConfig{MaxAge: 200 * time.Millisecond, Prepare: c.enrolledKey(),
		Extra: c.uplinkYAML("") + "spool:\n  retention: 1s\n"})
	const n, rate = 12000, 2000 // six seconds of load
	var wg sync.WaitGroup
	wg.Go(func() { sendSyslog(t, d.tcp, "outage", 0, n, rate) })
	time.Sleep(time.Second)
	c.broker.Stop()
	var during uplinkHealth
	eventually(t, waitTimeout, func() (bool, string) {
		during = d.uplinkHealth(t)
		return during.Uplink.State != "connected" && during.Uplink.Unsent > 0,
			fmt.Sprintf("uplink %+v", *during.Uplink)
	})
	time.Sleep(2 * time.Second)
	grown := d.uplinkHealth(t)
	if grown.HeadSeq <= during.HeadSeq {
		t.Fatalf("head did not move while the broker was away (%d then %d): the uplink blocks collection", during.HeadSeq, grown.HeadSeq)
	}
	c.broker.Restart()
	wg.Wait()
	done := d.waitAllReceipted(t, n, 2*waitTimeout)
	// Acknowledged batches past the 1s retention are pruned.
	eventually(t, waitTimeout, func() (bool, string) {
		p := d.metrics(t).sum("edgeaudit_spool_batches_pruned_total")
		return p > 0, fmt.Sprintf("pruned %v", p)
	})
	d.stop(t)
	chain, seqs, events := c.storedEvents(t)
	checkExactlyOnce(t, tagged(t, events, "outage"), n)
	// Central's copy verifies with the appliance's key.
	batches, _ := filepath.Glob(filepath.Join(c.store.Dir, testSite, testDevice, chain, "batches", "*.eab"))
	if res, out := verify(t, append([]string{"-key", d.pubKey()}, batches...)...); out.code != 0 || res.Batches != len(seqs) {
		t.Fatalf("verify of central's copy: %+v\n%s", res, out)
	}
	// The site can prove what central holds: verify ties the kept receipt to the chain.
	res, out := verify(t, "-data", d.dataDir, "-central-key", c.pubPath)
	// Retention may have pruned the receipted batch itself: then the anchor or the
	// signature and names are what tie it.
	if out.code != 0 || res.Receipt == nil || res.Receipt.Seq < done.HeadSeq {
		t.Fatalf("verify with receipts: %+v (receipt %+v), want a receipt at seq >= %d\n%s", res, res.Receipt, done.HeadSeq, out)
	}
	// A kept receipt edited by hand (here: its seq) no longer verifies.
	kept, _ := filepath.Glob(filepath.Join(d.dataDir, "receipts", "*.receipt"))
	if len(kept) != 1 {
		t.Fatalf("kept receipts %v, want one", kept)
	}
	b, err := os.ReadFile(kept[0])
	if err != nil {
		t.Fatal(err)
	}
	forged := strings.Replace(string(b), fmt.Sprintf("\nseq %d\n", res.Receipt.Seq), fmt.Sprintf("\nseq %d\n", res.Receipt.Seq+100), 1)
	if err := os.WriteFile(kept[0], []byte(forged), 0o600); err != nil {
		t.Fatal(err)
	}
	if res, out := verify(t, "-data", d.dataDir, "-central-key", c.pubPath); out.code != 1 || res.Reason != "receipt" {
		t.Fatalf("verify with an edited receipt: %+v\n%s", res, out)
	}
}
