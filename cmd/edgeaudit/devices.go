package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"text/tabwriter"
	"time"

	"github.com/edgeaudit/edgeaudit/attest"
	"github.com/edgeaudit/edgeaudit/receiver/central"
)

// DevicesCommand enrols, lists and removes device keys at central.
type DevicesCommand struct {
	// out is where listings and results go (stdout when nil); tests set it.
	out io.Writer
}

func (c *DevicesCommand) stdout() io.Writer {
	if c.out != nil {
		return c.out
	}
	return os.Stdout
}

// Run implements the command.
func (c *DevicesCommand) Run(ctx context.Context, args []string) error {
	if len(args) > 0 && isHelp(args[0]) {
		c.Usage()
		return flag.ErrHelp
	}
	if len(args) == 0 {
		c.Usage()
		return &usageError{"devices: need add, list, remove or nonce"}
	}
	switch args[0] {
	case "add":
		return c.add(ctx, args[1:])
	case "list":
		return c.list(args[1:])
	case "remove":
		return c.remove(ctx, args[1:])
	case "nonce":
		return c.nonce(args[1:])
	case "-h", "-help", "--help", "help":
		c.Usage()
		return flag.ErrHelp
	}
	c.Usage()
	return &usageError{fmt.Sprintf("devices: unknown subcommand %q (add, list, remove, nonce)", args[0])}
}

func (c *DevicesCommand) flags(name string) (*flag.FlagSet, *string) {
	fs := flag.NewFlagSet("edgeaudit devices "+name, flag.ContinueOnError)
	fs.Usage = c.Usage
	return fs, fs.String("config", "", "config file (its receive: section)")
}

func (c *DevicesCommand) add(ctx context.Context, args []string) error {
	fs, configPath := c.flags("add")
	site := fs.String("site", "", "site name")
	device := fs.String("device", "", "device name")
	replace := fs.Bool("replace", false, "replace a different key enrolled for the device")
	bundle := fs.String("bundle", "", "attestation bundle (edgeaudit keys attest) to verify and enrol")
	nonceHex := fs.String("nonce", "", "with -bundle: the nonce central issued, hex")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *bundle != "" {
		return c.addAttested(ctx, *configPath, *site, *device, *bundle, *nonceHex, fs.Args(), *replace)
	}
	if *nonceHex != "" {
		return &usageError{"devices add: -nonce goes with -bundle"}
	}
	if *site == "" || *device == "" || fs.NArg() != 1 {
		return &usageError{"devices add: need -site S -device D and one KEY.pub (or -bundle FILE -nonce HEX)"}
	}
	pem, err := os.ReadFile(fs.Arg(0))
	if err != nil {
		return fmt.Errorf("devices add: %w", err)
	}
	if _, _, err := central.ParseDeviceKey(pem); err != nil {
		return fmt.Errorf("devices add: %s: %w (want the appliance's keys/signing.pub)", fs.Arg(0), err)
	}
	srv, err := newCentral(*configPath)
	if err != nil {
		return err
	}
	res, err := srv.AddDevice(ctx, *site, *device, pem, *replace)
	if errors.Is(err, central.ErrKeyExists) {
		return fmt.Errorf("%w; check the appliance, then add -replace to accept its new key", err)
	}
	if err != nil {
		return err
	}
	switch {
	case !res.Changed:
		fmt.Fprintf(c.stdout(), "%s/%s: key %s already enrolled\n", *site, *device, res.KeyID)
	case res.Previous != "":
		fmt.Fprintf(c.stdout(), "%s/%s: key %s enrolled, replacing %s (%s)\n", *site, *device, res.KeyID, res.Previous, res.Path)
	default:
		fmt.Fprintf(c.stdout(), "%s/%s: key %s enrolled (%s)\n", *site, *device, res.KeyID, res.Path)
	}
	return nil
}

func (c *DevicesCommand) list(args []string) error {
	fs, configPath := c.flags("list")
	asJSON := fs.Bool("json", false, "print a JSON array")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return &usageError{fmt.Sprintf("devices list: unexpected argument %q", fs.Arg(0))}
	}
	cfg, err := central.LoadConfig(*configPath)
	if err != nil {
		return err
	}
	cfg.SetDefaults()
	devs, err := central.ListDevices(cfg.Devices)
	if err != nil {
		return err
	}
	w := c.stdout()
	if *asJSON {
		if devs == nil {
			devs = []central.Device{}
		}
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(devs)
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "SITE\tDEVICE\tKEY_ID\tATTESTED\tFILE TIME")
	for _, d := range devs {
		kid := d.KeyID
		if d.Error != "" {
			kid = "error: " + d.Error
		}
		att := "no"
		if d.Attested {
			att = "tpm ak " + d.AKKeyID[:min(16, len(d.AKKeyID))]
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", d.Site, d.Device, kid, att, d.Modified.Format(time.RFC3339))
	}
	return tw.Flush()
}

func (c *DevicesCommand) remove(ctx context.Context, args []string) error {
	fs, configPath := c.flags("remove")
	site := fs.String("site", "", "site name")
	device := fs.String("device", "", "device name")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *site == "" || *device == "" || fs.NArg() > 0 {
		return &usageError{"devices remove: need -site S -device D"}
	}
	srv, err := newCentral(*configPath)
	if err != nil {
		return err
	}
	kid, err := srv.RemoveDevice(ctx, *site, *device)
	if err != nil {
		return err
	}
	fmt.Fprintf(c.stdout(), "%s/%s: key %s removed; its stored chain stays, its next batch is refused\n", *site, *device, kid)
	return nil
}

