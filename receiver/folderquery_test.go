package receiver_test

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/edgeaudit/edgeaudit/audit"
	"github.com/edgeaudit/edgeaudit/ledger"
	"github.com/edgeaudit/edgeaudit/receiver"
)

// seal seals events as the batch after from, as the appliance would.
func (a *appliance) seal(t testing.TB, from []*ledger.Batch, events [][]byte) []*ledger.Batch {
	t.Helper()
	kid, err := ledger.KeyID(&a.key.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	prev := ledger.ZeroHash
	if len(from) > 0 {
		prev = hashOf(from[len(from)-1])
	}
	h := ledger.Header{Site: a.site, Device: a.device, Chain: a.chain, Seq: uint64(len(from) + 1), Prev: prev,
		Sealed: "2026-12-01T08:00:00Z", TimeSync: ledger.TimeSync{State: "unknown"}, KeyID: kid}
	hb, sig, err := h.Seal(ledger.EventsRoot(events), len(events), func(d []byte) ([]byte, error) {
		return ecdsa.SignASN1(rand.Reader, a.key, d)
	})
	if err != nil {
		t.Fatal(err)
	}
	return append(slices.Clone(from), &ledger.Batch{Header: hb, Signature: sig, Events: events})
}

// qev is the part of an event the query tests vary.
type qev struct {
	id, at, action, outcome, patient, user string
	study                                  []string
}

func (e qev) encode() []byte {
	t, err := time.Parse(time.RFC3339, "2026-12-01T"+e.at+":00Z")
	if err != nil {
		panic(err) // a typo in the table below
	}
	ev := audit.Event{ID: e.id, Time: t, Received: t.Add(time.Second),
		Source: audit.Source{Kind: audit.KindSyslog, Host: "pacs1"}, Action: e.action, Outcome: e.outcome,
		Actor: audit.Actor{User: e.user}, Patient: e.patient, Study: e.study, RawSHA256: strings.Repeat("0", 64)}
	return ev.AppendJSON(nil)
}

// queryFixture is a store of three devices at two sites with the batches below, stored
// through Handle. sealed maps event id to its exact bytes.
type queryFixture struct {
	env    *env
	store  receiver.FolderStore
	sealed map[string][]byte
	chains map[string]string // "site/device" → chain id
}

func newQueryFixture(t testing.TB) *queryFixture {
	t.Helper()
	e := newEnv(t, receiver.Config{}, nil)
	fx := &queryFixture{env: e, store: receiver.FolderStore{Dir: e.storeDir}, sealed: map[string][]byte{}, chains: map[string]string{}}
	devices := []struct {
		site, device, chain string
		batches             [][]qev
	}{
		{"s1", "d1", strings.Repeat("11", 16), [][]qev{
			{{"e01", "08:00", "phi.view", "success", "P1", "alice", []string{"S1"}},
				{"e02", "08:05", "phi.export", "success", "P2", "bob", []string{"S2", "S3"}}},
			{{"e03", "09:00", "auth.login", "major_failure", "", "alice", nil},
				{"e04", "09:30", "phi.view", "success", "P1", "carol", []string{"S3"}}},
		}},
		{"s1", "d2", strings.Repeat("22", 16), [][]qev{
			{{"e05", "08:10", "dicom.query", "success", "P1", "bob", nil},
				{"e06", "10:00", "phi.view", "minor_failure", "P3", "alice", []string{"S1"}}},
		}},
		{"s2", "d1", strings.Repeat("33", 16), [][]qev{
			{{"e07", "07:00", "phi.view", "success", "P1", "dave", []string{"S1"}},
				{"e08", "11:00", "admin.rbac_change", "success", "", "alice", nil}},
		}},
	}
	for _, d := range devices {
		a := newAppliance(t, d.site, d.device)
		a.chain = d.chain
		fx.chains[d.site+"/"+d.device] = d.chain
		enroll(t, e.keysDir, d.site, d.device, &a.key.PublicKey)
		var chain []*ledger.Batch
		for _, evs := range d.batches {
			var raw [][]byte
			for _, ev := range evs {
				b := ev.encode()
				fx.sealed[ev.id] = b
				raw = append(raw, b)
			}
			chain = a.seal(t, chain, raw)
			if _, err := e.r.Handle(t.Context(), d.site, d.device, wire(chain[len(chain)-1])); err != nil {
				t.Fatal(err)
			}
		}
	}
	return fx
}

// run queries and returns "site/device/seq/index/id" per match, checking each match's
// bytes and chain on the way.
func (fx *queryFixture) run(t *testing.T, q receiver.Query) []string {
	t.Helper()
	var got []string
	err := fx.store.Query(t.Context(), q, func(m receiver.Match) error {
		ev, err := audit.Decode(m.Event)
		if err != nil {
			t.Fatalf("match %+v: %v", m, err)
		}
		if !bytes.Equal(m.Event, fx.sealed[ev.ID]) {
			t.Errorf("event %s bytes differ from the sealed ones", ev.ID)
		}
		if want := fx.chains[m.Site+"/"+m.Device]; m.Chain != want {
			t.Errorf("event %s chain %s, want %s", ev.ID, m.Chain, want)
		}
		got = append(got, fmt.Sprintf("%s/%s/%d/%d/%s", m.Site, m.Device, m.Seq, m.Index, ev.ID))
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return got
}

func TestFolderStoreQuery(t *testing.T) {
	fx := newQueryFixture(t)
	at := func(s string) time.Time {
		v, err := time.Parse(time.RFC3339, "2026-12-01T"+s+":00Z")
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	all := []string{"s1/d1/1/0/e01", "s1/d1/1/1/e02", "s1/d1/2/0/e03", "s1/d1/2/1/e04",
		"s1/d2/1/0/e05", "s1/d2/1/1/e06", "s2/d1/1/0/e07", "s2/d1/1/1/e08"}
	pick := func(ids ...string) []string {
		var out []string
		for _, m := range all {
			for _, id := range ids {
				if strings.HasSuffix(m, "/"+id) {
					out = append(out, m)
				}
			}
		}
		return out
	}
	tests := []struct {
		name string
		q    receiver.Query
		want []string
	}{
		{"everything", receiver.Query{}, all},
		{"site", receiver.Query{Site: "s2"}, pick("e07", "e08")},
		{"device at every site", receiver.Query{Device: "d2"}, pick("e05", "e06")},
		{"site and device", receiver.Query{Site: "s1", Device: "d1"}, pick("e01", "e02", "e03", "e04")},
		{"unknown site", receiver.Query{Site: "s9"}, nil},
		{"patient", receiver.Query{Patient: "P1"}, pick("e01", "e04", "e05", "e07")},
		{"user", receiver.Query{User: "alice"}, pick("e01", "e03", "e06", "e08")},
		{"action", receiver.Query{Action: "phi.view"}, pick("e01", "e04", "e06", "e07")},
		{"action prefix", receiver.Query{Action: "phi.*"}, pick("e01", "e02", "e04", "e06", "e07")},
		{"action is exact without .*", receiver.Query{Action: "phi"}, nil},
		{"outcome", receiver.Query{Outcome: "major_failure"}, pick("e03")},
		{"study among several", receiver.Query{Study: "S3"}, pick("e02", "e04")},
		{"from is inclusive", receiver.Query{From: at("09:00")}, pick("e03", "e04", "e06", "e08")},
		{"to is exclusive", receiver.Query{To: at("09:00")}, pick("e01", "e02", "e05", "e07")},
		{"from and to", receiver.Query{From: at("08:00"), To: at("09:00")}, pick("e01", "e02", "e05")},
		{"filters are ANDed", receiver.Query{Patient: "P1", User: "alice"}, pick("e01")},
		{"patient at a site", receiver.Query{Site: "s1", Patient: "P1"}, pick("e01", "e04", "e05")},
		{"limit", receiver.Query{Limit: 3}, pick("e01", "e02", "e03")},
		{"limit with a filter", receiver.Query{Patient: "P1", Limit: 2}, pick("e01", "e04")},
		{"no match", receiver.Query{Patient: "P9"}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := fx.run(t, tt.q)
			if !slices.Equal(got, tt.want) {
				t.Fatalf("got %v\nwant %v", got, tt.want)
			}
			// Matches agrees with the scan on every stored event.
			for id, b := range fx.sealed {
				in := slices.ContainsFunc(got, func(s string) bool { return strings.HasSuffix(s, "/"+id) })
				if tt.q.Site == "" && tt.q.Device == "" && tt.q.Limit == 0 {
					if got := tt.q.Matches(b); got != in {
						t.Errorf("Matches(%s)=%v, the scan says %v", id, got, in)
					}
				}
			}
		})
	}
}

func TestFolderStoreQueryStops(t *testing.T) {
	fx := newQueryFixture(t)
	stop := errors.New("enough")
	n := 0
	err := fx.store.Query(t.Context(), receiver.Query{}, func(receiver.Match) error {
		n++
		if n == 2 {
			return stop
		}
		return nil
	})
	if !errors.Is(err, stop) || n != 2 {
		t.Fatalf("err=%v after %d calls, want fn's error after 2", err, n)
	}
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if err := fx.store.Query(ctx, receiver.Query{}, func(receiver.Match) error { return nil }); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled query: err=%v, want context.Canceled", err)
	}
	if err := fx.store.Query(t.Context(), receiver.Query{Site: "../x"}, func(receiver.Match) error { return nil }); err == nil {
		t.Fatal("a site that is not a name was accepted")
	}
}

// A batch whose files were written but whose head was not (a crash inside Append) is
// not stored, and a query must not return its events.
func TestFolderStoreQuerySkipsBeyondHead(t *testing.T) {
	fx := newQueryFixture(t)
	dir := filepath.Join(fx.store.Dir, "s2", "d1", fx.chains["s2/d1"], "events")
	if err := os.WriteFile(filepath.Join(dir, receiver.SeqName(2)+".jsonl"), append(qev{"e99", "12:00", "phi.view", "success", "P1", "x", nil}.encode(), '\n'), 0o600); err != nil {
		t.Fatal(err)
	}
	// A device folder with a half-written first batch and no head.
	half := filepath.Join(fx.store.Dir, "s3", "d1", strings.Repeat("44", 16), "events")
	if err := os.MkdirAll(half, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(half, receiver.SeqName(1)+".jsonl"), append(qev{"e98", "12:00", "phi.view", "success", "P1", "x", nil}.encode(), '\n'), 0o600); err != nil {
		t.Fatal(err)
	}
	got := fx.run(t, receiver.Query{Patient: "P1"})
	if want := []string{"s1/d1/1/0/e01", "s1/d1/2/1/e04", "s1/d2/1/0/e05", "s2/d1/1/0/e07"}; !slices.Equal(got, want) {
		t.Fatalf("got %v, want %v", got, want)
	}
}

// Events are opaque to verifiers: one that is not JSON is returned by a query without
// event filters and by no other. One written by another encoder, with escapes, matches
// as what it decodes to (the quick reject on literal bytes must not drop it). One with
// a newline byte comes out whole, at its index (from the .eab).
func TestFolderStoreQueryOpaqueEvent(t *testing.T) {
	e := newEnv(t, receiver.Config{}, nil)
	a := newAppliance(t, "s1", "d1")
	enroll(t, e.keysDir, "s1", "d1", &a.key.PublicKey)
	events := [][]byte{[]byte("not json"), qev{"e01", "08:00", "phi.view", "success", "P1", "alice", nil}.encode(),
		[]byte(`{ "time": "2026-12-01T08:00:00Z", "patient": "P\u0031", "action": "phi.\u0076iew" }`),
		[]byte("{\"patient\":\n\"P1\"}")} // a newline inside: the .jsonl has a line more than the batch
	if _, err := e.r.Handle(t.Context(), "s1", "d1", wire(a.seal(t, nil, events)[0])); err != nil {
		t.Fatal(err)
	}
	st := receiver.FolderStore{Dir: e.storeDir}
	for _, tt := range []struct {
		name string
		q    receiver.Query
		want []int
	}{
		{"no filter", receiver.Query{}, []int{0, 1, 2, 3}},
		{"device only", receiver.Query{Site: "s1", Device: "d1"}, []int{0, 1, 2, 3}},
		{"patient", receiver.Query{Patient: "P1"}, []int{1, 2, 3}},
		{"action prefix", receiver.Query{Action: "phi.*"}, []int{1, 2}},
		{"user", receiver.Query{User: "alice"}, []int{1}},
		{"time", receiver.Query{From: time.Unix(0, 0)}, []int{1, 2}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var got []int
			err := st.Query(t.Context(), tt.q, func(m receiver.Match) error {
				if !bytes.Equal(m.Event, events[m.Index]) {
					t.Errorf("index %d: bytes differ", m.Index)
				}
				got = append(got, m.Index)
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(got, tt.want) {
				t.Fatalf("indexes %v, want %v", got, tt.want)
			}
		})
	}
}

func TestFolderStoreBatch(t *testing.T) {
	e := newEnv(t, receiver.Config{}, nil)
	a := newAppliance(t, "s1", "d1")
	enroll(t, e.keysDir, "s1", "d1", &a.key.PublicKey)
	chain := a.extend(t, nil, 2, "x")
	for _, b := range chain {
		if _, err := e.r.Handle(t.Context(), "s1", "d1", wire(b)); err != nil {
			t.Fatal(err)
		}
	}
	st := receiver.FolderStore{Dir: e.storeDir}
	for i, b := range chain {
		got, err := st.Batch(t.Context(), "s1", "d1", a.chain, uint64(i+1))
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, wire(b)) {
			t.Fatalf("batch %d: bytes differ from what was received", i+1)
		}
	}
	if _, err := st.Batch(t.Context(), "s1", "d1", a.chain, 3); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("Batch of seq 3: err=%v, want ErrNotExist", err)
	}
	if _, err := st.Batch(t.Context(), "s1", "d1", "../../etc", 1); err == nil || errors.Is(err, os.ErrNotExist) {
		t.Fatalf("Batch of a chain that is not an id: err=%v, want a refusal", err)
	}
}

// BenchmarkFolderQuery scans a store of 20 batches of 1000 events (about 330 bytes
// each) for one patient, as an investigation would; events/s counts events scanned.
func BenchmarkFolderQuery(b *testing.B) {
	dir := b.TempDir()
	st := receiver.FolderStore{Dir: dir}
	a := newAppliance(b, "s1", "d1")
	const batches, perBatch = 20, 1000
	var chain []*ledger.Batch
	t0 := time.Date(2026, 12, 1, 8, 0, 0, 0, time.UTC)
	for s := range batches {
		var evs [][]byte
		for i := range perBatch {
			n := s*perBatch + i
			ev := audit.Event{ID: audit.NewID(t0), Time: t0.Add(time.Duration(n) * time.Second), Received: t0,
				Source: audit.Source{Kind: audit.KindDICOM, Host: "pacs1.example", App: "PACS", AETitle: "PACS1", Transport: "tls"},
				Action: audit.ActionPHIView, ActionCode: "R", Outcome: audit.OutcomeSuccess,
				Actor:   audit.Actor{User: fmt.Sprintf("user%03d", n%300), Role: "radiologist"},
				Patient: fmt.Sprintf("tok-patient-%05d", n%5000), Study: []string{fmt.Sprintf("tok-study-%06d", n)},
				Codes: []audit.Code{{System: "DCM", Code: "110110", Text: "Patient Record"}}, RawSHA256: hex.EncodeToString(make([]byte, 32))}
			evs = append(evs, ev.AppendJSON(nil))
		}
		chain = a.seal(b, chain, evs)
		last := chain[len(chain)-1]
		h, err := ledger.ParseHeader(last.Header)
		if err != nil {
			b.Fatal(err)
		}
		if err := st.Append(b.Context(), receiver.Entry{Site: "s1", Device: "d1", Header: h, Hash: hashOf(last), Batch: last, Receipt: []byte("r")}); err != nil {
			b.Fatal(err)
		}
	}
	for _, bc := range []struct {
		name string
		q    receiver.Query
		want int
	}{
		// Most events are rejected on their bytes, without a decode.
		{"patient", receiver.Query{Patient: "tok-patient-00042"}, batches * perBatch / 5000},
		// A time range decodes every event.
		{"time", receiver.Query{From: t0.Add(time.Hour), To: t0.Add(2 * time.Hour)}, 3600},
	} {
		b.Run(bc.name, func(b *testing.B) {
			for b.Loop() {
				n := 0
				if err := st.Query(b.Context(), bc.q, func(receiver.Match) error { n++; return nil }); err != nil {
					b.Fatal(err)
				}
				if n != bc.want {
					b.Fatalf("%d matches, want %d", n, bc.want)
				}
			}
			b.ReportMetric(float64(batches*perBatch*b.N)/b.Elapsed().Seconds(), "events/s")
		})
	}
}

// An events file that does not hold the batch's count of lines (damaged, or edited by
// hand) is not trusted: the events come from the .eab file.
func TestFolderStoreQueryDamagedEventsFile(t *testing.T) {
	fx := newQueryFixture(t)
	p := filepath.Join(fx.store.Dir, "s1", "d1", fx.chains["s1/d1"], "events", receiver.SeqName(1)+".jsonl")
	if err := os.WriteFile(p, append(qev{"e99", "12:00", "phi.view", "success", "P1", "x", nil}.encode(), '\n'), 0o600); err != nil {
		t.Fatal(err)
	}
	got := fx.run(t, receiver.Query{Site: "s1", Device: "d1"}) // run checks each event's bytes
	if want := []string{"s1/d1/1/0/e01", "s1/d1/1/1/e02", "s1/d1/2/0/e03", "s1/d1/2/1/e04"}; !slices.Equal(got, want) {
		t.Fatalf("got %v, want %v", got, want)
	}
}
