package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"

	"github.com/edgeaudit/edgeaudit/daemon"
	"github.com/edgeaudit/edgeaudit/ledger"
	"github.com/edgeaudit/edgeaudit/spool"
)

// ReceiptsCommand applies receipts from central that were carried by hand.
type ReceiptsCommand struct{}

// Run implements the command.
func (c *ReceiptsCommand) Run(ctx context.Context, args []string) error {
	if err := onlySubcommand(args, "receipts", "import", c.Usage); err != nil {
		return err
	}
	fs := flag.NewFlagSet("edgeaudit receipts import", flag.ContinueOnError)
	configPath := fs.String("config", "", "config file")
	dataDir := fs.String("data", "", "data folder (overrides data_dir)")
	asJSON := fs.Bool("json", false, "print the summary as JSON")
	fs.Usage = c.Usage
	if err := fs.Parse(args[1:]); err != nil {
		return err
	}
	if fs.NArg() != 1 {
		return &usageError{"receipts import: need exactly one FILE (written by edgeaudit receive import)"}
	}
	body, err := os.ReadFile(fs.Arg(0))
	if err != nil {
		return fmt.Errorf("receipts import: %w", err)
	}
	receipts, err := ledger.ReadReceipts(bytes.NewReader(body))
	if err != nil {
		return fmt.Errorf("receipts import %s: %w", fs.Arg(0), err)
	}
	cfg, err := applianceConfig(*configPath, *dataDir)
	if err != nil {
		return err
	}

	var sum daemon.ReceiptsSummary
	b, err := adminPost(ctx, &cfg, "/v1/receipts", "application/x-ndjson", body)
	switch {
	case errors.Is(err, errDaemonDown):
		sum, err = receiptsOffline(ctx, &cfg, receipts)
	case err == nil:
		err = json.Unmarshal(b, &sum)
	}
	if err != nil {
		return fmt.Errorf("receipts import: %w", err)
	}
	if *asJSON {
		return json.NewEncoder(os.Stdout).Encode(sum)
	}
	fmt.Printf("receipts: %d read, %d verified, %d did not verify\n", sum.Receipts, sum.Verified, len(sum.Bad))
	for _, b := range sum.Bad {
		fmt.Println("  bad:", b)
	}
	for _, in := range sum.Incidents {
		fmt.Println("  INCIDENT:", in)
	}
	if sum.Moved {
		fmt.Printf("acked up to seq %d (recorded as event %s)\n", sum.AckedSeq, sum.EventID)
	} else {
		fmt.Printf("acked seq stays %d (recorded as event %s)\n", sum.AckedSeq, sum.EventID)
	}
	if len(sum.Incidents) > 0 || len(sum.Bad) > 0 {
		return errors.New("receipts import: some receipts were not applied (see above)")
	}
	return nil
}

// receiptsOffline applies the receipts to the spool of a stopped daemon.
func receiptsOffline(ctx context.Context, cfg *daemon.Config, receipts [][]byte) (sum daemon.ReceiptsSummary, err error) {
	err = withOfflineSpool(ctx, cfg, func(sp *spool.Spool) error {
		sum, err = daemon.ImportReceipts(ctx, cfg, sp, receipts, whoami())
		return err
	})
	return sum, err
}

// Usage prints the man page.
func (c *ReceiptsCommand) Usage() {
	fmt.Fprint(os.Stderr, `The receipts import command applies central's receipts to this appliance's spool, for
sites without a network path to central (air-gapped):

	edgeaudit export -data DIR -out site.eab           on the appliance
	edgeaudit receive import -out receipts.jsonl site.eab   at central
	edgeaudit receipts import receipts.jsonl           back on the appliance

Usage:

	edgeaudit receipts import [-config FILE] [-data DIR] [-json] FILE

Each receipt is checked as the uplink checks receipts over MQTT: central's signature
(uplink.central_key, or keys/central.pub in the data folder), this site and device, the
spool's current chain, and the header hash of the local batch it names. A receipt that
names a seq beyond the local head (the spool is behind central: restored, cloned or
rolled back) or another header at a seq (a fork) is recorded in the chain and shown in
health, and acks nothing. The newest matching receipt is kept in receipts/<chain>.receipt
beside the spool, then the spool is acked up to it, so that retention may prune.

The import is recorded in the chain as audit.receipts_imported, with who ran it. With the
daemon running, the command goes through its admin endpoint (the admin token in the data
folder is required); with it stopped, it opens the spool itself.

Exit status: 0 all receipts applied or already applied; 1 some did not verify or revealed
a rollback or fork, or the spool could not be updated; 2 usage.
`)
}