// Usage prints the man page.
func (c *DevicesCommand) Usage() {
	fmt.Fprintf(os.Stderr, `The devices command manages the device keys central verifies batches with: one PEM
public key per device at <receive.devices>/<site>/<device>.pub (the appliance's
keys/signing.pub). Each enrolment, replacement and removal is recorded in central's
own audit trail. A running "edgeaudit receive" sees a change at the next batch.

Usage:

	edgeaudit devices add [-config FILE] -site S -device D [-replace] KEY.pub
	edgeaudit devices add [-config FILE] -site S -device D [-replace] -bundle FILE -nonce HEX [KEY.pub]
	edgeaudit devices nonce
	edgeaudit devices list [-config FILE] [-json]
	edgeaudit devices remove [-config FILE] -site S -device D

Arguments:

	-config FILE
	    Config file; its receive: section is read (docs/central.md). Defaults to
	    none: devices in ./%s/devices.

	-site S, -device D
	    The device's names, as in its batch headers and MQTT topics.

	-replace
	    add: replace a different key enrolled for the device (a re-installed
	    appliance). Without it a different key is refused; the same key is a no-op.
	    A device enrolled from a bundle takes a new key only from a bundle of the
	    same TPM.

	-bundle FILE, -nonce HEX
	    add: enrol the signing key that the attestation bundle FILE (written on the
	    appliance by edgeaudit keys attest -nonce HEX) certifies as living in the
	    appliance's TPM. The bundle is verified against HEX, the nonce central
	    issued for it; the TPM's attestation and endorsement keys are kept beside
	    the key (<site>/<device>.attest.json) and pin the device: a later bundle
	    from another TPM is refused. KEY.pub, when given, must be the certified key.

	-json
	    list: a JSON array of {site, device, key_id, modified, path, attested,
	    ak_key_id}.

nonce prints 32 random bytes in hex: give it to the site for edgeaudit keys attest,
and use it once. remove keeps what is stored of the device's chain, and deletes its
pins; its next batch is refused as from an unknown device until a key is enrolled again.
`, central.DefaultDataDir)
}

// maxBundleBytes bounds a bundle file: a few KiB of TPM structures, and an EK
// certificate of at most a few KiB more.
const maxBundleBytes = 1 << 20

// addAttested is add -bundle: verify the bundle against the issued nonce, enrol the key
// it certifies, keep the TPM's keys as the device's pins.
func (c *DevicesCommand) addAttested(ctx context.Context, configPath, site, device, bundlePath, nonceHex string, rest []string, replace bool) error {
	if site == "" || device == "" || nonceHex == "" || len(rest) > 1 {
		return &usageError{"devices add: -bundle needs -site S -device D -nonce HEX, and at most one KEY.pub"}
	}
	nonce, err := hex.DecodeString(nonceHex)
	if err != nil || len(nonce) == 0 {
		return &usageError{"devices add: -nonce is the hex nonce central issued (edgeaudit devices nonce)"}
	}
	var expected *ecdsa.PublicKey
	if len(rest) == 1 {
		pem, err := os.ReadFile(rest[0])
		if err != nil {
			return fmt.Errorf("devices add: %w", err)
		}
		if expected, _, err = central.ParseDeviceKey(pem); err != nil {
			return fmt.Errorf("devices add: %s: %w (want the appliance's keys/signing.pub)", rest[0], err)
		}
	}
	f, err := os.Open(bundlePath)
	if err != nil {
		return fmt.Errorf("devices add: %w", err)
	}
	defer f.Close()
	var b attest.Bundle
	if err := json.NewDecoder(io.LimitReader(f, maxBundleBytes)).Decode(&b); err != nil {
		return fmt.Errorf("devices add: bundle %s: %w (want the file of edgeaudit keys attest)", bundlePath, err)
	}
	srv, err := newCentral(configPath)
	if err != nil {
		return err
	}
	res, err := srv.AddAttestedDevice(ctx, site, device, &b, nonce, expected, replace)
	if errors.Is(err, central.ErrKeyExists) {
		return fmt.Errorf("%w; check the appliance, then add -replace to accept its new key", err)
	}
	if err != nil {
		return err
	}
	a := res.Attestation
	what := "enrolled"
	switch {
	case !res.Changed:
		what = "already enrolled, attested again"
	case res.Previous != "":
		what = "enrolled, replacing " + res.Previous
	}
	pin := "pinned to TPM"
	if res.Pinned {
		pin = "same TPM as pinned:"
	}
	fmt.Fprintf(c.stdout(), "%s/%s: key %s %s (%s); attested: %s ak %s, ek %s, PCR digest %s\n",
		site, device, res.KeyID, what, res.Path, pin, a.AKKeyID, a.EKKeyID, a.PCRDigest)
	return nil
}

// nonce prints a fresh 32-byte nonce for keys attest.
func (c *DevicesCommand) nonce(args []string) error {
	fs := flag.NewFlagSet("edgeaudit devices nonce", flag.ContinueOnError)
	fs.Usage = c.Usage
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return &usageError{fmt.Sprintf("devices nonce: unexpected argument %q", fs.Arg(0))}
	}
	n := make([]byte, 32)
	if _, err := rand.Read(n); err != nil {
		return fmt.Errorf("devices nonce: %w", err)
	}
	fmt.Fprintln(c.stdout(), hex.EncodeToString(n))
	return nil
}
