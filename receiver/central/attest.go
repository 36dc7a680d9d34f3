package central

import (
	"context"
	"crypto/ecdsa"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/edgeaudit/edgeaudit/attest"
	"github.com/edgeaudit/edgeaudit/internal/atomicfile"
	"github.com/edgeaudit/edgeaudit/ledger"
	"github.com/edgeaudit/edgeaudit/receiver"
)

// AttestationVersion is the "v" of a device's .attest.json.
const AttestationVersion = 1

// attestSuffix names the pins file beside <device>.pub.
const attestSuffix = ".attest.json"

// Attestation is what central keeps of a device's verified attestation bundle, at
// <devices>/<site>/<device>.attest.json (0600): the TPM's attestation and endorsement
// keys (the pins every later bundle of the device must match), the key it certified,
// and what the quote said. Its JSON is documented in docs/format.md.
type Attestation struct {
	Version int `json:"v"`
	// KeyID is the certified signing key's key_id (the enrolled <device>.pub).
	KeyID string `json:"key_id"`
	// AK and EK are the DER SubjectPublicKeyInfo of the TPM's attestation and
	// endorsement keys; AKKeyID and EKKeyID their SHA-256, as key_ids are.
	AK      []byte `json:"ak_spki"`
	EK      []byte `json:"ek_spki"`
	AKKeyID string `json:"ak_key_id"`
	EKKeyID string `json:"ek_key_id"`
	// EKCert is the DER EK certificate the bundle carried, if any (not checked).
	EKCert []byte `json:"ek_cert,omitempty"`
	// PCRDigest is the quoted SHA-256 digest over PCRs (index to hex value).
	PCRDigest string         `json:"pcr_digest"`
	PCRs      map[int]string `json:"pcrs"`
	// ResetCount and RestartCount are the TPM's boot counters at the quote.
	ResetCount   uint32 `json:"reset_count"`
	RestartCount uint32 `json:"restart_count"`
	// Nonce is the hex nonce the bundle answered; the next one must differ.
	Nonce string `json:"nonce"`
	// Verified is when central verified the bundle (central's clock: the TPM's
	// quote carries no calendar time).
	Verified time.Time `json:"verified"`
}

func attestPath(dir, site, device string) (string, error) {
	p, err := keyPath(dir, site, device)
	if err != nil {
		return "", err
	}
	return strings.TrimSuffix(p, ".pub") + attestSuffix, nil
}

// ReadAttestation reads the pins of site/device; nil, nil when the device has none (it
// is not enrolled, or enrolled by a plain public key).
func ReadAttestation(dir, site, device string) (*Attestation, error) {
	p, err := attestPath(dir, site, device)
	if err != nil {
		return nil, err
	}
	b, err := os.ReadFile(p)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read attestation: %w", err)
	}
	var a Attestation
	if err := json.Unmarshal(b, &a); err != nil {
		return nil, fmt.Errorf("read attestation %s: %w", p, err)
	}
	if a.Version != AttestationVersion {
		return nil, fmt.Errorf("read attestation %s: version %d, want %d", p, a.Version, AttestationVersion)
	}
	return &a, nil
}

// pins parses the AK and EK of a; a pins file that does not parse is an error, never
// "no pins", so a damaged file cannot unpin a device.
func (a *Attestation) pins() (attest.Pins, error) {
	var p attest.Pins
	for _, k := range []struct {
		der []byte
		dst **ecdsa.PublicKey
		n   string
	}{{a.AK, &p.AK, "ak"}, {a.EK, &p.EK, "ek"}} {
		pub, err := x509.ParsePKIXPublicKey(k.der)
		if err != nil {
			return p, fmt.Errorf("pinned %s: %w", k.n, err)
		}
		ek, ok := pub.(*ecdsa.PublicKey)
		if !ok {
			return p, fmt.Errorf("pinned %s: not an ECDSA key", k.n)
		}
		*k.dst = ek
	}
	return p, nil
}

// AttestedEnrolment is the outcome of EnrolAttested.
type AttestedEnrolment struct {
	Enrolment
	Attestation Attestation
	// Pinned is true when the device had pins already and the bundle matched them.
	Pinned bool
}

