package ledger_test

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/edgeaudit/edgeaudit/attest"
	"github.com/edgeaudit/edgeaudit/ledger"
)

var update = flag.Bool("update", false, "rewrite the test vectors in testdata/vectors")

func genKey(t testing.TB) *ecdsa.PrivateKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func signer(k *ecdsa.PrivateKey) func([]byte) ([]byte, error) {
	return func(d []byte) ([]byte, error) { return ecdsa.SignASN1(rand.Reader, k, d) }
}

// buildChain returns n sealed batches, batch i holding i events (the first is empty).
func buildChain(t testing.TB, k *ecdsa.PrivateKey, n int) []*ledger.Batch {
	t.Helper()
	kid, _ := ledger.KeyID(&k.PublicKey)
	prev := ledger.ZeroHash
	var out []*ledger.Batch
	for s := 1; s <= n; s++ {
		var events [][]byte
		for i := range s - 1 {
			events = append(events, []byte(fmt.Sprintf(`{"id":"%d-%d"}`, s, i)))
		}
		h := ledger.Header{Site: "s1", Device: "d1", Chain: strings.Repeat("ab", 16), Seq: uint64(s), Prev: prev,
			Sealed: "2026-11-27T08:00:00Z", TimeSync: ledger.TimeSync{State: "unknown"}, KeyID: kid}
		hb, sig, err := h.Seal(ledger.EventsRoot(events), len(events), signer(k))
		if err != nil {
			t.Fatal(err)
		}
		hh := ledger.HeaderHash(hb)
		prev = hex.EncodeToString(hh[:])
		out = append(out, &ledger.Batch{Header: hb, Signature: sig, Events: events})
	}
	return out
}

func verifyAll(v *ledger.Verifier, bs []*ledger.Batch) error {
	for _, b := range bs {
		if _, err := v.Verify(b); err != nil {
			return err
		}
	}
	return nil
}

func TestWireRoundTrip(t *testing.T) {
	k := genKey(t)
	chain := buildChain(t, k, 5)
	var buf []byte
	for _, b := range chain {
		buf = b.AppendWire(buf)
	}
	r := ledger.NewReader(bytes.NewReader(buf))
	for i := range chain {
		b, err := r.Next()
		if err != nil {
			t.Fatalf("batch %d: %v", i, err)
		}
		if !bytes.Equal(b.AppendWire(nil), chain[i].AppendWire(nil)) {
			t.Fatalf("batch %d differs after round trip", i)
		}
	}
	if _, err := r.Next(); err != io.EOF {
		t.Fatalf("after last batch err=%v, want EOF", err)
	}
	// Every strict prefix is an error, never a silent short read.
	for cut := 1; cut < len(buf); cut += 7 {
		r := ledger.NewReader(bytes.NewReader(buf[:cut]))
		var err error
		for err == nil {
			_, err = r.Next()
		}
		if err == io.EOF && !atBoundary(chain, cut) {
			t.Fatalf("cut at %d: clean EOF inside a batch", cut)
		}
	}
}

func atBoundary(chain []*ledger.Batch, cut int) bool {
	n := 0
	for _, b := range chain {
		n += len(b.AppendWire(nil))
		if n == cut {
			return true
		}
	}
	return false
}

