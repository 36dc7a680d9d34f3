package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"time"

	"github.com/kardianos/service"

	"github.com/edgeaudit/edgeaudit/daemon"
)

// The service commands (install, uninstall, start, stop, status) drive the host's
// service manager through github.com/kardianos/service: systemd where it is PID 1,
// SysV init scripts where it is not, the Service Control Manager on Windows.

const (
	serviceName = "edgeaudit"
	// serviceStopTimeout is the unit's TimeoutStopSec when shutdown_timeout is the
	// default: the daemon's orderly stop (8s) must fit inside it.
	serviceStopTimeout = 15 * time.Second
	// serviceStopMargin is what TimeoutStopSec keeps above a larger shutdown_timeout.
	serviceStopMargin = 7 * time.Second
	// packagedUnit is where the .deb and .rpm put their unit; install refuses to
	// shadow it with a second one in /etc/systemd/system.
	packagedUnit = "/lib/systemd/system/edgeaudit.service"
	// sysvScript is where kardianos writes the SysV init script.
	sysvScript = "/etc/init.d/" + serviceName
)

// Status exit codes, as LSB init scripts use them.
const (
	statusStopped      = 3 // installed, not running (or failed)
	statusNotInstalled = 4 // no such service (LSB: unknown)
)

// defaultServiceConfig is the config file a service runs with: the packaged one.
func defaultServiceConfig() string {
	if runtime.GOOS == "windows" {
		base := os.Getenv("ProgramData")
		if base == "" {
			base = `C:\ProgramData`
		}
		return filepath.Join(base, "edgeaudit", "config.yaml")
	}
	return "/etc/edgeaudit/config.yaml"
}

// serviceFlags are the flags every service command shares.
type serviceFlags struct {
	system string
}

func (f *serviceFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&f.system, "system", "", "service manager to use (linux-systemd, unix-systemv, windows-service); default: the one this host runs")
}

// openService is the start of start, stop, status and uninstall, which take only
// -system: it parses args and returns the service and its state.
func openService(cmd string, args []string, usage func()) (service.Service, serviceFlags, serviceState, error) {
	fs := flag.NewFlagSet("edgeaudit "+cmd, flag.ContinueOnError)
	var sf serviceFlags
	sf.register(fs)
	fs.Usage = usage
	if err := fs.Parse(args); err != nil {
		return nil, sf, 0, err
	}
	if fs.NArg() > 0 {
		return nil, sf, 0, &usageError{fmt.Sprintf("%s: unexpected argument %q", cmd, fs.Arg(0))}
	}
	svc, err := newService(sf, noProgram{}, nil)
	if err != nil {
		return nil, sf, 0, err
	}
	state, err := queryState(sf, svc)
	if err != nil {
		return nil, sf, 0, fmt.Errorf("%s: %w", cmd, err)
	}
	return svc, sf, state, nil
}

// openInstalled is openService for a command that needs the service installed.
func openInstalled(cmd string, args []string, usage func(), hint string) (service.Service, serviceFlags, serviceState, error) {
	svc, sf, state, err := openService(cmd, args, usage)
	if err == nil && state == stateNotInstalled {
		err = &exitCodeError{statusNotInstalled, cmd + ": the " + serviceName + " service is not installed" + hint}
	}
	return svc, sf, state, err
}

// serviceSettings are what install bakes into the service definition.
type serviceSettings struct {
	configPath  string        // absolute
	user        string        // "" = root (LocalSystem on Windows)
	dataDir     string        // absolute; writable for the service
	stopTimeout time.Duration // TimeoutStopSec
	tssGroup    bool          // the tss group (of /dev/tpmrm0) exists
}

