package pgstore_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/edgeaudit/edgeaudit/audit"
	"github.com/edgeaudit/edgeaudit/internal/testpg"
	"github.com/edgeaudit/edgeaudit/ledger"
	"github.com/edgeaudit/edgeaudit/receiver"
	"github.com/edgeaudit/edgeaudit/receiver/pgstore"
)

func TestMain(m *testing.M) {
	// The cluster is reached over a unix socket or 127.0.0.1: no name is ever looked up.
	net.DefaultResolver.PreferGo = true
	net.DefaultResolver.Dial = func(context.Context, string, string) (net.Conn, error) {
		return nil, errors.New("tests resolve no names")
	}
	os.Exit(testpg.Main(m))
}

// openStore returns a migrated store on a fresh database of the shared cluster, and the
// database's DSN.
func openStore(t testing.TB) (*pgstore.Store, string) {
	t.Helper()
	dsn := testpg.Shared(t).NewDatabase(t)
	s, err := pgstore.Open(t.Context(), dsn, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	if err := s.Migrate(t.Context()); err != nil {
		t.Fatal(err)
	}
	return s, dsn
}

// appliance seals the batches of one device's chain.
type appliance struct {
	site, device, chain string
	key                 *ecdsa.PrivateKey
	batches             []*ledger.Batch
}

func newAppliance(t testing.TB, site, device string) *appliance {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return &appliance{site: site, device: device, chain: strings.Repeat("ab", 16), key: k}
}

// seal appends one batch of events to the chain and returns it.
func (a *appliance) seal(t testing.TB, events []audit.Event) *ledger.Batch {
	t.Helper()
	var raw [][]byte
	for i := range events {
		raw = append(raw, events[i].AppendJSON(nil))
	}
	return a.sealRaw(t, raw)
}

func (a *appliance) sealRaw(t testing.TB, raw [][]byte) *ledger.Batch {
	t.Helper()
	kid, err := ledger.KeyID(&a.key.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	prev := ledger.ZeroHash
	if n := len(a.batches); n > 0 {
		prev = hashOf(a.batches[n-1])
	}
	h := ledger.Header{Site: a.site, Device: a.device, Chain: a.chain, Seq: uint64(len(a.batches) + 1), Prev: prev,
		Sealed: "2026-12-01T08:00:00Z", TimeSync: ledger.TimeSync{State: "unknown"}, KeyID: kid}
	hb, sig, err := h.Seal(ledger.EventsRoot(raw), len(raw), func(d []byte) ([]byte, error) { return ecdsa.SignASN1(rand.Reader, a.key, d) })
	if err != nil {
		t.Fatal(err)
	}
	b := &ledger.Batch{Header: hb, Signature: sig, Events: raw}
	a.batches = append(a.batches, b)
	return b
}

// entry is b as the receiver hands it to Append.
func entry(t testing.TB, site, device string, b *ledger.Batch, receipt string) receiver.Entry {
	t.Helper()
	h, err := ledger.ParseHeader(b.Header)
	if err != nil {
		t.Fatal(err)
	}
	return receiver.Entry{Site: site, Device: device, Header: h, Hash: hashOf(b), Batch: b, Receipt: []byte(receipt)}
}

func hashOf(b *ledger.Batch) string {
	hh := ledger.HeaderHash(b.Header)
	return hex.EncodeToString(hh[:])
}

// event is an audit event at minute min of the test day.
func event(id string, min int, action, outcome, patient, user string, study ...string) audit.Event {
	t := time.Date(2026, 12, 1, 8, 0, 0, 0, time.UTC).Add(time.Duration(min) * time.Minute)
	return audit.Event{ID: id, Time: t, Received: t, Source: audit.Source{Kind: audit.KindHL7},
		Action: action, Outcome: outcome, Actor: audit.Actor{User: user}, Patient: patient, Study: study,
		RawSHA256: strings.Repeat("0", 64)}
}

// fillEvents are n plain events for volume.
func fillEvents(n int, seq int) []audit.Event {
	out := make([]audit.Event, n)
	for i := range out {
		out[i] = event(fmt.Sprintf("e%d-%d", seq, i), i%60, "phi.view", audit.OutcomeSuccess,
			fmt.Sprintf("pt-%04d", i%97), fmt.Sprintf("u%02d", i%13), fmt.Sprintf("st-%03d", i%31))
		out[i].Message = strings.Repeat("x", 120) // about 300 bytes an event
	}
	return out
}
