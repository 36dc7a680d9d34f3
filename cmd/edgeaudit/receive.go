package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"

	"github.com/edgeaudit/edgeaudit/ledger"
	"github.com/edgeaudit/edgeaudit/receiver"
	"github.com/edgeaudit/edgeaudit/receiver/central"
)

// ReceiveCommand runs central's receiver in the foreground, or imports an exported file.
type ReceiveCommand struct {
	stopSignals func()
	// out is where summaries go (stdout when nil); tests set it.
	out io.Writer
}

func (c *ReceiveCommand) stdout() io.Writer {
	if c.out != nil {
		return c.out
	}
	return os.Stdout
}

// Run implements the command.
func (c *ReceiveCommand) Run(ctx context.Context, args []string) error {
	if len(args) > 0 && args[0] == "import" {
		return c.runImport(ctx, args[1:])
	}
	fs := flag.NewFlagSet("edgeaudit receive", flag.ContinueOnError)
	configPath := fs.String("config", "", "config file (its receive: section)")
	fs.Usage = c.Usage
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return &usageError{fmt.Sprintf("receive: unexpected argument %q", fs.Arg(0))}
	}
	srv, err := newCentral(*configPath)
	if err != nil {
		return err
	}
	cfg := srv.Config()
	if srv.KeyCreated() {
		fmt.Fprintf(os.Stderr, "edgeaudit: created central's receipt key %s; give %s to the sites as uplink.central_key\n",
			cfg.Key, cfg.PublicKeyPath())
	}
	// After the first signal the handler is released: a second one ends the process at
	// once instead of waiting for the orderly stop.
	go func() {
		<-ctx.Done()
		if c.stopSignals != nil {
			c.stopSignals()
		}
	}()
	return srv.Run(ctx)
}

// newCentral loads the config and builds the server, with a logger at its log_level.
func newCentral(path string) (*central.Server, error) {
	cfg, err := central.LoadConfig(path)
	if err != nil {
		return nil, err
	}
	cfg.SetDefaults()
	return central.New(cfg, newLogger(cfg.LogLevel))
}

func (c *ReceiveCommand) runImport(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("edgeaudit receive import", flag.ContinueOnError)
	configPath := fs.String("config", "", "config file (its receive: section)")
	out := fs.String("out", "", "receipts file to write (default FILE.receipts)")
	fs.Usage = c.Usage
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() != 1 {
		return &usageError{"receive import: need exactly one FILE (an `edgeaudit export` of the appliance)"}
	}
	name := fs.Arg(0)
	if *out == "" {
		*out = name + ".receipts"
	}
	if abs, err := filepath.Abs(*out); err == nil {
		if absIn, err := filepath.Abs(name); err == nil && abs == absIn {
			return &usageError{"receive import: -out must not be the imported FILE"}
		}
	}
	srv, err := newCentral(*configPath)
	if err != nil {
		return err
	}
	f, err := os.Open(name)
	if err != nil {
		return fmt.Errorf("receive import: %w", err)
	}
	defer f.Close()
	res, ierr := srv.Import(ctx, f, name)
	st := srv.Stats()
	w := c.stdout()
	fmt.Fprintf(w, "%s: %d batches: %d stored, %d duplicates, %d refused\n", name, res.Batches, st.Batches, st.Duplicates, len(res.Refused))
	reasons := map[string]int{}
	for _, e := range res.Refused {
		var ref *receiver.RefusedError
		if errors.As(e, &ref) {
			reasons[ref.Reason()]++
			fmt.Fprintf(w, "  refused %s/%s seq %d: %s: %s\n", ref.Site, ref.Device, ref.Seq, ref.Reason(), ref.Detail)
		}
	}
	keys := make([]string, 0, len(reasons))
	for k := range reasons {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		fmt.Fprintf(w, "  refused %s: %d\n", k, reasons[k])
	}
	// What was stored before an error stays stored, so its receipts are written anyway.
	if len(res.Receipts) > 0 {
		if err := writeFileAtomic(*out, func(fw io.Writer) error { return ledger.WriteReceipts(fw, res.Receipts) }); err != nil {
			return errors.Join(ierr, fmt.Errorf("receive import: write receipts: %w", err))
		}
		for _, rc := range res.Receipts {
			if r, err := ledger.ParseReceipt(rc); err == nil {
				fmt.Fprintf(w, "  receipt %s/%s chain %s up to seq %d\n", r.Site, r.Device, r.Chain, r.Seq)
			}
		}
		fmt.Fprintf(w, "receipts: %s (on the appliance: edgeaudit receipts import %s)\n", *out, filepath.Base(*out))
	} else {
		fmt.Fprintln(w, "receipts: none (nothing stored)")
	}
	if ierr != nil {
		return fmt.Errorf("receive import: %w", ierr)
	}
	if len(res.Refused) > 0 {
		return fmt.Errorf("receive import: %d of %d batches refused (kept in %s)", len(res.Refused), res.Batches, srv.Config().Quarantine)
	}
	return nil
}

// Usage prints the man page.
func (c *ReceiveCommand) Usage() {
	fmt.Fprintf(os.Stderr, `The receive command is central's side: it subscribes to every appliance's batches,
verifies each against the device's enrolled key and the chain stored so far, stores it
once, and publishes a signed receipt, until SIGINT or SIGTERM (a second signal exits at
once). Refusals are quarantined and recorded as alerts in central's own audit trail.
With embedded_broker set it runs an MQTT broker in process instead of using one.

"receive import" takes a file written by "edgeaudit export" on an air-gapped appliance,
stores what verifies, and writes the receipts file that "edgeaudit receipts import"
applies on the appliance. It exits 1 when a batch was refused. Stop "edgeaudit receive"
first when the store is a folder.

Usage:

	edgeaudit receive [-config FILE]
	edgeaudit receive import [-config FILE] [-out RECEIPTS] FILE

Arguments:

	-config FILE
	    Config file; its receive: section is read and every other key ignored
	    (docs/central.md). Defaults to none: broker %s, everything under ./%s.

	-out RECEIPTS
	    Receipts file to write (JSON lines of signed receipts). Defaults to FILE.receipts.

Central's receipt key is created on first use at receive.key (default
./%s/keys/central.key) with central.pub beside it: configure that file as
uplink.central_key on every appliance.
`, central.DefaultBroker, central.DefaultDataDir, central.DefaultDataDir)
}
