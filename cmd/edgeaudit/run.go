package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"strings"

	"github.com/edgeaudit/edgeaudit/daemon"
)

// RunCommand runs the daemon in the foreground.
type RunCommand struct {
	stopSignals func()
}

// Run parses flags, loads and validates the config, and runs until SIGINT or SIGTERM.
func (c *RunCommand) Run(ctx context.Context, args []string) (err error) {
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
	var probs *daemon.Problems
	if err != nil && !errors.As(err, &probs) {
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
	deviceFromHost := cfg.Device == ""
	cfg.SetDefaults()
	// Why the last run ended, for `edgeaudit health` to tell a field tech when the
	// daemon is not running (a port taken, a config refused, a listener failing).
	defer func() {
		if err != nil {
			daemon.RecordRunError(cfg.DataDir, err)
		}
	}()
	// Everything the config names is checked, and every problem reported, before
	// anything is opened: the same checks as `edgeaudit config -check`.
	if err := daemon.Preflight(&cfg); err != nil {
		return err
	}
	// What only the start can tell: whether each port is free (the daemon probes again).
	if err := daemon.ProbePorts(&cfg); err != nil {
		return err
	}
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
	startLog(log, *configPath, &cfg, deviceFromHost)
	// The process's soft memory limit (memory_limit): set here, not in New, because it
	// is the whole process's.
	daemon.ApplyMemoryLimit(&cfg, log)
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
	go func() {
		select {
		case <-d.Ready():
			daemon.ClearRunError(cfg.DataDir)
		case <-ctx.Done():
		}
	}()
	return d.Run(ctx)
}

// startLog says where the names and defaults come from, so that nothing is silent: the
// zero-config daemon's site, a device named after the host, the config's warnings.
func startLog(log *slog.Logger, configPath string, cfg *daemon.Config, deviceFromHost bool) {
	device := "config"
	if deviceFromHost {
		device = "host name (set device: to name it)"
	}
	if configPath == "" {
		log.Info("no -config: built-in defaults (edgeaudit config -effective shows them)",
			"site", cfg.Site, "site_from", "default (a config file must name it: site:)",
			"device", cfg.Device, "device_from", device, "data_dir", cfg.DataDir)
	} else if deviceFromHost {
		log.Info("device named after the host", "device", cfg.Device, "config", configPath)
	}
	for _, w := range cfg.Warnings() {
		log.Warn(w)
	}
}

// defaultListeners lists the zero-config listeners for the man page, from the
// constants the daemon uses.
func defaultListeners() string {
	var b strings.Builder
	for _, l := range []struct{ what, addr string }{
		{"syslog UDP (syslog.udp)", daemon.DefaultSyslogUDP},
		{"syslog TCP (syslog.tcp)", daemon.DefaultSyslogTCP},
		{"HL7 v2 MLLP (hl7.mllp)", daemon.DefaultHL7MLLP},
		{"FHIR plain HTTP (fhir.http)", daemon.DefaultFHIRHTTP},
		{"admin /metrics, /healthz (admin)", daemon.DefaultAdmin},
	} {
		fmt.Fprintf(&b, "\t    %-34s %s\n", l.what, l.addr)
	}
	return b.String()
}

// Usage prints the man page.
func (c *RunCommand) Usage() {
	fmt.Fprintf(os.Stderr, `The run command runs the daemon in the foreground until SIGINT or SIGTERM.

On SIGTERM it stops the collectors, seals the open batch and closes the spool within
shutdown_timeout; a second signal exits at once. Before it opens anything it checks the
whole config, as "edgeaudit config -check" does, and binds every listener once.
systemd and SysV init run it this way (edgeaudit install, or the package); started by
the Windows Service Control Manager it answers the SCM instead, and the SCM's stop
request stops it in the same order.

With no flags it runs without root: site %q, device the host name (the start log
says both), data in ./%s, a software signing key where no TPM answers, an
uplink to %s that retries in the background, and these listeners:

%s
Usage:

	edgeaudit run [arguments]

Arguments:

	-config PATH
	    Config file (YAML). Defaults to none: the built-in defaults above
	    ("edgeaudit config -effective" prints them). A config file opens only the
	    listeners it names (syslog and admin keep their defaults when it has no
	    syslog: or admin: key) and must name its site.

	-data DIR
	    Data folder with spool.db and keys/. Overrides data_dir.

	-syslog-udp ADDR, -syslog-tcp ADDR
	    Syslog listen addresses; "off" disables one. Override the config.

	-admin ADDR
	    Address of /metrics and /healthz; "off" disables it.
`, daemon.DefaultSite, daemon.DefaultDataDir, daemon.DefaultUplinkBroker, defaultListeners())
}
