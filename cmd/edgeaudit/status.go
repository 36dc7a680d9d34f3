package main

import (
	"context"
	"fmt"
	"io"
	"os"
)

// StatusCommand says whether the service runs.
type StatusCommand struct {
	// Out is where the answer goes (default stdout).
	Out io.Writer
}

// Run implements the command.
func (c *StatusCommand) Run(ctx context.Context, args []string) error {
	_, sf, state, err := openService("status", args, c.Usage)
	if err != nil {
		return err
	}
	out := c.Out
	if out == nil {
		out = os.Stdout
	}
	fmt.Fprintf(out, "%s service (%s): %s\n", serviceName, platformOf(sf), state)
	switch state {
	case stateRunning:
		return nil
	case stateFailed:
		return &exitCodeError{statusStopped, "the service failed; see journalctl -u " + serviceName}
	case stateStopped:
		return &exitCodeError{code: statusStopped}
	default:
		return &exitCodeError{code: statusNotInstalled}
	}
}

// Usage prints the man page.
func (c *StatusCommand) Usage() {
	fmt.Fprintf(os.Stderr, `The status command asks the service manager whether the service runs and prints one
line: running, stopped, failed or not installed. It says nothing of the daemon's
health; edgeaudit health does.

Usage:

	edgeaudit status [-system NAME]

Arguments:

	-system NAME
	    Service manager: linux-systemd, unix-systemv or windows-service. Defaults to
	    the one this host runs.

Exits 0 when running, %d when stopped or failed, %d when not installed (as LSB init
scripts do).
`, statusStopped, statusNotInstalled)
}
