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
	probe := fs.Bool("probe", false, "also send a test message through each listener and confirm it was committed (needs the admin token: root or the service user)")
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
	// The address the daemon of this data folder published, else the config's.
	admin := adminAddr(&cfg)
	if admin == "" {
		return &exitCodeError{healthFailure, "health: the config has no admin endpoint (admin:), so the daemon cannot be asked"}
	}
	body, status, err := getHealth(ctx, admin)
	if err != nil {
		pid := daemon.RunningPID(&cfg)
		what := "the daemon is not running: nothing is being collected. Start it (systemctl start edgeaudit, or edgeaudit run -config FILE) and check its log"
		if pid != 0 {
			what = fmt.Sprintf("the daemon runs (pid %d) but its admin endpoint %s does not answer (%v): it may be starting or stuck; see its log", pid, admin, err)
		} else if last := daemon.LastRunError(cfg.DataDir); last != "" {
			what += ". Its last run ended at " + last
		}
		return &exitCodeError{healthFailure, "health: " + what}
	}
	var probes []daemon.ProbeResult
	if *probe {
		b, err := adminPost(ctx, &cfg, "/v1/probe", "application/json", nil)
		if err != nil {
			return &exitCodeError{healthFailure, fmt.Sprintf("health: probe: %v", err)}
		}
		if err := json.Unmarshal(b, &probes); err != nil {
			return &exitCodeError{healthFailure, fmt.Sprintf("health: the daemon's probe answer does not parse: %v", err)}
		}
		for _, p := range probes {
			if p.Result == daemon.ProbeFailed {
				status = daemon.CheckFailure
			}
		}
	}
	if *asJSON {
		if *probe {
			// The daemon's answer with the probe beside it.
			var m map[string]json.RawMessage
			if err := json.Unmarshal(body, &m); err == nil {
				m["probe"], _ = json.Marshal(probes)
				m["status"], _ = json.Marshal(status)
				body, _ = json.Marshal(m)
				body = append(body, '\n')
			}
		}
		out.Write(body)
		return healthExit(status)
	}
	var h daemonHealth
	if err := json.Unmarshal(body, &h); err != nil {
		return &exitCodeError{healthFailure, fmt.Sprintf("health: the daemon's answer does not parse: %v", err)}
	}
	h.Status = status
	printHealth(out, &h, probes)
	return healthExit(h.Status)
}

// printProbes adds a line per probed listener.
func printProbes(w io.Writer, probes []daemon.ProbeResult) {
	mark := map[string]string{daemon.ProbeCommitted: "ok  ", daemon.ProbeSkipped: "note", daemon.ProbeFailed: "FAIL"}
	for _, p := range probes {
		line := fmt.Sprintf("  %s probe %-16s %s %s", mark[p.Result], p.Listener, p.Addr, p.Result)
		if p.Result == daemon.ProbeCommitted {
			line += fmt.Sprintf(" in %.1f ms", p.Millis)
		}
		if p.Detail != "" {
			line += ": " + p.Detail
		}
		fmt.Fprintln(w, line)
	}
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
	client, base := daemon.AdminClient(admin, 0)
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+"/healthz", nil)
	if err != nil {
		return nil, "", err
	}
	resp, err := client.Do(req)
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
func printHealth(w io.Writer, h *daemonHealth, probes []daemon.ProbeResult) {
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
	printProbes(w, probes)
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
(config key admin:, loopback or a unix socket), and prints a checklist a field tech can read, one line
per check:

	listener.<key>   each listener bound (and a warning when its connections are all in use)
	keys             the signing key: in the TPM, or a software key and why; a failing signer
	fips             whether the Go Cryptographic Module runs in FIPS 140-3 mode
	spool, disk      the spool's size and room; the data folder's free space (nearly full: a warning)
	chain, scrub     the chain's tail and what was found at start; the last full check of the chain
	uplink           connected to the broker, batches central has not receipted, the last receipt
	clock            NTP state and offset
	cert.<key>       every certificate file: expired (failure) or expiring within 30 days (warning)
	input            inputs lost (a warning) or rejected in the last hour, by reason

Each line is ok, note (how this appliance is set up; it does not change the status),
WARN or FAIL.

Usage:

	edgeaudit health [-config FILE] [-data DIR] [-json] [-probe]

	-json
	    Print the daemon's answer (/healthz) as JSON instead, for monitoring. The same
	    checks are Prometheus metrics on /metrics (edgeaudit_health_check{check=...}).
	-probe
	    Also send a test message through each listener (syslog UDP, TCP, TLS, RELP, HL7
	    MLLP, FHIR) and confirm it was committed to the spool. The messages and the probe
	    are recorded in the chain. Needs the admin token in the data folder (run as root
	    or the service user). A TLS listener that requires client certificates the
	    appliance does not hold is skipped, not failed.

Exit status: 0 ok; 1 warning (collecting, but something needs a look); 2 failure
(something is broken, a probe failed, or the daemon is not running: the message says
which, and what to do).
`)
}
