package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/user"
	"path/filepath"
	"runtime"
	"strconv"

	"github.com/edgeaudit/edgeaudit/daemon"
)

// InstallCommand registers the daemon with the host's service manager.
type InstallCommand struct{}

// Run implements the command.
func (c *InstallCommand) Run(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("edgeaudit install", flag.ContinueOnError)
	configPath := fs.String("config", defaultServiceConfig(), "config file the service runs with")
	userName := fs.String("user", "", "run the service as this user")
	var sf serviceFlags
	sf.register(fs)
	fs.Usage = c.Usage
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return &usageError{fmt.Sprintf("install: unexpected argument %q", fs.Arg(0))}
	}
	platform := platformOf(sf)
	if platform == "linux-systemd" {
		if _, err := os.Stat(packagedUnit); err == nil {
			return fmt.Errorf("install: the edgeaudit package already installed %s; use systemctl enable --now edgeaudit (and systemctl edit edgeaudit for changes)", packagedUnit)
		}
	}
	if *userName != "" && platform == "unix-systemv" {
		return &usageError{"install: -user is not supported with SysV init scripts (they start the daemon as root); install the package, or run under systemd"}
	}
	if *userName != "" && runtime.GOOS != "windows" {
		if _, err := user.Lookup(*userName); err != nil {
			return fmt.Errorf("install: -user %s: %w (create it first: useradd --system --home-dir /var/lib/edgeaudit --shell /usr/sbin/nologin %s)", *userName, err, *userName)
		}
	}
	abs, err := filepath.Abs(*configPath)
	if err != nil {
		return fmt.Errorf("install: %w", err)
	}
	// The service must start: check the config as `config -check` and `run` do.
	cfg, err := daemon.LoadConfig(abs)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("install: %w; write one first (edgeaudit config > %s, then edit it), or give -config", err, abs)
		}
		return fmt.Errorf("install: %w", err)
	}
	cfg.SetDefaults()
	if err := cfg.Validate(); err != nil {
		return fmt.Errorf("install: %s: %w", abs, err)
	}
	dataDir, err := filepath.Abs(cfg.DataDir)
	if err != nil {
		return fmt.Errorf("install: %w", err)
	}
	if err := prepareDataDir(dataDir, *userName); err != nil {
		return fmt.Errorf("install: %w", err)
	}
	_, gerr := user.LookupGroup("tss")
	s := &serviceSettings{configPath: abs, user: *userName, dataDir: dataDir,
		stopTimeout: stopTimeoutFor(cfg.ShutdownTimeout), tssGroup: gerr == nil}
	svc, err := newService(sf, noProgram{}, s)
	if err != nil {
		return err
	}
	if err := svc.Install(); err != nil {
		return fmt.Errorf("install (%s): %w", platform, err)
	}
	fmt.Printf("installed the %s service (%s): run -config %s, data in %s; start it with edgeaudit start\n", serviceName, platform, abs, dataDir)
	return nil
}

// prepareDataDir creates the data folder (0700) for the service's user, so that a
// folder outside /var/lib/edgeaudit (which systemd's StateDirectory makes) exists
// and is theirs when ReadWritePaths names it.
func prepareDataDir(dir, userName string) error {
	if runtime.GOOS == "windows" || dir == "/var/lib/edgeaudit" {
		return nil
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	if userName == "" {
		return nil
	}
	u, err := user.Lookup(userName)
	if err != nil {
		return fmt.Errorf("-user: %w", err)
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	return os.Chown(dir, uid, gid)
}

// Usage prints the man page.
func (c *InstallCommand) Usage() {
	fmt.Fprintf(os.Stderr, `The install command registers the daemon as a system service that starts at boot:
a hardened systemd unit in /etc/systemd/system/%[1]s.service (the same settings as the
packaged one), a SysV init script where systemd is not running, or a Windows service.
The service runs "%[1]s run -config PATH". The config is checked first, as config -check
does; install does not start the service (edgeaudit start does).

On a host with the .deb or .rpm installed, use systemctl instead: the package has
already installed the unit.

Usage:

	edgeaudit install [arguments]

Arguments:

	-config PATH
	    Config file the service runs with; made absolute. Defaults to %[2]s.

	-user NAME
	    Run the service as this user (systemd and Windows). Defaults to root
	    (LocalSystem on Windows), confined by the unit's capability bounding set.
	    A data folder outside /var/lib/edgeaudit is created and given to NAME.

	-system NAME
	    Service manager: linux-systemd, unix-systemv or windows-service. Defaults to
	    the one this host runs.

The unit's TimeoutStopSec is %[3]s, or shutdown_timeout + %[4]s when that is larger, so
that the orderly stop always fits.
`, serviceName, defaultServiceConfig(), serviceStopTimeout, serviceStopMargin)
}
