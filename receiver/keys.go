package receiver

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/edgeaudit/edgeaudit/internal/atomicfile"
	"github.com/edgeaudit/edgeaudit/ledger"
)

// DeviceKeys finds the public key enrolled for a device.
type DeviceKeys interface {
	// Key returns the enrolled key of site/device. It returns an error wrapping
	// ErrUnknownDevice when none is enrolled; any other error is an I/O failure that
	// the caller may retry. It is called once per batch and must be safe for concurrent
	// use.
	Key(ctx context.Context, site, device string) (*ecdsa.PublicKey, error)
}

// FolderKeys holds one PEM public key per device at <Dir>/<site>/<device>.pub (the
// appliance's keys/signing.pub, copied at enrolment). Files are read on every call, so
// an enrolment or removal takes effect at the next batch.
type FolderKeys struct{ Dir string }

// Key implements DeviceKeys. A file with more than one key, or a key that is not
// ECDSA P-256, is an error naming the file (a misconfiguration, not an unknown device).
func (f FolderKeys) Key(_ context.Context, site, device string) (*ecdsa.PublicKey, error) {
	if !ledger.ValidName(site) || !ledger.ValidName(device) {
		return nil, fmt.Errorf("device key %q/%q: %w", site, device, ErrUnknownDevice)
	}
	path := filepath.Join(f.Dir, site, device+".pub")
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("device key %s: %w", path, ErrUnknownDevice)
	}
	if err != nil {
		return nil, fmt.Errorf("device key: %w", err)
	}
	k, err := parsePublicPEM(b)
	if err != nil {
		return nil, fmt.Errorf("device key %s: %w", path, err)
	}
	return k, nil
}

// parsePublicPEM parses exactly one "PUBLIC KEY" block holding an ECDSA P-256 key.
func parsePublicPEM(b []byte) (*ecdsa.PublicKey, error) {
	blk, rest := pem.Decode(b)
	if blk == nil || blk.Type != "PUBLIC KEY" {
		return nil, errors.New("no PUBLIC KEY PEM block")
	}
	if next, _ := pem.Decode(rest); next != nil {
		return nil, errors.New("more than one PEM block")
	}
	k, err := x509.ParsePKIXPublicKey(blk.Bytes)
	if err != nil {
		return nil, err
	}
	ek, ok := k.(*ecdsa.PublicKey)
	if !ok || ek.Curve != elliptic.P256() {
		return nil, errors.New("not an ECDSA P-256 public key")
	}
	return ek, nil
}

// Rotate implements KeyRotator: next becomes <Dir>/<site>/<device>.pub (written
// atomically); the key it replaces is kept as <device>.pub.<its key id's first 16
// digits>, for the stored batches it signed.
func (f FolderKeys) Rotate(_ context.Context, site, device string, next *ecdsa.PublicKey) error {
	if !ledger.ValidName(site) || !ledger.ValidName(device) {
		return fmt.Errorf("rotate device key %q/%q: bad name", site, device)
	}
	path := filepath.Join(f.Dir, site, device+".pub")
	if old, err := os.ReadFile(path); err == nil {
		if k, err := parsePublicPEM(old); err == nil {
			kid, _ := ledger.KeyID(k)
			if err := atomicfile.WriteFile(path+"."+kid[:16], old, 0o600); err != nil {
				return fmt.Errorf("rotate device key: %w", err)
			}
		}
	}
	der, err := x509.MarshalPKIXPublicKey(next)
	if err != nil {
		return fmt.Errorf("rotate device key: %w", err)
	}
	if err := atomicfile.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}), 0o600); err != nil {
		return fmt.Errorf("rotate device key: %w", err)
	}
	return nil
}
