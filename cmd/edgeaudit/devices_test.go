package main

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/edgeaudit/edgeaudit/attest"
	"github.com/edgeaudit/edgeaudit/audit"
	"github.com/edgeaudit/edgeaudit/ledger"
	"github.com/edgeaudit/edgeaudit/receiver/central"
)

// TestDevicesCommands: add (validated, refused over a different key without -replace),
// list (table and JSON), remove; each change is in central's trail; nonce prints 32
// fresh bytes. Attested adds run on a real swtpm in receiver/central and integration.
func TestDevicesCommands(t *testing.T) {
	cfgPath, cfg := centralConfig(t, "")
	dir := t.TempDir()
	_, pub1 := newDeviceKey(t, dir)
	_, pub2 := newDeviceKey(t, dir)
	p384, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, _ := x509.MarshalPKIXPublicKey(&p384.PublicKey)
	bad := filepath.Join(dir, "p384.pub")
	if err := os.WriteFile(bad, pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	kid := func(path string) string {
		ks, err := attest.ReadPublicPEM(path)
		if err != nil {
			t.Fatal(err)
		}
		id, _ := ledger.KeyID(ks[0])
		return id
	}
	run := func(args ...string) (string, error) {
		var out bytes.Buffer
		err := (&DevicesCommand{out: &out}).Run(t.Context(), args)
		return out.String(), err
	}
	for _, tt := range []struct {
		name    string
		args    []string
		want    string // in the output
		wantErr string // in the error
	}{
		{"add", []string{"add", "-config", cfgPath, "-site", "s1", "-device", "d1", pub1}, "key " + kid(pub1) + " enrolled", ""},
		{"add the same key", []string{"add", "-config", cfgPath, "-site", "s1", "-device", "d1", pub1}, "already enrolled", ""},
		{"add another key", []string{"add", "-config", cfgPath, "-site", "s1", "-device", "d1", pub2}, "", "a different key is enrolled"},
		{"add under central's own trail's site", []string{"add", "-config", cfgPath, "-site", "central", "-device", "c1", pub1}, "", "central's own audit trail"},
		{"add a P-384 key", []string{"add", "-config", cfgPath, "-site", "s1", "-device", "d2", bad}, "", "not an ECDSA P-256 public key"},
		{"replace", []string{"add", "-config", cfgPath, "-site", "s1", "-device", "d1", "-replace", pub2}, "replacing " + kid(pub1), ""},
		{"list", []string{"list", "-config", cfgPath}, "s1    d1      " + kid(pub2), ""},
		{"remove", []string{"remove", "-config", cfgPath, "-site", "s1", "-device", "d1"}, "key " + kid(pub2) + " removed", ""},
		{"remove again", []string{"remove", "-config", cfgPath, "-site", "s1", "-device", "d1"}, "", "no key enrolled"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			out, err := run(tt.args...)
			if tt.wantErr == "" && err != nil || tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)) {
				t.Fatalf("err %v, want %q", err, tt.wantErr)
			}
			if !strings.Contains(out, tt.want) {
				t.Fatalf("output %q, want it to contain %q", out, tt.want)
			}
		})
	}
	if _, err := run("add", "-config", cfgPath, "-site", "s2", "-device", "d5", pub1); err != nil {
		t.Fatal(err)
	}
	out, err := run("list", "-config", cfgPath, "-json")
	if err != nil {
		t.Fatal(err)
	}
	var devs []central.Device
	if err := json.Unmarshal([]byte(out), &devs); err != nil || len(devs) != 1 || devs[0].Site != "s2" || devs[0].KeyID != kid(pub1) {
		t.Fatalf("list -json %q (%v), want only s2/d5", out, err)
	}
	var changes []string
	for _, e := range trail(t, cfg) {
		if e.Action == audit.ActionKeyChange {
			changes = append(changes, e.Reason+" "+e.Detail["site"]+"/"+e.Detail["device"])
		}
	}
	want := []string{"device enrolled s1/d1", "device key replaced s1/d1", "device removed s1/d1", "device enrolled s2/d5"}
	if fmt.Sprint(changes) != fmt.Sprint(want) {
		t.Errorf("key changes in central's trail %q, want %q", changes, want)
	}
	n1, err := run("nonce")
	if err != nil {
		t.Fatal(err)
	}
	n2, _ := run("nonce")
	if b, err := hex.DecodeString(strings.TrimSpace(n1)); err != nil || len(b) != 32 || n1 == n2 {
		t.Errorf("devices nonce: %q then %q, want two different 32-byte hex nonces", n1, n2)
	}
	var ue *usageError
	for _, args := range [][]string{{}, {"frobnicate"}, {"add", "-site", "s1", pub1}, {"remove", "-site", "s1"}, {"list", "x"},
		{"add", "-site", "s1", "-device", "d1", "-nonce", "00", pub1},                            // -nonce without -bundle
		{"add", "-site", "s1", "-device", "d1", "-bundle", "b.json"},                             // -bundle without -nonce
		{"add", "-site", "s1", "-device", "d1", "-bundle", "b.json", "-nonce", "zz"},             // not hex
		{"add", "-site", "s1", "-device", "d1", "-bundle", "b.json", "-nonce", "00", pub1, pub2}, // two keys
		{"nonce", "x"}} {
		if _, err := run(args...); !errors.As(err, &ue) {
			t.Errorf("devices %v: %v, want a usage error", args, err)
		}
	}
}
