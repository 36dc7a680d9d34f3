package ledger_test

import (
	"crypto/ecdsa"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"strings"
	"testing"

	"github.com/edgeaudit/edgeaudit/ledger"
)

// rotationEvent is the JSON of an appliance's rotation event to next.
func rotationEvent(t testing.TB, next *ecdsa.PublicKey, kind string) []byte {
	t.Helper()
	der, err := x509.MarshalPKIXPublicKey(next)
	if err != nil {
		t.Fatal(err)
	}
	id, _ := ledger.KeyID(next)
	b, err := json.Marshal(map[string]any{"id": "r", "source": map[string]string{"kind": kind}, "action": ledger.ActionKeyRotated,
		"detail": map[string]string{"new_key_id": id, "new_public_key": string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}))}})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// chainOf seals one batch per entry: its events, signed by its key, linked in order.
func chainOf(t testing.TB, batches []struct {
	key    *ecdsa.PrivateKey
	events [][]byte
}) []*ledger.Batch {
	t.Helper()
	prev := ledger.ZeroHash
	var out []*ledger.Batch
	for i, bb := range batches {
		kid, _ := ledger.KeyID(&bb.key.PublicKey)
		h := ledger.Header{Site: "s1", Device: "d1", Chain: strings.Repeat("ab", 16), Seq: uint64(i + 1), Prev: prev,
			Sealed: "2026-12-01T08:00:00Z", TimeSync: ledger.TimeSync{State: "unknown"}, KeyID: kid}
		hb, sig, err := h.Seal(ledger.EventsRoot(bb.events), len(bb.events), signer(bb.key))
		if err != nil {
			t.Fatal(err)
		}
		hh := ledger.HeaderHash(hb)
		prev = hex.EncodeToString(hh[:])
		out = append(out, &ledger.Batch{Header: hb, Signature: sig, Events: bb.events})
	}
	return out
}

// A verifier that trusts only the first key follows a rotation signed by it, trusts the
// new key from the next batch, and retires the old one.
func TestVerifierFollowsRotation(t *testing.T) {
	k1, k2 := genKey(t), genKey(t)
	plain := [][]byte{[]byte(`{"id":"x","source":{"kind":"syslog"},"action":"system.log"}`)}
	type b = struct {
		key    *ecdsa.PrivateKey
		events [][]byte
	}
	// A syslog message quoting a rotation event is not one: its quotes are escaped.
	quoted, _ := json.Marshal(map[string]any{"source": map[string]string{"kind": "syslog"}, "action": "system.log",
		"message": string(rotationEvent(t, &k2.PublicKey, "self"))})
	for _, tc := range []struct {
		name    string
		chain   []b
		wantErr string // reason; "" = verifies
		rotated int
	}{
		{"rotation followed", []b{{k1, plain}, {k1, [][]byte{rotationEvent(t, &k2.PublicKey, "self")}}, {k2, plain}, {k2, plain}}, "", 1},
		{"old key retired after the rotation", []b{{k1, [][]byte{rotationEvent(t, &k2.PublicKey, "self")}}, {k1, plain}}, ledger.ReasonKey, 1},
		{"new key before the rotation", []b{{k1, plain}, {k2, plain}}, ledger.ReasonKey, 0},
		{"not the appliance's own event", []b{{k1, [][]byte{rotationEvent(t, &k2.PublicKey, "syslog")}}, {k2, plain}}, ledger.ReasonKey, 0},
		{"a quoted rotation in a message", []b{{k1, [][]byte{quoted}}, {k2, plain}}, ledger.ReasonKey, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			v, err := ledger.NewVerifier(&k1.PublicKey)
			if err != nil {
				t.Fatal(err)
			}
			err = verifyAll(v, chainOf(t, tc.chain))
			var ve *ledger.VerifyError
			switch {
			case tc.wantErr == "" && err != nil:
				t.Fatalf("verify: %v", err)
			case tc.wantErr != "" && (!errors.As(err, &ve) || ve.Reason != tc.wantErr):
				t.Fatalf("verify error %v, want reason %s", err, tc.wantErr)
			}
			if got := v.Rotations(); got != tc.rotated {
				t.Errorf("rotations followed %d, want %d", got, tc.rotated)
			}
		})
	}
}

// A rotation event that names its key badly fails the batch: it is never skipped.
func TestFindRotationRefusesBadKeys(t *testing.T) {
	k2 := genKey(t)
	good := rotationEvent(t, &k2.PublicKey, "self")
	for _, tc := range []struct {
		name string
		ev   string
	}{
		{"wrong key id", strings.Replace(string(good), `"new_key_id":"`, `"new_key_id":"00`, 1)},
		{"no pem", `{"source":{"kind":"self"},"action":"audit.key_rotated","detail":{"new_key_id":"x"}}`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := ledger.FindRotation([][]byte{[]byte(tc.ev)}); !errors.Is(err, ledger.ErrRotation) {
				t.Fatalf("FindRotation: %v, want ErrRotation", err)
			}
		})
	}
	if k, err := ledger.FindRotation([][]byte{good}); err != nil || k == nil || !k.Equal(&k2.PublicKey) {
		t.Fatalf("FindRotation of a good event: %v %v", k, err)
	}
}
