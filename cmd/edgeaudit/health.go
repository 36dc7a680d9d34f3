package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/edgeaudit/edgeaudit/daemon"
)

// HealthCommand is the field tech's check of a running appliance.
type HealthCommand struct {
	// Out is where the checklist goes (default stdout).
	Out io.Writer
}

// Health exit codes (DESIGN: 0 ok, 1 warning, 2 failure).
const (
	healthWarning = 1
	healthFailure = 2
)

// Run implements the command.
func (c *HealthCommand) Run(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("edgeaudit health", flag.ContinueOnError)
	configPath := fs.String("config", "", "config file")
	dataDir := fs.String("data", "", "data folder (overrides data_dir)")
	asJSON := fs.Bool("json", false, "print the daemon's /healthz answer as JSON")
	fs.Usage = c.Usage
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() != 0 {
		return &usageError{"health: no arguments"}
	}
	out := c.Out
	if out == nil {
		out = os.Stdout
	}
	cfg, err := applianceConfig(*configPath, *dataDir)
	if err != nil {
		return err
	}
	if cfg.Admin == "" {
		return &exitCodeError{healthFailure, "health: the config has no admin endpoint (admin:), so the daemon cannot be asked"}
	}
	body, status, err := getHealth(ctx, cfg.Admin)
	if err != nil {
		pid := daemon.RunningPID(&cfg)
		what := "the daemon is not running: nothing is being collected. Start it (systemctl start edgeaudit, or edgeaudit run -config FILE) and check its log"
		if pid != 0 {
			what = fmt.Sprintf("the daemon runs (pid %d) but its admin endpoint %s does not answer (%v): it may be starting or stuck; see its log", pid, cfg.Admin, err)
		}
		return &exitCodeError{healthFailure, "health: " + what}
	}
	if *asJSON {
		out.Write(body)
		return healthExit(status)
	}
	var h daemonHealth
	if err := json.Unmarshal(body, &h); err != nil {
		return &exitCodeError{healthFailure, fmt.Sprintf("health: the daemon's answer does not parse: %v", err)}
	}
	printHealth(out, &h)
	return healthExit(h.Status)
}

func healthExit(status string) error {
	switch status {
	case "ok":
		return nil
	case "warning":
		return &exitCodeError{code: healthWarning}
	default:
		return &exitCodeError{code: healthFailure}
	}
}

// getHealth asks the daemon; a 503 carries the same JSON (a failure).
func getHealth(ctx context.Context, admin string) ([]byte, string, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+admin+"/healthz", nil)
	if err != nil {
		return nil, "", err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return nil, "", err
	}
	var probe struct {
		Status string `json:"status"`
	}
	if err := json.Unmarshal(body, &probe); err != nil || probe.Status == "" {
		return nil, "", fmt.Errorf("answer %s: %s", resp.Status, strings.TrimSpace(string(body)))
	}
	if probe.Status == "starting" {
		return nil, "", errors.New("the daemon is starting (listeners not bound yet)")
	}
	return body, probe.Status, nil
}

// daemonHealth is /healthz (daemon.Health), as the checklist reads it.
type daemonHealth struct {
	daemon.Health
}

// printHealth writes the checklist: the headline, one line per check, and what the
// statuses mean when something is not ok.
func printHealth(w io.Writer, h *daemonHealth) {
	mark := map[string]string{daemon.CheckOK: "OK  ", daemon.CheckWarning: "WARN", daemon.CheckFailure: "FAIL"}
	fips := "FIPS 140-3 mode off"
	if h.FIPS {
		fips = "FIPS 140-3 mode on"
	}
	fmt.Fprintf(w, "%s edgeaudit %s  %s/%s  %s\n", mark[h.Status], h.Version, h.Site, h.Device, fips)
	lineMark := map[string]string{daemon.CheckOK: "ok  ", daemon.CheckNotice: "note", daemon.CheckWarning: "WARN", daemon.CheckFailure: "FAIL"}
	for _, c := range h.Checks {
		fmt.Fprintf(w, "  %s %-14s %s\n", lineMark[c.Status], c.Name, c.Detail)
	}
	switch h.Status {
	case daemon.CheckWarning:
		fmt.Fprintln(w, "WARN lines need a look; the appliance is collecting.")
	case daemon.CheckFailure:
		fmt.Fprintln(w, "FAIL lines are broken now: see the daemon's log (journalctl -u edgeaudit) and docs/operations.md.")
	}
}


// Usage prints the man page.
func (c *HealthCommand) Usage() {
	fmt.Fprint(os.Stderr, `The health command asks the running daemon how it is, over its admin endpoint
(config key admin:, loopback), and prints a checklist a field tech can read: the chain
and how far central has acknowledged it, the signing key (TPM or software, and why), the
spool, the uplink (state, unsent batches and the oldest one's age, the last receipt),
the clock (NTP state and offset), then every failure and warning the daemon reports.

Usage:

	edgeaudit health [-config FILE] [-data DIR] [-json]

	-json
	    Print the daemon's answer (/healthz) as JSON instead, for monitoring.

Exit status: 0 ok; 1 warning (collecting, but something needs a look); 2 failure
(something is broken, or the daemon is not running: the message says which, and what to
do).
`)
}
