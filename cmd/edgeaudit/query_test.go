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
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/edgeaudit/edgeaudit/attest"
	"github.com/edgeaudit/edgeaudit/audit"
	"github.com/edgeaudit/edgeaudit/evidence"
	"github.com/edgeaudit/edgeaudit/ledger"
	"github.com/edgeaudit/edgeaudit/receiver"
)

// centralFixture is a central folder as `edgeaudit receive` keeps it: store, devices and
// central's key, with batches of two devices stored through receiver.Handle.
type centralFixture struct {
	dir, store, devices, key string
	signer                   *attest.SoftwareSigner
	sealed                   [][]byte // every device event, in store order
}

func newCentralFixture(t *testing.T) *centralFixture {
	t.Helper()
	dir := t.TempDir()
	fx := &centralFixture{dir: dir, store: filepath.Join(dir, "store"), devices: filepath.Join(dir, "devices"), key: filepath.Join(dir, "keys", "central.key")}
	s, _, err := attest.LoadOrCreateSoftware(fx.key)
	if err != nil {
		t.Fatal(err)
	}
	fx.signer = s
	if err := attest.WritePublicPEM(filepath.Join(dir, "keys", "central.pub"), s.Public()); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(fx.store, 0o700); err != nil {
		t.Fatal(err)
	}
	r, err := receiver.New(receiver.Config{Quarantine: filepath.Join(dir, "quarantine")}, receiver.FolderStore{Dir: fx.store},
		receiver.FolderKeys{Dir: fx.devices}, s, nil)
	if err != nil {
		t.Fatal(err)
	}
	t0 := time.Date(2026, 12, 1, 8, 0, 0, 0, time.UTC)
	mk := func(i int, patient, user string) []byte {
		e := audit.Event{ID: audit.NewID(t0), Time: t0.Add(time.Duration(i) * time.Minute), Received: t0.Add(time.Hour),
			Source: audit.Source{Kind: audit.KindDICOM, Host: "pacs1"}, Action: audit.ActionPHIView, Outcome: audit.OutcomeSuccess,
			Actor: audit.Actor{User: user}, Patient: patient, RawSHA256: strings.Repeat("0", 64)}
		b := e.AppendJSON(nil)
		fx.sealed = append(fx.sealed, b)
		return b
	}
	for _, d := range []struct {
		site, device string
		batches      [][][]byte
	}{
		{"s1", "d1", [][][]byte{{mk(0, "P1", "alice"), mk(1, "P2", "bob")}, {mk(2, "P1", "bob")}}},
		{"s2", "d1", [][][]byte{{mk(3, "P3", "alice"), mk(4, "P1", "carol")}}},
	} {
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.MkdirAll(filepath.Join(fx.devices, d.site), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := attest.WritePublicPEM(filepath.Join(fx.devices, d.site, d.device+".pub"), &k.PublicKey); err != nil {
			t.Fatal(err)
		}
		kid, err := ledger.KeyID(&k.PublicKey)
		if err != nil {
			t.Fatal(err)
		}
		prev, chain := ledger.ZeroHash, hex.EncodeToString([]byte(d.site+d.device+"0123456789ab"))
		for i, evs := range d.batches {
			h := ledger.Header{Site: d.site, Device: d.device, Chain: chain, Seq: uint64(i + 1), Prev: prev,
				Sealed: "2026-12-01T09:00:00Z", TimeSync: ledger.TimeSync{State: "unknown"}, KeyID: kid}
			hb, sig, err := h.Seal(ledger.EventsRoot(evs), len(evs), func(dg []byte) ([]byte, error) { return ecdsa.SignASN1(rand.Reader, k, dg) })
			if err != nil {
				t.Fatal(err)
			}
			sum := ledger.HeaderHash(hb)
			prev = hex.EncodeToString(sum[:])
			if _, err := r.Handle(t.Context(), d.site, d.device, (&ledger.Batch{Header: hb, Signature: sig, Events: evs}).AppendWire(nil)); err != nil {
				t.Fatal(err)
			}
		}
	}
	return fx
}

// run runs `edgeaudit query` with the fixture's folders and returns its output.
func (fx *centralFixture) run(t *testing.T, args ...string) (string, error) {
	t.Helper()
	var out bytes.Buffer
	c := &QueryCommand{out: &out, user: "tester"}
	err := c.Run(t.Context(), append([]string{"-store", fx.store, "-keys", fx.devices, "-central-key", fx.key, "-audit-device", "host1"}, args...))
	return out.String(), err
}

// trail returns central's recorded queries.
func (fx *centralFixture) trail(t *testing.T, device string) []audit.Event {
	t.Helper()
	var out []audit.Event
	err := receiver.FolderStore{Dir: fx.store}.Query(t.Context(), receiver.Query{Site: "central", Device: device, Action: audit.ActionAuditLogUsed},
		func(m receiver.Match) error {
			e, err := audit.Decode(m.Event)
			out = append(out, e)
			return err
		})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func TestQueryCommand(t *testing.T) {
	fx := newCentralFixture(t)
	tests := []struct {
		name   string
		args   []string
		events []int // indexes into fx.sealed
		detail map[string]string
	}{
		{"patient", []string{"-patient", "P1"}, []int{0, 2, 4}, map[string]string{"query.patient": "P1", "format": "jsonl"}},
		{"user at a site", []string{"-user", "bob", "-site", "s1"}, []int{1, 2}, map[string]string{"query.user": "bob", "query.site": "s1"}},
		{"time range and limit", []string{"-from", "2026-12-01T08:01:00Z", "-to", "2026-12-01T08:04:00Z", "-limit", "1"}, []int{1},
			map[string]string{"query.from": "2026-12-01T08:01:00Z", "query.to": "2026-12-01T08:04:00Z", "query.limit": "1"}},
		{"no match", []string{"-patient", "P9"}, nil, map[string]string{"query.patient": "P9"}},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out, err := fx.run(t, tt.args...)
			if err != nil {
				t.Fatal(err)
			}
			var got [][]byte
			for _, line := range strings.Split(strings.TrimSuffix(out, "\n"), "\n") {
				if line == "" {
					continue
				}
				var e evidence.Event
				if err := json.Unmarshal([]byte(line), &e); err != nil {
					t.Fatalf("line %q: %v", line, err)
				}
				if e.Site == "" || e.Chain == "" || e.Seq == 0 {
					t.Errorf("line %q does not say where the event is stored", line)
				}
				got = append(got, e.Bytes())
			}
			var want [][]byte
			for _, j := range tt.events {
				want = append(want, fx.sealed[j])
			}
			if !slices.EqualFunc(got, want, bytes.Equal) {
				t.Fatalf("printed\n%s\nwant the events %v", out, tt.events)
			}
			// The query is in central's trail, recorded before the output.
			recs := fx.trail(t, "host1")
			if len(recs) != i+1 {
				t.Fatalf("%d queries recorded, want %d", len(recs), i+1)
			}
			rec := recs[i]
			if rec.Actor.User != "tester" || rec.Count != len(tt.events) || !slices.Contains(rec.Codes, receiver.CodeAuditLogUsed) ||
				rec.Source.Kind != audit.KindSelf || rec.Outcome != audit.OutcomeSuccess {
				t.Fatalf("recorded %+v", rec)
			}
			for k, v := range tt.detail {
				if rec.Detail[k] != v {
					t.Errorf("detail %s=%q, want %q", k, rec.Detail[k], v)
				}
			}
		})
	}
	// The trail verifies as any appliance's chain, with central's public key.
	h, err := receiver.FolderStore{Dir: fx.store}.Head(t.Context(), "central", "host1")
	if err != nil {
		t.Fatal(err)
	}
	files, err := filepath.Glob(filepath.Join(fx.store, "central", "host1", h.Chain, "batches", "*.eab"))
	if err != nil || len(files) != len(tests) {
		t.Fatalf("%d trail batches (%v), want %d", len(files), err, len(tests))
	}
	if err := (&VerifyCommand{}).Run(t.Context(), append([]string{"-key", filepath.Join(fx.dir, "keys", "central.pub")}, files...)); err != nil {
		t.Fatalf("edgeaudit verify of the trail: %v", err)
	}
	// A query for a patient also finds who looked them up.
	out, err := fx.run(t, "-site", "central", "-patient", "P1")
	if err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(out, "\n"); n != 1 || !strings.Contains(out, `"query.patient":"P1"`) {
		t.Fatalf("the patient's query records:\n%s", out)
	}
}

