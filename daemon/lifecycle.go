package daemon

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sync/atomic"
	"time"

	"github.com/edgeaudit/edgeaudit/audit"
	eacollectors "github.com/edgeaudit/edgeaudit/collectors"
	"github.com/edgeaudit/edgeaudit/internal/atomicfile"
	"github.com/edgeaudit/edgeaudit/spool"
)

// lateSink lets the collectors be built, and so their TLS material be loaded and
// checked, before the spool is opened (a daemon that cannot start must leave no chain
// behind); it forwards to the spool once set. Collectors only append once they run,
// which is after set.
type lateSink struct {
	sp    atomic.Pointer[spool.Spool]
	watch *probeWatch // sees the commits of health probes' messages
}

// The FHIR collector finds AppendAll by a type assertion; without these checks, losing it
// would silently turn every transaction Bundle into a 501.
var (
	_ eacollectors.AtomicSink = (*lateSink)(nil)
	_ eacollectors.AtomicSink = (*spool.Spool)(nil)
)

func (l *lateSink) set(sp *spool.Spool) { l.sp.Store(sp) }

// errNoSpool is an append before the spool is open, which the start order rules out.
var errNoSpool = errors.New("spool not open yet")

func (l *lateSink) Append(ctx context.Context, e *audit.Event, done func(error)) error {
	sp := l.sp.Load()
	if sp == nil {
		return errNoSpool
	}
	return sp.Append(ctx, e, l.watch.wrap(e, done))
}

// AppendAll forwards the all-or-nothing append of a FHIR transaction.
func (l *lateSink) AppendAll(ctx context.Context, evs []*audit.Event, done func(error)) error {
	sp := l.sp.Load()
	if sp == nil {
		return errNoSpool
	}
	return sp.AppendAll(ctx, evs, done)
}

// probePorts binds and releases every configured collector address, so that a port in
// use fails the start before the spool is opened. The collectors bind again when they
// run; between the two another process could take a port, which then fails the run
// with a stop event in the chain, as any later listener failure does.
func probePorts(cfg *Config) error {
	type addr struct{ key, network, addr string }
	addrs := []addr{
		{"syslog.udp", "udp", cfg.Syslog.UDP},
		{"syslog.tcp", "tcp", cfg.Syslog.TCP},
		{"syslog.tls", "tcp", cfg.Syslog.TLS},
		{"syslog.relp", "tcp", cfg.Syslog.RELP},
		{"syslog.relp_tls", "tcp", cfg.Syslog.RELPTLS},
		{"hl7.mllp", "tcp", cfg.HL7.MLLP},
		{"fhir.http", "tcp", cfg.FHIR.HTTP},
	}
	var errs []error
	for _, a := range addrs {
		if a.addr == "" {
			continue
		}
		var err error
		if a.network == "udp" {
			var pc net.PacketConn
			if pc, err = net.ListenPacket("udp", a.addr); err == nil {
				pc.Close()
			}
		} else {
			var ln net.Listener
			if ln, err = net.Listen("tcp", a.addr); err == nil {
				ln.Close()
			}
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("listen %s %s: %w", a.key, a.addr, err))
		}
	}
	return errors.Join(errs...)
}

// The run marker is a file in the data folder that exists while the daemon runs. Found
// at start, it means the previous run ended without its stop event (kill -9, a crash,
// power loss), which the start event then says.
const runMarker = "running"

func markRunning(dataDir string) (unclean bool, err error) {
	path := filepath.Join(dataDir, runMarker)
	if _, err := os.Stat(path); err == nil {
		unclean = true
	}
	if err := os.MkdirAll(dataDir, 0o700); err != nil {
		return false, fmt.Errorf("create data folder: %w", err)
	}
	stamp := fmt.Sprintf("pid %d since %s\n", os.Getpid(), time.Now().UTC().Format(time.RFC3339))
	if err := atomicfile.WriteFile(path, []byte(stamp), 0o600); err != nil {
		return false, fmt.Errorf("write run marker: %w", err)
	}
	return unclean, nil
}

func clearRunning(dataDir string) error {
	path := filepath.Join(dataDir, runMarker)
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return atomicfile.SyncDir(dataDir)
}
