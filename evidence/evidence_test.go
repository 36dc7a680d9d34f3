package evidence_test

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/edgeaudit/edgeaudit/evidence"
	"github.com/edgeaudit/edgeaudit/ledger"
	"github.com/edgeaudit/edgeaudit/receiver"
)

// packaged reads events.jsonl back: "site/device/seq/index" and the exact bytes.
func packaged(t testing.TB, dir string) ([]string, [][]byte) {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, evidence.EventsFile))
	if err != nil {
		t.Fatal(err)
	}
	var where []string
	var evs [][]byte
	for _, line := range bytes.Split(bytes.TrimSuffix(b, []byte("\n")), []byte("\n")) {
		if len(line) == 0 {
			continue
		}
		var e evidence.Event
		if err := json.Unmarshal(line, &e); err != nil {
			t.Fatal(err)
		}
		where = append(where, fmt.Sprintf("%s/%s/%d/%d", e.Site, e.Device, e.Seq, e.Index))
		evs = append(evs, e.Bytes())
	}
	return where, evs
}

func TestWriteVerify(t *testing.T) {
	fx := newFixture(t)
	tests := []struct {
		name    string
		q       receiver.Query
		where   []string
		ids     []string
		batches int
		devices int
	}{
		{"patient", receiver.Query{Patient: "P1"},
			[]string{"s1/d1/1/0", "s1/d1/2/1", "s1/d1/2/2", "s2/d1/1/0", "s2/d1/2/1"},
			[]string{"a1", "a5", "a6", "c1", "odd"}, 4, 2},
		{"user at a site", receiver.Query{Site: "s1", User: "bob"},
			[]string{"s1/d1/1/1", "s1/d1/2/1", "s1/d1/2/3", "s1/d1/2/4"}, []string{"a2", "a5", "a7", "a8"}, 2, 1},
		{"limit", receiver.Query{Patient: "P2", Limit: 2}, []string{"s1/d1/1/1", "s1/d1/2/0"}, []string{"a2", "a4"}, 2, 1},
		// central's own trail has no enrolled key: its batches verify with central's.
		{"central's trail", receiver.Query{Site: "central"}, []string{"central/host1/1/0"}, []string{"t1"}, 1, 1},
		{"nothing", receiver.Query{Patient: "P9"}, nil, nil, 0, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir, sum := fx.write(t, tt.q)
			if sum.Events != len(tt.ids) || sum.Batches != tt.batches || sum.Devices != tt.devices {
				t.Fatalf("summary %+v, want %d events, %d batches, %d devices", sum, len(tt.ids), tt.batches, tt.devices)
			}
			rep, err := evidence.Verify(dir)
			if err != nil {
				t.Fatal(err)
			}
			if rep.Events != sum.Events || rep.Batches != sum.Batches || len(rep.Devices) != sum.Devices {
				t.Fatalf("report %d events %d batches %d devices, summary %+v", rep.Events, rep.Batches, len(rep.Devices), sum)
			}
			where, evs := packaged(t, dir)
			if !slices.Equal(where, tt.where) {
				t.Fatalf("events at %v, want %v", where, tt.where)
			}
			for i, id := range tt.ids {
				if !bytes.Equal(evs[i], fx.sealed[id]) {
					t.Errorf("event %s: bytes differ from the sealed ones", id)
				}
			}
			for _, d := range rep.Devices {
				if want := fx.chains[d.Site+"/"+d.Device]; d.Chain != want || d.Receipt.Chain != want {
					t.Errorf("device %s/%s chain %s receipt chain %s, want %s", d.Site, d.Device, d.Chain, d.Receipt.Chain, want)
				}
			}
			if got := rep.Manifest.Query.Receiver(); got.Patient != tt.q.Patient || got.Site != tt.q.Site || got.Limit != tt.q.Limit {
				t.Errorf("manifest query %+v, want %+v", got, tt.q)
			}
			// Minimal PHI: only the selected events are in the package.
			all, err := os.ReadFile(filepath.Join(dir, evidence.EventsFile))
			if err != nil {
				t.Fatal(err)
			}
			for id, b := range fx.sealed {
				if !slices.Contains(tt.ids, id) && bytes.Contains(all, b) {
					t.Errorf("event %s is in the package but was not selected", id)
				}
			}
			checkModes(t, dir)
		})
	}
}