func TestQueryCommandTable(t *testing.T) {
	fx := newCentralFixture(t)
	out, err := fx.run(t, "-format", "table", "-patient", "P1")
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSuffix(out, "\n"), "\n")
	want := []string{
		"TIME                  SITE/DEVICE  ACTION    OUTCOME  USER   PATIENT",
		"2026-12-01T08:00:00Z  s1/d1        phi.view  success  alice  P1",
		"2026-12-01T08:02:00Z  s1/d1        phi.view  success  bob    P1",
		"2026-12-01T08:04:00Z  s2/d1        phi.view  success  carol  P1",
	}
	if !slices.Equal(lines, want) {
		t.Fatalf("table\n%s\nwant\n%s", out, strings.Join(want, "\n"))
	}
}

func TestQueryCommandEvidence(t *testing.T) {
	fx := newCentralFixture(t)
	dir := filepath.Join(t.TempDir(), "case-42")
	out, err := fx.run(t, "-patient", "P1", "-evidence", dir)
	if err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(out, "\n"); n != 3 {
		t.Fatalf("%d events printed, want 3", n)
	}
	if err := (&VerifyCommand{}).Run(t.Context(), []string{dir}); err != nil {
		t.Fatalf("edgeaudit verify DIR: %v", err)
	}
	rep, err := evidence.Verify(dir)
	if err != nil {
		t.Fatal(err)
	}
	if rep.Events != 3 || rep.Batches != 3 || len(rep.Devices) != 2 {
		t.Fatalf("package of %d events, %d batches, %d devices; want 3, 3, 2", rep.Events, rep.Batches, len(rep.Devices))
	}
	if recs := fx.trail(t, "host1"); len(recs) != 1 || recs[0].Detail["query.evidence"] != dir || recs[0].Count != 3 {
		t.Fatalf("recorded %+v", recs)
	}
	// An edited event fails `edgeaudit verify` (here: its manifest hash).
	p := filepath.Join(dir, evidence.EventsFile)
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, bytes.Replace(b, []byte(`"alice"`), []byte(`"alicf"`), 1), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := (&VerifyCommand{}).Run(t.Context(), []string{dir}); !errors.Is(err, evidence.ErrManifest) {
		t.Fatalf("verify of an edited package: err=%v, want ErrManifest", err)
	}
	// A second package into the same folder is refused, and that query is recorded
	// as failed.
	if _, err := fx.run(t, "-patient", "P1", "-evidence", dir); err == nil {
		t.Fatal("a package was written over another")
	}
	if recs := fx.trail(t, "host1"); len(recs) != 2 || recs[1].Outcome != audit.OutcomeSeriousFailure {
		t.Fatalf("recorded %+v, want a second, failed query", recs)
	}
}

