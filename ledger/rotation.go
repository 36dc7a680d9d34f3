package ledger

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
)

// ActionKeyRotated is the self-audit action of a key rotation (`edgeaudit keys rotate`):
// an event in a batch signed by the old key that names the new one. From the next batch
// on, the new key signs and the old one is retired. The event's detail holds
// new_key_id (KeyID of the new key) and new_public_key (its PEM).
const ActionKeyRotated = "audit.key_rotated"

// rotationMarker is how a rotation event starts to look in an event's JSON; only events
// holding it are decoded. A syslog message that quotes it has its quotes escaped, so it
// never matches, and the decoded event must be the appliance's own (source kind self).
var rotationMarker = []byte(`"action":"` + ActionKeyRotated + `"`)

// rotationTail is a part of rotationMarker that is rare in events, checked first.
var rotationTail = []byte(`key_rotated"`)

// ErrRotation is wrapped by a rotation event that does not name a usable key.
var ErrRotation = errors.New("bad key rotation event")

// FindRotation returns the new key a batch's events rotate to, or nil when none does.
// A rotation event that names a key badly is an error: a verifier must not skip it.
func FindRotation(events [][]byte) (*ecdsa.PublicKey, error) {
	var found *ecdsa.PublicKey
	for _, e := range events {
		// rotationTail first: a needle that starts with '"' falls back to a slow
		// search in JSON, where quotes are everywhere; "key_rotated" is rare.
		if !bytes.Contains(e, rotationTail) || !bytes.Contains(e, rotationMarker) {
			continue
		}
		var ev struct {
			Action string `json:"action"`
			Source struct {
				Kind string `json:"kind"`
			} `json:"source"`
			Detail map[string]string `json:"detail"`
		}
		if err := json.Unmarshal(e, &ev); err != nil || ev.Action != ActionKeyRotated || ev.Source.Kind != "self" {
			continue
		}
		blk, _ := pem.Decode([]byte(ev.Detail["new_public_key"]))
		if blk == nil || blk.Type != "PUBLIC KEY" {
			return nil, fmt.Errorf("%w: no PEM public key", ErrRotation)
		}
		k, err := x509.ParsePKIXPublicKey(blk.Bytes)
		if err != nil {
			return nil, fmt.Errorf("%w: %v", ErrRotation, err)
		}
		ek, ok := k.(*ecdsa.PublicKey)
		if !ok || ek.Curve != elliptic.P256() {
			return nil, fmt.Errorf("%w: not an ECDSA P-256 key", ErrRotation)
		}
		id, err := KeyID(ek)
		if err != nil || id != ev.Detail["new_key_id"] {
			return nil, fmt.Errorf("%w: new_key_id %q is not the key's id %s", ErrRotation, ev.Detail["new_key_id"], id)
		}
		if found != nil {
			return nil, fmt.Errorf("%w: two rotations in one batch", ErrRotation)
		}
		found = ek
	}
	return found, nil
}
