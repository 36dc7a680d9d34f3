package daemon

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"

	"github.com/google/go-tpm/tpm2/transport"

	"github.com/edgeaudit/edgeaudit/attest"
	"github.com/edgeaudit/edgeaudit/internal/configerr"
	"github.com/edgeaudit/edgeaudit/ledger"
	"github.com/edgeaudit/edgeaudit/spool"
)

// TPM modes of `keys.tpm`.
const (
	TPMAuto    = "auto"    // a TPM when one answers, else software keys (health says so)
	TPMRequire = "require" // refuse to start without one
	TPMOff     = "off"     // software keys
)

// DefaultTPMDevice is the kernel's TPM resource manager.
const DefaultTPMDevice = "/dev/tpmrm0"

// KeysConfig is the `keys:` section.
type KeysConfig struct {
	// TPM is auto, require or off (default auto).
	TPM string `yaml:"tpm"`
	// TPMDevice is /dev/tpmrm0, tcp://host:port (swtpm), unix:///path (swtpm) or tbs
	// (Windows) (default /dev/tpmrm0).
	TPMDevice string `yaml:"tpm_device"`
	// PCRs, when set, bind the sealed data key to these SHA-256 PCRs' values at creation:
	// a changed boot chain makes the unseal fail.
	PCRs []int `yaml:"pcrs"`
}

func (k *KeysConfig) setDefaults() {
	if k.TPM == "" {
		k.TPM = TPMAuto
	}
	if k.TPMDevice == "" {
		k.TPMDevice = DefaultTPMDevice
	}
}

// Validate checks the section after setDefaults; every problem is reported.
func (k *KeysConfig) Validate() error {
	var errs []error
	switch k.TPM {
	case TPMAuto, TPMRequire, TPMOff:
	default:
		errs = append(errs, &configerr.Error{Field: "keys.tpm", Value: k.TPM, Err: errors.New("must be auto, require or off")})
	}
	for i, p := range k.PCRs {
		if p < 0 || p > 23 {
			errs = append(errs, &configerr.Error{Field: fmt.Sprintf("keys.pcrs[%d]", i), Value: fmt.Sprint(p), Err: errors.New("PCR indices are 0..23")})
		}
	}
	return errors.Join(errs...)
}

// TPMKeyDir holds the TPM key blobs.
func (c *Config) TPMKeyDir() string { return filepath.Join(c.DataDir, "keys", "tpm") }

// Signer is what signs the chain: the spool's Signer and its kind for health.
type Signer interface {
	spool.Signer
	Kind() string // "software" or "tpm"
}

// Keyring is the appliance's keys: the batch signer and the data key of the tokens.
type Keyring struct {
	Signer  Signer
	DataKey []byte
	// Fallback says why software keys are used under keys.tpm: auto ("" otherwise).
	Fallback string
	// Created names the keys this open made ("signing", "data"), for the chain.
	Created []string
	closer  io.Closer
	tpm     transport.TPM // the open TPM, for a rotation to make the next key in it
}

// Close releases the TPM connection, if any.
func (k *Keyring) Close() error {
	if k.closer == nil {
		return nil
	}
	return k.closer.Close()
}

// ErrSigningKeyMissing: the signing key is gone while a chain signed by it exists. The
// daemon never makes a new key then: that would silently replace the trust anchor of
// every older batch.
var ErrSigningKeyMissing = errors.New("signing key missing")

// ErrDataKeyMissing: the software data key is gone while a chain that used it exists.
var ErrDataKeyMissing = errors.New("data key missing")

// ErrDataKeyPolicy: the TPM refuses to unseal the data key because the PCRs it is bound
// to changed.
var ErrDataKeyPolicy = errors.New("data key policy no longer satisfied")

// chainExists reports whether the data folder holds a spool (a chain someone's key
// signed).
func chainExists(cfg *Config) bool {
	for _, p := range []string{cfg.SpoolPath(), cfg.SpoolPath() + ".head"} {
		if fi, err := os.Stat(p); err == nil && fi.Size() > 0 {
			return true
		}
	}
	return false
}

// OpenKeys loads (or, on a fresh data folder, creates) the keys as keys.tpm says. It
// never replaces a key a chain depends on: a missing key with a chain is
// ErrSigningKeyMissing, TPM keys without a TPM are an error even under auto, and a chain
// signed by a software key stays software until a rotation.
func OpenKeys(cfg *Config, log *slog.Logger) (*Keyring, error) {
	return openKeys(cfg, log, false)
}