func checkModes(t *testing.T, dir string) {
	t.Helper()
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		want := fs.FileMode(0o600)
		if d.IsDir() {
			want = 0o700
		}
		if fi.Mode().Perm() != want {
			t.Errorf("%s: mode %v, want %v", p, fi.Mode().Perm(), want)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

func TestWriteTarget(t *testing.T) {
	fx := newFixture(t)
	q := receiver.Query{Patient: "P1"}
	empty := t.TempDir()
	if _, err := evidence.Write(t.Context(), empty, fx.store, fx.store, fx.keys, &fx.central.PublicKey, q); err != nil {
		t.Fatalf("an empty folder: %v", err)
	}
	if _, err := evidence.Verify(empty); err != nil {
		t.Fatal(err)
	}
	if _, err := evidence.Write(t.Context(), empty, fx.store, fx.store, fx.keys, &fx.central.PublicKey, q); err == nil {
		t.Fatal("a second package was written into a folder that holds one")
	}
	// A failed write leaves nothing behind: no package, no temp folder.
	parent := t.TempDir()
	bad := receiver.FolderKeys{Dir: filepath.Join(parent, "no-keys")}
	if _, err := evidence.Write(t.Context(), filepath.Join(parent, "case"), fx.store, fx.store, bad, &fx.central.PublicKey, q); !errors.Is(err, receiver.ErrUnknownDevice) {
		t.Fatalf("no enrolled keys: err=%v, want ErrUnknownDevice", err)
	}
	if ents, _ := os.ReadDir(parent); len(ents) != 0 {
		t.Fatalf("a failed write left %v", ents)
	}
}

// tamperedSource returns the store's matches with the first event's last byte changed.
type tamperedSource struct{ receiver.FolderStore }

func (s tamperedSource) Query(ctx context.Context, q receiver.Query, fn func(receiver.Match) error) error {
	first := true
	return s.FolderStore.Query(ctx, q, func(m receiver.Match) error {
		if first {
			m.Event = append(bytes.Clone(m.Event[:len(m.Event)-1]), ' ')
			first = false
		}
		return fn(m)
	})
}

// otherReceipt is a store whose heads carry another receipt.
type otherReceipt struct {
	receiver.FolderStore
	rc []byte
}

func (s otherReceipt) Head(ctx context.Context, site, device string) (receiver.Head, error) {
	h, err := s.FolderStore.Head(ctx, site, device)
	h.Receipt = s.rc
	return h, err
}

func TestWriteRefusesWhatWouldNotVerify(t *testing.T) {
	fx := newFixture(t)
	q := receiver.Query{Patient: "P1"}
	dir := filepath.Join(t.TempDir(), "case")
	if _, err := evidence.Write(t.Context(), dir, tamperedSource{fx.store}, fx.store, fx.keys, &fx.central.PublicKey, q); err == nil ||
		!strings.Contains(err.Error(), "not the stored batch's") {
		t.Fatalf("an event that differs from its batch: err=%v", err)
	}
	rc := signReceipt(t, fx.central, ledger.Receipt{Site: "s1", Device: "d1", Chain: strings.Repeat("ee", 16), Seq: 3, HeaderHash: strings.Repeat("0", 64), Time: time.Now()})
	if _, err := evidence.Write(t.Context(), dir, fx.store, otherReceipt{fx.store, rc}, fx.keys, &fx.central.PublicKey, q); err == nil ||
		!strings.Contains(err.Error(), "names chain") {
		t.Fatalf("a receipt of another chain: err=%v", err)
	}
	other := genKey(t)
	if _, err := evidence.Write(t.Context(), dir, fx.store, fx.store, fx.keys, &other.PublicKey, q); !errors.Is(err, ledger.ErrReceiptSignature) {
		t.Fatalf("another central key: err=%v, want ErrReceiptSignature", err)
	}
	if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("a refused package left %s", dir)
	}
}

func signReceipt(t testing.TB, k *ecdsa.PrivateKey, r ledger.Receipt) []byte {
	t.Helper()
	s := keySigner{k}
	rc, err := ledger.SignReceipt(r, func(d []byte) ([]byte, error) { return s.Sign(t.Context(), d) }, receiver.DefaultKeyName, s.Public())
	if err != nil {
		t.Fatal(err)
	}
	return rc
}

// replaceReceipt swaps s1/d1's receipt in receipts.jsonl (nil drops it).
func replaceReceipt(t testing.TB, dir string, rc []byte) {
	t.Helper()
	p := filepath.Join(dir, evidence.ReceiptsFile)
	fh, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	rcs, err := ledger.ReadReceipts(fh)
	fh.Close()
	if err != nil {
		t.Fatal(err)
	}
	var out [][]byte
	for _, b := range rcs {
		r, err := ledger.ParseReceipt(b)
		if err != nil {
			t.Fatal(err)
		}
		if r.Site == "s1" && r.Device == "d1" {
			if rc == nil {
				continue
			}
			b = rc
		}
		out = append(out, b)
	}
	var buf bytes.Buffer
	if err := ledger.WriteReceipts(&buf, out); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, buf.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
}

func TestVerifyAttacks(t *testing.T) {
	fx := newFixture(t)
	q := receiver.Query{Patient: "P1"}
	chain := fx.chains["s1/d1"]
	hashOf := func(seq uint64) string {
		hb, err := fx.store.Header(t.Context(), "s1", "d1", chain, seq)
		if err != nil {
			t.Fatal(err)
		}
		sum := ledger.HeaderHash(hb)
		return hex.EncodeToString(sum[:])
	}
	hash1, hash2 := hashOf(1), hashOf(2)
	hdr := func(seq uint64) string {
		return filepath.Join("batches", "s1", "d1", chain, receiver.SeqName(seq)+".header")
	}
	sig := func(seq uint64) string { return strings.TrimSuffix(hdr(seq), ".header") + ".sig" }
	receipt := func(r ledger.Receipt) []byte {
		r.Site, r.Device, r.Time = "s1", "d1", time.Now()
		return signReceipt(t, fx.central, r)
	}
	edit := func(name, old, new string) func(t *testing.T, dir string) {
		return func(t *testing.T, dir string) {
			p := filepath.Join(dir, name)
			b, err := os.ReadFile(p)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Contains(b, []byte(old)) {
				t.Fatalf("%s has no %q", name, old)
			}
			if err := os.WriteFile(p, bytes.Replace(b, []byte(old), []byte(new), 1), 0o600); err != nil {
				t.Fatal(err)
			}
		}
	}
	flip := func(name string, at func(n int) int) func(t *testing.T, dir string) {
		return func(t *testing.T, dir string) {
			p := filepath.Join(dir, name)
			b, err := os.ReadFile(p)
			if err != nil {
				t.Fatal(err)
			}
			b[at(len(b))] ^= 1
			if err := os.WriteFile(p, b, 0o600); err != nil {
				t.Fatal(err)
			}
		}
	}
	remove := func(names ...string) func(t *testing.T, dir string) {
		return func(t *testing.T, dir string) {
			for _, n := range names {
				if err := os.Remove(filepath.Join(dir, n)); err != nil {
					t.Fatal(err)
				}
			}
		}
	}
	dropLine := func(name string, n int) func(t *testing.T, dir string) {
		return func(t *testing.T, dir string) {
			p := filepath.Join(dir, name)
			b, err := os.ReadFile(p)
			if err != nil {
				t.Fatal(err)
			}
			lines := bytes.SplitAfter(b, []byte("\n"))
			if err := os.WriteFile(p, bytes.Join(slices.Delete(lines, n, n+1), nil), 0o600); err != nil {
				t.Fatal(err)
			}
		}
	}
	tests := []struct {
		name   string
		attack func(t *testing.T, dir string)
		rehash bool   // also fix the manifest's hashes, as a forger would
		want   error  // the sentinel
		file   string // the file the error names
		detail string // and a part of its message
	}{
		{"event edited, manifest not", edit(evidence.EventsFile, `"user":"alice"`, `"user":"alicf"`), false, evidence.ErrManifest, evidence.EventsFile, "changed after packaging"},
		{"event edited", edit(evidence.EventsFile, `"user":"alice"`, `"user":"alicf"`), true, evidence.ErrProof, evidence.EventsFile, "line 1 (s1/d1 seq 1 index 0)"},
		{"base64 event edited", edit(evidence.EventsFile, `"event_b64":"eyAi`, `"event_b64":"eyAj`), true, evidence.ErrProof, evidence.EventsFile, "line 5 (s2/d1 seq 2 index 1)"},
		{"event moved to another index", edit(evidence.EventsFile, `"index":0`, `"index":1`), true, evidence.ErrFormat, evidence.ProofsFile, "line 1"},
		{"header edited", edit(hdr(2), `"sealed":"2026`, `"sealed":"2027`), true, evidence.ErrSignature, sig(2), "does not verify"},
		{"signature flipped", flip(sig(1), func(n int) int { return n - 1 }), true, evidence.ErrSignature, sig(1), "does not verify"},
		{"proof lengthened", edit(evidence.ProofsFile, `"path":["`, `"path":["0`), true, evidence.ErrFormat, evidence.ProofsFile, "is not a hex SHA-256"},
		{"proof flipped", func(t *testing.T, dir string) {
			p := filepath.Join(dir, evidence.ProofsFile)
			b, err := os.ReadFile(p)
			if err != nil {
				t.Fatal(err)
			}
			i := bytes.Index(b, []byte(`"path":["`)) + len(`"path":["`)
			if b[i] == '0' { // another hex digit
				b[i] = '1'
			} else {
				b[i] = '0'
			}
			if err := os.WriteFile(p, b, 0o600); err != nil {
				t.Fatal(err)
			}
		}, true, evidence.ErrProof, evidence.EventsFile, "line 1"},
		{"device key swapped", func(t *testing.T, dir string) {
			if err := os.WriteFile(filepath.Join(dir, "keys", "s1", "d1.pub"), pubPEM(t, &genKey(t).PublicKey), 0o600); err != nil {
				t.Fatal(err)
			}
		}, true, evidence.ErrSignature, hdr(1), "is not keys/s1/d1.pub's key"},
		{"central key swapped", func(t *testing.T, dir string) {
			if err := os.WriteFile(filepath.Join(dir, evidence.CentralFile), pubPEM(t, &genKey(t).PublicKey), 0o600); err != nil {
				t.Fatal(err)
			}
		}, true, evidence.ErrReceipt, evidence.ReceiptsFile, "receipt 1"},
		{"signature dropped", remove(sig(1)), false, evidence.ErrManifest, filepath.ToSlash(sig(1)), "missing"},
		{"central key dropped and unlisted", remove(evidence.CentralFile), true, evidence.ErrManifest, evidence.CentralFile, "required file"},
		{"batch dropped and unlisted", remove(hdr(2), sig(2)), true, evidence.ErrFormat, evidence.EventsFile, "no batch header"},
		{"file added", func(t *testing.T, dir string) {
			if err := os.WriteFile(filepath.Join(dir, "notes.txt"), []byte("x"), 0o600); err != nil {
				t.Fatal(err)
			}
		}, false, evidence.ErrManifest, "notes.txt", "not listed"},
		{"manifest hash edited", func(t *testing.T, dir string) {
			editManifest(t, dir, func(m *evidence.Manifest) { m.Files[0].SHA256 = strings.Repeat("0", 64) })
		}, false, evidence.ErrManifest, "", "changed after packaging"},
		{"manifest query edited", func(t *testing.T, dir string) {
			editManifest(t, dir, func(m *evidence.Manifest) { m.Query.Patient = "P2" })
		}, false, evidence.ErrQuery, evidence.EventsFile, "line 1"},
		{"manifest count edited", func(t *testing.T, dir string) {
			editManifest(t, dir, func(m *evidence.Manifest) { m.Events++ })
		}, false, evidence.ErrManifest, evidence.ManifestFile, "states 6 events"},
		{"manifest format edited", func(t *testing.T, dir string) {
			editManifest(t, dir, func(m *evidence.Manifest) { m.Format = "v2" })
		}, false, evidence.ErrManifest, evidence.ManifestFile, "format"},
		{"event line dropped", dropLine(evidence.EventsFile, 0), true, evidence.ErrFormat, evidence.ProofsFile, ""},
		{"event and proof dropped", func(t *testing.T, dir string) {
			dropLine(evidence.EventsFile, 0)(t, dir)
			dropLine(evidence.ProofsFile, 0)(t, dir)
		}, true, evidence.ErrManifest, evidence.ManifestFile, "states 5 events"},
		{"receipt from another key", func(t *testing.T, dir string) {
			replaceReceipt(t, dir, signReceipt(t, genKey(t), ledger.Receipt{Site: "s1", Device: "d1", Chain: chain, Seq: 2, HeaderHash: hash2, Time: time.Now()}))
		}, true, evidence.ErrReceipt, evidence.ReceiptsFile, "receipt"},
		{"receipt for another chain", func(t *testing.T, dir string) {
			replaceReceipt(t, dir, receipt(ledger.Receipt{Chain: strings.Repeat("ee", 16), Seq: 3, HeaderHash: hash2}))
		}, true, evidence.ErrReceipt, "batches/s1/d1/", "names chain"},
		{"receipt below the batch", func(t *testing.T, dir string) {
			replaceReceipt(t, dir, receipt(ledger.Receipt{Chain: chain, Seq: 1, HeaderHash: hash1}))
		}, true, evidence.ErrReceipt, filepath.ToSlash(hdr(2)), "below the batch's seq 2"},
		{"receipt at the batch with another header", func(t *testing.T, dir string) {
			replaceReceipt(t, dir, receipt(ledger.Receipt{Chain: chain, Seq: 2, HeaderHash: strings.Repeat("ab", 32)}))
		}, true, evidence.ErrReceipt, filepath.ToSlash(hdr(2)), "names header"},
		{"receipt dropped", func(t *testing.T, dir string) { replaceReceipt(t, dir, nil) }, true, evidence.ErrReceipt, "batches/s1/d1/", "no receipt for s1/d1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir, _ := fx.write(t, q)
			if _, err := evidence.Verify(dir); err != nil {
				t.Fatalf("before the attack: %v", err)
			}
			tt.attack(t, dir)
			if tt.rehash {
				rehash(t, dir)
			}
			_, err := evidence.Verify(dir)
			var ee *evidence.Error
			if !errors.As(err, &ee) || !errors.Is(err, tt.want) {
				t.Fatalf("err=%v, want an *evidence.Error wrapping %v", err, tt.want)
			}
			if !strings.HasPrefix(ee.File, tt.file) || !strings.Contains(err.Error(), tt.detail) {
				t.Fatalf("err=%q (file %q), want file %q and %q", err, ee.File, tt.file, tt.detail)
			}
		})
	}
}

