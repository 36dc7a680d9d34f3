package main

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/edgeaudit/edgeaudit/attest"
	"github.com/edgeaudit/edgeaudit/audit"
	"github.com/edgeaudit/edgeaudit/ledger"
	"github.com/edgeaudit/edgeaudit/receiver"
	"github.com/edgeaudit/edgeaudit/receiver/central"
)

// centralConfig writes a config file whose receive: section puts central in a temp
// folder; extra is more YAML inside receive:.
func centralConfig(t *testing.T, extra string) (path string, cfg central.Config) {
	t.Helper()
	dir := t.TempDir()
	path = filepath.Join(dir, "edgeaudit.yaml")
	text := "site: s1\ndevice: d1\nreceive:\n  data_dir: central\n  audit_device: c1\n" + extra
	if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := central.LoadConfig(path)
	if err != nil {
		t.Fatal(err)
	}
	cfg.SetDefaults()
	return path, cfg
}

func newDeviceKey(t *testing.T, dir string) (*ecdsa.PrivateKey, string) {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, fmt.Sprintf("signing-%d.pub", time.Now().UnixNano()))
	if err := attest.WritePublicPEM(path, &k.PublicKey); err != nil {
		t.Fatal(err)
	}
	return k, path
}

// sealChain returns n batches of site/device's chain in the wire format, as
// `edgeaudit export` writes them, and the last header hash.
func sealChain(t *testing.T, k *ecdsa.PrivateKey, site, device string, n int) ([]byte, string) {
	t.Helper()
	kid, err := ledger.KeyID(&k.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	var out []byte
	prev := ledger.ZeroHash
	for seq := 1; seq <= n; seq++ {
		evs := [][]byte{fmt.Appendf(nil, `{"id":"%s-%d","action":"phi.view"}`, device, seq)}
		h := ledger.Header{Site: site, Device: device, Chain: strings.Repeat("ef", 16), Seq: uint64(seq), Prev: prev,
			Sealed: "2026-12-01T08:00:00Z", TimeSync: ledger.TimeSync{State: "unknown"}, KeyID: kid}
		hb, sig, err := h.Seal(ledger.EventsRoot(evs), len(evs), func(d []byte) ([]byte, error) { return ecdsa.SignASN1(rand.Reader, k, d) })
		if err != nil {
			t.Fatal(err)
		}
		out = (&ledger.Batch{Header: hb, Signature: sig, Events: evs}).AppendWire(out)
		sum := ledger.HeaderHash(hb)
		prev = hex.EncodeToString(sum[:])
	}
	return out, prev
}

// trail reads central's own trail through the store opener `edgeaudit query` uses.
func trail(t *testing.T, cfg central.Config) []audit.Event {
	t.Helper()
	st, closeFn, err := central.OpenStore(t.Context(), cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer closeFn()
	var evs []audit.Event
	err = st.Query(t.Context(), receiver.Query{Site: cfg.AuditSite, Device: cfg.AuditDevice}, func(m receiver.Match) error {
		e, err := audit.Decode(m.Event)
		evs = append(evs, e)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return evs
}

// TestReceiveImport: an exported file from an air-gapped site is stored, its receipts
// file verifies with central.pub, refusals are listed and make the exit status 1, and
// a second import of the same file stores nothing again.
func TestReceiveImport(t *testing.T) {
	cfgPath, cfg := centralConfig(t, "")
	dir := t.TempDir()
	k1, pub1 := newDeviceKey(t, dir)
	k9, _ := newDeviceKey(t, dir)
	var out bytes.Buffer
	if err := (&DevicesCommand{out: &out}).Run(t.Context(), []string{"add", "-config", cfgPath, "-site", "s1", "-device", "d1", pub1}); err != nil {
		t.Fatal(err)
	}
	good, lastHash := sealChain(t, k1, "s1", "d1", 3)
	rogue, _ := sealChain(t, k9, "s1", "d9", 1)
	export := filepath.Join(dir, "export.eab")
	if err := os.WriteFile(export, append(good, rogue...), 0o600); err != nil {
		t.Fatal(err)
	}
	receipts := filepath.Join(dir, "central.receipts")
	out.Reset()
	err := (&ReceiveCommand{out: &out}).Run(t.Context(), []string{"import", "-config", cfgPath, "-out", receipts, export})
	if err == nil || !strings.Contains(err.Error(), "1 of 4 batches refused") {
		t.Fatalf("import: %v, want 1 of 4 batches refused", err)
	}
	for _, want := range []string{"4 batches: 3 stored, 0 duplicates, 1 refused", "refused s1/d9 seq 1: unknown_device", "refused unknown_device: 1",
		"receipt s1/d1 chain " + strings.Repeat("ef", 16) + " up to seq 3"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("output lacks %q:\n%s", want, out.String())
		}
	}
	f, err := os.Open(receipts)
	if err != nil {
		t.Fatal(err)
	}
	rcs, err := ledger.ReadReceipts(f)
	f.Close()
	if err != nil || len(rcs) != 1 {
		t.Fatalf("receipts file: %d receipts, %v; want 1", len(rcs), err)
	}
	ks, err := attest.ReadPublicPEM(cfg.PublicKeyPath())
	if err != nil {
		t.Fatal(err)
	}
	r, err := ledger.VerifyReceipt(rcs[0], ks[0])
	if err != nil || r.Seq != 3 || r.HeaderHash != lastHash || r.Site != "s1" || r.Device != "d1" {
		t.Fatalf("receipt %+v, %v; want s1/d1 seq 3 header %s verifying with central.pub", r, err, lastHash)
	}

	// Again: duplicates only, and still the receipt of seq 3.
	out.Reset()
	if err := (&ReceiveCommand{out: &out}).Run(t.Context(), []string{"import", "-config", cfgPath, "-out", receipts, export}); err == nil {
		t.Fatal("second import: nil, want the refusal again")
	}
	if !strings.Contains(out.String(), "4 batches: 0 stored, 3 duplicates, 1 refused") {
		t.Errorf("second import output:\n%s", out.String())
	}
	var imports, alerts int
	for _, e := range trail(t, cfg) {
		switch {
		case e.Action == audit.ActionPHIImport && e.Detail["file"] == export:
			imports++
		case e.Action == audit.ActionSecurityAlert && e.Detail["device"] == "d9" && e.Detail["reason"] == receiver.ReasonUnknown:
			alerts++
		}
	}
	if imports != 2 || alerts != 2 {
		t.Errorf("central's trail: %d imports and %d alerts for d9, want 2 and 2", imports, alerts)
	}
}

// TestReceiveImportWhileReceiving: an import does not write a folder store that a
// running `edgeaudit receive` owns.
func TestReceiveImportWhileReceiving(t *testing.T) {
	dir := t.TempDir()
	pw := filepath.Join(dir, "passwd")
	if err := os.WriteFile(pw, []byte("# none\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfgPath, cfg := centralConfig(t, "  embedded_broker: 127.0.0.1:0\n  embedded_broker_passwords: "+pw+"\n")
	srv, err := central.New(cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	}()
	<-srv.Ready()
	k, _ := newDeviceKey(t, dir)
	b, _ := sealChain(t, k, "s1", "d1", 1)
	export := filepath.Join(dir, "export.eab")
	if err := os.WriteFile(export, b, 0o600); err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	err = (&ReceiveCommand{out: &out}).Run(t.Context(), []string{"import", "-config", cfgPath, export})
	if !errors.Is(err, central.ErrStoreBusy) {
		t.Fatalf("import beside a running receiver: %v, want ErrStoreBusy", err)
	}
}

func TestReceiveUsage(t *testing.T) {
	for _, args := range [][]string{{"extra"}, {"import"}, {"import", "a", "b"}, {"import", "-out", "f", "f"}} {
		var ue *usageError
		if err := (&ReceiveCommand{out: new(bytes.Buffer)}).Run(t.Context(), args); !errors.As(err, &ue) {
			t.Errorf("receive %v: %v, want a usage error", args, err)
		}
	}
}

// TestReceiveRunsUntilCancelled: `edgeaudit receive` runs in the foreground with the
// embedded broker until its context ends (main cancels it on SIGINT or SIGTERM), then
// returns nil with the start and the stop in central's trail.
func TestReceiveRunsUntilCancelled(t *testing.T) {
	dir := t.TempDir()
	pw := filepath.Join(dir, "passwd")
	if err := os.WriteFile(pw, []byte("# none\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfgPath, cfg := centralConfig(t, "  embedded_broker: 127.0.0.1:0\n  embedded_broker_passwords: "+pw+"\n  log_level: warn\n")
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	stopped := make(chan struct{})
	done := make(chan error, 1)
	go func() {
		done <- (&ReceiveCommand{stopSignals: func() { close(stopped) }}).Run(ctx, []string{"-config", cfgPath})
	}()
	deadline := time.Now().Add(30 * time.Second)
	for {
		// The start is recorded once everything is open.
		if _, err := os.Stat(filepath.Join(cfg.Store, cfg.AuditSite, cfg.AuditDevice, "head")); err == nil {
			break
		}
		select {
		case err := <-done:
			t.Fatalf("receive returned early: %v", err)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatal("receive did not record its start within 30s")
		}
		time.Sleep(20 * time.Millisecond)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("receive: %v", err)
	}
	<-stopped
	evs := trail(t, cfg)
	if len(evs) != 2 || evs[0].Action != audit.ActionAppStart || evs[1].Action != audit.ActionAppStop {
		t.Fatalf("central's trail %+v, want start and stop", evs)
	}
	if _, err := os.Stat(cfg.PublicKeyPath()); err != nil {
		t.Fatalf("central.pub: %v", err)
	}
}
