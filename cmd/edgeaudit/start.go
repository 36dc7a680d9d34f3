package main

import (
	"context"
	"flag"
	"fmt"
	"os"
)

// StartCommand starts the installed service.
type StartCommand struct{}

// Run implements the command.
func (c *StartCommand) Run(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("edgeaudit start", flag.ContinueOnError)
	var sf serviceFlags
	sf.register(fs)
	fs.Usage = c.Usage
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return &usageError{fmt.Sprintf("start: unexpected argument %q", fs.Arg(0))}
	}
	svc, err := newService(sf, noProgram{}, nil)
	if err != nil {
		return err
	}
	state, err := queryState(sf, svc)
	if err != nil {
		return fmt.Errorf("start: %w", err)
	}
	if state == stateNotInstalled {
		return &exitCodeError{statusNotInstalled, "start: the " + serviceName + " service is not installed (edgeaudit install, or the package)"}
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
