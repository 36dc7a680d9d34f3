package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/edgeaudit/edgeaudit/audit"
	"github.com/edgeaudit/edgeaudit/collectors"
	"github.com/edgeaudit/edgeaudit/daemon"
	"github.com/edgeaudit/edgeaudit/internal/atomicfile"
	"github.com/edgeaudit/edgeaudit/spool"
)

// ExportCommand writes sealed batches in the wire format, or their events as JSON lines,
// through the running daemon or from a stopped spool.
type ExportCommand struct{}

// Where an export or verify read the chain.
const (
	viaDaemon = "daemon"
	viaSpool  = "spool"
)

// progressEvery is how often a long run redraws its progress line on a terminal; the
// first line appears after one interval, so short runs draw none.
const progressEvery = time.Second

// Run implements the command.
func (c *ExportCommand) Run(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("edgeaudit export", flag.ContinueOnError)
	dataDir := fs.String("data", "", "data folder (overrides the config's data_dir)")
	configPath := fs.String("config", "", "config file (admin address, data_dir, keys)")
	out := fs.String("out", "", "output file, or - for standard output")
	var req daemon.ExportRequest
	fs.BoolVar(&req.Events, "events", false, "write the normalized events as JSON lines instead of batches")
	fs.BoolVar(&req.Open, "open", false, "with -events: also the committed events of the open (unsealed) batch")
	fs.Uint64Var(&req.From, "from", 1, "first seq to export")
	fs.Uint64Var(&req.To, "to", 0, "last seq to export (default: the head when the export starts)")
	since := fs.String("since", "", "events at or after this time (RFC 3339, or a duration ago such as 24h)")
	until := fs.String("until", "", "events before this time (RFC 3339, or a duration ago)")
	var actions, sources listFlag
	fs.Var(&actions, "action", "taxonomy action (repeatable or comma-separated; phi.* matches a prefix)")
	fs.StringVar(&req.Filter.Patient, "patient", "", "patient token")
	fs.Var(&sources, "source", "source host, app, AE title, IP or kind (repeatable or comma-separated)")
	fs.Usage = c.Usage
	if err := fs.Parse(args); err != nil {
		return err
	}
	if (*dataDir == "" && *configPath == "") || *out == "" || fs.NArg() > 0 {
		return &usageError{"export: need -data DIR (or -config FILE) and -out FILE"}
	}
	now := time.Now()
	var err error
	if req.Filter.Since, err = parseWhen(*since, now); err != nil {
		return &usageError{"export: -since " + err.Error()}
	}
	if req.Filter.Until, err = parseWhen(*until, now); err != nil {
		return &usageError{"export: -until " + err.Error()}
	}
	req.Filter.Actions, req.Filter.Sources = audit.SplitList(actions), audit.SplitList(sources)
	switch {
	case req.Open && !req.Events:
		return &usageError{"export: -open needs -events (unsealed events are not a batch)"}
	case req.Open && req.To > 0:
		return &usageError{"export: -open with -to: the open events follow the head, not seq -to"}
	case req.To > 0 && req.To < max(req.From, 1):
		return &usageError{fmt.Sprintf("export: -to %d is before -from %d", req.To, max(req.From, 1))}
	case !req.Filter.Since.IsZero() && !req.Filter.Until.IsZero() && !req.Filter.Since.Before(req.Filter.Until):
		return &usageError{"export: -since is not before -until"}
	}
	if err := req.Check(); err != nil {
		return &usageError{"export: " + err.Error()}
	}
	cfg, err := applianceConfig(*configPath, *dataDir)
	if err != nil {
		return err
	}

	begin := time.Now()
	prog := newProgress("export", isTerminal(os.Stderr.Fd()))
	var sum exportSummary
	write := func(w io.Writer) error {
		var err error
		sum, err = exportOnline(ctx, &cfg, req, w, prog)
		if errors.Is(err, errDaemonDown) {
			sum, err = exportOffline(ctx, &cfg, *configPath, req, w, prog)
		}
		return err
	}
	if *out == "-" {
		err = write(os.Stdout)
		if err != nil {
			err = fmt.Errorf("export: %w", err)
		}
	} else {
		err = writeFileAtomic(*out, write)
	}
	prog.stop()
	if err != nil {
		return err
	}
	took := time.Since(begin)
	what := fmt.Sprintf("%d batches", sum.Batches)
	if req.Events {
		what = fmt.Sprintf("%d events from %d batches", sum.Events, sum.Batches)
	} else {
		what += fmt.Sprintf(", %d events", sum.Events)
	}
	if sum.FirstSeq > 0 {
		what += fmt.Sprintf(" (seq %d..%d)", sum.FirstSeq, sum.LastSeq)
	}
	fmt.Fprintf(os.Stderr, "export: %s, %s in %s (%s), %s\n", what, byteSize(sum.Bytes), took.Round(time.Millisecond), rate(sum.Events, took), sum.from)
	switch {
	case req.Events:
	case !req.Filter.IsZero():
		fmt.Fprintln(os.Stderr, "export: the filters selected whole batches that hold at least one matching event; they need not be contiguous: verify the file with -gaps")
	case sum.FirstSeq > 1:
		fmt.Fprintf(os.Stderr, "export: the file starts at seq %d, not 1: verify it with -partial\n", sum.FirstSeq)
	}
	fmt.Fprintf(os.Stderr, "export: recorded in the chain as event %s (%s)\n", sum.eventID, daemon.ActionExport)
	return nil
}

