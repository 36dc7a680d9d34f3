package daemon

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"os"
	"path/filepath"
	"strings"

	"go.yaml.in/yaml/v3"

	"github.com/edgeaudit/edgeaudit/audit"
	"github.com/edgeaudit/edgeaudit/internal/atomicfile"
)

// Self-audit actions of a start, after audit.start.
const (
	ActionConfigChanged = "audit.config_changed"
	ActionKeyCreated    = "audit.key_created"
	ActionTPMFallback   = "audit.tpm_fallback"
)

// configHashFile keeps the hash of the config the last start ran with, to tell a changed
// config at the next start.
const configHashFile = "config.sha256"

// configHash is the SHA-256 of the effective config (defaults applied) as YAML: a new
// comment or reordered keys do not change it, a changed value does. Secrets in it (the
// uplink password) are hashed, never stored or shown.
func configHash(c *Config) string {
	cc := *c
	// central's section is not the appliance's, and as a yaml.Node it carries line numbers.
	cc.Receive = yaml.Node{}
	b, err := yaml.Marshal(&cc)
	if err != nil {
		return "unknown: " + err.Error()
	}
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}

// recordStartFacts writes what the start did besides starting: keys it created, a TPM
// it fell back from, and a config that differs from the previous run's. Each is an
// event, so that the chain, not only the log, says when the trust anchor or the
// configuration changed.
func (d *Daemon) recordStartFacts(ctx context.Context, self *selfAudit, keys *Keyring, signer Signer) {
	cfg := &d.cfg
	for _, k := range keys.Created {
		e := self.event(ActionKeyCreated, audit.OutcomeSuccess, "")
		e.Detail = map[string]string{"key": k, "signer": signer.Kind()}
		if k == "signing" {
			e.Detail["key_id"] = signer.KeyID()
		}
		d.recordOrLog(ctx, self, e)
	}
	if keys.Fallback != "" {
		e := self.event(ActionTPMFallback, audit.OutcomeMinorFailure, keys.Fallback)
		e.Detail = map[string]string{"keys.tpm": cfg.Keys.TPM, "tpm_device": cfg.Keys.TPMDevice}
		d.recordOrLog(ctx, self, e)
	}
	hash := configHash(cfg)
	path := filepath.Join(cfg.DataDir, configHashFile)
	prev, err := os.ReadFile(path)
	switch {
	case err == nil && strings.TrimSpace(string(prev)) != hash:
		e := self.event(ActionConfigChanged, audit.OutcomeSuccess, "the config differs from the previous start's")
		e.Detail = map[string]string{"previous_sha256": strings.TrimSpace(string(prev)), "config_sha256": hash}
		d.recordOrLog(ctx, self, e)
	case err != nil && !errors.Is(err, os.ErrNotExist):
		d.log.Warn("read the previous config hash", "path", path, "err", err)
	}
	if err := atomicfile.WriteFile(path, []byte(hash+"\n"), 0o600); err != nil {
		d.log.Warn("keep the config hash", "path", path, "err", err)
	}
}

func (d *Daemon) recordOrLog(ctx context.Context, self *selfAudit, e audit.Event) {
	if err := self.record(ctx, e); err != nil {
		d.log.Error("record "+e.Action, "err", err)
	}
}
