package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strconv"
	"text/tabwriter"
	"time"

	"github.com/edgeaudit/edgeaudit/attest"
	"github.com/edgeaudit/edgeaudit/audit"
	"github.com/edgeaudit/edgeaudit/evidence"
	"github.com/edgeaudit/edgeaudit/receiver"
	"github.com/edgeaudit/edgeaudit/receiver/central"
)

// QueryCommand selects events from central's store, records the query in central's own
// audit trail, then prints the events and optionally writes an evidence package.
type QueryCommand struct {
	// out is where results go (stdout when nil); tests set it.
	out io.Writer
	// user overrides who is recorded as querying (tests).
	user string
}

// Output formats.
const (
	formatJSONL = "jsonl"
	formatTable = "table"
)

// Run implements the command.
func (c *QueryCommand) Run(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("edgeaudit query", flag.ContinueOnError)
	configPath := fs.String("config", "", "config file (its receive: section)")
	storeDir := fs.String("store", "", "central's store folder, or a postgres:// DSN")
	keysDir := fs.String("keys", "", "enrolled device keys folder")
	centralKey := fs.String("central-key", "", "central's receipt signing key (PKCS#8 PEM)")
	auditSite := fs.String("audit-site", "", "site name of central's audit trail")
	auditDevice := fs.String("audit-device", "", "device name of central's audit trail")
	var q receiver.Query
	fs.StringVar(&q.Patient, "patient", "", "patient token")
	fs.StringVar(&q.User, "user", "", "actor user")
	fs.StringVar(&q.Action, "action", "", "action (a trailing .* matches a prefix)")
	fs.StringVar(&q.Outcome, "outcome", "", "outcome")
	fs.StringVar(&q.Site, "site", "", "site")
	fs.StringVar(&q.Device, "device", "", "device")
	fs.StringVar(&q.Study, "study", "", "study token")
	from := fs.String("from", "", "events at or after this RFC 3339 time")
	to := fs.String("to", "", "events before this RFC 3339 time")
	fs.IntVar(&q.Limit, "limit", 0, "stop after N events (0: all)")
	format := fs.String("format", formatJSONL, "jsonl or table")
	evDir := fs.String("evidence", "", "also write an evidence package of the matches to this new folder")
	fs.Usage = c.Usage
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return &usageError{fmt.Sprintf("query: unexpected argument %q", fs.Arg(0))}
	}
	for _, t := range []struct {
		flag, v string
		dst     *time.Time
	}{{"from", *from, &q.From}, {"to", *to, &q.To}} {
		if t.v == "" {
			continue
		}
		v, err := time.Parse(time.RFC3339Nano, t.v)
		if err != nil {
			return &usageError{fmt.Sprintf("query: -%s %q is not an RFC 3339 time (2026-12-01T08:00:00Z)", t.flag, t.v)}
		}
		*t.dst = v
	}
	if *format != formatJSONL && *format != formatTable {
		return &usageError{fmt.Sprintf("query: -format %q: want jsonl or table", *format)}
	}
	if q.Limit < 0 {
		return &usageError{"query: -limit must not be negative"}
	}
	cfg, err := central.LoadConfig(*configPath)
	if err != nil {
		return err
	}
	cfg.SetDefaults()
	fs.Visit(func(f *flag.Flag) {
		switch f.Name {
		case "store":
			cfg.Store = *storeDir
		case "keys":
			cfg.Devices = *keysDir
		case "central-key":
			cfg.Key = *centralKey
		case "audit-site":
			cfg.AuditSite = *auditSite
		case "audit-device":
			cfg.AuditDevice = *auditDevice
		}
	})
	if err := cfg.Validate(); err != nil {
		return err
	}
	logger := newLogger(cfg.LogLevel)
	return c.query(ctx, cfg, q, *format, *evDir, logger)
}

func (c *QueryCommand) stdout() io.Writer {
	if c.out != nil {
		return c.out
	}
	return os.Stdout
}

