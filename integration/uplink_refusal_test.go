package integration

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/edgeaudit/edgeaudit/ledger"
	"github.com/edgeaudit/edgeaudit/receiver"
)

// The refusals of issue 8, each on the real path: what central refuses is never stored
// or receipted, the appliance keeps it unreceipted, and both sides say so.

// An appliance whose key central has not enrolled: every batch is refused and
// quarantined, nothing is acked; once the key is enrolled, the resends go through and
// every message arrives once.
func TestUplinkUnknownDevice(t *testing.T) {
	c := startCentral(t)
	d := startDaemon(t, daemonConfig{MaxAge: 200 * time.Millisecond, Extra: c.uplinkYAML("")})
	const n = 200
	sendSyslog(t, d.tcp, "unknown", 0, n, 0)
	eventually(t, waitTimeout, func() (bool, string) {
		s := c.recv.Stats()
		return s.Refused[receiver.ReasonUnknown] > 0 && s.Quarantined > 0, fmt.Sprintf("receiver %+v", s)
	})
	h := d.uplinkHealth(t)
	if h.AckedSeq != 0 || h.Uplink.Unsent == 0 || h.Uplink.Receipts != 0 {
		t.Fatalf("batches of an unknown device were acked: acked %d, uplink %+v", h.AckedSeq, *h.Uplink)
	}
	if s := c.recv.Stats(); s.Batches != 0 {
		t.Fatalf("central stored %d batches of an unknown device", s.Batches)
	}
	if q, _ := filepath.Glob(filepath.Join(c.dir, "quarantine", testSite, testDevice, "*-unknown_device.eab")); len(q) == 0 {
		t.Fatal("no quarantined batch for the unknown device")
	}
	// Enrol the key the appliance created; the next resend (ack_timeout 3s) is stored.
	if err := os.MkdirAll(filepath.Join(c.keys, testSite), 0o700); err != nil {
		t.Fatal(err)
	}
	pub, err := os.ReadFile(d.pubKey())
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(c.keys, testSite, testDevice+".pub"), pub, 0o600); err != nil {
		t.Fatal(err)
	}
	d.waitAllReceipted(t, n, waitTimeout)
	d.stop(t)
	_, _, events := c.storedEvents(t)
	checkExactlyOnce(t, tagged(t, events, "unknown"), n)
}

// A tampered batch and a replayed old one, published with the device's own
// credentials: the tampered one is refused and quarantined, the replay is answered
// with the current receipt and not stored again.
func TestUplinkTamperedAndReplayed(t *testing.T) {
	c := startCentral(t)
	d := startDaemon(t, daemonConfig{MaxAge: 200 * time.Millisecond, Prepare: c.enrolledKey(), Extra: c.uplinkYAML("")})
	sendSyslog(t, d.tcp, "replay", 0, 300, 0)
	d.waitAllReceipted(t, 300, waitTimeout)
	chain, seqs, before := c.storedEvents(t)
	first, err := os.ReadFile(filepath.Join(c.store.Dir, testSite, testDevice, chain, "batches", receiver.SeqName(seqs[0])+".eab"))
	if err != nil {
		t.Fatal(err)
	}
	// The device's credentials, as a compromised or buggy appliance would publish.
	o := mqtt.NewClientOptions().AddBroker(c.broker.URL).SetClientID("attacker").SetUsername(testDevice).
		SetPassword(devicePass).SetTLSConfig(c.broker.ClientTLS()).SetAutoReconnect(false)
	cl := mqtt.NewClient(o)
	if tok := cl.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("connect: %v", tok.Error())
	}
	defer cl.Disconnect(100)
	topic := "edgeaudit/" + testSite + "/" + testDevice + "/batch"
	publish := func(p []byte) {
		t.Helper()
		if tok := cl.Publish(topic, 1, false, p); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
			t.Fatalf("publish: %v", tok.Error())
		}
	}
	s0 := c.recv.Stats()
	publish(first) // replay
	eventually(t, waitTimeout, func() (bool, string) {
		s := c.recv.Stats()
		return s.Duplicates > s0.Duplicates, fmt.Sprintf("duplicates %d", s.Duplicates)
	})
	tampered := append([]byte(nil), first...)
	i := strings.LastIndex(string(tampered), "replay-")
	if i < 0 {
		t.Fatal("first batch has no test message")
	}
	tampered[i] = 'R' // one byte of one event
	publish(tampered)
	eventually(t, waitTimeout, func() (bool, string) {
		s := c.recv.Stats()
		return s.Refused[receiver.ReasonTampered] == 1, fmt.Sprintf("refused %v", s.Refused)
	})
	if q, _ := filepath.Glob(filepath.Join(c.dir, "quarantine", testSite, testDevice, "*-tampered.eab")); len(q) != 1 {
		t.Fatalf("quarantined tampered batches: %v, want 1", q)
	}
	d.stop(t)
	_, seqsAfter, after := c.storedEvents(t)
	if len(after) < len(before) || len(tagged(t, after, "replay")) != 300 {
		t.Fatalf("central holds %d events (%d tagged) after the replay, before %d", len(after), len(tagged(t, after, "replay")), len(before))
	}
	if len(seqsAfter) < len(seqs) {
		t.Fatalf("central lost batches: %d then %d", len(seqs), len(seqsAfter))
	}
}

