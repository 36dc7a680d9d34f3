package ledger_test

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/sha256"
	"encoding/hex"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/edgeaudit/edgeaudit/attest"
	"github.com/edgeaudit/edgeaudit/ledger"
)

// TestVectorTimeSync pins the header with every time_sync member that package timesync
// writes (header-timesync.json, signature-timesync.hex), and proves that the members
// added after header.json change nothing for a header without them: the old vector
// still parses and encodes to its exact bytes.
func TestVectorTimeSync(t *testing.T) {
	dir := filepath.Join("testdata", "vectors")
	keyPEM, err := os.ReadFile(filepath.Join(dir, "signing.key"))
	if err != nil {
		t.Fatal(err)
	}
	s, err := attest.ParseSoftware(keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	evb, err := os.ReadFile(filepath.Join(dir, "events.jsonl"))
	if err != nil {
		t.Fatal(err)
	}
	events := bytes.Split(bytes.TrimSuffix(evb, []byte("\n")), []byte("\n"))
	h := ledger.Header{Site: "s1", Device: "d1", Chain: "00112233445566778899aabbccddeeff", Seq: 1, Prev: ledger.ZeroHash,
		First: "2026-11-27T08:00:00Z", Last: "2026-11-27T08:00:02.5Z", Sealed: "2026-11-27T08:00:03Z",
		TimeSync: ledger.TimeSync{State: "offset", Server: "127.0.0.1:11123", OffsetNS: 5000028660, MaxOffset: 500000000,
			Checked: "2026-11-27T07:59:50Z", RTTNS: 174987, RootDistanceNS: 87493, Stratum: 8, Leap: 1, RefID: "127.127.1.1"},
		KeyID: s.KeyID()}
	root := ledger.EventsRoot(events)
	hb, sig, err := h.Seal(root, len(events), func(d []byte) ([]byte, error) { return s.Sign(t.Context(), d) })
	if err != nil {
		t.Fatal(err)
	}
	if *update {
		os.WriteFile(filepath.Join(dir, "header-timesync.json"), hb, 0o644)
		os.WriteFile(filepath.Join(dir, "signature-timesync.hex"), []byte(hex.EncodeToString(sig)+"\n"), 0o644)
	}
	want, err := os.ReadFile(filepath.Join(dir, "header-timesync.json"))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(hb, want) {
		t.Fatalf("header bytes:\n got %s\nwant %s", hb, want)
	}
	sigHex, _ := os.ReadFile(filepath.Join(dir, "signature-timesync.hex"))
	stored, _ := hex.DecodeString(strings.TrimSpace(string(sigHex)))
	d := sha256.Sum256(want)
	if !ecdsa.VerifyASN1(s.Public(), d[:], stored) {
		t.Fatal("signature-timesync.hex does not verify over header-timesync.json")
	}
	parsed, err := ledger.ParseHeader(want)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := parsed.TimeSync, h.TimeSync; got != want {
		t.Fatalf("parsed time_sync %+v, want %+v", got, want)
	}

	old, err := os.ReadFile(filepath.Join(dir, "header.json"))
	if err != nil {
		t.Fatal(err)
	}
	oh, err := ledger.ParseHeader(old)
	if err != nil {
		t.Fatalf("header.json no longer parses: %v", err)
	}
	again, err := oh.Encode()
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(again, old) {
		t.Fatalf("header.json re-encodes differently:\n got %s\nwant %s", again, old)
	}
}