// query runs q, spooling its output; records it in central's trail; then prints.
func (c *QueryCommand) query(ctx context.Context, cfg central.Config, q receiver.Query, format, evDir string, logger *slog.Logger) error {
	// Central's key is only read here, never created: a query is no place to make a
	// new trust anchor.
	kb, err := os.ReadFile(cfg.Key)
	if err != nil {
		return fmt.Errorf("query: central key (every query is recorded in central's audit trail, signed with it): %w", err)
	}
	signer, err := attest.ParseSoftware(kb)
	if err != nil {
		return fmt.Errorf("query: central key %s: %w", cfg.Key, err)
	}
	if !central.IsPostgres(cfg.Store) {
		// A mistyped folder must not become a new store holding only this query.
		if st, err := os.Stat(cfg.Store); err != nil || !st.IsDir() {
			return fmt.Errorf("query: store %s is not a folder", cfg.Store)
		}
	}
	store, closeStore, err := central.OpenStore(ctx, cfg, logger)
	if err != nil {
		return fmt.Errorf("query: %w", err)
	}
	defer closeStore()
	trail, err := receiver.NewAuditTrail(store, signer, cfg.AuditSite, cfg.AuditDevice, logger)
	if err != nil {
		return fmt.Errorf("query: %w", err)
	}

	// The results wait in an unlinked temporary file (or, for a table, in memory:
	// its columns need every row) until the query is recorded.
	spool, err := os.CreateTemp("", "edgeaudit-query-*")
	if err != nil {
		return fmt.Errorf("query: %w", err)
	}
	os.Remove(spool.Name())
	defer spool.Close()
	bw := bufio.NewWriterSize(spool, 256<<10)
	var rows [][6]string
	n := 0
	emit := func(m receiver.Match) error {
		n++
		if format == formatTable {
			rows = append(rows, tableRow(m))
			return nil
		}
		b, err := json.Marshal(evidence.EventOf(m))
		if err != nil {
			return err
		}
		bw.Write(b)
		return bw.WriteByte('\n')
	}
	var sum evidence.Summary
	if evDir != "" {
		// One pass gives both the output and the package, so they hold the same events.
		sum, err = evidence.Write(ctx, evDir, teeQuerier{store, emit}, store, receiver.FolderKeys{Dir: cfg.Devices}, signer.Public(), q)
	} else {
		err = store.Query(ctx, q, emit)
	}
	rec := queryEvent(c.who(), q, format, evDir, n)
	if err != nil {
		// A failed query is recorded too: events may have been read.
		rec.Outcome, rec.Reason = audit.OutcomeSeriousFailure, "query failed"
		return errors.Join(fmt.Errorf("query: %w", err), trail.Record(ctx, rec))
	}
	if err := trail.Record(ctx, rec); err != nil {
		return fmt.Errorf("query: not recorded in central's audit trail, so nothing is shown: %w", err)
	}
	out := c.stdout()
	if format == formatTable {
		if err := writeTable(out, rows); err != nil {
			return fmt.Errorf("query: %w", err)
		}
	} else {
		if err := bw.Flush(); err != nil {
			return fmt.Errorf("query: %w", err)
		}
		if _, err := spool.Seek(0, io.SeekStart); err != nil {
			return fmt.Errorf("query: %w", err)
		}
		if _, err := io.Copy(out, spool); err != nil {
			return fmt.Errorf("query: %w", err)
		}
	}
	if evDir != "" {
		fmt.Fprintf(os.Stderr, "edgeaudit: evidence package %s: %d events from %d batches of %d devices (check it with: edgeaudit verify %s)\n",
			sum.Dir, sum.Events, sum.Batches, sum.Devices, sum.Dir)
	}
	return nil
}

func (c *QueryCommand) who() string {
	if c.user != "" {
		return c.user
	}
	return whoami()
}

// queryEvent is the trail's record of a query: DICOM "Audit Log Used" by the OS user,
// the filters in Detail, the matches in Count. A patient filter is also the event's
// patient, so that a query for that patient finds who looked them up.
func queryEvent(user string, q receiver.Query, format, evDir string, n int) audit.Event {
	d := map[string]string{"format": format}
	for k, v := range map[string]string{"site": q.Site, "device": q.Device, "patient": q.Patient, "user": q.User,
		"action": q.Action, "outcome": q.Outcome, "study": q.Study, "evidence": evDir} {
		if v != "" {
			d["query."+k] = v
		}
	}
	if !q.From.IsZero() {
		d["query.from"] = q.From.UTC().Format(time.RFC3339Nano)
	}
	if !q.To.IsZero() {
		d["query.to"] = q.To.UTC().Format(time.RFC3339Nano)
	}
	if q.Limit > 0 {
		d["query.limit"] = strconv.Itoa(q.Limit)
	}
	e := audit.Event{Action: audit.ActionAuditLogUsed, ActionCode: "R", Outcome: audit.OutcomeSuccess,
		Actor: audit.Actor{User: user, Requestor: true}, Patient: q.Patient, Count: n,
		Codes: []audit.Code{receiver.CodeAuditLogUsed}, Detail: d, QueryScope: audit.QueryScopeBroad}
	if q.Patient != "" {
		e.QueryScope = audit.QueryScopePatient
	}
	return e
}

// teeQuerier passes each match to fn as well, so that evidence.Write's pass is also
// the printed output.
type teeQuerier struct {
	receiver.Querier
	fn func(receiver.Match) error
}