// newService builds the kardianos service for prog. s is nil for the commands that
// only look at or drive an installed service.
func newService(f serviceFlags, prog service.Interface, s *serviceSettings) (service.Service, error) {
	cfg := &service.Config{
		Name:        serviceName,
		DisplayName: "edgeaudit audit-trail appliance",
		Description: "edgeaudit audit-trail appliance",
		Option:      service.KeyValue{},
	}
	if s != nil {
		cfg.Arguments = []string{"run", "-config", s.configPath}
		cfg.UserName = s.user
		cfg.Dependencies = []string{"Wants=network-online.target", "After=network-online.target time-sync.target"}
		cfg.Option["SystemdScript"] = systemdUnit(s)
		cfg.Option["SysvScript"] = sysvInitScript(s)
		// Windows: restart on failure after 5 s, as the unit does.
		cfg.Option["OnFailure"] = "restart"
		cfg.Option["OnFailureDelayDuration"] = "5s"
		cfg.Option["OnFailureResetPeriod"] = 600
	}
	if f.system == "" {
		return service.New(prog, cfg)
	}
	var names []string
	for _, sys := range service.AvailableSystems() {
		if sys.String() == f.system {
			return sys.New(prog, cfg)
		}
		names = append(names, sys.String())
	}
	return nil, &usageError{fmt.Sprintf("-system %q: not one of %s", f.system, strings.Join(names, ", "))}
}

// platformOf names the service manager svc talks to.
func platformOf(f serviceFlags) string {
	if f.system != "" {
		return f.system
	}
	if sys := service.ChosenSystem(); sys != nil {
		return sys.String()
	}
	return "none"
}

// noProgram is the service.Interface of the commands that do not run the daemon.
type noProgram struct{}

func (noProgram) Start(service.Service) error { return nil }
func (noProgram) Stop(service.Service) error  { return nil }

// program runs the daemon under a service manager that calls back (the Windows SCM,
// through service.Run): Start only launches it, Stop cancels and waits at most
// timeout for the orderly stop. Neither calls os.Exit.
type program struct {
	run     func(ctx context.Context) error
	timeout time.Duration
	log     *slog.Logger

	cancel context.CancelFunc
	done   chan error
}

// Start launches the daemon and returns at once.
func (p *program) Start(service.Service) error {
	ctx, cancel := context.WithCancel(context.Background())
	p.cancel, p.done = cancel, make(chan error, 1)
	go func() {
		err := p.run(ctx)
		if ctx.Err() == nil {
			// The daemon ended by itself (a fatal error): end the process with a
			// failure so that the service manager's recovery (restart) applies.
			p.log.Error("daemon stopped", "err", err)
			os.Exit(exitFailure)
		}
		p.done <- err
	}()
	return nil
}

// Stop cancels the daemon and waits for its orderly stop, at most p.timeout.
func (p *program) Stop(service.Service) error {
	if p.cancel == nil {
		return nil
	}
	p.cancel()
	select {
	case err := <-p.done:
		return err
	case <-time.After(p.timeout):
		return fmt.Errorf("stop: the daemon did not finish within %s", p.timeout)
	}
}

// runAsService reports whether this process was started by a service manager that
// expects service.Run: only the Windows SCM. Under systemd and SysV init `run` is an
// ordinary foreground process that stops on SIGTERM.
func runAsService() bool {
	return runtime.GOOS == "windows" && !service.Interactive()
}

// serviceLogger is the logger of a daemon the Windows SCM started: text, as on
// stderr, appended to dataDir/edgeaudit.log (the folder made 0700 if missing).
func serviceLogger(dataDir, level string) (*slog.Logger, func(), error) {
	if err := os.MkdirAll(dataDir, 0o700); err != nil {
		return nil, nil, fmt.Errorf("service log: %w", err)
	}
	f, err := os.OpenFile(filepath.Join(dataDir, "edgeaudit.log"), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return nil, nil, fmt.Errorf("service log: %w", err)
	}
	var l slog.Level
	if err := l.UnmarshalText([]byte(level)); err != nil {
		l = slog.LevelInfo
	}
	return slog.New(slog.NewTextHandler(f, &slog.HandlerOptions{Level: l})), func() { f.Close() }, nil
}

// runUnderSCM runs d until the SCM stops the service.
func runUnderSCM(d *daemon.Daemon, timeout time.Duration, log *slog.Logger) error {
	p := &program{run: d.Run, timeout: timeout + 2*time.Second, log: log}
	svc, err := newService(serviceFlags{}, p, nil)
	if err != nil {
		return err
	}
	return svc.Run()
}

// stopTimeoutFor is TimeoutStopSec for a daemon whose shutdown_timeout is d.
func stopTimeoutFor(d time.Duration) time.Duration {
	return max(serviceStopTimeout, (d + serviceStopMargin).Round(time.Second))
}

