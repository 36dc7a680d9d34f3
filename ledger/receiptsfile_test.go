package ledger_test

import (
	"bytes"
	"errors"
	"strings"
	"testing"

	"github.com/edgeaudit/edgeaudit/ledger"
)

func TestReceiptsFileRoundTrip(t *testing.T) {
	k := receiptKey(t)
	r1 := vectorReceipt(t)
	r2 := r1
	r2.Device, r2.Seq = "d2", 7
	want := [][]byte{signReceipt(t, k, r1), signReceipt(t, k, r2)}
	var buf bytes.Buffer
	if err := ledger.WriteReceipts(&buf, want); err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(buf.String(), "\n"); n != 2 {
		t.Fatalf("receipts file has %d lines, want 2:\n%s", n, buf.String())
	}
	got, err := ledger.ReadReceipts(&buf)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != len(want) {
		t.Fatalf("read %d receipts, want %d", len(got), len(want))
	}
	for i := range want {
		if !bytes.Equal(got[i], want[i]) {
			t.Errorf("receipt %d:\ngot  %q\nwant %q", i, got[i], want[i])
		}
		if _, err := ledger.VerifyReceipt(got[i], &k.PublicKey); err != nil {
			t.Errorf("receipt %d: %v", i, err)
		}
	}
}

func TestReadReceiptsRefuses(t *testing.T) {
	good := signReceipt(t, receiptKey(t), vectorReceipt(t))
	var ok bytes.Buffer
	if err := ledger.WriteReceipts(&ok, [][]byte{good}); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, in string
		receipt  bool // the error is ErrReceipt
	}{
		{"not json", "edgeaudit.receipt/v1\n", false},
		{"truncated line", ok.String()[:ok.Len()/2] + "\n", false},
		{"not a receipt", `{"receipt":"hello\n"}` + "\n", true},
		{"second line bad", ok.String() + `{"receipt":""}` + "\n", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ledger.ReadReceipts(strings.NewReader(tc.in))
			if err == nil {
				t.Fatal("no error")
			}
			if got := errors.Is(err, ledger.ErrReceipt); got != tc.receipt {
				t.Errorf("errors.Is(ErrReceipt) = %v, want %v (%v)", got, tc.receipt, err)
			}
		})
	}
}
