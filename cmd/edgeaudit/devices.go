package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"text/tabwriter"
	"time"

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
	if len(args) == 0 {
		c.Usage()
		return &usageError{"devices: need add, list or remove"}
	}
	switch args[0] {
	case "add":
		return c.add(ctx, args[1:])
	case "list":
		return c.list(args[1:])
	case "remove":
		return c.remove(ctx, args[1:])
	case "-h", "-help", "--help", "help":
		c.Usage()
		return flag.ErrHelp
	}
	c.Usage()
	return &usageError{fmt.Sprintf("devices: unknown subcommand %q (add, list, remove)", args[0])}
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
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *site == "" || *device == "" || fs.NArg() != 1 {
		return &usageError{"devices add: need -site S -device D and one KEY.pub"}
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
	fmt.Fprintln(tw, "SITE\tDEVICE\tKEY_ID\tFILE TIME")
	for _, d := range devs {
		kid := d.KeyID
		if d.Error != "" {
			kid = "error: " + d.Error
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", d.Site, d.Device, kid, d.Modified.Format(time.RFC3339))
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

	-json
	    list: a JSON array of {site, device, key_id, modified, path}.

remove keeps what is stored of the device's chain; its next batch is refused as from
an unknown device until a key is enrolled again.
`, central.DefaultDataDir)
}
