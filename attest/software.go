// Package attest holds the signers that seal batches, a software ECDSA P-256 key or a
// key bound to a TPM 2.0 behind the same methods, the data key (in a file, or sealed to
// the TPM), and TPM attestation bundles and their verification.
package attest

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/edgeaudit/edgeaudit/internal/atomicfile"
	"github.com/edgeaudit/edgeaudit/ledger"
)

// SoftwareSigner signs with an ECDSA P-256 key kept in a PEM file (mode 0600).
type SoftwareSigner struct {
	key   *ecdsa.PrivateKey
	keyID string
}

// LoadOrCreateSoftware loads the key at path, or creates it (and its folder, 0700) when
// the file does not exist. A file that exists but cannot be parsed is an error: a silently
// replaced key would fork the chain's trust.
func LoadOrCreateSoftware(path string) (*SoftwareSigner, bool, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		s, err := createSoftware(path)
		return s, true, err
	}
	if err != nil {
		return nil, false, fmt.Errorf("load signing key: %w", err)
	}
	s, err := ParseSoftware(b)
	if err != nil {
		return nil, false, fmt.Errorf("load signing key %s: %w", path, err)
	}
	return s, false, nil
}

func createSoftware(path string) (*SoftwareSigner, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("create signing key: %w", err)
	}
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("create signing key: %w", err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		return nil, fmt.Errorf("create signing key: %w", err)
	}
	if err := atomicfile.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600); err != nil {
		return nil, fmt.Errorf("create signing key: %w", err)
	}
	return newSoftware(k)
}

// ParseSoftware parses a PKCS#8 PEM P-256 private key.
func ParseSoftware(pemBytes []byte) (*SoftwareSigner, error) {
	blk, _ := pem.Decode(pemBytes)
	if blk == nil {
		return nil, errors.New("no PEM block")
	}
	k, err := x509.ParsePKCS8PrivateKey(blk.Bytes)
	if err != nil {
		return nil, err
	}
	ek, ok := k.(*ecdsa.PrivateKey)
	if !ok || ek.Curve != elliptic.P256() {
		return nil, errors.New("not an ECDSA P-256 key")
	}
	return newSoftware(ek)
}

func newSoftware(k *ecdsa.PrivateKey) (*SoftwareSigner, error) {
	id, err := ledger.KeyID(&k.PublicKey)
	if err != nil {
		return nil, err
	}
	return &SoftwareSigner{key: k, keyID: id}, nil
}

// Sign returns an ASN.1 DER ECDSA signature over a SHA-256 digest.
func (s *SoftwareSigner) Sign(_ context.Context, digest []byte) ([]byte, error) {
	sig, err := ecdsa.SignASN1(rand.Reader, s.key, digest)
	if err != nil {
		return nil, fmt.Errorf("sign: %w", err)
	}
	return sig, nil
}

// KeyID is the hex SHA-256 of the public key's SubjectPublicKeyInfo.
func (s *SoftwareSigner) KeyID() string { return s.keyID }

// Public returns the verifying key.
func (s *SoftwareSigner) Public() *ecdsa.PublicKey { return &s.key.PublicKey }

// Kind names the signer for health output.
func (s *SoftwareSigner) Kind() string { return "software" }

// WritePublicPEM writes the public key as a PKIX PEM file (mode 0644: it is not secret),
// the trust anchor `edgeaudit verify` and the central side use.
func WritePublicPEM(path string, pub *ecdsa.PublicKey) error {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return fmt.Errorf("write public key: %w", err)
	}
	return atomicfile.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}), 0o644)
}

// ReadPublicPEM reads the public keys (one or more PEM blocks) in a file.
func ReadPublicPEM(path string) ([]*ecdsa.PublicKey, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read public key: %w", err)
	}
	var keys []*ecdsa.PublicKey
	for {
		var blk *pem.Block
		blk, b = pem.Decode(b)
		if blk == nil {
			break
		}
		k, err := x509.ParsePKIXPublicKey(blk.Bytes)
		if err != nil {
			return nil, fmt.Errorf("read public key %s: %w", path, err)
		}
		ek, ok := k.(*ecdsa.PublicKey)
		if !ok {
			return nil, fmt.Errorf("read public key %s: not an ECDSA key", path)
		}
		keys = append(keys, ek)
	}
	if len(keys) == 0 {
		return nil, fmt.Errorf("read public key %s: no PEM PUBLIC KEY block", path)
	}
	return keys, nil
}
