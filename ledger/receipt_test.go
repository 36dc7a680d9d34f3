package ledger_test

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/edgeaudit/edgeaudit/ledger"
)

const receiptKeyName = "central.example/edgeaudit"

func receiptKey(t testing.TB) *ecdsa.PrivateKey {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", "receipt", "central.key"))
	if err != nil {
		t.Fatal(err)
	}
	blk, _ := pem.Decode(b)
	if blk == nil {
		t.Fatal("central.key: no PEM block")
	}
	k, err := x509.ParsePKCS8PrivateKey(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return k.(*ecdsa.PrivateKey)
}

// vectorReceipt is the receipt of testdata/receipt: it covers the batch of
// testdata/vectors (seq 1), so the two sets of vectors check each other.
func vectorReceipt(t testing.TB) ledger.Receipt {
	t.Helper()
	hb, err := os.ReadFile(filepath.Join("testdata", "vectors", "header.json"))
	if err != nil {
		t.Fatal(err)
	}
	hh := ledger.HeaderHash(hb)
	return ledger.Receipt{Site: "s1", Device: "d1", Chain: "00112233445566778899aabbccddeeff", Seq: 1,
		HeaderHash: hex.EncodeToString(hh[:]), Time: time.Date(2026, 11, 27, 8, 0, 4, 250000000, time.UTC)}
}

func signReceipt(t testing.TB, k *ecdsa.PrivateKey, r ledger.Receipt) []byte {
	t.Helper()
	b, err := ledger.SignReceipt(r, signer(k), receiptKeyName, &k.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// noteText is the signed part of a note: everything up to and including the newline
// before the last blank line.
func noteText(b []byte) []byte { return b[:bytes.LastIndex(b, []byte("\n\n"))+1] }

// The vectors in testdata/receipt let a device written in another language check its
// receipt verifier: the fixed key and receipt give exactly text.txt, the verifier key
// in verifier.key, and receipt.txt verifies.
func TestReceiptVectors(t *testing.T) {
	dir := filepath.Join("testdata", "receipt")
	k := receiptKey(t)
	want := vectorReceipt(t)
	got := signReceipt(t, k, want)
	vkey, err := ledger.ReceiptVerifierKey(receiptKeyName, &k.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	if *update {
		os.WriteFile(filepath.Join(dir, "text.txt"), noteText(got), 0o644)
		os.WriteFile(filepath.Join(dir, "receipt.txt"), got, 0o644)
		os.WriteFile(filepath.Join(dir, "verifier.key"), []byte(vkey+"\n"), 0o644)
	}
	wantText, err := os.ReadFile(filepath.Join(dir, "text.txt"))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(noteText(got), wantText) {
		t.Fatalf("receipt text:\n got %q\nwant %q", noteText(got), wantText)
	}
	stored, err := os.ReadFile(filepath.Join(dir, "receipt.txt"))
	if err != nil {
		t.Fatal(err)
	}
	// ECDSA signatures are randomized: the signature line differs, its key name and
	// key ID (the first 4 bytes of the base64 blob, 6 base64 digits cover 4.5 bytes) do not.
	sigLine := func(b []byte) string { return string(b[len(noteText(b))+1:]) }
	if g, w := sigLine(got)[:len("— "+receiptKeyName+" ")+5], sigLine(stored)[:len("— "+receiptKeyName+" ")+5]; g != w {
		t.Fatalf("signature line starts %q, want %q", g, w)
	}
	r, err := ledger.VerifyReceipt(stored, &k.PublicKey)
	if err != nil {
		t.Fatalf("receipt.txt: %v", err)
	}
	if r != want {
		t.Fatalf("receipt.txt says %+v, want %+v", r, want)
	}
	wantKey, _ := os.ReadFile(filepath.Join(dir, "verifier.key"))
	if vkey != strings.TrimSpace(string(wantKey)) {
		t.Fatalf("verifier key %s, want %s", vkey, wantKey)
	}
	kid, _ := ledger.KeyID(&k.PublicKey)
	if !strings.Contains(vkey, "+"+kid[:8]+"+") {
		t.Fatalf("verifier key %s does not carry key ID %s (the first 8 hex digits of KeyID)", vkey, kid[:8])
	}
}

func TestReceiptRoundTrip(t *testing.T) {
	k := receiptKey(t)
	base := vectorReceipt(t)
	tests := []struct {
		name string
		edit func(r *ledger.Receipt)
		want func(r *ledger.Receipt) // what parsing gives back, when not the input
	}{
		{"vector", func(*ledger.Receipt) {}, nil},
		{"nanoseconds", func(r *ledger.Receipt) { r.Time = r.Time.Add(123456789) }, nil},
		{"whole seconds", func(r *ledger.Receipt) { r.Time = r.Time.Truncate(time.Second) }, nil},
		{"max seq", func(r *ledger.Receipt) { r.Seq = 1<<64 - 1 }, nil},
		{"long names", func(r *ledger.Receipt) {
			r.Site, r.Device = strings.Repeat("s", 64), "d-1.x_y"
		}, nil},
		{"local time is written in UTC", func(r *ledger.Receipt) {
			r.Time = r.Time.In(time.FixedZone("CET", 3600))
		}, func(r *ledger.Receipt) { r.Time = r.Time.UTC() }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			in := base
			tt.edit(&in)
			b := signReceipt(t, k, in)
			want := in
			if tt.want != nil {
				tt.want(&want)
			}
			for _, parse := range []func([]byte) (ledger.Receipt, error){
				ledger.ParseReceipt,
				func(b []byte) (ledger.Receipt, error) { return ledger.VerifyReceipt(b, &k.PublicKey) },
			} {
				got, err := parse(b)
				if err != nil {
					t.Fatalf("parse %q: %v", b, err)
				}
				if got != want || got.Time.Location() != time.UTC {
					t.Fatalf("got %+v, want %+v", got, want)
				}
			}
		})
	}
}

func TestSignReceiptRefuses(t *testing.T) {
	k := receiptKey(t)
	other := genKey(t)
	p384, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	failing := func([]byte) ([]byte, error) { return nil, errors.New("tpm away") }
	tests := []struct {
		name    string
		edit    func(r *ledger.Receipt)
		sign    func([]byte) ([]byte, error)
		keyName string
		pub     *ecdsa.PublicKey
		wantErr error // nil: any error
	}{
		{"site with a slash", func(r *ledger.Receipt) { r.Site = "s/1" }, nil, "", nil, ledger.ErrReceipt},
		{"site with a space", func(r *ledger.Receipt) { r.Site = "s 1" }, nil, "", nil, ledger.ErrReceipt},
		{"site with a newline", func(r *ledger.Receipt) { r.Site = "s1\nseq 9" }, nil, "", nil, ledger.ErrReceipt},
		{"site too long", func(r *ledger.Receipt) { r.Site = strings.Repeat("s", 65) }, nil, "", nil, ledger.ErrReceipt},
		{"empty device", func(r *ledger.Receipt) { r.Device = "" }, nil, "", nil, ledger.ErrReceipt},
		{"device starting with a dot", func(r *ledger.Receipt) { r.Device = ".d" }, nil, "", nil, ledger.ErrReceipt},
		{"chain upper case", func(r *ledger.Receipt) { r.Chain = strings.ToUpper(r.Chain) }, nil, "", nil, ledger.ErrReceipt},
		{"chain short", func(r *ledger.Receipt) { r.Chain = r.Chain[:30] }, nil, "", nil, ledger.ErrReceipt},
		{"seq 0", func(r *ledger.Receipt) { r.Seq = 0 }, nil, "", nil, ledger.ErrReceipt},
		{"header hash short", func(r *ledger.Receipt) { r.HeaderHash = r.HeaderHash[:63] }, nil, "", nil, ledger.ErrReceipt},
		{"header hash not hex", func(r *ledger.Receipt) { r.HeaderHash = "g" + r.HeaderHash[1:] }, nil, "", nil, ledger.ErrReceipt},
		{"no time", func(r *ledger.Receipt) { r.Time = time.Time{} }, nil, "", nil, ledger.ErrReceipt},
		{"key name with a space", func(*ledger.Receipt) {}, nil, "central example", nil, ledger.ErrReceipt},
		{"key name with a plus", func(*ledger.Receipt) {}, nil, "central+1", nil, ledger.ErrReceipt},
		{"empty key name", func(*ledger.Receipt) {}, nil, "-", nil, ledger.ErrReceipt},
		{"signer fails", func(*ledger.Receipt) {}, failing, "", nil, nil},
		{"public key of another key", func(*ledger.Receipt) {}, nil, "", &other.PublicKey, ledger.ErrReceiptSignature},
		{"P-384 key", func(*ledger.Receipt) {}, signer(p384), "", &p384.PublicKey, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := vectorReceipt(t)
			tt.edit(&r)
			sign, name, pub := signer(k), receiptKeyName, &k.PublicKey
			if tt.sign != nil {
				sign = tt.sign
			}
			switch tt.keyName {
			case "":
			case "-":
				name = ""
			default:
				name = tt.keyName
			}
			if tt.pub != nil {
				pub = tt.pub
			}
			b, err := ledger.SignReceipt(r, sign, name, pub)
			if err == nil {
				t.Fatalf("signed %q, want an error", b)
			}
			if tt.wantErr != nil && !errors.Is(err, tt.wantErr) {
				t.Fatalf("err=%v, want %v", err, tt.wantErr)
			}
		})
	}
}

// replaceText swaps old for new in the text of a signed receipt, keeping its signature.
func replaceText(b []byte, old, new string) []byte {
	text := noteText(b)
	return append([]byte(strings.Replace(string(text), old, new, 1)), b[len(text):]...)
}

func TestVerifyReceiptTampering(t *testing.T) {
	k := receiptKey(t)
	other := genKey(t)
	good := signReceipt(t, k, vectorReceipt(t))
	byOther, err := ledger.SignReceipt(vectorReceipt(t), signer(other), "other.example/x", &other.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	sigLines := func(b []byte) []byte { return b[len(noteText(b))+1:] }
	hh := vectorReceipt(t).HeaderHash
	otherHash := strings.Repeat("0", 64)
	// flip changes one byte inside the signature (after the 4-byte key ID).
	flip := func(b []byte) []byte {
		lines := sigLines(b)
		i := bytes.LastIndexByte(lines, ' ')
		blob, _ := base64.StdEncoding.DecodeString(string(lines[i+1 : len(lines)-1]))
		blob[10] ^= 1
		return append(append(bytes.Clone(b[:len(b)-len(lines)]), lines[:i+1]...), base64.StdEncoding.EncodeToString(blob)+"\n"...)
	}
	tests := []struct {
		name    string
		b       []byte
		wantErr error // nil: verifies
		parses  bool  // ParseReceipt (format only) accepts it
	}{
		{"intact", good, nil, true},
		{"seq raised", replaceText(good, "seq 1\n", "seq 2\n"), ledger.ErrReceiptSignature, true},
		{"site changed", replaceText(good, "site s1\n", "site s2\n"), ledger.ErrReceiptSignature, true},
		{"device changed", replaceText(good, "device d1\n", "device d2\n"), ledger.ErrReceiptSignature, true},
		{"chain changed", replaceText(good, "chain 0011", "chain 1011"), ledger.ErrReceiptSignature, true},
		{"header hash changed", replaceText(good, "header "+hh, "header "+otherHash), ledger.ErrReceiptSignature, true},
		{"time changed", replaceText(good, "08:00:04.25Z", "08:00:05.25Z"), ledger.ErrReceiptSignature, true},
		{"signature byte flipped", flip(good), ledger.ErrReceiptSignature, true},
		{"signed by another key", byOther, ledger.ErrReceiptSignature, true},
		{"other key's line before the good one", append(bytes.Clone(byOther), sigLines(good)...), nil, true},
		{"good line, then a bad line by the same key", append(bytes.Clone(good), sigLines(flip(good))...), ledger.ErrReceiptSignature, true},
		{"key name on the line changed (not signed, per signed-note)", bytes.Replace(good, []byte("— central.example/"), []byte("— elsewhere.example/"), 1), nil, true},
		{"no signature lines", noteText(good), ledger.ErrReceipt, false},
		{"blank line missing", append(bytes.Clone(noteText(good)), sigLines(good)...), ledger.ErrReceipt, false},
		{"signature line without em dash", bytes.Replace(good, []byte("— "), []byte("- "), 1), ledger.ErrReceipt, false},
		{"signature not base64", bytes.Replace(good, []byte("edgeaudit "), []byte("edgeaudit *"), 1), ledger.ErrReceipt, false},
		{"signature line without newline", good[:len(good)-1], ledger.ErrReceipt, false},
		{"17 signatures", append(bytes.Clone(byOther), bytes.Repeat(sigLines(good), 16)...), ledger.ErrReceipt, false},
		{"CRLF", bytes.ReplaceAll(good, []byte("\n"), []byte("\r\n")), ledger.ErrReceipt, false},
		{"tab", replaceText(good, "site ", "site\t"), ledger.ErrReceipt, false},
		{"seq with a leading zero", replaceText(good, "seq 1\n", "seq 01\n"), ledger.ErrReceipt, false},
		{"seq 0", replaceText(good, "seq 1\n", "seq 0\n"), ledger.ErrReceipt, false},
		{"seq negative", replaceText(good, "seq 1\n", "seq -1\n"), ledger.ErrReceipt, false},
		{"time with an offset", replaceText(good, "08:00:04.25Z", "09:00:04.25+01:00"), ledger.ErrReceipt, false},
		{"time with a trailing zero", replaceText(good, "08:00:04.25Z", "08:00:04.250Z"), ledger.ErrReceipt, false},
		{"header hash upper case", replaceText(good, "header "+hh, "header "+strings.ToUpper(hh)), ledger.ErrReceipt, false},
		{"trailing space", replaceText(good, "site s1\n", "site s1 \n"), ledger.ErrReceipt, false},
		{"lines reordered", replaceText(replaceText(good, "site s1\n", ""), "chain ", "site s1\nchain "), ledger.ErrReceipt, false},
		{"extra line", replaceText(good, "time ", "count 3\ntime "), ledger.ErrReceipt, false},
		{"other origin", replaceText(good, ledger.ReceiptOrigin, "edgeaudit.receipt/v2"), ledger.ErrReceipt, false},
		{"not UTF-8", replaceText(good, "site s1", "site s\xff"), ledger.ErrReceipt, false},
		{"too large", append(bytes.Repeat([]byte("x"), ledger.MaxReceiptSize), good...), ledger.ErrReceipt, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ledger.VerifyReceipt(tt.b, &k.PublicKey)
			if tt.wantErr == nil && err != nil {
				t.Fatalf("verify %q: %v", tt.b, err)
			}
			if tt.wantErr != nil && !errors.Is(err, tt.wantErr) {
				t.Fatalf("verify %q: err=%v, want %v", tt.b, err, tt.wantErr)
			}
			_, err = ledger.ParseReceipt(tt.b)
			if got := err == nil; got != tt.parses {
				t.Fatalf("ParseReceipt ok=%v (err %v), want %v", got, err, tt.parses)
			}
		})
	}
}

func FuzzParseReceipt(f *testing.F) {
	k := receiptKey(f)
	stored, err := os.ReadFile(filepath.Join("testdata", "receipt", "receipt.txt"))
	if err != nil {
		f.Fatal(err)
	}
	f.Add(stored)
	f.Add(signReceipt(f, k, ledger.Receipt{Site: "a", Device: "b", Chain: strings.Repeat("0", 32), Seq: 1<<64 - 1,
		HeaderHash: strings.Repeat("f", 64), Time: time.Unix(0, 1).UTC()}))
	f.Add([]byte("edgeaudit.receipt/v1\n\n— k AAAAAAA=\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		r, perr := ledger.ParseReceipt(b)
		vr, verr := ledger.VerifyReceipt(b, &k.PublicKey)
		if verr == nil && (perr != nil || vr != r) {
			t.Fatalf("verifies as %+v but parses as %+v (%v)", vr, r, perr)
		}
		if perr != nil {
			return
		}
		// What parses is in the one form the signer writes: signing it again gives the
		// same text.
		again := signReceipt(t, k, r)
		if text := noteText(b); !bytes.Equal(noteText(again), text) {
			t.Fatalf("parsed %+v from text %q, which signs as %q", r, text, noteText(again))
		}
	})
}