// systemdUnit is the unit `edgeaudit install` writes: the [Service] settings of
// packaging/edgeaudit.service (TestInstalledUnitMatchesPackaged compares them), with
// the config, user, data folder and stop timeout of this install. It is a template
// for kardianos' mini engine ({{Key}}, {{if Key}}, {{range Key}}); the values of this
// install are put in before it sees them.
func systemdUnit(s *serviceSettings) string {
	r := strings.NewReplacer(
		"@DATA_DIR@", s.dataDir,
		"@STOP_TIMEOUT@", strconv.Itoa(int(s.stopTimeout/time.Second))+"s",
		"@READ_WRITE@", readWritePaths(s.dataDir),
		"@SUPPLEMENTARY@", supplementaryGroups(s.tssGroup),
	)
	return r.Replace(systemdTemplate)
}

// supplementaryGroups gives the daemon the tss group for /dev/tpmrm0. A unit naming a
// group that does not exist fails to start (status 216/GROUP), so it is left out on
// hosts without one (no tpm-udev, no TPM); the package creates it instead.
func supplementaryGroups(tss bool) string {
	if !tss {
		return ""
	}
	return "SupplementaryGroups=tss\n"
}

// readWritePaths opens a data folder outside /var/lib/edgeaudit (StateDirectory) to
// the daemon, which ProtectSystem=strict would keep read-only.
func readWritePaths(dataDir string) string {
	if dataDir == "/var/lib/edgeaudit" {
		return ""
	}
	return "ReadWritePaths=" + dataDir + "\n"
}

const systemdTemplate = `# Written by edgeaudit install; edgeaudit uninstall removes it. The packaged
# /lib/systemd/system/edgeaudit.service has the same [Service] settings.
[Unit]
Description={{Description}}
Documentation=man:edgeaudit(8)
ConditionFileIsExecutable={{Path | cmdEscape}}
{{range Dependencies}}{{.}}
{{end}}
StartLimitIntervalSec=10min
StartLimitBurst=5

[Service]
Type=simple
ExecStart={{Path | cmdEscape}}{{range Arguments}} {{. | cmd}}{{end}}
EnvironmentFile=-/etc/default/edgeaudit
{{if UserName}}User={{UserName}}{{end}}
@SUPPLEMENTARY@WorkingDirectory=@DATA_DIR@
Restart=on-failure
RestartSec=5s
TimeoutStopSec=@STOP_TIMEOUT@
KillMode=mixed
LimitNOFILE=65536
UMask=0077

StateDirectory=edgeaudit
StateDirectoryMode=0700
RuntimeDirectory=edgeaudit
RuntimeDirectoryMode=0750
ConfigurationDirectory=edgeaudit
ConfigurationDirectoryMode=0755
@READ_WRITE@
AmbientCapabilities=CAP_NET_BIND_SERVICE
CapabilityBoundingSet=CAP_NET_BIND_SERVICE
NoNewPrivileges=yes
ProtectSystem=strict
ProtectHome=yes
PrivateTmp=yes
DevicePolicy=closed
DeviceAllow=/dev/tpmrm0 rw
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectKernelLogs=yes
ProtectControlGroups=yes
ProtectClock=yes
ProtectHostname=yes
ProtectProc=invisible
RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK
RestrictNamespaces=yes
RestrictRealtime=yes
RestrictSUIDSGID=yes
LockPersonality=yes
MemoryDenyWriteExecute=yes
RemoveIPC=yes
SystemCallArchitectures=native
SystemCallFilter=@system-service
SystemCallFilter=~@privileged
SystemCallErrorNumber=EPERM

[Install]
WantedBy=multi-user.target
`

// sysvInitScript is kardianos' SysV script with two changes: stop waits as long as
// the unit's TimeoutStopSec (kardianos waits 10 s, which a raised shutdown_timeout
// overruns), and status exits 3 when stopped, as LSB says.
func sysvInitScript(s *serviceSettings) string {
	return strings.NewReplacer("@STOP_WAIT@", strconv.Itoa(int(s.stopTimeout/time.Second))).Replace(sysvTemplate)
}

