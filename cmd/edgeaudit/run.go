package main

import (
	"context"
	"flag"
	"fmt"
	"os"

	"github.com/edgeaudit/edgeaudit/daemon"
)

// RunCommand runs the daemon in the foreground.
type RunCommand struct {
	stopSignals func()
}

// Run parses flags, loads and validates the config, and runs until SIGINT or SIGTERM.
func (c *RunCommand) Run(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("edgeaudit run", flag.ContinueOnError)
	configPath := fs.String("config", "", "config file")
	dataDir := fs.String("data", "", "data folder (overrides data_dir)")
	udp := fs.String("syslog-udp", "", "syslog UDP address (overrides syslog.udp; \"off\" disables)")
	tcp := fs.String("syslog-tcp", "", "syslog TCP address (overrides syslog.tcp; \"off\" disables)")
	admin := fs.String("admin", "", "admin address (overrides admin; \"off\" disables)")
	fs.Usage = c.Usage
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return &usageError{fmt.Sprintf("run: unexpected argument %q", fs.Arg(0))}
	}
	cfg, err := daemon.LoadConfig(*configPath)
	if err != nil {
		return err
	}
	override := func(dst *string, v string) {
		switch v {
		case "":
		case "off":
			*dst = ""
		default:
			*dst = v
		}
	}
	override(&cfg.DataDir, *dataDir)
	override(&cfg.Syslog.UDP, *udp)
	override(&cfg.Syslog.TCP, *tcp)
	override(&cfg.Admin, *admin)
	cfg.SetDefaults()
	log := newLogger(cfg.LogLevel)
	if runAsService() {
		// Under the Windows SCM stderr goes nowhere: log to DATA_DIR/edgeaudit.log.
		l, closeLog, err := serviceLogger(cfg.DataDir, cfg.LogLevel)
		if err != nil {
			return err
		}
		defer closeLog()
		log = l
	}
	d, err := daemon.New(cfg, buildVersion(), log)
	if err != nil {
		return err
	}
	if runAsService() {
		// Started by the Windows Service Control Manager: it talks to the process
		// through service.Run, not signals.
		return runUnderSCM(d, cfg.ShutdownTimeout, log)
	}
	// After the first signal the handler is released: a second SIGTERM ends the process
	// at once instead of waiting out the orderly stop.
	go func() {
		<-ctx.Done()
		if c.stopSignals != nil {
			c.stopSignals()
		}
	}()
	return d.Run(ctx)
}

// Usage prints the man page.
func (c *RunCommand) Usage() {
	fmt.Fprintf(os.Stderr, `The run command runs the daemon in the foreground until SIGINT or SIGTERM.

On SIGTERM it stops the collectors, seals the open batch and closes the spool within
shutdown_timeout; a second signal exits at once. systemd and SysV init run it this way
(edgeaudit install, or the package); started by the Windows Service Control Manager it
answers the SCM instead, and the SCM's stop request stops it in the same order. With no flags it runs without root:
syslog on %s (UDP) and %s (TCP), admin on %s, data in ./%s, and a software signing key.

Usage:

	edgeaudit run [arguments]

Arguments:

	-config PATH
	    Config file (YAML). Defaults to none: the built-in defaults above.

	-data DIR
	    Data folder with spool.db and keys/. Overrides data_dir.

	-syslog-udp ADDR, -syslog-tcp ADDR
	    Syslog listen addresses; "off" disables one. Override the config.

	-admin ADDR
	    Address of /metrics and /healthz; "off" disables it.
`, daemon.DefaultSyslogUDP, daemon.DefaultSyslogTCP, daemon.DefaultAdmin, daemon.DefaultDataDir)
}