// Rollback: the appliance is started from an older copy of its data folder (a restored
// backup). Central's retained receipt names a seq beyond the local head: the appliance
// records it in its chain and fails health; what it seals next at those seqs is a fork
// that central refuses.
func TestUplinkRollback(t *testing.T) {
	c := startCentral(t)
	d := startDaemon(t, daemonConfig{MaxAge: 200 * time.Millisecond, Prepare: c.enrolledKey(), Extra: c.uplinkYAML("")})
	sendSyslog(t, d.tcp, "before", 0, 200, 0)
	d.waitAllReceipted(t, 200, waitTimeout)
	d.stop(t)
	backup := t.TempDir()
	copyDir(t, d.dataDir, backup)

	d.restart(t)
	sendSyslog(t, d.tcp, "after", 0, 2000, 0)
	later := d.waitAllReceipted(t, 2000, waitTimeout) // committed counts since this start
	d.stop(t)
	if err := os.RemoveAll(d.dataDir); err != nil {
		t.Fatal(err)
	}
	copyDir(t, backup, d.dataDir)
	// Offline, verify with central's newest receipt already shows the copy is behind.
	head, err := c.store.Head(t.Context(), testSite, testDevice)
	if err != nil {
		t.Fatal(err)
	}
	newest := filepath.Join(t.TempDir(), "central.receipt")
	if err := os.WriteFile(newest, head.Receipt, 0o600); err != nil {
		t.Fatal(err)
	}
	if res, out := verify(t, "-data", d.dataDir, "-receipts", newest, "-central-key", c.pubPath); out.code != 1 || res.Reason != "receipt" || !strings.Contains(res.Error, "behind central") {
		t.Fatalf("verify of the restored copy against central's receipt: %+v\n%s", res, out)
	}

	d.restart(t)
	var h uplinkHealth
	eventually(t, waitTimeout, func() (bool, string) {
		h = d.uplinkHealth(t)
		for _, f := range h.Failures {
			if strings.Contains(f, "behind central") {
				return true, ""
			}
		}
		return false, fmt.Sprintf("failures %q (head %d, central holds %d)\n%s", h.Failures, h.HeadSeq, later.HeadSeq, d.log())
	})
	if h.AckedSeq > h.HeadSeq {
		t.Fatalf("acked %d beyond head %d", h.AckedSeq, h.HeadSeq)
	}
	// New batches at seqs central holds already are refused there as a fork.
	sendSyslog(t, d.tcp, "diverged", 0, 200, 0)
	eventually(t, waitTimeout, func() (bool, string) {
		s := c.recv.Stats()
		return s.Refused[receiver.ReasonFork] > 0, fmt.Sprintf("refused %v", s.Refused)
	})
	d.stop(t)
	var behind bool
	for _, e := range exportEvents(t, d.dataDir, false) {
		if e.Action == "audit.chain_behind_central" {
			behind = true
		}
	}
	if !behind {
		t.Fatal("the rolled-back appliance's chain has no audit.chain_behind_central event")
	}
	// Central's copy is unchanged by the diverged appliance: every message of before
	// and after, once, and nothing of it.
	_, _, events := c.storedEvents(t)
	checkExactlyOnce(t, tagged(t, events, "before"), 200)
	checkExactlyOnce(t, tagged(t, events, "after"), 2000)
	if got := tagged(t, events, "diverged"); len(got) != 0 {
		t.Fatalf("central stored %d messages of the diverged chain", len(got))
	}
}