// exportSummary is what an export prints when it is done.
type exportSummary struct {
	daemon.ExportResult
	from    string // where the chain was read, for people
	eventID string // the self-audit event of the export
}

// exportOnline asks the running daemon for the export (GET /v1/export) and copies its
// stream to w. It returns errDaemonDown, before anything is written, when no daemon
// answers for cfg.DataDir.
func exportOnline(ctx context.Context, cfg *daemon.Config, req daemon.ExportRequest, w io.Writer, prog *progress) (exportSummary, error) {
	var sum exportSummary
	resp, addr, err := adminStream(ctx, cfg, req)
	if err != nil {
		return sum, err
	}
	defer resp.Body.Close()
	head, _ := strconv.ParseUint(resp.Header.Get(daemon.HeaderHeadSeq), 10, 64)
	sum.from = fmt.Sprintf("through the running daemon at %s (chain as of seq %d)", addr, head)
	prog.total.Store(int64(head))
	cw := &countWriter{w: w, prog: prog}
	if _, err := io.Copy(cw, resp.Body); err != nil {
		return sum, fmt.Errorf("read the daemon's export stream after %d bytes: %w", cw.n, err)
	}
	if err := streamStatus(resp); err != nil {
		return sum, err
	}
	t := resp.Trailer
	sum.Batches, _ = strconv.Atoi(t.Get(daemon.TrailerBatches))
	sum.Events, _ = strconv.Atoi(t.Get(daemon.TrailerEvents))
	sum.FirstSeq, _ = strconv.ParseUint(t.Get(daemon.TrailerFirstSeq), 10, 64)
	sum.LastSeq, _ = strconv.ParseUint(t.Get(daemon.TrailerLastSeq), 10, 64)
	sum.Bytes = cw.n
	sum.eventID = t.Get(daemon.TrailerEventID)
	return sum, nil
}

// adminStream sends GET /v1/export for req to the daemon that runs on cfg.DataDir. The
// body is streamed: only the wait for the headers is bounded.
func adminStream(ctx context.Context, cfg *daemon.Config, req daemon.ExportRequest) (*http.Response, string, error) {
	hreq, err := adminRequest(ctx, cfg, http.MethodGet, "/v1/export?"+req.Values().Encode(), nil)
	if err != nil {
		return nil, "", err
	}
	tr := daemon.AdminTransport(adminAddr(cfg))
	tr.ResponseHeaderTimeout = 30 * time.Second
	client := &http.Client{Transport: tr}
	resp, err := adminDo(hreq, client)
	if err != nil {
		return nil, "", err
	}
	return resp, hreq.URL.Host, nil
}

// streamStatus checks the status trailer of an export stream the body of which was
// read to its end: anything but "ok" means the stream is not a whole export.
func streamStatus(resp *http.Response) error {
	switch st := resp.Trailer.Get(daemon.TrailerStatus); {
	case st == "ok":
		return nil
	case st == "":
		return errors.New("the daemon's export stream ended without its status (the daemon stopped or the connection broke): nothing is kept")
	default:
		return fmt.Errorf("the daemon ended the export: %s", strings.TrimPrefix(st, "error: "))
	}
}

