package evidence_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/edgeaudit/edgeaudit/audit"
	"github.com/edgeaudit/edgeaudit/evidence"
	"github.com/edgeaudit/edgeaudit/ledger"
	"github.com/edgeaudit/edgeaudit/receiver"
)

func genKey(t testing.TB) *ecdsa.PrivateKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// keySigner is a software receiver.Signer.
type keySigner struct{ k *ecdsa.PrivateKey }

func (s keySigner) Sign(_ context.Context, d []byte) ([]byte, error) {
	return ecdsa.SignASN1(rand.Reader, s.k, d)
}
func (s keySigner) Public() *ecdsa.PublicKey { return &s.k.PublicKey }

func pubPEM(t testing.TB, pub *ecdsa.PublicKey) []byte {
	t.Helper()
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})
}

// ev is the part of an event the tests vary.
type ev struct {
	id, patient, user string
}

func (e ev) encode(i int) []byte {
	t := time.Date(2026, 12, 1, 8, 0, i, 0, time.UTC)
	a := audit.Event{ID: e.id, Time: t, Received: t.Add(time.Second), Source: audit.Source{Kind: audit.KindDICOM, Host: "pacs1"},
		Action: audit.ActionPHIView, Outcome: audit.OutcomeSuccess, Actor: audit.Actor{User: e.user}, Patient: e.patient,
		RawSHA256: strings.Repeat("0", 64)}
	return a.AppendJSON(nil)
}

// fixture is a central store with batches of three devices at two sites, stored
// through receiver.Handle, and central's own audit trail.
type fixture struct {
	store   receiver.FolderStore
	keys    receiver.FolderKeys
	central *ecdsa.PrivateKey
	chains  map[string]string // "site/device" → chain
	sealed  map[string][]byte // event id → bytes
}

// odd is an event that is JSON but not compact, so it goes into events.jsonl as base64.
var odd = []byte(`{ "id": "odd", "patient": "P1", "action": "phi.view" }`)

func newFixture(t testing.TB) *fixture {
	t.Helper()
	dir := t.TempDir()
	fx := &fixture{store: receiver.FolderStore{Dir: filepath.Join(dir, "store")}, keys: receiver.FolderKeys{Dir: filepath.Join(dir, "devices")},
		central: genKey(t), chains: map[string]string{}, sealed: map[string][]byte{}}
	r, err := receiver.New(receiver.Config{Quarantine: filepath.Join(dir, "quarantine")}, fx.store, fx.keys, keySigner{fx.central}, nil)
	if err != nil {
		t.Fatal(err)
	}
	devices := []struct {
		site, device string
		batches      [][][]byte
	}{
		{"s1", "d1", [][][]byte{
			fx.events(ev{"a1", "P1", "alice"}, ev{"a2", "P2", "bob"}, ev{"a3", "P3", "alice"}),
			fx.events(ev{"a4", "P2", "carol"}, ev{"a5", "P1", "bob"}, ev{"a6", "P1", "alice"}, ev{"a7", "P4", "bob"}, ev{"a8", "P4", "bob"}),
			fx.events(ev{"a9", "P5", "alice"}),
		}},
		{"s1", "d2", [][][]byte{fx.events(ev{"b1", "P2", "dave"})}},
		{"s2", "d1", [][][]byte{
			fx.events(ev{"c1", "P1", "erin"}),
			append(fx.events(ev{"c2", "P6", "erin"}), odd),
		}},
	}
	for _, d := range devices {
		key := genKey(t)
		chain := hex.EncodeToString(randBytes(t, 16))
		fx.chains[d.site+"/"+d.device] = chain
		if err := os.MkdirAll(filepath.Join(fx.keys.Dir, d.site), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(fx.keys.Dir, d.site, d.device+".pub"), pubPEM(t, &key.PublicKey), 0o600); err != nil {
			t.Fatal(err)
		}
		kid, err := ledger.KeyID(&key.PublicKey)
		if err != nil {
			t.Fatal(err)
		}
		prev := ledger.ZeroHash
		for i, events := range d.batches {
			h := ledger.Header{Site: d.site, Device: d.device, Chain: chain, Seq: uint64(i + 1), Prev: prev,
				Sealed: "2026-12-01T09:00:00Z", TimeSync: ledger.TimeSync{State: "unknown"}, KeyID: kid}
			hb, sig, err := h.Seal(ledger.EventsRoot(events), len(events), func(dg []byte) ([]byte, error) { return ecdsa.SignASN1(rand.Reader, key, dg) })
			if err != nil {
				t.Fatal(err)
			}
			sum := ledger.HeaderHash(hb)
			prev = hex.EncodeToString(sum[:])
			b := &ledger.Batch{Header: hb, Signature: sig, Events: events}
			if _, err := r.Handle(t.Context(), d.site, d.device, b.AppendWire(nil)); err != nil {
				t.Fatal(err)
			}
		}
	}
	fx.sealed["odd"] = odd
	tr, err := receiver.NewAuditTrail(fx.store, keySigner{fx.central}, "central", "host1", nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := tr.Record(t.Context(), audit.Event{ID: "t1", Action: audit.ActionAppStart, Outcome: audit.OutcomeSuccess}); err != nil {
		t.Fatal(err)
	}
	h, err := fx.store.Head(t.Context(), "central", "host1")
	if err != nil {
		t.Fatal(err)
	}
	fx.chains["central/host1"] = h.Chain
	err = fx.store.Query(t.Context(), receiver.Query{Site: "central"}, func(m receiver.Match) error {
		fx.sealed["t1"] = m.Event
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return fx
}

func (fx *fixture) events(evs ...ev) [][]byte {
	var out [][]byte
	for i, e := range evs {
		b := e.encode(i)
		fx.sealed[e.id] = b
		out = append(out, b)
	}
	return out
}

func randBytes(t testing.TB, n int) []byte {
	t.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

// write makes a package of q's matches in a new folder.
func (fx *fixture) write(t testing.TB, q receiver.Query) (string, evidence.Summary) {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "case-1")
	sum, err := evidence.Write(t.Context(), dir, fx.store, fx.store, fx.keys, &fx.central.PublicKey, q)
	if err != nil {
		t.Fatal(err)
	}
	return dir, sum
}

// rehash rewrites the manifest's sizes and hashes for the files as they are now,
// dropping files that are gone: what someone who edits a package would do.
func rehash(t testing.TB, dir string) {
	t.Helper()
	editManifest(t, dir, func(m *evidence.Manifest) {
		var files []evidence.File
		for _, f := range m.Files {
			fh, err := os.Open(filepath.Join(dir, filepath.FromSlash(f.Name)))
			if errors.Is(err, os.ErrNotExist) {
				continue
			}
			if err != nil {
				t.Fatal(err)
			}
			h := sha256.New()
			n, err := io.Copy(h, fh)
			fh.Close()
			if err != nil {
				t.Fatal(err)
			}
			files = append(files, evidence.File{Name: f.Name, Size: n, SHA256: hex.EncodeToString(h.Sum(nil))})
		}
		m.Files = files
	})
}

func editManifest(t testing.TB, dir string, edit func(*evidence.Manifest)) {
	t.Helper()
	p := filepath.Join(dir, evidence.ManifestFile)
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	var m evidence.Manifest
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	edit(&m)
	if b, err = json.Marshal(m); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, b, 0o600); err != nil {
		t.Fatal(err)
	}
}
