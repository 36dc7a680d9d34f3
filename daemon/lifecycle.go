package daemon

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
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
	_ eacollectors.UrgentSink = (*lateSink)(nil)
	_ eacollectors.UrgentSink = (*spool.Spool)(nil)
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

// AppendUrgent forwards an acknowledging sender's append (collectors.AppendSync).
func (l *lateSink) AppendUrgent(ctx context.Context, e *audit.Event, done func(error)) error {
	sp := l.sp.Load()
	if sp == nil {
		return errNoSpool
	}
	return sp.AppendUrgent(ctx, e, l.watch.wrap(e, done))
}

// AppendAll forwards the all-or-nothing append of a FHIR transaction.
func (l *lateSink) AppendAll(ctx context.Context, evs []*audit.Event, done func(error)) error {
	sp := l.sp.Load()
	if sp == nil {
		return errNoSpool
	}
	return sp.AppendAll(ctx, evs, done)
}

// probePorts binds every configured listener address (the collectors' and admin's),
// all at once, and releases them, so that a port in use fails the start before the
// spool is opened, with the key that names it. The collectors bind again when they run;
// between the two another process could take a port, which then fails the run with a
// stop event in the chain, as any later listener failure does.
func probePorts(cfg *Config) error {
	var errs []error
	var open []io.Closer
	defer func() {
		for _, c := range open {
			c.Close()
		}
	}()
	for _, a := range cfg.listeners() {
		var c io.Closer
		var err error
		if a.network == "udp" {
			c, err = net.ListenPacket("udp", a.addr)
		} else {
			c, err = net.Listen("tcp", a.addr)
		}
		if err != nil {
			errs = append(errs, portError(a.key, a.addr, err))
			continue
		}
		open = append(open, c)
	}
	return errors.Join(errs...)
}

// ProbePorts is probePorts for `run`, which calls it before the daemon is built, so
// that a port in use refuses the start before even the keys are made.
func ProbePorts(cfg *Config) error { return probePorts(cfg) }

// portError says why key's address could not be bound, and what to do.
func portError(key, addr string, err error) error {
	var hint string
	switch {
	case errors.Is(err, syscall.EADDRINUSE) || strings.Contains(err.Error(), "Only one usage of each socket address"): // Windows: WSAEADDRINUSE
		hint = fmt.Sprintf("address already in use (another process listens there; change %s or stop it)", key)
	case errors.Is(err, syscall.EACCES) || errors.Is(err, os.ErrPermission):
		hint = fmt.Sprintf("permission denied (ports below 1024 need root or CAP_NET_BIND_SERVICE; change %s to a port above 1023 or grant the capability)", key)
	case errors.Is(err, syscall.EADDRNOTAVAIL):
		hint = fmt.Sprintf("no interface of this machine has that address (change %s)", key)
	default:
		var oe *net.OpError
		if errors.As(err, &oe) && oe.Err != nil {
			err = oe.Err
		}
		hint = err.Error()
	}
	return &portErr{key: key, addr: addr, hint: hint, err: err}
}

// portErr is a listener that could not bind; its text names the key first.
type portErr struct {
	key, addr, hint string
	err             error
}

func (e *portErr) Error() string { return e.key + ": " + e.addr + ": " + e.hint }
func (e *portErr) Unwrap() error { return e.err }

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
