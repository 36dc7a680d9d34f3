package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"time"

	"github.com/edgeaudit/edgeaudit/attest"
	"github.com/edgeaudit/edgeaudit/audit"
	"github.com/edgeaudit/edgeaudit/collectors"
	"github.com/edgeaudit/edgeaudit/ledger"
	"github.com/edgeaudit/edgeaudit/spool"
)

// ActionKeyReplaced is the first event of the chain segment a recovered key signs.
const ActionKeyReplaced = "audit.key_replaced"

// RecoverResult is what RecoverKeys did.
type RecoverResult struct {
	OldKeyID, NewKeyID string
	Signer             string // kind of the new key
	LastGoodSeq        uint64 // the head the old key signed last
	LastGoodHash       string
	NewDataKey         bool // the data key was lost too: patient tokens change from here
	EventID            string
}

// RecoverKeys is the explicit recovery of a lost signing key (`edgeaudit keys
// recover`): it makes a new key and writes the break into the chain, so that nobody
// (central included) mistakes it for the old key: the first event the new key signs,
// audit.key_replaced, names the last head the old key signed, both key IDs, who and why.
// The chain itself continues (its links and roots are intact), and keys/signing.pub
// changes, with the old public key kept beside it for verify. It refuses when the key
// loads (nothing is lost) or the failure is not a lost key (a TPM that does not answer).
func RecoverKeys(ctx context.Context, cfg *Config, reason, by string, log *slog.Logger) (RecoverResult, error) {
	var res RecoverResult
	if reason == "" {
		return res, errors.New("keys recover: a reason is required; it is recorded in the chain")
	}
	if !chainExists(cfg) {
		return res, fmt.Errorf("keys recover: no chain in %s: nothing to recover (start the daemon)", cfg.DataDir)
	}
	keys, err := openKeys(cfg, log, false)
	if err == nil {
		keys.Close()
		return res, fmt.Errorf("keys recover: the signing key loads (key_id %s): nothing to recover", keys.Signer.KeyID())
	}
	if !errors.Is(err, ErrSigningKeyMissing) && !errors.Is(err, ErrDataKeyMissing) &&
		!errors.Is(err, attest.ErrKeyMissing) && !errors.Is(err, attest.ErrKeyRejected) {
		return res, fmt.Errorf("keys recover: the keys do not load, but not because they are lost: %w", err)
	}
	// The last head the old key signed, from the spool as it is.
	// Headers only: the events may be encrypted under a data key that is lost too.
	r, err := spool.OpenReader(cfg.SpoolPath())
	if err != nil {
		return res, fmt.Errorf("keys recover: %w", err)
	}
	pos, err := r.Position()
	if err == nil && pos.HeadSeq > 0 {
		var hb []byte
		if hb, err = r.Header(pos.HeadSeq); err == nil {
			if h, perr := ledger.ParseHeader(hb); perr == nil {
				res.OldKeyID = h.KeyID
			}
		}
	}
	r.Close()
	if err != nil {
		return res, fmt.Errorf("keys recover: read the spool: %w", err)
	}
	res.LastGoodSeq, res.LastGoodHash = pos.HeadSeq, pos.HeadHash
	// TPM blobs that no longer load are kept for forensics, out of the way.
	if has, _ := attest.HasTPMKeys(cfg.TPMKeyDir()); has {
		aside := fmt.Sprintf("%s.lost-%d", cfg.TPMKeyDir(), time.Now().UnixNano())
		if err := os.Rename(cfg.TPMKeyDir(), aside); err != nil {
			return res, fmt.Errorf("keys recover: move the TPM keys aside: %w", err)
		}
	}
	_, derr := os.Stat(cfg.DataKeyPath())
	hadDataKey := derr == nil
	keys, err = openKeys(cfg, log, true)
	if err != nil {
		return res, fmt.Errorf("keys recover: %w", err)
	}
	defer keys.Close()
	res.NewKeyID, res.Signer = keys.Signer.KeyID(), keys.Signer.Kind()
	res.NewDataKey = !hadDataKey // a TPM data key went with the blobs moved aside
	if err := writePublicKey(cfg, keys.Signer); err != nil {
		return res, err
	}
	opts := cfg.SpoolOptions(keys)
	// A new data key cannot read events encrypted under the lost one: that spool is
	// quarantined (kept for the day the old key turns up) and the new chain names it.
	opts.KeyReplaced = res.NewDataKey
	e := selfEvent(time.Now(), ActionKeyReplaced, audit.OutcomeSeriousFailure, reason)
	e.Actor = audit.Actor{User: by, Requestor: true}
	e.Detail = map[string]string{"old_key_id": res.OldKeyID, "new_key_id": res.NewKeyID, "signer": res.Signer,
		"last_good_seq": fmt.Sprint(res.LastGoodSeq), "last_good_hash": res.LastGoodHash}
	if res.NewDataKey {
		e.Detail["data_key"] = "new: the old one was lost too, patient tokens change from here"
	}
	if err := recordWith(ctx, cfg, opts, &e); err != nil {
		return res, fmt.Errorf("keys recover: record the break: %w", err)
	}
	res.EventID = e.ID
	return res, nil
}