func TestVerifyDetectsTampering(t *testing.T) {
	k := genKey(t)
	other := genKey(t)
	tests := []struct {
		name       string
		tamper     func(bs []*ledger.Batch) []*ledger.Batch
		wantSeq    uint64
		wantReason string
	}{
		{"intact", func(bs []*ledger.Batch) []*ledger.Batch { return bs }, 0, ""},
		{"event byte flipped", func(bs []*ledger.Batch) []*ledger.Batch { bs[3].Events[1][2] ^= 1; return bs }, 4, ledger.ReasonRoot},
		{"header byte flipped", func(bs []*ledger.Batch) []*ledger.Batch {
			bs[2].Header = bytes.Replace(bs[2].Header, []byte(`"site":"s1"`), []byte(`"site":"s2"`), 1)
			return bs
		}, 3, ledger.ReasonSignature},
		{"signature byte flipped", func(bs []*ledger.Batch) []*ledger.Batch { bs[1].Signature[10] ^= 1; return bs }, 2, ledger.ReasonSignature},
		{"batch deleted", func(bs []*ledger.Batch) []*ledger.Batch { return append(bs[:2], bs[3:]...) }, 4, ledger.ReasonGap},
		{"batches reordered", func(bs []*ledger.Batch) []*ledger.Batch { bs[2], bs[3] = bs[3], bs[2]; return bs }, 4, ledger.ReasonGap},
		{"event removed", func(bs []*ledger.Batch) []*ledger.Batch { bs[4].Events = bs[4].Events[1:]; return bs }, 5, ledger.ReasonCount},
		{"first batch deleted", func(bs []*ledger.Batch) []*ledger.Batch { return bs[1:] }, 2, ledger.ReasonGap},
		{"re-signed with another key", func(bs []*ledger.Batch) []*ledger.Batch {
			h, _ := ledger.ParseHeader(bs[2].Header)
			h.KeyID, _ = ledger.KeyID(&other.PublicKey)
			hb, sig, _ := h.Seal(ledger.EventsRoot(bs[2].Events), len(bs[2].Events), signer(other))
			bs[2].Header, bs[2].Signature = hb, sig
			return bs
		}, 3, ledger.ReasonKey},
		{"re-signed claiming the trusted key id", func(bs []*ledger.Batch) []*ledger.Batch {
			h, _ := ledger.ParseHeader(bs[2].Header)
			hb, sig, _ := h.Seal(ledger.EventsRoot(bs[2].Events), len(bs[2].Events), signer(other))
			bs[2].Header, bs[2].Signature = hb, sig
			return bs
		}, 3, ledger.ReasonSignature},
		{"replaced batch re-signed with the real key", func(bs []*ledger.Batch) []*ledger.Batch {
			h, _ := ledger.ParseHeader(bs[2].Header)
			h.Prev = ledger.ZeroHash
			hb, sig, _ := h.Seal(ledger.EventsRoot(bs[2].Events), len(bs[2].Events), signer(k))
			bs[2].Header, bs[2].Signature = hb, sig
			return bs
		}, 3, ledger.ReasonPrev},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			v, err := ledger.NewVerifier(&k.PublicKey)
			if err != nil {
				t.Fatal(err)
			}
			err = verifyAll(v, tt.tamper(buildChain(t, k, 6)))
			if tt.wantReason == "" {
				if err != nil {
					t.Fatalf("intact chain: %v", err)
				}
				return
			}
			var ve *ledger.VerifyError
			if !errors.As(err, &ve) {
				t.Fatalf("err=%v, want a VerifyError", err)
			}
			if ve.Seq != tt.wantSeq || ve.Reason != tt.wantReason {
				t.Fatalf("got seq %d reason %s (%v), want seq %d reason %s", ve.Seq, ve.Reason, err, tt.wantSeq, tt.wantReason)
			}
		})
	}
}

func TestVerifyAnchorAndPartial(t *testing.T) {
	k := genKey(t)
	chain := buildChain(t, k, 4)
	v, _ := ledger.NewVerifier(&k.PublicKey)
	hh := ledger.HeaderHash(chain[1].Header)
	v.Anchor(2, hex.EncodeToString(hh[:]))
	if err := verifyAll(v, chain[2:]); err != nil {
		t.Fatalf("anchored verify: %v", err)
	}
	v, _ = ledger.NewVerifier(&k.PublicKey)
	v.AllowPartial = true
	if err := verifyAll(v, chain[2:]); err != nil {
		t.Fatalf("partial verify: %v", err)
	}
}

