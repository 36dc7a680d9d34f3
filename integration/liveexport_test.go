package integration

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/edgeaudit/edgeaudit/ledger"
)

// TestExportVerifyWhileRunning drives export and verify against a running daemon while
// syslog keeps arriving: `export -data DIR` and `verify -data DIR` go through the
// daemon's admin endpoint (found through DIR/admin.addr), the export verifies with
// `verify -key`, the filters select what they should, every export (and a failed verify)
// is then in the chain, and token reveal -data DIR reaches the daemon too. With the
// daemon stopped the same commands read the spool, and also record.
func TestExportVerifyWhileRunning(t *testing.T) {
	d := startDaemon(t, daemonConfig{MaxEvents: 20, MaxAge: 200 * time.Millisecond, Extra: "privacy: {vault: true}\n"})
	if b, err := os.ReadFile(filepath.Join(d.dataDir, "admin.addr")); err != nil || strings.TrimSpace(string(b)) != d.admin {
		t.Fatalf("admin.addr=%q (%v), want %s", b, err, d.admin)
	}

	// Two kinds of senders: a steady stream from it-host (the harness's), and a
	// known number from other-host, which the filters pick out.
	const others = 40
	var sentOther []string
	for i := range others {
		sentOther = append(sentOther, fmt.Sprintf("<110>1 2026-11-27T09:00:00.000Z other-host otherapp - - - other-%d", i))
	}
	if err := writeFrames(d.tcp, sentOther); err != nil {
		t.Fatal(err)
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var streamed atomic.Int64
	wg.Go(func() {
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			if err := writeOctet(d.tcp, markers(fmt.Sprintf("live-%d", i), 200)); err != nil {
				t.Errorf("send: %v", err)
				return
			}
			streamed.Add(200)
			time.Sleep(20 * time.Millisecond)
		}
	})
	stopSending := sync.OnceFunc(func() { close(stop); wg.Wait() })
	defer stopSending()
	eventually(t, waitTimeout, func() (bool, string) {
		n := d.metrics(t).sum("edgeaudit_syslog_received_total", "transport", "tcp")
		return n >= others+1000, fmt.Sprintf("%v received", n)
	})
	filtered := func(args ...string) []event {
		t.Helper()
		return exportEvents(t, d.dataDir, false, args...)
	}
	// Sealed within batch.max_age of their commit: then the export holds them all.
	eventually(t, waitTimeout, func() (bool, string) {
		n := len(filtered("-source", "other-host"))
		return n == others, fmt.Sprintf("%d of %d other-host events sealed", n, others)
	})

	// Whole chain, through the daemon, while it commits.
	wire := filepath.Join(t.TempDir(), "live.eab")
	res := runCLI(t, "export", "-data", d.dataDir, "-out", wire)
	if res.code != 0 || !strings.Contains(res.stderr, "through the running daemon at "+d.admin) || !strings.Contains(res.stderr, "recorded in the chain as event") {
		t.Fatalf("export while running: want exit 0, the daemon named and the record\n%s", res)
	}
	v, vres := verify(t, "-key", d.pubKey(), wire)
	if vres.code != 0 || !v.OK || v.Events < others || uint64(v.Batches) != v.LastSeq {
		t.Fatalf("verify of the live export: ok=%v events=%d batches=%d last=%d, want ok, seq 1..last, at least %d events\n%s", v.OK, v.Events, v.Batches, v.LastSeq, others, vres)
	}
	dv, dres := verify(t, "-data", d.dataDir)
	if dres.code != 0 || !dv.OK || !strings.Contains(dres.stderr, "through the running daemon") || dv.LastSeq < v.LastSeq {
		t.Fatalf("verify -data while running: ok=%v last=%d (export ended at %d)\n%s", dv.OK, dv.LastSeq, v.LastSeq, dres)
	}

	// Filters, on events.
	if got := filtered("-source", "other-host"); len(got) != others || got[0].Source.Host != "other-host" {
		t.Fatalf("-source other-host: %d events (first %+v), want %d from other-host", len(got), first(got), others)
	}
	if got := filtered("-source", "otherapp", "-action", "system.log,auth.login"); len(got) != others {
		t.Fatalf("-source otherapp -action system.log,auth.login: %d events, want %d", len(got), others)
	}
	if got := filtered("-action", "audit.start"); len(got) != 1 || got[0].Source.Kind != "self" {
		t.Fatalf("-action audit.start: %v, want the one start event", got)
	}
	// The syslog messages carry their own (past) times; self events carry now.
	if got := filtered("-since", "24h", "-source", "syslog"); len(got) != 0 {
		t.Fatalf("-since 24h -source syslog: %d events, want none (they are dated 2026-11-27)", len(got))
	}
	if got := filtered("-since", "2026-11-27T08:30:00Z", "-until", "2026-11-27T09:30:00Z"); len(got) != others {
		t.Fatalf("-since/-until around 09:00: %d events, want the %d other-host ones", len(got), others)
	}
	// Filters, on batches: whole batches holding a match, each verifying.
	part := filepath.Join(t.TempDir(), "other.eab")
	if res := runCLI(t, "export", "-data", d.dataDir, "-out", part, "-source", "other-host"); res.code != 0 || !strings.Contains(res.stderr, "-gaps") {
		t.Fatalf("filtered batch export: want exit 0 and the -gaps hint\n%s", res)
	}
	if pv, pres := verify(t, "-gaps", "-key", d.pubKey(), part); pres.code != 0 || !pv.OK || pv.Events < others {
		t.Fatalf("verify -gaps of the filtered export: %s", pres)
	}

	// token reveal -data DIR reaches the running daemon, which records the attempt
	// (an unknown token: refused, and recorded).
	rres := runCLI(t, "token", "reveal", "-data", d.dataDir, "-reason", "live check", "pat_00000000000000000000000000000000")
	if rres.code == 0 || !strings.Contains(rres.stderr, "daemon answered 404") {
		t.Fatalf("token reveal -data against the running daemon: want the daemon's 404\n%s", rres)
	}

	// A verify that fails (the wrong key trusted) is recorded by the daemon.
	wrong := writeOtherKey(t)
	if fv, fres := verify(t, "-data", d.dataDir, "-key", wrong); fres.code != 1 || fv.OK || !strings.Contains(fres.stderr, "recorded in the chain (audit.verify_failed)") {
		t.Fatalf("verify with the wrong key: want exit 1, recorded\n%s", fres)
	}

	stopSending()
	self := exportAllEvents(t, d.dataDir, true, "-source", "self")
	exports := selfEvents(self, "audit.export")
	if len(exports) < 6 {
		t.Fatalf("%d audit.export events in the chain, want one per export (at least 6)", len(exports))
	}
	var whole, bySource int
	for _, e := range exports {
		if e.Detail["via"] != "daemon" || e.Detail["result"] != "complete" {
			t.Fatalf("export event %+v, want via daemon, complete", e)
		}
		switch {
		case e.Detail["format"] == "batches" && !hasFilter(e.Detail):
			whole++
		case e.Detail["filter.source"] == "other-host" && e.Count > 0:
			bySource++
		}
	}
	if whole != 1 || bySource == 0 {
		t.Fatalf("export events %+v: want one whole-chain export and the -source other-host ones", exports)
	}
	if got := selfEvents(self, "audit.verify_failed"); len(got) != 1 || got[0].Detail["reason"] != "key" {
		t.Fatalf("verify_failed events %+v, want one with reason key", got)
	}
	if got := selfEvents(self, "audit.token_reveal"); len(got) != 1 || got[0].Reason != "live check" {
		t.Fatalf("token_reveal events %+v, want the one of the live check", got)
	}

	// Stopped: the same commands read the spool, and the export is recorded there.
	d.stop(t)
	if _, err := os.Stat(filepath.Join(d.dataDir, "admin.addr")); !os.IsNotExist(err) {
		t.Fatalf("admin.addr after stop: %v, want it removed", err)
	}
	off := filepath.Join(t.TempDir(), "off.eab")
	if res := runCLI(t, "export", "-data", d.dataDir, "-out", off); res.code != 0 || !strings.Contains(res.stderr, "from the stopped spool") {
		t.Fatalf("export of the stopped spool\n%s", res)
	}
	if sv, sres := verify(t, "-data", d.dataDir); sres.code != 0 || !sv.OK || !strings.Contains(sres.stderr, "the stopped spool") {
		t.Fatalf("verify -data of the stopped spool (the offline export record must keep it intact)\n%s", sres)
	}
	evs := exportAllEvents(t, d.dataDir, true, "-action", "audit.export")
	if got := evs[len(evs)-1]; got.Detail["via"] != "spool" { // exportEvents' own is recorded after its read
		t.Fatalf("offline export event %+v, want via spool", got)
	}

	// Rough edges: a file from -from N names -partial; a cut file names where.
	fromN := filepath.Join(t.TempDir(), "from3.eab")
	if res := runCLI(t, "export", "-data", d.dataDir, "-out", fromN, "-from", "3"); res.code != 0 || !strings.Contains(res.stderr, "-partial") {
		t.Fatalf("export -from 3: want exit 0 and the -partial hint\n%s", res)
	}
	if _, res := verify(t, "-key", d.pubKey(), fromN); res.code != 1 || !strings.Contains(res.stderr, "-partial") {
		t.Fatalf("verify of an export from seq 3: want exit 1 suggesting -partial\n%s", res)
	}
	raw, err := os.ReadFile(off)
	if err != nil {
		t.Fatal(err)
	}
	cut := filepath.Join(t.TempDir(), "cut.eab")
	if err := os.WriteFile(cut, raw[:len(raw)/2], 0o600); err != nil {
		t.Fatal(err)
	}
	if _, res := verify(t, "-key", d.pubKey(), cut); res.code != 1 || !strings.Contains(res.stderr, "at byte offset") || !strings.Contains(res.stderr, "cut short") || !strings.Contains(res.stderr, "after seq") {
		t.Fatalf("verify of a cut file: want exit 1 naming the offset and the seq\n%s", res)
	}
}

