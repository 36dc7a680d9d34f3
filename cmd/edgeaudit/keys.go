package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"log/slog"
	"os"

	"github.com/edgeaudit/edgeaudit/daemon"
)

// KeysCommand manages the appliance's keys.
type KeysCommand struct{}

// Run implements the command.
func (c *KeysCommand) Run(ctx context.Context, args []string) error {
	if len(args) == 0 {
		c.Usage()
		return &usageError{"keys: need a subcommand: show, rotate or recover"}
	}
	fs := flag.NewFlagSet("edgeaudit keys "+args[0], flag.ContinueOnError)
	configPath := fs.String("config", "", "config file")
	dataDir := fs.String("data", "", "data folder (overrides data_dir)")
	reason := fs.String("reason", "", "recover: why the key is replaced (recorded in the chain)")
	dataKey := fs.Bool("data-key", false, "recover: seal a new data key after its PCR policy failed (the signing key stays)")
	asJSON := fs.Bool("json", false, "print the result as JSON")
	fs.Usage = c.Usage
	if err := fs.Parse(args[1:]); err != nil {
		return err
	}
	if fs.NArg() != 0 {
		return &usageError{"keys: unexpected arguments"}
	}
	cfg, err := applianceConfig(*configPath, *dataDir)
	if err != nil {
		return err
	}
	out := func(v any, text string) error {
		if *asJSON {
			return json.NewEncoder(os.Stdout).Encode(v)
		}
		fmt.Print(text)
		return nil
	}
	switch args[0] {
	case "show":
		keys, err := daemon.OpenKeys(&cfg, slog.New(slog.DiscardHandler))
		if err != nil {
			return fmt.Errorf("keys show: %w", err)
		}
		defer keys.Close()
		v := map[string]string{"key_id": keys.Signer.KeyID(), "signer": keys.Signer.Kind(), "public_key": cfg.PublicKeyPath(),
			"software_key_why": keys.Fallback}
		return out(v, fmt.Sprintf("key_id %s\nsigner %s\npublic key %s\n", v["key_id"], v["signer"], v["public_key"]))
	case "rotate":
		if *reason == "" {
			return &usageError{"keys rotate: -reason is required; it is recorded in the chain"}
		}
		res, err := daemon.RotateKeys(ctx, &cfg, *reason, whoami(), slog.New(slog.DiscardHandler))
		if err != nil {
			return err
		}
		return out(res, fmt.Sprintf("new %s key %s replaces %s; the old key signed the rotation (event %s); verify and central follow it\n",
			res.Signer, res.NewKeyID, res.OldKeyID, res.EventID))
	case "recover":
		if *reason == "" {
			return &usageError{"keys recover: -reason is required; it is recorded in the chain"}
		}
		if *dataKey {
			res, err := daemon.RecoverDataKey(ctx, &cfg, *reason, whoami())
			if err != nil {
				return err
			}
			return out(res, fmt.Sprintf("new data key sealed to the current PCRs; patient tokens start over from event %s (%s)\n",
				res.EventID, daemon.ActionDataKeyReplaced))
		}
		res, err := daemon.RecoverKeys(ctx, &cfg, *reason, whoami(), slog.New(slog.DiscardHandler))
		if err != nil {
			return err
		}
		text := fmt.Sprintf("new %s key %s replaces %s after seq %d; recorded as %s (event %s)\n",
			res.Signer, res.NewKeyID, res.OldKeyID, res.LastGoodSeq, daemon.ActionKeyReplaced, res.EventID)
		text += fmt.Sprintf("give central the new %s: edgeaudit devices add -replace -site %s -device %s signing.pub\n", cfg.PublicKeyPath(), cfg.Site, cfg.Device)
		if res.NewDataKey {
			text += "the data key was lost too: patient tokens change from here (recorded)\n"
		}
		return out(res, text)
	default:
		c.Usage()
		return &usageError{fmt.Sprintf("keys: unknown subcommand %q", args[0])}
	}
}

// Usage prints the man page.
func (c *KeysCommand) Usage() {
	fmt.Fprint(os.Stderr, `The keys command shows or recovers the appliance's signing key.

Usage:

	edgeaudit keys show    [-config FILE] [-data DIR] [-json]
	edgeaudit keys rotate  [-config FILE] [-data DIR] [-json] -reason TEXT
	edgeaudit keys recover [-config FILE] [-data DIR] [-json] [-data-key] -reason TEXT

show prints the key that signs the chain: its key_id, whether it is a TPM or a software
key (and, under keys.tpm: auto, why software), and the public key file.

rotate replaces a working signing key by a new one of the same kind (in the TPM for a
TPM key, keeping the data key, so patient tokens stay): the old key signs an
audit.key_rotated event that names the new one, then the new key signs from the next
batch on and the old one is retired (a TPM key folder is kept as keys/tpm-retired-<id>,
a software key is destroyed). edgeaudit verify follows the rotation with only the old
key trusted, and refuses batches the old key signs after it; central enrols the new key
when it stores the rotation batch. A rotation interrupted by a crash is completed at the
next start if the chain holds it, and discarded if not. Run it with the daemon stopped.

recover is for a signing key that is lost while its chain exists: the key file deleted,
the TPM cleared or replaced. The daemon refuses to start then, because a new key made
silently would replace the trust anchor of every older batch. recover makes a new key
(in the TPM when keys.tpm says so, the lost TPM blobs moved aside) and writes the break
into the chain: the first event the new key signs is audit.key_replaced, naming the last
seq the old key signed, both key IDs, who ran the command (the login name) and -reason.
The chain continues from there. keys/signing.pub becomes the new key; the old public
key is kept as keys/signing-<key id>.pub, which verify -data trusts too. Central refuses
the new key's batches until it is enrolled: edgeaudit devices add -replace.

It refuses when the key loads (nothing is lost) or when the keys fail for another reason
(a TPM that does not answer is not a lost key). Run it with the daemon stopped.

recover -data-key is for a data key sealed to PCRs (keys.pcrs) whose values changed for
good, a firmware or boot loader update: the TPM then refuses it and the daemon does not
start. If the old boot state can come back, boot it instead. Otherwise this seals a new
data key to the current PCR values and records audit.data_key_replaced: patient tokens
made from then on differ from the earlier ones, and the chain says from where. The
signing key is untouched.

Exit status: 0 recovered; 1 refused or failed; 2 usage.
`)
}