// Two appliances from one data folder (a cloned VM): both seal their own batches at
// the same seqs under the same chain. Central stores one chain and refuses the other's
// batches as a fork; the appliance whose batches were refused learns it from the
// receipts and fails health.
func TestUplinkForkTwoAppliances(t *testing.T) {
	c, rp := startCentralProc(t) // the real `edgeaudit receive`, which alerts in its own trail
	a := startDaemon(t, daemonConfig{MaxAge: 200 * time.Millisecond, Prepare: c.enrolledKey(), Extra: c.uplinkYAML("")})
	sendSyslog(t, a.tcp, "shared", 0, 100, 0)
	a.waitAllReceipted(t, 100, waitTimeout)
	a.stop(t)
	// The clone gets a distinct MQTT client id only so that the two do not take each
	// other's session over at every reconnect; names, key and chain are the same.
	b := startDaemon(t, daemonConfig{MaxAge: 200 * time.Millisecond, Extra: c.uplinkYAML("  client_id: clone\n"),
		Prepare: func(dir string) error { copyDir(t, a.dataDir, dir); return nil }})
	a.restart(t)
	sendSyslog(t, a.tcp, "from-a", 0, 300, 0)
	sendSyslog(t, b.tcp, "from-b", 0, 300, 0)
	forkFiles := func() []string {
		q, _ := filepath.Glob(filepath.Join(c.dir, "quarantine", testSite, testDevice, "*-fork.eab"))
		return q
	}
	eventually(t, waitTimeout, func() (bool, string) {
		return len(forkFiles()) > 0, "no fork quarantined yet\n" + rp.log()
	})
	forked := func(d *daemon) bool {
		for _, f := range d.uplinkHealth(t).Failures {
			if strings.Contains(f, "fork") || strings.Contains(f, "behind central") {
				return true
			}
		}
		return false
	}
	eventually(t, waitTimeout, func() (bool, string) {
		return forked(a) || forked(b), fmt.Sprintf("a: %q\nb: %q", a.uplinkHealth(t).Failures, b.uplinkHealth(t).Failures)
	})
	a.stop(t)
	b.stop(t)
	rp.stop(t)
	// Central holds one consistent chain: all of shared, and one appliance's messages
	// only, never a mix at one seq (storedEvents checks the seqs are contiguous).
	_, _, events := c.storedEvents(t)
	checkExactlyOnce(t, tagged(t, events, "shared"), 100)
	fa, fb := len(tagged(t, events, "from-a")), len(tagged(t, events, "from-b"))
	if fa > 0 && fb > 0 {
		// Both can appear only if one of them stored after the other's chain, which a
		// fork check rules out: each seq links to its predecessor's hash.
		t.Fatalf("central holds messages of both clones (a %d, b %d): the fork was not refused", fa, fb)
	}
	// Central raised it: a security alert naming the fork in its own audit trail.
	res := runCLI(t, "query", "-config", rp.config, "-action", "security.alert")
	if res.code != 0 || !strings.Contains(res.stdout, "fork") {
		t.Fatalf("central's trail has no fork alert: %s", res)
	}
}