func hasFilter(detail map[string]string) bool {
	for k := range detail {
		if strings.HasPrefix(k, "filter.") {
			return true
		}
	}
	return false
}

func first(evs []event) event {
	if len(evs) == 0 {
		return event{}
	}
	return evs[0]
}

// writeFrames sends whole RFC 5424 messages, octet-counted, over one TCP connection.
func writeFrames(addr string, msgs []string) error {
	if err := checkLoopback(addr); err != nil {
		return err
	}
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	var buf bytes.Buffer
	for _, m := range msgs {
		buf.Write(octetFrame(m))
	}
	if _, err := c.Write(buf.Bytes()); err != nil {
		return err
	}
	return c.Close()
}

// writeOtherKey writes a public key that signed nothing of the chain.
func writeOtherKey(t testing.TB) string {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.MarshalPKIXPublicKey(&k.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "other.pub")
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// readWireFrom decodes an export file that may start after seq 1.
func readWireFrom(t testing.TB, file string) []*ledger.Batch {
	t.Helper()
	f, err := os.Open(file)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	r := ledger.NewReader(f)
	var bs []*ledger.Batch
	for {
		b, err := r.Next()
		if errors.Is(err, io.EOF) {
			return bs
		}
		if err != nil {
			t.Fatalf("read %s: %v", file, err)
		}
		bs = append(bs, b)
	}
}
