package main

import (
	"context"
	"fmt"
	"os"
)

// UninstallCommand removes the service that install registered.
type UninstallCommand struct{}

// Run implements the command.
func (c *UninstallCommand) Run(ctx context.Context, args []string) error {
	svc, sf, state, err := openInstalled("uninstall", args, c.Usage, "")
	if err != nil {
		return err
	}
	platform := platformOf(sf)
	if platform == "linux-systemd" {
		if _, err := os.Stat(packagedUnit); err == nil {
			return fmt.Errorf("uninstall: %s belongs to the edgeaudit package; remove the package instead (apt remove edgeaudit)", packagedUnit)
		}
	}
	// A unit removed while it runs leaves the daemon orphaned: stop it first.
	if state == stateRunning {
		if err := svc.Stop(); err != nil {
			return fmt.Errorf("uninstall: stop: %w", err)
		}
	}
	if err := svc.Uninstall(); err != nil {
		return fmt.Errorf("uninstall (%s): %w", platform, err)
	}
	if platform == "unix-systemv" {
		if err := removeSysvLinks(); err != nil {
			return fmt.Errorf("uninstall: %w", err)
		}
	}
	fmt.Printf("uninstalled the %s service (%s); the config and the data folder are kept\n", serviceName, platform)
	return nil
}

// Usage prints the man page.
func (c *UninstallCommand) Usage() {
	fmt.Fprintf(os.Stderr, `The uninstall command stops the service if it runs and removes what install wrote:
the systemd unit (disabled first), the SysV init script with its /etc/rc?.d links, or
the Windows service. The config file and the data folder (spool, keys, receipts) are
kept. A unit that the .deb or .rpm installed is left alone: remove the package.

Usage:

	edgeaudit uninstall [-system NAME]

Arguments:

	-system NAME
	    Service manager: linux-systemd, unix-systemv or windows-service. Defaults to
	    the one this host runs.

Exits %d when the service is not installed.
`, statusNotInstalled)
}