// Air-gapped site: export on the appliance, import at central, and the receipts file
// carried back and applied, once to a stopped daemon's spool and once through a running
// daemon's admin endpoint. The same checks hold: verified receipts ack, and then
// retention may prune.
func TestAirGapReceipts(t *testing.T) {
	c := startCentral(t)
	c.stop(t) // no MQTT here: the files travel by hand
	d := startDaemon(t, daemonConfig{MaxAge: 200 * time.Millisecond, Prepare: func(dir string) error {
		if err := c.enrolledKey()(dir); err != nil {
			return err
		}
		// The default place of central's key when no uplink is configured.
		pub, err := os.ReadFile(c.pubPath)
		if err != nil {
			return err
		}
		return os.WriteFile(filepath.Join(dir, "keys", "central.pub"), pub, 0o600)
	}})
	r, err := receiver.New(receiver.Config{Quarantine: filepath.Join(c.dir, "quarantine")}, c.store,
		receiver.FolderKeys{Dir: c.keys}, c.signer, nil)
	if err != nil {
		t.Fatal(err)
	}
	carry := func(round int) (receipts string, head uint64) {
		t.Helper()
		f, err := os.Open(exportWire(t, d.dataDir))
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		res, err := r.Import(t.Context(), f)
		if err != nil || len(res.Refused) != 0 || len(res.Receipts) != 1 {
			t.Fatalf("round %d: import: %+v, %v", round, res, err)
		}
		receipts = filepath.Join(t.TempDir(), "receipts.jsonl")
		out, err := os.Create(receipts)
		if err != nil {
			t.Fatal(err)
		}
		if err := ledger.WriteReceipts(out, res.Receipts); err != nil {
			t.Fatal(err)
		}
		if err := out.Close(); err != nil {
			t.Fatal(err)
		}
		rc, err := ledger.ParseReceipt(res.Receipts[0])
		if err != nil {
			t.Fatal(err)
		}
		return receipts, rc.Seq
	}

	// Round 1: the daemon is stopped; the command opens the spool itself.
	sendSyslog(t, d.tcp, "gap1", 0, 500, 0)
	eventually(t, waitTimeout, func() (bool, string) {
		h := d.mustHealth(t)
		return h.Committed >= 500, fmt.Sprintf("committed %d", h.Committed)
	})
	d.stop(t)
	file, head := carry(1)
	if res := runCLI(t, "receipts", "import", "-config", d.config, file); res.code != 0 || !strings.Contains(res.stdout, fmt.Sprintf("acked up to seq %d", head)) {
		t.Fatalf("offline receipts import: %s", res)
	}
	// Applying the same file again changes nothing and is not an error.
	if res := runCLI(t, "receipts", "import", "-config", d.config, file); res.code != 0 || !strings.Contains(res.stdout, "stays") {
		t.Fatalf("second receipts import: %s", res)
	}

	// Round 2: the daemon runs; the command goes through the admin endpoint.
	d.restart(t)
	if got := d.mustHealth(t); got.HeadSeq < head {
		t.Fatalf("head %d after restart, below the receipted %d", got.HeadSeq, head)
	}
	sendSyslog(t, d.tcp, "gap2", 0, 500, 0)
	eventually(t, waitTimeout, func() (bool, string) {
		h := d.mustHealth(t)
		return h.Committed >= 500, fmt.Sprintf("committed %d", h.Committed)
	})
	d.stop(t)
	file2, head2 := carry(2)
	d.restart(t)
	if res := runCLI(t, "receipts", "import", "-config", d.config, file2); res.code != 0 || !strings.Contains(res.stdout, fmt.Sprintf("acked up to seq %d", head2)) {
		t.Fatalf("online receipts import: %s\n%s", res, d.log())
	}
	if h := d.uplinkHealthless(t); h.AckedSeq != head2 {
		t.Fatalf("acked %d after the online import, want %d", h.AckedSeq, head2)
	}
	// A receipts file signed by another key acks nothing and says so (exit 1).
	other := startCentral(t)
	other.stop(t)
	r2, err := receiver.New(receiver.Config{Quarantine: filepath.Join(other.dir, "q")}, other.store,
		receiver.FolderKeys{Dir: c.keys}, other.signer, nil)
	if err != nil {
		t.Fatal(err)
	}
	d.stop(t)
	f, err := os.Open(exportWire(t, d.dataDir))
	if err != nil {
		t.Fatal(err)
	}
	res, err := r2.Import(t.Context(), f)
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	forged := filepath.Join(t.TempDir(), "forged.jsonl")
	fw, _ := os.Create(forged)
	ledger.WriteReceipts(fw, res.Receipts)
	fw.Close()
	if res := runCLI(t, "receipts", "import", "-config", d.config, forged); res.code != 1 || !strings.Contains(res.stdout, "1 did not verify") {
		t.Fatalf("forged receipts import: %s", res)
	}
	var imports int
	for _, e := range exportEvents(t, d.dataDir, true) {
		if e.Action == "audit.receipts_imported" {
			imports++
		}
	}
	if imports != 4 {
		t.Fatalf("%d audit.receipts_imported events in the chain, want 4 (one per import)", imports)
	}
}

// uplinkHealthless reads head and acked seq from /healthz of a daemon without an uplink.
func (d *daemon) uplinkHealthless(t testing.TB) uplinkHealth {
	t.Helper()
	b, err := d.get(t.Context(), "/healthz")
	if err != nil {
		t.Fatalf("/healthz: %v", err)
	}
	var h uplinkHealth
	if err := json.Unmarshal(b, &h); err != nil {
		t.Fatal(err)
	}
	return h
}