// EnrolAttested verifies bundle b against the nonce central issued and enrols the
// signing key it certifies for site/device, with the TPM's AK and EK kept beside it as
// <device>.attest.json. When the device has pins, b must come from the same TPM
// (attest.VerifyBundlePinned). expected, when not nil, is the key the operator was
// given (the appliance's signing.pub): the bundle must certify that key. The key rules
// are Enrol's: another key already enrolled is replaced only with replace. Nothing is
// written when any check fails; bundle failures wrap attest.ErrBundle.
func EnrolAttested(dir, site, device string, b *attest.Bundle, nonce []byte, expected *ecdsa.PublicKey, replace bool) (AttestedEnrolment, error) {
	fail := func(err error) (AttestedEnrolment, error) {
		return AttestedEnrolment{}, fmt.Errorf("enrol %s/%s attested: %w", site, device, err)
	}
	apath, err := attestPath(dir, site, device)
	if err != nil {
		return fail(err)
	}
	old, err := ReadAttestation(dir, site, device)
	if err != nil {
		return fail(err)
	}
	var pins attest.Pins
	if old != nil {
		if pins, err = old.pins(); err != nil {
			return fail(err)
		}
		if strings.EqualFold(old.Nonce, hex.EncodeToString(nonce)) {
			return fail(fmt.Errorf("%w (issue a new one: edgeaudit devices nonce)", ErrNonceReused))
		}
	}
	v, err := attest.VerifyBundlePinned(b, nonce, expected, pins)
	if err != nil {
		return fail(err)
	}
	// Enrol's conflict rule, checked before anything is written.
	if cur, err := (receiver.FolderKeys{Dir: dir}).Key(context.Background(), site, device); err == nil && !replace {
		if ckid, _ := ledger.KeyID(cur); ckid != v.KeyID {
			return AttestedEnrolment{Enrolment: Enrolment{KeyID: v.KeyID, Previous: ckid}},
				fmt.Errorf("enrol %s/%s: %w (key_id %s, the bundle certifies %s)", site, device, ErrKeyExists, ckid, v.KeyID)
		}
	}
	a := Attestation{Version: AttestationVersion, KeyID: v.KeyID, EKCert: b.EKCert, PCRDigest: hex.EncodeToString(v.PCRDigest),
		PCRs: make(map[int]string, len(v.PCRs)), ResetCount: v.ResetCount, RestartCount: v.RestartCount,
		Nonce: hex.EncodeToString(nonce), Verified: time.Now().UTC().Truncate(time.Second)}
	for i, p := range v.PCRs {
		a.PCRs[i] = hex.EncodeToString(p)
	}
	if a.AK, err = x509.MarshalPKIXPublicKey(v.AK); err != nil {
		return fail(err)
	}
	if a.EK, err = x509.MarshalPKIXPublicKey(v.EK); err != nil {
		return fail(err)
	}
	if a.AKKeyID, err = ledger.KeyID(v.AK); err != nil {
		return fail(err)
	}
	if a.EKKeyID, err = ledger.KeyID(v.EK); err != nil {
		return fail(err)
	}
	data, err := json.MarshalIndent(a, "", "  ")
	if err != nil {
		return fail(err)
	}
	// The pins go first: a key enrolled without them would let another TPM's bundle
	// in later. When the key is then refused, the previous pins are put back.
	prev, perr := os.ReadFile(apath)
	if err := os.MkdirAll(filepath.Dir(apath), 0o700); err != nil {
		return fail(err)
	}
	if err := atomicfile.WriteFile(apath, append(data, '\n'), 0o600); err != nil {
		return fail(err)
	}
	res, err := Enrol(dir, site, device, v.SigningKey, replace)
	if err != nil {
		if errors.Is(perr, os.ErrNotExist) {
			err = errors.Join(err, os.Remove(apath))
		} else if perr == nil {
			err = errors.Join(err, atomicfile.WriteFile(apath, prev, 0o600))
		}
		return AttestedEnrolment{Enrolment: res}, err
	}
	return AttestedEnrolment{Enrolment: res, Attestation: a, Pinned: old != nil}, nil
}

// removeAttestation deletes the pins of site/device, if any: a removed device may be
// enrolled again from another TPM (a replaced mainboard), as the operator decided.
func removeAttestation(dir, site, device string) error {
	p, err := attestPath(dir, site, device)
	if err != nil {
		return err
	}
	if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return nil
}