// The test vectors in testdata/vectors let a central team check a verifier written in
// another language: fixed key and events give exactly header.json, root.hex and a
// signature that verifies.
func TestVectors(t *testing.T) {
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
		TimeSync: ledger.TimeSync{State: "synced", Server: "127.0.0.1:11123", OffsetNS: 1500000, MaxOffset: 500000000, Checked: "2026-11-27T07:59:50Z"},
		KeyID:    s.KeyID()}
	root := ledger.EventsRoot(events)
	hb, sig, err := h.Seal(root, len(events), func(d []byte) ([]byte, error) { return s.Sign(t.Context(), d) })
	if err != nil {
		t.Fatal(err)
	}
	b := &ledger.Batch{Header: hb, Signature: sig, Events: events}
	if *update {
		os.WriteFile(filepath.Join(dir, "header.json"), hb, 0o644)
		os.WriteFile(filepath.Join(dir, "root.hex"), []byte(hex.EncodeToString(root[:])+"\n"), 0o644)
		os.WriteFile(filepath.Join(dir, "signature.hex"), []byte(hex.EncodeToString(sig)+"\n"), 0o644)
		os.WriteFile(filepath.Join(dir, "batch.bin"), b.AppendWire(nil), 0o644)
		proof, _ := ledger.InclusionProof(leaves(events), 2)
		var p strings.Builder
		for _, h := range proof {
			p.WriteString(hex.EncodeToString(h[:]) + "\n")
		}
		os.WriteFile(filepath.Join(dir, "proof-2.hex"), []byte(p.String()), 0o644)
	}
	wantHeader, _ := os.ReadFile(filepath.Join(dir, "header.json"))
	if !bytes.Equal(hb, wantHeader) {
		t.Fatalf("header bytes:\n got %s\nwant %s", hb, wantHeader)
	}
	wantRoot, _ := os.ReadFile(filepath.Join(dir, "root.hex"))
	if got := hex.EncodeToString(root[:]); got != strings.TrimSpace(string(wantRoot)) {
		t.Fatalf("root %s, want %s", got, wantRoot)
	}
	sigHex, _ := os.ReadFile(filepath.Join(dir, "signature.hex"))
	storedSig, _ := hex.DecodeString(strings.TrimSpace(string(sigHex)))
	d := sha256.Sum256(wantHeader)
	if !ecdsa.VerifyASN1(s.Public(), d[:], storedSig) {
		t.Fatal("stored signature does not verify over header.json")
	}
	wire, _ := os.ReadFile(filepath.Join(dir, "batch.bin"))
	got, err := ledger.NewReader(bytes.NewReader(wire)).Next()
	if err != nil {
		t.Fatal(err)
	}
	v, _ := ledger.NewVerifier(s.Public())
	if _, err := v.Verify(got); err != nil {
		t.Fatalf("batch.bin: %v", err)
	}
	proofHex, _ := os.ReadFile(filepath.Join(dir, "proof-2.hex"))
	var proof []ledger.Hash
	for _, l := range strings.Fields(string(proofHex)) {
		var h ledger.Hash
		hex.Decode(h[:], []byte(l))
		proof = append(proof, h)
	}
	if err := ledger.VerifyInclusion(ledger.LeafHash(events[2]), 2, uint64(len(events)), proof, root); err != nil {
		t.Fatalf("proof-2.hex: %v", err)
	}
}

func leaves(events [][]byte) []ledger.Hash {
	out := make([]ledger.Hash, len(events))
	for i, e := range events {
		out[i] = ledger.LeafHash(e)
	}
	return out
}

func FuzzReader(f *testing.F) {
	k := genKey(f)
	for _, b := range buildChain(f, k, 3) {
		f.Add(b.AppendWire(nil))
	}
	f.Add([]byte("EAB1\x00\x00\x00\x01{"))
	f.Fuzz(func(t *testing.T, data []byte) {
		r := ledger.NewReader(bytes.NewReader(data))
		for range 100 {
			b, err := r.Next()
			if err != nil {
				return
			}
			v, _ := ledger.NewVerifier(&k.PublicKey)
			v.Verify(b) // must not panic on anything decoded
			ledger.ParseHeader(b.Header)
		}
	})
}

func BenchmarkVerifyBatch1000(b *testing.B) {
	k := genKey(b)
	var events [][]byte
	for i := range 1000 {
		events = append(events, bytes.Repeat([]byte{byte(i)}, 300))
	}
	kid, _ := ledger.KeyID(&k.PublicKey)
	h := ledger.Header{Site: "s", Device: "d", Seq: 1, Prev: ledger.ZeroHash, KeyID: kid}
	hb, sig, _ := h.Seal(ledger.EventsRoot(events), len(events), signer(k))
	batch := &ledger.Batch{Header: hb, Signature: sig, Events: events}
	for b.Loop() {
		v, _ := ledger.NewVerifier(&k.PublicKey)
		if _, err := v.Verify(batch); err != nil {
			b.Fatal(err)
		}
	}
}