// The package's proofs hash leaves as ledger.EventsRoot does, for every tree shape up
// to 40 events.
func TestProofsMatchEventsRoot(t *testing.T) {
	for n := 1; n <= 40; n++ {
		var events [][]byte
		leaves := make([]ledger.Hash, n)
		for i := range n {
			events = append(events, fmt.Appendf(nil, `{"id":"%d"}`, i))
			leaves[i] = ledger.LeafHash(events[i])
		}
		root := ledger.EventsRoot(events)
		if ledger.Root(leaves) != root {
			t.Fatalf("n=%d: Root(LeafHash) differs from EventsRoot", n)
		}
		for i := range n {
			p, err := ledger.InclusionProof(leaves, i)
			if err != nil {
				t.Fatal(err)
			}
			if err := ledger.VerifyInclusion(ledger.LeafHash(events[i]), uint64(i), uint64(n), p, root); err != nil {
				t.Fatalf("n=%d i=%d: %v", n, i, err)
			}
		}
	}
}

// batchReceipts is a store that kept each batch's receipt (as the PostgreSQL store's
// batches table does): here signed on demand by central's key, with hash overriding
// the header hash when set.
type batchReceipts struct {
	receiver.FolderStore
	central *ecdsa.PrivateKey
	t       testing.TB
	hash    string
}

