package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/edgeaudit/edgeaudit/internal/atomicfile"
	"github.com/edgeaudit/edgeaudit/ledger"
)

// ExportCommand writes sealed batches in the wire format, or their events as JSON lines.
type ExportCommand struct{}

// Run implements the command.
func (c *ExportCommand) Run(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("edgeaudit export", flag.ContinueOnError)
	dataDir := fs.String("data", "", "data folder of a stopped daemon")
	configPath := fs.String("config", "", "config file, for the keys of an encrypted spool (default: the defaults)")
	out := fs.String("out", "", "output file, or - for standard output")
	events := fs.Bool("events", false, "write the normalized events as JSON lines instead of batches")
	open := fs.Bool("open", false, "with -events: also the committed events of the open (unsealed) batch")
	from := fs.Uint64("from", 1, "first seq to export")
	fs.Usage = c.Usage
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *dataDir == "" || *out == "" || fs.NArg() > 0 {
		return &usageError{"export: need -data DIR and -out FILE"}
	}
	if *open && !*events {
		return &usageError{"export: -open needs -events (unsealed events are not a batch)"}
	}
	r, err := openSpoolReader(*configPath, *dataDir)
	if err != nil {
		return err
	}
	defer r.Close()
	write := func(w io.Writer) error {
		bw := bufio.NewWriterSize(w, 256<<10)
		var buf []byte
		err := r.Batches(*from, func(b *ledger.Batch) error {
			if *events {
				for _, e := range b.Events {
					bw.Write(e)
					bw.WriteByte('\n')
				}
				return nil
			}
			buf = b.AppendWire(buf[:0])
			_, err := bw.Write(buf)
			return err
		})
		if err != nil {
			return err
		}
		if *open {
			evs, err := r.OpenEvents()
			if err != nil {
				return err
			}
			for _, e := range evs {
				bw.Write(e)
				bw.WriteByte('\n')
			}
		}
		return bw.Flush()
	}
	if *out == "-" {
		return write(os.Stdout)
	}
	return writeFileAtomic(*out, write)
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

// Usage prints the man page.
func (c *ExportCommand) Usage() {
	fmt.Fprint(os.Stderr, `The export command writes the sealed batches of a spool to a file in the batch wire
format (docs/format.md), for offline verification with "edgeaudit verify -key". With
-events it writes the normalized events as JSON lines instead, for people and scripts.

Usage:

	edgeaudit export -data DIR -out FILE [arguments]

Arguments:

	-data DIR
	    The data folder of a stopped daemon.

	-out FILE
	    Output file (written atomically), or - for standard output.

	-config FILE
	    The daemon's config file, for its keys: section. The events in spool.db are
	    encrypted under the data key (spool.encrypt), and the export holds them in
	    clear, so the data key is opened as the daemon opens it: keys/data.key, or
	    the TPM seal at keys.tpm_device. Defaults to the built-in defaults.

	-events
	    Write events as JSON lines, one per line, in chain order.

	-open
	    With -events: add the committed events not yet sealed into a batch.

	-from SEQ
	    First batch to export. Defaults to 1.
`)
}