// openKeys is OpenKeys; recovering lets it make new keys although a chain exists (the
// break is then recorded by RecoverKeys).
func openKeys(cfg *Config, log *slog.Logger, recovering bool) (*Keyring, error) {
	if err := finishRotation(cfg, log); err != nil {
		return nil, fmt.Errorf("open keys: %w", err)
	}
	k := cfg.Keys
	k.setDefaults()
	tpmDir := cfg.TPMKeyDir()
	hasTPM, err := attest.HasTPMKeys(tpmDir)
	if err != nil {
		return nil, fmt.Errorf("open keys: %w", err)
	}
	_, serr := os.Stat(cfg.KeyPath())
	hasSoft := serr == nil
	switch {
	case k.TPM == TPMOff && hasTPM:
		return nil, fmt.Errorf("open keys: keys.tpm is off, but this appliance's chain is signed by TPM keys (%s); set keys.tpm: auto or require", tpmDir)
	case k.TPM == TPMOff:
		return softwareKeys(cfg, log, "", recovering)
	case hasSoft && !hasTPM:
		// The chain is the software key's; a TPM key would start signing it unannounced.
		if k.TPM == TPMRequire {
			return nil, fmt.Errorf("open keys: keys.tpm is require, but this appliance's chain is signed by a software key (%s); moving it to the TPM needs a key rotation", cfg.KeyPath())
		}
		return softwareKeys(cfg, log, "the chain is signed by a software key (keys/signing.key); moving it to a TPM needs a key rotation", recovering)
	}
	tp, err := attest.OpenTPM(k.TPMDevice)
	if errors.Is(err, attest.ErrNoTPM) && k.TPM == TPMAuto && !hasTPM {
		return softwareKeys(cfg, log, fmt.Sprintf("no TPM at %s (%v)", k.TPMDevice, err), recovering)
	}
	if err != nil {
		if hasTPM {
			return nil, fmt.Errorf("open keys: this appliance's keys are in a TPM (%s) that does not answer at keys.tpm_device %s: %w", tpmDir, k.TPMDevice, err)
		}
		return nil, fmt.Errorf("open keys: keys.tpm_device %s: %w", k.TPMDevice, err)
	}
	if !hasTPM && chainExists(cfg) && !recovering {
		tp.Close()
		return nil, fmt.Errorf("open keys: %w: a chain exists in %s but neither a software key nor TPM keys (%s); restore the keys from backup, or run `edgeaudit keys recover` to start a new key with the break recorded",
			ErrSigningKeyMissing, cfg.DataDir, tpmDir)
	}
	opts := attest.TPMOptions{PCRs: slices.Clone(k.PCRs)}
	migrate := false
	if !hasTPM {
		// Patient tokens must stay the same: a software data key moves into the seal.
		if b, err := os.ReadFile(cfg.DataKeyPath()); err == nil {
			opts.DataKey, migrate = b, true
		}
	}
	s, created, err := attest.LoadOrCreateTPMSigner(tp, tpmDir, opts)
	if err != nil {
		tp.Close()
		return nil, fmt.Errorf("open keys: %w", err)
	}
	dk, err := s.UnsealDataKey()
	if errors.Is(err, attest.ErrPolicy) && !recovering {
		tp.Close()
		return nil, fmt.Errorf("open keys: %w: the data key is sealed to PCRs %v whose values changed (a firmware or boot update?); boot the state it was sealed in, or run `edgeaudit keys recover -data-key -reason TEXT` to seal a new one (patient tokens then start over, and the chain records it)",
			ErrDataKeyPolicy, s.PCRs())
	}
	if err != nil {
		tp.Close()
		return nil, fmt.Errorf("open keys: unseal the data key: %w", err)
	}
	if created {
		log.Info("created TPM keys", "key_id", s.KeyID(), "dir", tpmDir, "device", k.TPMDevice, "pcrs", k.PCRs)
	}
	if migrate {
		// Sealed now; the file in clear is what the TPM is there to avoid.
		if err := os.Remove(cfg.DataKeyPath()); err != nil {
			log.Error("remove the software data key after sealing it to the TPM", "err", err)
		}
	}
	kr := &Keyring{Signer: s, DataKey: dk, closer: tp, tpm: tp}
	if created {
		kr.Created = []string{"signing", "data"}
	}
	return kr, nil
}