func TestQueryCommandConfig(t *testing.T) {
	fx := newCentralFixture(t)
	cfg := filepath.Join(fx.dir, "edgeaudit.yaml")
	yaml := "receive:\n  store: store\n  devices: devices\n  key: keys/central.key\n  audit_device: host2\n"
	if err := os.WriteFile(cfg, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	if err := (&QueryCommand{out: &out, user: "tester"}).Run(t.Context(), []string{"-config", cfg, "-patient", "P2"}); err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(out.String(), "\n"); n != 1 {
		t.Fatalf("%d events printed, want 1", n)
	}
	if recs := fx.trail(t, "host2"); len(recs) != 1 {
		t.Fatalf("%d queries recorded in central/host2, want 1", len(recs))
	}
}

func TestQueryCommandRefuses(t *testing.T) {
	fx := newCentralFixture(t)
	other := filepath.Join(t.TempDir(), "other.key")
	der, err := x509.MarshalECPrivateKey(mustKey(t))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(other, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name  string
		args  []string
		usage bool
	}{
		{"bad from", []string{"-from", "yesterday"}, true},
		{"bad format", []string{"-format", "xml"}, true},
		{"argument", []string{"P1"}, true},
		{"negative limit", []string{"-limit", "-1"}, true},
		{"no central key", []string{"-central-key", filepath.Join(fx.dir, "missing.key")}, false},
		{"not a PKCS#8 key", []string{"-central-key", other}, false},
		{"no store", []string{"-store", filepath.Join(fx.dir, "typo")}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out, err := fx.run(t, tt.args...)
			var ue *usageError
			if err == nil || errors.As(err, &ue) != tt.usage {
				t.Fatalf("err=%v, want an error (usage: %v)", err, tt.usage)
			}
			if out != "" {
				t.Fatalf("printed %q", out)
			}
		})
	}
	if recs := fx.trail(t, "host1"); len(recs) != 0 {
		t.Fatalf("refused queries recorded %d events", len(recs))
	}
	if _, err := os.Stat(filepath.Join(fx.dir, "typo")); !errors.Is(err, os.ErrNotExist) {
		t.Fatal("a mistyped store folder was created")
	}
}

func mustKey(t *testing.T) *ecdsa.PrivateKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}
