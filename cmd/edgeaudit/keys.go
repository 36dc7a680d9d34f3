package main

import (
	"context"
	"crypto/ecdsa"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"

	"github.com/edgeaudit/edgeaudit/attest"
	"github.com/edgeaudit/edgeaudit/daemon"
	"github.com/edgeaudit/edgeaudit/internal/atomicfile"
	"github.com/edgeaudit/edgeaudit/ledger"
)

// KeysCommand manages the appliance's keys.
type KeysCommand struct{}

// Run implements the command.
func (c *KeysCommand) Run(ctx context.Context, args []string) error {
	if len(args) > 0 && isHelp(args[0]) {
		c.Usage()
		return flag.ErrHelp
	}
	if len(args) == 0 {
		c.Usage()
		return &usageError{"keys: need a subcommand: show, rotate, recover or attest"}
	}
	fs := flag.NewFlagSet("edgeaudit keys "+args[0], flag.ContinueOnError)
	configPath := fs.String("config", "", "config file")
	dataDir := fs.String("data", "", "data folder (overrides data_dir)")
	reason := fs.String("reason", "", "recover: why the key is replaced (recorded in the chain)")
	dataKey := fs.Bool("data-key", false, "recover: seal a new data key after its PCR policy failed (the signing key stays)")
	asJSON := fs.Bool("json", false, "print the result as JSON")
	nonceHex := fs.String("nonce", "", "attest: central's nonce, hex")
	outPath := fs.String("out", "", "attest: the bundle file to write")
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
		// Never through the TPM while the daemon holds it (swtpm serves one connection,
		// and a tool must not make the first key either): the public key file says it.
		if pid := daemon.RunningPID(&cfg); pid != 0 {
			pubs, err := attest.ReadPublicPEM(cfg.PublicKeyPath())
			if err != nil || len(pubs) != 1 {
				return fmt.Errorf("keys show: the daemon runs (pid %d) and %s does not hold one key: %v", pid, cfg.PublicKeyPath(), err)
			}
			kid, err := ledger.KeyID(pubs[0])
			if err != nil {
				return err
			}
			v := map[string]string{"key_id": kid, "public_key": cfg.PublicKeyPath(), "running_pid": fmt.Sprint(pid)}
			return out(v, fmt.Sprintf("key_id %s\npublic key %s\n(the daemon runs as pid %d: /healthz names the signer)\n", kid, cfg.PublicKeyPath(), pid))
		}
		keys, err := offlineKeys(&cfg)
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
	case "attest":
		return c.attest(ctx, &cfg, *nonceHex, *outPath, out)
	default:
		c.Usage()
		return &usageError{fmt.Sprintf("keys: unknown subcommand %q", args[0])}
	}
}

// Usage prints the man page.
func (c *KeysCommand) Usage() {
	fmt.Fprint(os.Stderr, `The keys command shows, rotates, recovers or attests the appliance's signing key.

Usage:

	edgeaudit keys show    [-config FILE] [-data DIR] [-json]
	edgeaudit keys rotate  [-config FILE] [-data DIR] [-json] -reason TEXT
	edgeaudit keys recover [-config FILE] [-data DIR] [-json] [-data-key] -reason TEXT
	edgeaudit keys attest  [-config FILE] [-data DIR] [-json] -nonce HEX -out FILE

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
signing key is untouched. Events encrypted at rest under the lost data key
(spool.encrypt, the default) cannot be read any more: that spool is kept aside as
spool.db.quarantine-<time>, for the day the old boot state can be booted again, and the
chain starts anew, naming it; what it held that central had not acknowledged is not
sent. The same holds for recover of a TPM whose blobs are lost (the data key was sealed
beside them).

attest writes the attestation bundle that lets central enrol the signing key as one
that lives in this appliance's TPM (docs/central.md, "Attested enrolment"): the signing
key's public part, a TPM2_Certify of it and a quote of PCRs 0-7 by the TPM's attestation
key, both over -nonce, the attestation key and the endorsement key (and its certificate
when the TPM has one). -nonce is the hex nonce central issued (edgeaudit devices nonce;
1-64 bytes), -out the file to write (JSON, 0600), which goes to central with the nonce:
edgeaudit devices add -bundle FILE -nonce HEX. With the daemon running the command asks
it through the admin endpoint (the daemon holds the TPM connection; the admin token in
the data folder is required); with it stopped it opens the TPM itself. A software key is
refused: no TPM can vouch for it.

Exit status: 0 done; 1 refused or failed; 2 usage.
`)
}

// attest writes the bundle for nonce: through the running daemon, whose TPM connection
// it is, or from the keys of a stopped one. The bundle is checked here too, so that a
// file that central would refuse is never written.
func (c *KeysCommand) attest(ctx context.Context, cfg *daemon.Config, nonceHex, outPath string, out func(any, string) error) error {
	if nonceHex == "" || outPath == "" {
		return &usageError{"keys attest: need -nonce HEX (issued by central) and -out FILE"}
	}
	nonce, err := daemon.ParseNonce(nonceHex)
	if err != nil {
		return &usageError{"keys attest: " + err.Error()}
	}
	body, _ := json.Marshal(daemon.AttestRequest{Nonce: hex.EncodeToString(nonce)})
	var b attest.Bundle
	via := "the running daemon"
	raw, err := adminPost(ctx, cfg, "/v1/keys/attest", "application/json", body)
	switch {
	case errors.Is(err, errDaemonDown):
		if pid := daemon.RunningPID(cfg); pid != 0 {
			return fmt.Errorf("keys attest: the daemon (pid %d, %s/running) holds the TPM and has no admin endpoint to ask; set admin: in its config, or stop it and run this again", pid, cfg.DataDir)
		}
		keys, kerr := offlineKeys(cfg)
		if kerr != nil {
			return fmt.Errorf("keys attest: %w", kerr)
		}
		defer keys.Close()
		bp, aerr := daemon.Attest(keys, nonce)
		if aerr != nil {
			return aerr // "attest: …" already
		}
		b, via = *bp, "the TPM (daemon stopped)"
	case err != nil:
		return fmt.Errorf("keys attest: %w", err)
	default:
		if err := json.Unmarshal(raw, &b); err != nil {
			return fmt.Errorf("keys attest: the daemon's answer: %w", err)
		}
	}
	// The key the bundle certifies must be the one the chain's public key file names
	// (central gets that file too).
	var expected *ecdsa.PublicKey
	if ks, err := attest.ReadPublicPEM(cfg.PublicKeyPath()); err == nil && len(ks) == 1 {
		expected = ks[0]
	}
	v, err := attest.VerifyBundle(&b, nonce, expected)
	if err != nil {
		return fmt.Errorf("keys attest: %w", err)
	}
	data, err := json.MarshalIndent(&b, "", "  ")
	if err != nil {
		return fmt.Errorf("keys attest: %w", err)
	}
	if err := atomicfile.WriteFile(outPath, append(data, '\n'), 0o600); err != nil {
		return fmt.Errorf("keys attest: %w", err)
	}
	akID, _ := ledger.KeyID(v.AK)
	res := map[string]string{"key_id": v.KeyID, "ak_key_id": akID, "out": outPath, "via": via}
	return out(res, fmt.Sprintf("bundle for key %s (TPM ak %s, through %s) written to %s\ngive it to central with the nonce: edgeaudit devices add -site %s -device %s -bundle %s -nonce %s\n",
		v.KeyID, akID, via, outPath, cfg.Site, cfg.Device, outPath, hex.EncodeToString(nonce)))
}
