package receiver_test

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/rand"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/edgeaudit/edgeaudit/audit"
	"github.com/edgeaudit/edgeaudit/ledger"
	"github.com/edgeaudit/edgeaudit/receiver"
)

// TestQueryStoresAgree: the folder store and the PostgreSQL store, holding the same
// batches, answer every query with the same matches in the same order (one Querier
// contract, STYLE 13), and each match satisfies Query.Matches.
func TestQueryStoresAgree(t *testing.T) {
	pg := openPG(t)
	folder := receiver.FolderStore{Dir: t.TempDir()}
	t0 := time.Date(2026, 12, 1, 8, 0, 0, 0, time.UTC)
	actions := []string{"phi.view", "phi.export", "phi", "auth.login", "phiX.view", "query.broad"}
	outcomes := []string{audit.OutcomeSuccess, audit.OutcomeMinorFailure, audit.OutcomeSeriousFailure}
	for d, device := range []string{"d1", "d2"} {
		for _, site := range []string{"s1", "s2"} {
			a := newAppliance(t, site, device)
			var prev []*ledger.Batch
			for seq := 1; seq <= 3; seq++ {
				var events [][]byte
				for i := range 7 {
					n := d*100 + seq*10 + i
					ev := audit.Event{ID: fmt.Sprintf("%s-%s-%d-%d", site, device, seq, i), Time: t0.Add(time.Duration(n) * time.Minute),
						Received: t0, Source: audit.Source{Kind: audit.KindHL7}, Action: actions[n%len(actions)], Outcome: outcomes[n%len(outcomes)],
						Actor: audit.Actor{User: fmt.Sprintf("u%d", n%4)}, RawSHA256: strings.Repeat("0", 64)}
					if n%3 != 0 {
						ev.Patient = fmt.Sprintf("pt-%d", n%5)
					}
					if n%2 == 0 {
						ev.Study = []string{fmt.Sprintf("st-%d", n%3), fmt.Sprintf("st-%d", n%7)}
					}
					events = append(events, ev.AppendJSON(nil))
				}
				if seq == 3 {
					events = append(events, []byte("not json"))
				}
				b := sealEvents(t, a, prev, events)
				prev = append(prev, b)
				h, err := ledger.ParseHeader(b.Header)
				if err != nil {
					t.Fatal(err)
				}
				e := receiver.Entry{Site: site, Device: device, Header: h, Hash: hashOf(b), Batch: b, Receipt: []byte("r")}
				for _, s := range []receiver.Store{pg, folder} {
					if err := s.Append(t.Context(), e); err != nil {
						t.Fatal(err)
					}
				}
			}
		}
	}
	at := func(min int) time.Time { return t0.Add(time.Duration(min) * time.Minute) }
	queries := []receiver.Query{
		{}, {Site: "s2"}, {Device: "d1"}, {Site: "s1", Device: "d2"},
		{Patient: "pt-1"}, {User: "u2"}, {Action: "phi.view"}, {Action: "phi.*"}, {Action: "phi"}, {Outcome: audit.OutcomeSeriousFailure},
		{Study: "st-2"}, {Study: "st-6"}, {From: at(120)}, {To: at(25)}, {From: at(15), To: at(135)},
		{User: "u1", Action: "phi.*"}, {Patient: "pt-2", Outcome: audit.OutcomeSuccess, From: at(20)},
		{Site: "s1", Study: "st-0", To: at(130)}, {Action: "phi.*", Limit: 5}, {Limit: 1}, {Patient: "nobody"},
	}
	for _, q := range queries {
		t.Run(fmt.Sprintf("%+v", q), func(t *testing.T) {
			var want, got []receiver.Match
			if err := folder.Query(t.Context(), q, func(m receiver.Match) error { want = append(want, m); return nil }); err != nil {
				t.Fatal(err)
			}
			if err := pg.Query(t.Context(), q, func(m receiver.Match) error { got = append(got, m); return nil }); err != nil {
				t.Fatal(err)
			}
			if len(got) != len(want) {
				t.Fatalf("postgres %d matches, folder %d", len(got), len(want))
			}
			for i := range got {
				g, w := got[i], want[i]
				if g.Site != w.Site || g.Device != w.Device || g.Chain != w.Chain || g.Seq != w.Seq || g.Index != w.Index || !bytes.Equal(g.Event, w.Event) {
					t.Fatalf("match %d: postgres %s/%s seq %d index %d, folder %s/%s seq %d index %d", i, g.Site, g.Device, g.Seq, g.Index, w.Site, w.Device, w.Seq, w.Index)
				}
				if !q.Matches(g.Event) {
					t.Fatalf("match %d (%s) does not satisfy Query.Matches", i, g.Event)
				}
			}
		})
	}
}

// sealEvents seals the next batch after prev with the given event bytes.
func sealEvents(t testing.TB, a *appliance, prev []*ledger.Batch, events [][]byte) *ledger.Batch {
	t.Helper()
	kid, err := ledger.KeyID(&a.key.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	p := ledger.ZeroHash
	if len(prev) > 0 {
		p = hashOf(prev[len(prev)-1])
	}
	h := ledger.Header{Site: a.site, Device: a.device, Chain: a.chain, Seq: uint64(len(prev) + 1), Prev: p,
		Sealed: "2026-12-01T08:00:00Z", TimeSync: ledger.TimeSync{State: "unknown"}, KeyID: kid}
	hb, sig, err := h.Seal(ledger.EventsRoot(events), len(events), func(d []byte) ([]byte, error) { return ecdsa.SignASN1(rand.Reader, a.key, d) })
	if err != nil {
		t.Fatal(err)
	}
	return &ledger.Batch{Header: hb, Signature: sig, Events: events}
}
