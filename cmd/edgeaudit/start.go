package main

import (
	"context"
	"fmt"
	"os"
)

// StartCommand starts the installed service.
type StartCommand struct{}

// Run implements the command.
func (c *StartCommand) Run(ctx context.Context, args []string) error {
	svc, sf, _, err := openInstalled("start", args, c.Usage, " (edgeaudit install, or the package)")
	if err != nil {
		return err
	}
	if err := svc.Start(); err != nil {
		return fmt.Errorf("start (%s): %w", platformOf(sf), err)
	}
	fmt.Printf("started the %s service; edgeaudit health checks it\n", serviceName)
	return nil
}

// Usage prints the man page.
func (c *StartCommand) Usage() {
	fmt.Fprintf(os.Stderr, `The start command asks the service manager to start the installed service
(systemctl start %[1]s, service %[1]s start, or the Windows SCM) and returns once it
is launched. The daemon binds its listeners shortly after; edgeaudit health says when
it is collecting.

Usage:

	edgeaudit start [-system NAME]

Arguments:

	-system NAME
	    Service manager: linux-systemd, unix-systemv or windows-service. Defaults to
	    the one this host runs.

Exits %[2]d when the service is not installed.
`, serviceName, statusNotInstalled)
}