// WithSpool opens the spool of a stopped daemon with opts (cfg.SpoolOptions: the signer
// and the data key), runs fn, seals what fn recorded (so that it is in the chain now,
// not at the next start) and closes the spool.
func WithSpool(ctx context.Context, cfg *Config, opts spool.Options, fn func(*spool.Spool) error) error {
	sp, err := spool.Open(cfg.SpoolPath(), cfg.SpoolConfig(), opts)
	if err != nil {
		return err
	}
	err = fn(sp)
	if err == nil {
		err = sp.Seal(ctx)
	}
	if cerr := sp.Close(); err == nil {
		err = cerr
	}
	return err
}

// recordWith appends e to the spool of a stopped daemon, opened with opts, and seals it.
func recordWith(ctx context.Context, cfg *Config, opts spool.Options, e *audit.Event) error {
	return WithSpool(ctx, cfg, opts, func(sp *spool.Spool) error { return collectors.AppendSync(ctx, sp, e) })
}

// ActionDataKeyReplaced records a data key sealed anew after its PCR policy failed.
const ActionDataKeyReplaced = "audit.data_key_replaced"

// RecoverDataKey is `edgeaudit keys recover -data-key`: when the TPM refuses the sealed
// data key because the PCRs it is bound to changed for good, it seals a new one to the
// current PCR values (keys.pcrs) and records audit.data_key_replaced: patient tokens
// made from then on differ from the earlier ones, and the chain says from where. The
// signing key is untouched. It refuses unless the unseal fails for exactly that reason.
func RecoverDataKey(ctx context.Context, cfg *Config, reason, by string) (RecoverResult, error) {
	var res RecoverResult
	if reason == "" {
		return res, errors.New("keys recover: a reason is required; it is recorded in the chain")
	}
	k := cfg.Keys
	k.setDefaults()
	if has, _ := attest.HasTPMKeys(cfg.TPMKeyDir()); !has {
		return res, fmt.Errorf("keys recover -data-key: no TPM keys in %s: only a TPM-sealed data key can fail its policy", cfg.TPMKeyDir())
	}
	tp, err := attest.OpenTPM(k.TPMDevice)
	if err != nil {
		return res, fmt.Errorf("keys recover -data-key: %w", err)
	}
	defer tp.Close()
	s, err := attest.LoadTPMSigner(tp, cfg.TPMKeyDir(), attest.TPMOptions{})
	if err != nil {
		return res, fmt.Errorf("keys recover -data-key: %w", err)
	}
	if _, err := s.UnsealDataKey(); !errors.Is(err, attest.ErrPolicy) {
		if err == nil {
			return res, errors.New("keys recover -data-key: the data key unseals: nothing to recover")
		}
		return res, fmt.Errorf("keys recover -data-key: the data key does not unseal, but not because of its policy: %w", err)
	}
	old := s.PCRs()
	dk, err := s.ResealDataKey(k.PCRs)
	if err != nil {
		return res, fmt.Errorf("keys recover -data-key: %w", err)
	}
	res.NewKeyID, res.OldKeyID, res.Signer, res.NewDataKey = s.KeyID(), s.KeyID(), s.Kind(), true
	e := selfEvent(time.Now(), ActionDataKeyReplaced, audit.OutcomeSeriousFailure, reason)
	e.Actor = audit.Actor{User: by, Requestor: true}
	e.Detail = map[string]string{"old_pcrs": fmt.Sprint(old), "new_pcrs": fmt.Sprint(k.PCRs),
		"tokens": "patient tokens from this event on differ from the earlier ones"}
	// Events encrypted at rest under the lost data key cannot be read any more: that
	// spool is quarantined (kept for the day the old PCR state can be booted again)
	// and the new chain names it.
	opts := cfg.SpoolOptions(&Keyring{Signer: s, DataKey: dk})
	opts.KeyReplaced = true
	if err := recordWith(ctx, cfg, opts, &e); err != nil {
		return res, fmt.Errorf("keys recover -data-key: record it: %w", err)
	}
	res.EventID = e.ID
	return res, nil
}