func (s batchReceipts) BatchReceipt(ctx context.Context, site, device, chain string, seq uint64) ([]byte, error) {
	hb, err := s.Header(ctx, site, device, chain, seq)
	if err != nil {
		return nil, err
	}
	sum := ledger.HeaderHash(hb)
	hash := hex.EncodeToString(sum[:])
	if s.hash != "" {
		hash = s.hash
	}
	return signReceipt(s.t, s.central, ledger.Receipt{Site: site, Device: device, Chain: chain, Seq: seq, HeaderHash: hash, Time: time.Now()}), nil
}

var _ evidence.BatchReceipts = batchReceipts{}

func TestWriteWithBatchReceipts(t *testing.T) {
	fx := newFixture(t)
	q := receiver.Query{Patient: "P1"}
	heads := batchReceipts{FolderStore: fx.store, central: fx.central, t: t}
	dir := filepath.Join(t.TempDir(), "case")
	if _, err := evidence.Write(t.Context(), dir, fx.store, heads, fx.keys, &fx.central.PublicKey, q); err != nil {
		t.Fatal(err)
	}
	rep, err := evidence.Verify(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range rep.Devices {
		if d.Bound != d.Batches {
			t.Errorf("%s/%s: %d of %d batches bound to a receipt of their own", d.Site, d.Device, d.Bound, d.Batches)
		}
	}
	// Without them, only a batch at the head's seq is.
	plain, _ := fx.write(t, q)
	rep, err = evidence.Verify(plain)
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range rep.Devices {
		if want := map[string]int{"s1/d1": 0, "s2/d1": 1}[d.Site+"/"+d.Device]; d.Bound != want {
			t.Errorf("%s/%s: %d batches bound, want %d (the head's)", d.Site, d.Device, d.Bound, want)
		}
	}
	// A kept receipt that names another header is refused when writing, and a forged
	// one (signed by central, another header) when verifying.
	heads.hash = strings.Repeat("cd", 32)
	if _, err := evidence.Write(t.Context(), filepath.Join(t.TempDir(), "case"), fx.store, heads, fx.keys, &fx.central.PublicKey, q); err == nil ||
		!strings.Contains(err.Error(), "names s1/d1") {
		t.Fatalf("a receipt for another header: err=%v", err)
	}
	p := filepath.Join(dir, evidence.ReceiptsFile)
	fh, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	rcs, err := ledger.ReadReceipts(fh)
	fh.Close()
	if err != nil {
		t.Fatal(err)
	}
	chain := fx.chains["s1/d1"]
	for i, b := range rcs {
		if r, _ := ledger.ParseReceipt(b); r.Site == "s1" && r.Seq == 1 {
			rcs[i] = signReceipt(t, fx.central, ledger.Receipt{Site: "s1", Device: "d1", Chain: chain, Seq: 1, HeaderHash: strings.Repeat("cd", 32), Time: time.Now()})
		}
	}
	var buf bytes.Buffer
	if err := ledger.WriteReceipts(&buf, rcs); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, buf.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
	rehash(t, dir)
	if _, err := evidence.Verify(dir); !errors.Is(err, evidence.ErrReceipt) || !strings.Contains(err.Error(), "names header") {
		t.Fatalf("a forged receipt at a batch: err=%v, want ErrReceipt naming the header", err)
	}
}