const sysvTemplate = `#!/bin/sh
# Written by edgeaudit install; edgeaudit uninstall removes it.
### BEGIN INIT INFO
# Provides:          edgeaudit
# Required-Start:    $network $remote_fs
# Required-Stop:     $network $remote_fs
# Default-Start:     2 3 4 5
# Default-Stop:      0 1 6
# Short-Description: {{DisplayName}}
# Description:       {{Description}}
### END INIT INFO

cmd="{{Path}}{{range Arguments}} {{. | cmd}}{{end}}"
name=edgeaudit
pid_file="/var/run/$name.pid"
stdout_log="{{LogDirectory}}/$name.log"
stderr_log="{{LogDirectory}}/$name.err"
[ -e /etc/default/$name ] && . /etc/default/$name

is_running() {
    [ -f "$pid_file" ] && kill -0 "$(cat "$pid_file")" 2>/dev/null
}

case "$1" in
    start)
        if is_running; then
            echo "Already started"
            exit 0
        fi
        echo "Starting $name"
        {{if WorkingDirectory}}cd '{{WorkingDirectory}}'{{end}}
        $cmd >> "$stdout_log" 2>> "$stderr_log" &
        echo $! > "$pid_file"
        if ! is_running; then
            echo "Unable to start, see $stdout_log and $stderr_log"
            exit 1
        fi
    ;;
    stop)
        if ! is_running; then
            echo "Not running"
            exit 0
        fi
        printf "Stopping %s.." "$name"
        kill "$(cat "$pid_file")"
        i=0
        while is_running && [ $i -lt @STOP_WAIT@ ]; do
            printf "."
            sleep 1
            i=$((i+1))
        done
        echo
        if is_running; then
            echo "Not stopped after @STOP_WAIT@s; may still be shutting down"
            exit 1
        fi
        rm -f "$pid_file"
        echo "Stopped"
    ;;
    restart)
        $0 stop || exit 1
        $0 start
    ;;
    status)
        if is_running; then
            echo "Running"
        else
            echo "Stopped"
            exit 3
        fi
    ;;
    *)
        echo "Usage: $0 {start|stop|restart|status}"
        exit 1
    ;;
esac
exit 0
`

// serviceState is what status reports.
type serviceState int

const (
	stateRunning serviceState = iota
	stateStopped
	stateFailed
	stateNotInstalled
)

func (s serviceState) String() string {
	return [...]string{"running", "stopped", "failed", "not installed"}[s]
}

// queryState asks the service manager, working around what kardianos' SysV support
// gets wrong: a stopped SysV service makes `service edgeaudit status` exit non-zero,
// which kardianos reports as StatusUnknown with "exit status 1" (or 3), and a missing
// one as the same error; the init script's presence tells them apart.
func queryState(f serviceFlags, svc service.Service) (serviceState, error) {
	st, err := svc.Status()
	if platformOf(f) == "unix-systemv" {
		if _, serr := os.Stat(sysvScript); serr != nil {
			return stateNotInstalled, nil
		}
		if st == service.StatusRunning && err == nil {
			return stateRunning, nil
		}
		// The script answers only Running (exit 0) or Stopped (non-zero).
		return stateStopped, nil
	}
	switch {
	case errors.Is(err, service.ErrNotInstalled):
		return stateNotInstalled, nil
	case err != nil && strings.Contains(err.Error(), "failed state"):
		return stateFailed, nil
	case err != nil:
		return 0, fmt.Errorf("status: %w", err)
	case st == service.StatusRunning:
		return stateRunning, nil
	case st == service.StatusStopped:
		return stateStopped, nil
	}
	return 0, fmt.Errorf("status: the service manager gives no answer (status %d)", st)
}

// removeSysvLinks removes the rc?.d links kardianos' SysV Install made and its
// Uninstall leaves dangling. Only links to the init script are touched.
func removeSysvLinks() error {
	var errs []error
	for _, rl := range []string{"0", "1", "2", "3", "4", "5", "6"} {
		for _, prefix := range []string{"S50", "K02"} {
			link := "/etc/rc" + rl + ".d/" + prefix + serviceName
			if target, err := os.Readlink(link); err == nil && target == sysvScript {
				if err := os.Remove(link); err != nil {
					errs = append(errs, err)
				}
			}
		}
	}
	return errors.Join(errs...)
}
