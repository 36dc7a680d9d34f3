// Command edgeaudit is the imaging-center audit appliance: one binary for the daemon,
// the field checks and the offline tools.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
)

// Exit codes.
const (
	exitOK      = 0
	exitFailure = 1 // the command ran and found a problem (bad chain, daemon error)
	exitUsage   = 2 // wrong flags or arguments
)

// usageError marks errors that are the caller's to fix; main prints usage for them.
type usageError struct{ msg string }

func (e *usageError) Error() string { return e.msg }

// exitCodeError ends the process with its own code, printing its message when there is
// one (health: 1 warning, 2 failure).
type exitCodeError struct {
	code int
	msg  string
}

func (e *exitCodeError) Error() string { return e.msg }

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	err := run(ctx, os.Args[1:], stop)
	var ue *usageError
	var ce *exitCodeError
	switch {
	case err == nil:
		os.Exit(exitOK)
	case errors.As(err, &ce):
		if ce.msg != "" {
			fmt.Fprintln(os.Stderr, "edgeaudit:", ce.msg)
		}
		os.Exit(ce.code)
	case errors.Is(err, flag.ErrHelp):
		os.Exit(exitOK)
	case errors.As(err, &ue):
		fmt.Fprintln(os.Stderr, "edgeaudit:", err)
		os.Exit(exitUsage)
	default:
		fmt.Fprintln(os.Stderr, "edgeaudit:", err)
		os.Exit(exitFailure)
	}
}

// run dispatches to the subcommand. stop releases the signal handler, so that a second
// SIGTERM during an orderly shutdown kills the process at once.
func run(ctx context.Context, args []string, stop func()) error {
	if len(args) == 0 {
		usage()
		return &usageError{"no command"}
	}
	cmd, rest := args[0], args[1:]
	switch cmd {
	case "run":
		return (&RunCommand{stopSignals: stop}).Run(ctx, rest)
	case "verify":
		return (&VerifyCommand{}).Run(ctx, rest)
	case "export":
		return (&ExportCommand{}).Run(ctx, rest)
	case "query":
		return (&QueryCommand{}).Run(ctx, rest)
	case "config":
		return (&ConfigCommand{}).Run(ctx, rest)
	case "demo":
		return (&DemoCommand{}).Run(ctx, rest)
	case "health":
		return (&HealthCommand{}).Run(ctx, rest)
	case "keys":
		return (&KeysCommand{}).Run(ctx, rest)
	case "receipts":
		return (&ReceiptsCommand{}).Run(ctx, rest)
	case "token":
		return (&TokenCommand{}).Run(ctx, rest)
	case "receive":
		return (&ReceiveCommand{stopSignals: stop}).Run(ctx, rest)
	case "devices":
		return (&DevicesCommand{}).Run(ctx, rest)
	case "version":
		return (&VersionCommand{}).Run(ctx, rest)
	case "install":
		return (&InstallCommand{}).Run(ctx, rest)
	case "uninstall":
		return (&UninstallCommand{}).Run(ctx, rest)
	case "start":
		return (&StartCommand{}).Run(ctx, rest)
	case "stop":
		return (&StopCommand{}).Run(ctx, rest)
	case "status":
		return (&StatusCommand{}).Run(ctx, rest)
	case "help", "-h", "--help":
		usage()
		return nil
	default:
		usage()
		return &usageError{fmt.Sprintf("unknown command %q", cmd)}
	}
}

// onlySubcommand checks the first argument of a command that has one subcommand:
// help prints usage (exit 0); anything but sub is a usage error.
func onlySubcommand(args []string, cmd, sub string, usage func()) error {
	switch {
	case len(args) > 0 && isHelp(args[0]):
		usage()
		return flag.ErrHelp
	case len(args) == 0 || args[0] != sub:
		usage()
		return &usageError{fmt.Sprintf("%s: the only subcommand is %s", cmd, sub)}
	}
	return nil
}

// isHelp reports whether arg asks for help instead of naming a subcommand.
func isHelp(arg string) bool {
	switch arg {
	case "-h", "-help", "--help", "help":
		return true
	}
	return false
}

func usage() {
	fmt.Fprint(os.Stderr, `edgeaudit is the audit-trail appliance of an imaging center: it collects audit
messages, seals them into signed, hash-chained batches and keeps them until central
has them.

Usage:

	edgeaudit <command> [arguments]

The commands are:

	run       run the daemon in the foreground
	verify    check a spool or exported batches: chain, signatures, Merkle roots
	export    write sealed batches (or their events as JSON lines) to a file
	query     central: select stored events (audited), optionally as an evidence package
	config    print the sample config (the defaults); -check FILE: every problem; -effective [FILE]
	demo      the whole flow on this machine: appliance, central, traffic, report
	health    field check of the running daemon: exit 0 ok, 1 warning, 2 failure
	keys      show the signing key, or recover a lost one (the break is recorded)
	receipts  apply central's receipts carried by hand (air-gapped sites)
	token     reveal the identifier behind a patient token (audited)
	receive   central: receive, verify and store batches, answer with receipts
	devices   central: enrol, list and remove device keys
	install   register the daemon as a system service (systemd, SysV, Windows)
	uninstall remove the service that install registered
	start     start the installed service
	stop      stop the service (orderly: seal, close)
	status    say whether the service runs: exit 0 running, 3 stopped, 4 not installed
	version   print the release, commit, build time, Go version and FIPS state

Use "edgeaudit <command> -h" for more information about a command.
`)
}

// newLogger builds the root logger: text to stderr, which journald captures.
func newLogger(level string) *slog.Logger {
	var l slog.Level
	if err := l.UnmarshalText([]byte(level)); err != nil {
		l = slog.LevelInfo
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: l}))
}