// exportOffline reads the stopped spool in cfg.DataDir, writes the export to w, and then
// records it in the spool's chain (as token reveal does offline). A failed record fails
// the export: a file is only put in place once its export is in the chain.
func exportOffline(ctx context.Context, cfg *daemon.Config, configPath string, req daemon.ExportRequest, w io.Writer, prog *progress) (exportSummary, error) {
	var sum exportSummary
	r, err := openSpoolReader(configPath, cfg.DataDir)
	if err != nil {
		return sum, err
	}
	pos, err := r.Position()
	if err != nil {
		r.Close()
		return sum, err
	}
	last := pos.HeadSeq
	if req.To > 0 {
		last = min(last, req.To)
	}
	prog.total.Store(int64(last))
	open := func(uint64) ([][]byte, error) { return r.OpenEvents() }
	res, err := daemon.WriteExport(ctx, w, r.Batches, req, last, open, prog.batch)
	r.Close()
	if err != nil {
		return sum, err
	}
	sum.ExportResult = res
	sum.from = "from the stopped spool " + cfg.SpoolPath()
	ev := daemon.ExportEvent(whoami(), viaSpool, req, res, nil, time.Now())
	if err := recordOffline(ctx, cfg, &ev); err != nil {
		return sum, fmt.Errorf("could not record the export in the spool's chain, so it is not kept (needs write access to %s and its keys): %w", cfg.DataDir, err)
	}
	sum.eventID = ev.ID
	return sum, nil
}

// recordOffline appends e to the stopped spool in cfg.DataDir and seals it. Unlike the
// daemon's start, it never quarantines a damaged spool (spool.Options.NoQuarantine):
// a tool that records must leave the evidence as it found it; the damage is then
// returned, and the daemon's next start records it.
func recordOffline(ctx context.Context, cfg *daemon.Config, e *audit.Event) error {
	keys, err := offlineKeys(cfg)
	if err != nil {
		return err
	}
	defer keys.Close()
	opts := cfg.SpoolOptions(keys)
	opts.NoQuarantine = true
	if err := chainNames(cfg, &opts); err != nil {
		return err
	}
	return daemon.WithSpool(ctx, cfg, opts, func(sp *spool.Spool) error { return collectors.AppendSync(ctx, sp, e) })
}

