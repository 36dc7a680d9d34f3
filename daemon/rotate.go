package daemon

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/edgeaudit/edgeaudit/attest"
	"github.com/edgeaudit/edgeaudit/audit"
	"github.com/edgeaudit/edgeaudit/internal/atomicfile"
	"github.com/edgeaudit/edgeaudit/ledger"
)

// A rotation stages the next key beside the current one, records the rotation in the
// chain (signed by the current key), writes a marker, and only then switches the files.
// finishRotation, at every start, completes a switch the marker announces and throws
// away a staged key the chain never heard of, so a crash at any step leaves the key the
// chain names.
func (c *Config) nextKeyPath() string    { return c.KeyPath() + ".next" }
func (c *Config) nextTPMKeyDir() string  { return c.TPMKeyDir() + "-next" }
func (c *Config) rotationMarker() string { return filepath.Join(c.DataDir, "keys", "rotation") }
func (c *Config) retiredTPMDir(kid string) string {
	return fmt.Sprintf("%s-retired-%s", c.TPMKeyDir(), kid[:16])
}

// RotateResult is what RotateKeys did.
type RotateResult struct {
	OldKeyID, NewKeyID, Signer string
	EventID                    string
}

// RotateKeys replaces the signing key by a new one of the same kind (`edgeaudit keys
// rotate`, daemon stopped): the old key signs an audit.key_rotated event naming the new
// one, which verifiers and central follow; from the next batch on the new key signs. A
// TPM rotation keeps the data key (sealed anew beside the new key), so tokens stay.
func RotateKeys(ctx context.Context, cfg *Config, reason, by string, log *slog.Logger) (RotateResult, error) {
	var res RotateResult
	if reason == "" {
		return res, errors.New("keys rotate: a reason is required; it is recorded in the chain")
	}
	if !chainExists(cfg) {
		return res, fmt.Errorf("keys rotate: no chain in %s yet: nothing signed, nothing to rotate", cfg.DataDir)
	}
	cur, err := OpenKeys(cfg, log)
	if err != nil {
		return res, fmt.Errorf("keys rotate: %w", err)
	}
	defer cur.Close()
	res.OldKeyID, res.Signer = cur.Signer.KeyID(), cur.Signer.Kind()
	var next Signer
	switch cur.Signer.Kind() {
	case "tpm":
		os.RemoveAll(cfg.nextTPMKeyDir()) // a staged key of an interrupted rotation
		k := cfg.Keys
		s, _, err := attest.LoadOrCreateTPMSigner(cur.tpm, cfg.nextTPMKeyDir(), attest.TPMOptions{PCRs: k.PCRs, DataKey: cur.DataKey})
		if err != nil {
			return res, fmt.Errorf("keys rotate: %w", err)
		}
		next = s
	default:
		os.Remove(cfg.nextKeyPath())
		s, _, err := attest.LoadOrCreateSoftware(cfg.nextKeyPath())
		if err != nil {
			return res, fmt.Errorf("keys rotate: %w", err)
		}
		next = s
	}
	res.NewKeyID = next.KeyID()
	der, err := x509.MarshalPKIXPublicKey(next.Public())
	if err != nil {
		return res, fmt.Errorf("keys rotate: %w", err)
	}
	e := selfEvent(time.Now(), ledger.ActionKeyRotated, audit.OutcomeSuccess, reason)
	e.Actor = audit.Actor{User: by, Requestor: true}
	e.Detail = map[string]string{"old_key_id": res.OldKeyID, "new_key_id": res.NewKeyID, "signer": next.Kind(),
		"new_public_key": string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}))}
	// Signed by the current key: the rotation is in the chain once this returns.
	if err := recordWith(ctx, cfg, cfg.SpoolOptions(cur), &e); err != nil {
		return res, fmt.Errorf("keys rotate: record the rotation: %w", err)
	}
	if err := atomicfile.WriteFile(cfg.rotationMarker(), []byte(res.OldKeyID+" "+res.NewKeyID+"\n"), 0o600); err != nil {
		return res, fmt.Errorf("keys rotate: %w", err)
	}
	if err := finishRotation(cfg, log); err != nil {
		return res, fmt.Errorf("keys rotate: %w", err)
	}
	if err := writePublicKey(cfg, next); err != nil {
		return res, err
	}
	res.EventID = e.ID
	return res, nil
}

// finishRotation completes or discards a rotation left halfway (see RotateKeys).
func finishRotation(cfg *Config, log *slog.Logger) error {
	marker, err := os.ReadFile(cfg.rotationMarker())
	_, serr := os.Stat(cfg.nextKeyPath())
	_, terr := os.Stat(cfg.nextTPMKeyDir())
	staged := serr == nil || terr == nil
	if errors.Is(err, os.ErrNotExist) {
		if staged {
			// The chain never named the staged key: it must never sign.
			log.Warn("discarding a key staged by a rotation that was not recorded")
			os.Remove(cfg.nextKeyPath())
			os.RemoveAll(cfg.nextTPMKeyDir())
		}
		return nil
	}
	if err != nil {
		return fmt.Errorf("finish key rotation: %w", err)
	}
	var oldID, newID string
	if _, err := fmt.Sscan(string(marker), &oldID, &newID); err != nil || len(oldID) < 16 {
		return fmt.Errorf("finish key rotation: bad marker %s", cfg.rotationMarker())
	}
	if terr == nil {
		if _, err := os.Stat(cfg.TPMKeyDir()); err == nil {
			if err := os.Rename(cfg.TPMKeyDir(), cfg.retiredTPMDir(oldID)); err != nil {
				return fmt.Errorf("finish key rotation: %w", err)
			}
		}
		if err := os.Rename(cfg.nextTPMKeyDir(), cfg.TPMKeyDir()); err != nil {
			return fmt.Errorf("finish key rotation: %w", err)
		}
	}
	if serr == nil {
		if err := os.Rename(cfg.nextKeyPath(), cfg.KeyPath()); err != nil {
			return fmt.Errorf("finish key rotation: %w", err)
		}
	}
	if err := atomicfile.SyncDir(filepath.Dir(cfg.KeyPath())); err != nil {
		return fmt.Errorf("finish key rotation: %w", err)
	}
	if err := os.Remove(cfg.rotationMarker()); err != nil {
		return fmt.Errorf("finish key rotation: %w", err)
	}
	log.Info("key rotation completed", "old_key_id", oldID, "new_key_id", newID)
	return nil
}