func (t teeQuerier) Query(ctx context.Context, q receiver.Query, fn func(receiver.Match) error) error {
	return t.Querier.Query(ctx, q, func(m receiver.Match) error {
		if err := t.fn(m); err != nil {
			return err
		}
		return fn(m)
	})
}

func tableRow(m receiver.Match) [6]string {
	row := [6]string{"-", m.Site + "/" + m.Device, "-", "-", "-", "-"}
	e, err := audit.Decode(m.Event)
	if err != nil {
		return row // opaque bytes: where, but nothing to show
	}
	if !e.Time.IsZero() {
		row[0] = e.Time.UTC().Format(time.RFC3339)
	}
	for i, v := range []string{e.Action, e.Outcome, e.Actor.User, e.Patient} {
		if v != "" {
			row[2+i] = v
		}
	}
	return row
}

func writeTable(w io.Writer, rows [][6]string) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "TIME\tSITE/DEVICE\tACTION\tOUTCOME\tUSER\tPATIENT")
	for _, r := range rows {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", r[0], r[1], r[2], r[3], r[4], r[5])
	}
	return tw.Flush()
}

// verifyEvidence is `edgeaudit verify DIR` for an evidence package (verify.go calls it).
func verifyEvidence(dir string, asJSON bool) error {
	rep, err := evidence.Verify(dir)
	if asJSON {
		res := struct {
			OK      bool   `json:"ok"`
			Events  int    `json:"events"`
			Batches int    `json:"batches"`
			Devices int    `json:"devices"`
			Error   string `json:"error,omitempty"`
		}{OK: err == nil, Events: rep.Events, Batches: rep.Batches, Devices: len(rep.Devices)}
		if err != nil {
			res.Error = err.Error()
		}
		json.NewEncoder(os.Stdout).Encode(res)
	}
	if err != nil {
		return fmt.Errorf("verify: %w", err)
	}
	if !asJSON {
		fmt.Printf("ok: evidence package, %d events from %d batches of %d devices: files, signatures, inclusion proofs and receipts verified\n",
			rep.Events, rep.Batches, len(rep.Devices))
		for _, d := range rep.Devices {
			fmt.Printf("  %s/%s chain %s: %d events in %d batches, receipted up to seq %d at %s (%d batches with a receipt of their own)\n",
				d.Site, d.Device, d.Chain, d.Events, d.Batches, d.Receipt.Seq, d.Receipt.Time.Format(time.RFC3339), d.Bound)
		}
	}
	return nil
}

// Usage prints the man page.
func (c *QueryCommand) Usage() {
	fmt.Fprintf(os.Stderr, `The query command selects events from central's store: every set filter must match.
It records the query in central's own audit trail (DICOM 110101 "Audit Log Used": who,
the filters, the number of matches) before it prints anything, and prints nothing
when that record cannot be written. With -evidence it also writes an evidence package
of the matches, which "edgeaudit verify DIR" checks offline.

Usage:

	edgeaudit query [-config FILE] [filters] [-format jsonl|table] [-evidence DIR]

Arguments:

	-config FILE
	    Config file; store, devices, key, audit_site and audit_device are read from
	    its receive: section. The flags below override them. Defaults to none:
	    everything under ./%[1]s, as "edgeaudit receive" does.

	-store DIR
	    Central's store: a folder or a postgres:// DSN. Defaults to ./%[1]s/store.

	-keys DIR
	    Enrolled device keys, DIR/<site>/<device>.pub. Defaults to ./%[1]s/devices.
	    Needed for -evidence.

	-central-key FILE
	    Central's receipt signing key (PKCS#8 PEM), which signs the audit trail.
	    It is never created here. Defaults to ./%[1]s/keys/central.key.

	-audit-site NAME, -audit-device NAME
	    The names of central's audit trail. Default to %[2]q and the host name's
	    first label.

	-patient TOKEN, -user USER, -action ACTION, -outcome OUTCOME, -study TOKEN
	    Match the event's patient, actor.user, action, outcome, or one of its study
	    tokens exactly. -action phi.* matches every action that starts with "phi.".

	-site SITE, -device DEVICE
	    Only events stored for this site or device.

	-from TIME, -to TIME
	    Events whose time is at or after -from and before -to (RFC 3339).

	-limit N
	    Stop after N events. Defaults to 0: all.

	-format jsonl|table
	    jsonl (the default) prints one JSON object per event: site, device, chain,
	    seq and index (where it is stored) and the event itself ("event", or
	    "event_b64" for bytes that are not plain JSON). table prints time,
	    site/device, action, outcome, user and patient in aligned columns.

	-evidence DIR
	    Also write an evidence package of the matches to DIR, which must not exist
	    or be empty (docs/format.md, "Evidence packages").
`, central.DefaultDataDir, central.DefaultAuditSite)
}
