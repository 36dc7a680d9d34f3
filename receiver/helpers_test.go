package receiver_test

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

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

// appliance builds the batches one device would seal.
type appliance struct {
	site, device, chain string
	key                 *ecdsa.PrivateKey
	events              int // events per batch
}

func newAppliance(t testing.TB, site, device string) *appliance {
	return &appliance{site: site, device: device, chain: strings.Repeat("ab", 16), key: genKey(t), events: 3}
}

// extend returns from plus n more batches. salt goes into the events, so two extends of
// one prefix with different salts are a fork.
func (a *appliance) extend(t testing.TB, from []*ledger.Batch, n int, salt string) []*ledger.Batch {
	t.Helper()
	kid, err := ledger.KeyID(&a.key.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	out := append([]*ledger.Batch(nil), from...)
	prev := ledger.ZeroHash
	if len(from) > 0 {
		hh := ledger.HeaderHash(from[len(from)-1].Header)
		prev = hex.EncodeToString(hh[:])
	}
	for range n {
		seq := uint64(len(out) + 1)
		var events [][]byte
		for i := range a.events {
			events = append(events, fmt.Appendf(nil, `{"id":"%s-%d-%d","action":"phi.view","salt":%q}`, a.chain[:8], seq, i, salt))
		}
		h := ledger.Header{Site: a.site, Device: a.device, Chain: a.chain, Seq: seq, Prev: prev,
			Sealed: "2026-12-01T08:00:00Z", TimeSync: ledger.TimeSync{State: "unknown"}, KeyID: kid}
		hb, sig, err := h.Seal(ledger.EventsRoot(events), len(events), func(d []byte) ([]byte, error) {
			return ecdsa.SignASN1(rand.Reader, a.key, d)
		})
		if err != nil {
			t.Fatal(err)
		}
		hh := ledger.HeaderHash(hb)
		prev = hex.EncodeToString(hh[:])
		out = append(out, &ledger.Batch{Header: hb, Signature: sig, Events: events})
	}
	return out
}

func wire(b *ledger.Batch) []byte { return b.AppendWire(nil) }

func hashOf(b *ledger.Batch) string {
	hh := ledger.HeaderHash(b.Header)
	return hex.EncodeToString(hh[:])
}

// enroll writes the device's public key where receiver.FolderKeys finds it.
func enroll(t testing.TB, dir, site, device string, pub *ecdsa.PublicKey) {
	t.Helper()
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(dir, site), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, site, device+".pub"), pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
}

// env is a receiver over a folder store, a key folder and a quarantine folder.
type env struct {
	r                          *receiver.Receiver
	store                      receiver.Store
	central                    *ecdsa.PrivateKey
	keysDir, storeDir, quarDir string
}

func newEnv(t testing.TB, cfg receiver.Config, store receiver.Store) *env {
	t.Helper()
	dir := t.TempDir()
	e := &env{central: genKey(t), keysDir: filepath.Join(dir, "devices"), storeDir: filepath.Join(dir, "store"), quarDir: filepath.Join(dir, "quarantine")}
	if store == nil {
		store = receiver.FolderStore{Dir: e.storeDir}
	}
	e.store = store
	if cfg.Quarantine == "" {
		cfg.Quarantine = e.quarDir
	}
	r, err := receiver.New(cfg, store, receiver.FolderKeys{Dir: e.keysDir}, keySigner{e.central}, nil)
	if err != nil {
		t.Fatal(err)
	}
	e.r = r
	return e
}

// quarantined lists the .eab files in the quarantine folder.
func (e *env) quarantined(t testing.TB) []string {
	t.Helper()
	m, err := filepath.Glob(filepath.Join(e.quarDir, "*", "*", "*.eab"))
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// memStore is the in-memory Store of the conformance suite and the benchmark.
type memStore struct {
	mu      sync.Mutex
	heads   map[string]receiver.Head
	headers map[string][]byte
}

func newMemStore() *memStore {
	return &memStore{heads: map[string]receiver.Head{}, headers: map[string][]byte{}}
}

func (m *memStore) Head(_ context.Context, site, device string) (receiver.Head, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.heads[site+"/"+device], nil
}

func (m *memStore) Header(_ context.Context, site, device, chain string, seq uint64) ([]byte, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	hb, ok := m.headers[fmt.Sprintf("%s/%s/%s/%d", site, device, chain, seq)]
	if !ok {
		return nil, fmt.Errorf("header seq %d: %w", seq, os.ErrNotExist)
	}
	return bytes.Clone(hb), nil
}

func (m *memStore) Append(_ context.Context, e receiver.Entry) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.headers[fmt.Sprintf("%s/%s/%s/%d", e.Site, e.Device, e.Header.Chain, e.Header.Seq)] = bytes.Clone(e.Batch.Header)
	m.heads[e.Site+"/"+e.Device] = receiver.Head{Chain: e.Header.Chain, Seq: e.Header.Seq, Hash: e.Hash, Receipt: e.Receipt}
	return nil
}
