package main

import (
	"context"
	"fmt"
	"os"

	"github.com/edgeaudit/edgeaudit/daemon"
)

// StopCommand stops the running service.
type StopCommand struct{}

// Run implements the command.
func (c *StopCommand) Run(ctx context.Context, args []string) error {
	svc, sf, _, err := openInstalled("stop", args, c.Usage, "")
	if err != nil {
		return err
	}
	if err := svc.Stop(); err != nil {
		return fmt.Errorf("stop (%s): %w", platformOf(sf), err)
	}
	fmt.Printf("stopped the %s service\n", serviceName)
	return nil
}

// Usage prints the man page.
func (c *StopCommand) Usage() {
	fmt.Fprintf(os.Stderr, `The stop command asks the service manager to stop the service and waits until it has:
the daemon gets SIGTERM (a stop request on Windows), stops its collectors, seals the
open batch and closes the spool within shutdown_timeout (default %s), well inside
the unit's TimeoutStopSec (%s).

Usage:

	edgeaudit stop [-system NAME]

Arguments:

	-system NAME
	    Service manager: linux-systemd, unix-systemv or windows-service. Defaults to
	    the one this host runs.

Exits %d when the service is not installed.
`, daemon.DefaultShutdownTimeout, serviceStopTimeout, statusNotInstalled)
}
