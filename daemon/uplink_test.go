package daemon

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/edgeaudit/edgeaudit/attest"
	"github.com/edgeaudit/edgeaudit/ledger"
)

func receiptFor(t *testing.T, k *ecdsa.PrivateKey, r ledger.Receipt) []byte {
	t.Helper()
	b, err := ledger.SignReceipt(r, func(d []byte) ([]byte, error) { return ecdsa.SignASN1(rand.Reader, k, d) },
		"edgeaudit/central", &k.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// The receipt book takes only receipts by central's key for this appliance's names and
// current chain, and keeps the newest of the chain on disk.
func TestReceiptBook(t *testing.T) {
	central, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	other, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	pubPath := filepath.Join(dir, "central.pub")
	if err := attest.WritePublicPEM(pubPath, &central.PublicKey); err != nil {
		t.Fatal(err)
	}
	const chain = "00112233445566778899aabbccddeeff"
	hash := strings.Repeat("ab", 32)
	book := &receiptBook{site: "s1", device: "d1", dir: filepath.Join(dir, "receipts"), keyPath: pubPath, chain: chain}
	good := ledger.Receipt{Site: "s1", Device: "d1", Chain: chain, Seq: 5, HeaderHash: hash, Time: time.Now()}
	with := func(f func(*ledger.Receipt)) ledger.Receipt { r := good; f(&r); return r }
	for _, tc := range []struct {
		name    string
		receipt []byte
		wantErr string
	}{
		{"good", receiptFor(t, central, good), ""},
		{"another key", receiptFor(t, other, good), "signature"},
		{"another site", receiptFor(t, central, with(func(r *ledger.Receipt) { r.Site = "s2" })), "s2/d1"},
		{"another device", receiptFor(t, central, with(func(r *ledger.Receipt) { r.Device = "d9" })), "s1/d9"},
		{"another chain", receiptFor(t, central, with(func(r *ledger.Receipt) { r.Chain = strings.Repeat("cd", 16) })), "chain"},
		{"not a receipt", []byte("hello\n"), "receipt"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			seq, h, err := book.Verify(tc.receipt)
			switch {
			case tc.wantErr == "" && err != nil:
				t.Fatalf("Verify: %v", err)
			case tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)):
				t.Fatalf("Verify error %v, want one mentioning %q", err, tc.wantErr)
			case tc.wantErr == "" && (seq != 5 || h != hash):
				t.Fatalf("Verify = %d %s, want 5 %s", seq, h, hash)
			}
		})
	}

	// Keep: the newest receipt of the chain is on disk; an older one does not replace it.
	newer := receiptFor(t, central, with(func(r *ledger.Receipt) { r.Seq = 9 }))
	if err := book.Keep(9, newer); err != nil {
		t.Fatal(err)
	}
	if err := book.Keep(5, receiptFor(t, central, good)); err != nil {
		t.Fatal(err)
	}
	if err := book.Keep(7, newer); err == nil {
		t.Fatal("Keep of a receipt naming seq 9 as seq 7: no error")
	}
	kept, err := os.ReadFile(filepath.Join(dir, "receipts", chain+".receipt"))
	if err != nil {
		t.Fatal(err)
	}
	if string(kept) != string(newer) {
		t.Fatalf("kept receipt is not the newest:\n%s", kept)
	}
	fi, err := os.Stat(filepath.Join(dir, "receipts", chain+".receipt"))
	if err != nil {
		t.Fatal(err)
	}
	if got := fi.Mode().Perm(); got != 0o600 {
		t.Errorf("kept receipt mode %o, want 600", got)
	}
	// A new book (a restart) loads it and reports it.
	again := &receiptBook{site: "s1", device: "d1", dir: book.dir, keyPath: pubPath}
	again.load(chain)
	if rc, ok := again.Newest(); !ok || rc.Seq != 9 {
		t.Fatalf("Newest after load = %+v %v, want seq 9", rc, ok)
	}
}

// Without a configured key, central's key is read from keys/central.pub when it
// appears; until then receipts are refused with a clear error.
func TestReceiptBookKeyAppearsLater(t *testing.T) {
	dir := t.TempDir()
	pubPath := filepath.Join(dir, "central.pub")
	book := &receiptBook{site: "s1", device: "d1", dir: dir, keyPath: pubPath, chain: "c"}
	if err := book.keyStatus(); err == nil || !strings.Contains(err.Error(), "not installed") {
		t.Fatalf("keyStatus without a key: %v", err)
	}
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err := attest.WritePublicPEM(pubPath, &k.PublicKey); err != nil {
		t.Fatal(err)
	}
	book.lastRead = time.Now().Add(-2 * centralKeyRecheck) // as if the recheck interval passed
	if err := book.keyStatus(); err != nil {
		t.Fatalf("keyStatus after the key appeared: %v", err)
	}
}