// OpenDataKey returns the data key of a stopped daemon's data folder for tools that only
// read (export, verify -data): keys/data.key when it is there, else the TPM seal through
// OpenKeys (one connection, closed before it returns). It never needs the signing key, so
// a chain whose signing key is lost still exports and verifies; and it never makes a key.
func OpenDataKey(cfg *Config, log *slog.Logger) ([]byte, error) {
	b, err := os.ReadFile(cfg.DataKeyPath())
	switch {
	case err == nil && len(b) == attest.DataKeySize:
		return b, nil
	case err == nil:
		return nil, fmt.Errorf("open data key %s: %d bytes, want %d", cfg.DataKeyPath(), len(b), attest.DataKeySize)
	case !errors.Is(err, os.ErrNotExist):
		return nil, fmt.Errorf("open data key: %w", err)
	}
	if has, herr := attest.HasTPMKeys(cfg.TPMKeyDir()); herr != nil || !has {
		return nil, fmt.Errorf("open data key: neither %s nor TPM keys in %s", cfg.DataKeyPath(), cfg.TPMKeyDir())
	}
	keys, err := OpenKeys(cfg, log)
	if err != nil {
		return nil, err
	}
	dk := keys.DataKey
	if err := keys.Close(); err != nil {
		return nil, fmt.Errorf("close keys: %w", err)
	}
	return dk, nil
}

// softwareKeys loads or creates the software keys; a missing signing key with a chain
// is ErrSigningKeyMissing.
func softwareKeys(cfg *Config, log *slog.Logger, fallback string, recovering bool) (*Keyring, error) {
	if _, err := os.Stat(cfg.KeyPath()); errors.Is(err, os.ErrNotExist) && chainExists(cfg) && !recovering {
		return nil, fmt.Errorf("open keys: %w: %s is gone, but the spool in %s holds a chain it signed; restore the key from backup, or run `edgeaudit keys recover -reason TEXT` to start a new key with the break recorded in the chain",
			ErrSigningKeyMissing, cfg.KeyPath(), cfg.DataDir)
	}
	if _, err := os.Stat(cfg.DataKeyPath()); errors.Is(err, os.ErrNotExist) && chainExists(cfg) && !recovering {
		// A new one would change every patient token from here and lock the events
		// encrypted at rest under the old one.
		return nil, fmt.Errorf("open keys: %w: %s is gone, but the spool in %s holds a chain that used it; restore it from backup, or run `edgeaudit keys recover -reason TEXT` (new keys, the break recorded, the unreadable spool kept aside)",
			ErrDataKeyMissing, cfg.DataKeyPath(), cfg.DataDir)
	}
	s, created, err := attest.LoadOrCreateSoftware(cfg.KeyPath())
	if err != nil {
		return nil, err
	}
	if created {
		log.Info("created software signing key", "key_id", s.KeyID(), "path", cfg.KeyPath(), "why", fallback)
	}
	dk, dkCreated, err := attest.LoadOrCreateDataKey(cfg.DataKeyPath())
	if err != nil {
		return nil, err
	}
	if dkCreated {
		log.Info("created data key for patient tokens (software key)", "path", cfg.DataKeyPath())
	}
	kr := &Keyring{Signer: s, DataKey: dk, Fallback: fallback}
	if created {
		kr.Created = append(kr.Created, "signing")
	}
	if dkCreated {
		kr.Created = append(kr.Created, "data")
	}
	return kr, nil
}

// writePublicKey writes keys/signing.pub, the trust anchor `edgeaudit verify -data`
// and central use. A different key already there (a recovered or rotated key) is kept
// as keys/signing-<its key_id's first 16 digits>.pub, never overwritten: the older
// batches verify only with it.
func writePublicKey(cfg *Config, s Signer) error {
	path := cfg.PublicKeyPath()
	if old, err := attest.ReadPublicPEM(path); err == nil && len(old) == 1 {
		kid, err := ledger.KeyID(old[0])
		if err == nil && kid != s.KeyID() {
			keep := filepath.Join(filepath.Dir(path), "signing-"+kid[:16]+".pub")
			if err := attest.WritePublicPEM(keep, old[0]); err != nil {
				return fmt.Errorf("keep the previous public key: %w", err)
			}
		}
	}
	return attest.WritePublicPEM(path, s.Public())
}