// writeFileAtomic streams into a temp file beside path and renames it into place, so a
// reader never sees half an export.
func writeFileAtomic(path string, write func(io.Writer) error) error {
	f, err := os.CreateTemp(filepath.Dir(path), filepath.Base(path)+".*.tmp")
	if err != nil {
		// Name what the user gave, not the temporary file beside it.
		return fmt.Errorf("export: cannot write %s: %w", path, errors.Unwrap(err))
	}
	defer os.Remove(f.Name())
	if err := write(f); err != nil {
		f.Close()
		return fmt.Errorf("export: %w", err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("export: %w", err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("export: %w", err)
	}
	if err := os.Rename(f.Name(), path); err != nil {
		return fmt.Errorf("export: %w", err)
	}
	return atomicfile.SyncDir(filepath.Dir(path))
}

// parseWhen reads -since and -until: an RFC 3339 time, or a duration before now.
func parseWhen(s string, now time.Time) (time.Time, error) {
	if s == "" {
		return time.Time{}, nil
	}
	if t, err := time.Parse(time.RFC3339Nano, s); err == nil {
		return t, nil
	}
	if d, err := time.ParseDuration(s); err == nil && d > 0 {
		return now.Add(-d), nil
	}
	return time.Time{}, fmt.Errorf("%q is neither an RFC 3339 time (2026-12-01T08:00:00Z) nor a duration ago (24h, 90m)", s)
}

// listFlag is a repeatable flag; values may also be comma-separated.
type listFlag []string

func (l *listFlag) String() string     { return strings.Join(*l, ",") }
func (l *listFlag) Set(v string) error { *l = append(*l, v); return nil }

// progress draws one line on stderr while a long export or verify runs, only when
// stderr is a terminal.
type progress struct {
	name  string
	on    bool
	begin time.Time

	total, seq, events, bytes atomic.Int64 // total: the last seq of the run, when known
	done                      chan struct{}
	drawn                     atomic.Bool
}

func newProgress(name string, terminal bool) *progress {
	p := &progress{name: name, on: terminal, begin: time.Now(), done: make(chan struct{})}
	if p.on {
		go p.loop()
	}
	return p
}

func (p *progress) loop() {
	t := time.NewTicker(progressEvery)
	defer t.Stop()
	for {
		select {
		case <-p.done:
			return
		case <-t.C:
			line := fmt.Sprintf("%s: %s", p.name, byteSize(p.bytes.Load()))
			switch s, n := p.seq.Load(), p.total.Load(); {
			case s > 0 && n > 0:
				line += fmt.Sprintf(", seq %d of %d", s, n)
			case s > 0:
				line += fmt.Sprintf(", seq %d", s)
			case n > 0:
				line += fmt.Sprintf(" of the chain up to seq %d", n) // through the daemon: bytes only
			}
			if n := p.events.Load(); n > 0 {
				line += fmt.Sprintf(", %d events (%s)", n, rate(int(n), time.Since(p.begin)))
			}
			fmt.Fprintf(os.Stderr, "\r\033[K%s", line)
			p.drawn.Store(true)
		}
	}
}

// batch is the progress callback of daemon.WriteExport.
func (p *progress) batch(r daemon.ExportResult) {
	if p == nil {
		return
	}
	p.seq.Store(int64(r.LastSeq))
	p.events.Store(int64(r.Events))
	p.bytes.Store(r.Bytes)
}

func (p *progress) stop() {
	if !p.on {
		return
	}
	close(p.done)
	if p.drawn.Load() {
		fmt.Fprint(os.Stderr, "\r\033[K")
	}
}

// countWriter counts what passes, for the progress line and the summary.
type countWriter struct {
	w    io.Writer
	n    int64
	prog *progress
}

func (c *countWriter) Write(b []byte) (int, error) {
	n, err := c.w.Write(b)
	c.n += int64(n)
	c.prog.bytes.Store(c.n)
	return n, err
}

func byteSize(n int64) string {
	switch {
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%d bytes", n)
}

func rate(events int, d time.Duration) string {
	if d <= 0 {
		return "-"
	}
	return fmt.Sprintf("%.0f events/s", float64(events)/d.Seconds())
}

// Usage prints the man page.
func (c *ExportCommand) Usage() {
	fmt.Fprintf(os.Stderr, `The export command writes the sealed batches of the appliance's chain to a file in the
batch wire format (docs/format.md), for offline verification with "edgeaudit verify
-key". With -events it writes the normalized events as JSON lines instead, for people
and scripts.

While the daemon runs, the export goes through its admin endpoint (GET /v1/export,
with the admin token in DIR/keys/admin.token): the daemon cuts the chain at its head
when the export starts and streams the batches up to it, reading each batch in a short
read transaction of its own, so collection goes on meanwhile. The daemon is found at
the address it publishes in DIR/%[1]s, else at the config's admin: address. With the
daemon stopped, the command reads the spool itself. Standard error says which was used,
and what was written (batches, events, seq range, bytes, time); a progress line is
drawn on long runs when standard error is a terminal.

Every export is recorded in the chain as an %[2]s event (DICOM %[3]s %[4]s) naming
who ran it, the filters and what was written: by the daemon, or, with the daemon
stopped, in the spool by this command (which then needs write access to the data
folder and its keys). The file is put in place only once the export is recorded.

Usage:

	edgeaudit export -data DIR -out FILE [arguments]
	edgeaudit export -config FILE -out FILE [arguments]

Arguments:

	-data DIR
	    The data folder. Defaults to the config's data_dir.

	-out FILE
	    Output file (written atomically), or - for standard output.

	-config FILE
	    The daemon's config file: its admin: address, data_dir, and keys: section.
	    With the daemon stopped, the events in spool.db are encrypted under the data
	    key (spool.encrypt) and the export holds them in clear, so the data key is
	    opened as the daemon opens it: keys/data.key, or the TPM seal at
	    keys.tpm_device. Defaults to the built-in defaults.

	-events
	    Write events as JSON lines, one per line, in chain order.

	-open
	    With -events: add the committed events not yet sealed into a batch (through
	    the daemon: every event committed after the exported head).

	-from SEQ, -to SEQ
	    First and last batch to export. Default to 1 and the head when the export
	    starts. A file that starts after seq 1 verifies with "verify -partial".

	-since TIME, -until TIME
	    Events whose time (the source's) is at or after -since and before -until:
	    an RFC 3339 time (2026-12-01T08:00:00Z) or a duration before now (24h, 90m).

	-action ACTION
	    Events with this taxonomy action (docs/taxonomy.md); repeatable or comma-
	    separated, any one matching. phi.* matches every action starting "phi.".

	-patient TOKEN
	    Events whose patient is this token (pat_...).

	-source NAME
	    Events whose source host, app, AE title, IP address or kind (syslog, dicom,
	    hl7, fhir, self) is NAME; repeatable or comma-separated.

	The filters apply to each event with -events. Without -events they select whole
	batches that hold at least one matching event, since only a whole batch verifies
	against its signed root: the file then holds other events too, and the batches
	kept need not be contiguous: "verify -gaps" checks each one's signature and
	root, and the prev links where seqs are adjacent.
`, daemon.AdminAddrFile, daemon.ActionExport, daemon.CodeExport.Code, daemon.CodeExport.Text)
}
