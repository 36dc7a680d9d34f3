package receiver_test

import (
	"bytes"
	"errors"
	"testing"

	"github.com/edgeaudit/edgeaudit/ledger"
	"github.com/edgeaudit/edgeaudit/receiver"
)

func TestImport(t *testing.T) {
	a := newAppliance(t, "s1", "d1")
	b := newAppliance(t, "s1", "d2")
	ca, cb := a.extend(t, nil, 3, "a"), b.extend(t, nil, 2, "b")
	tampered := *ca[2]
	tampered.Events = tampered.Events[1:]
	e := newEnv(t, receiver.Config{}, nil)
	enroll(t, e.keysDir, "s1", "d1", &a.key.PublicKey)
	enroll(t, e.keysDir, "s1", "d2", &b.key.PublicKey)
	var file []byte
	for _, bt := range []*ledger.Batch{ca[0], cb[0], ca[1], &tampered, cb[1], ca[1]} {
		file = bt.AppendWire(file)
	}
	res, err := e.r.Import(t.Context(), bytes.NewReader(file))
	if err != nil {
		t.Fatal(err)
	}
	if res.Batches != 6 || len(res.Refused) != 1 || !errors.Is(res.Refused[0], receiver.ErrTampered) {
		t.Fatalf("result %+v, want 6 batches and one tampered refusal", res)
	}
	want := []struct {
		device string
		seq    uint64
	}{{"d1", 2}, {"d2", 2}}
	if len(res.Receipts) != len(want) {
		t.Fatalf("%d receipts, want %d", len(res.Receipts), len(want))
	}
	for i, w := range want {
		got, err := ledger.VerifyReceipt(res.Receipts[i], &e.central.PublicKey)
		if err != nil || got.Device != w.device || got.Seq != w.seq {
			t.Fatalf("receipt %d: %+v (%v), want %s seq %d", i, got, err, w.device, w.seq)
		}
	}
	// A truncated file stops the import with an error; what came before is stored.
	e2 := newEnv(t, receiver.Config{}, nil)
	enroll(t, e2.keysDir, "s1", "d1", &a.key.PublicKey)
	cut := append(ca[0].AppendWire(nil), ca[1].AppendWire(nil)[:20]...)
	res, err = e2.r.Import(t.Context(), bytes.NewReader(cut))
	if err == nil || res.Batches != 1 || len(res.Receipts) != 1 {
		t.Fatalf("truncated file: %+v err %v, want one batch imported and an error", res, err)
	}
}
