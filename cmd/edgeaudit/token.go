package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/user"
	"time"

	"github.com/edgeaudit/edgeaudit/collectors"
	"github.com/edgeaudit/edgeaudit/daemon"
	"github.com/edgeaudit/edgeaudit/spool"
	"github.com/edgeaudit/edgeaudit/vault"
)

// TokenCommand reveals the identifier behind a patient token; every reveal is written
// into the chain before the value is shown.
type TokenCommand struct{}

// Run implements the command.
func (c *TokenCommand) Run(ctx context.Context, args []string) error {
	if err := onlySubcommand(args, "token", "reveal", c.Usage); err != nil {
		return err
	}
	fs := flag.NewFlagSet("edgeaudit token reveal", flag.ContinueOnError)
	configPath := fs.String("config", "", "config file")
	dataDir := fs.String("data", "", "data folder (overrides data_dir)")
	reason := fs.String("reason", "", "why the token is revealed (recorded in the chain)")
	fs.Usage = c.Usage
	if err := fs.Parse(args[1:]); err != nil {
		return err
	}
	if fs.NArg() != 1 {
		return &usageError{"token reveal: need exactly one TOKEN"}
	}
	if *reason == "" {
		return &usageError{"token reveal: -reason is required; it is recorded in the audit chain"}
	}
	cfg, err := applianceConfig(*configPath, *dataDir)
	if err != nil {
		return err
	}
	req := daemon.RevealRequest{Token: fs.Arg(0), By: whoami(), Reason: *reason}

	value, err := revealOnline(ctx, &cfg, req)
	if errors.Is(err, errDaemonDown) {
		value, err = revealOffline(ctx, &cfg, req)
	}
	if err != nil {
		return fmt.Errorf("token reveal: %w", err)
	}
	fmt.Println(value)
	return nil
}

func revealOnline(ctx context.Context, cfg *daemon.Config, req daemon.RevealRequest) (string, error) {
	body, _ := json.Marshal(req)
	b, err := adminPost(ctx, cfg, "/v1/token/reveal", "application/json", body)
	if err != nil {
		return "", err
	}
	var out struct{ Value string }
	if err := json.Unmarshal(b, &out); err != nil {
		return "", err
	}
	return out.Value, nil
}

func revealOffline(ctx context.Context, cfg *daemon.Config, req daemon.RevealRequest) (string, error) {
	keys, err := offlineKeys(cfg)
	if err != nil {
		return "", err
	}
	key := keys.DataKey
	keys.Close() // withOfflineSpool opens them again: a swtpm serves one connection
	if _, err := os.Stat(cfg.VaultPath()); err != nil {
		return "", errors.New("the token vault is off or empty (privacy.vault: false)")
	}
	v, err := vault.Open(cfg.VaultPath(), key, true)
	if err != nil {
		return "", err
	}
	defer v.Close()
	value, gerr := v.Get(req.Token)
	if gerr != nil && !errors.Is(gerr, vault.ErrNotFound) {
		return "", gerr
	}
	err = withOfflineSpool(ctx, cfg, func(sp *spool.Spool) error {
		ev := daemon.RevealEvent(req, gerr == nil, time.Now())
		return collectors.AppendSync(ctx, sp, &ev)
	})
	if err != nil {
		return "", fmt.Errorf("could not record the reveal; nothing revealed: %w", err)
	}
	if gerr != nil {
		return "", gerr
	}
	return value, nil
}

func whoami() string {
	if s := os.Getenv("SUDO_USER"); s != "" {
		return s
	}
	if u, err := user.Current(); err == nil {
		return u.Username
	}
	return "unknown"
}

// Usage prints the man page.
func (c *TokenCommand) Usage() {
	fmt.Fprint(os.Stderr, `The token reveal command prints the identifier behind a patient token, for a privacy
officer on the appliance. It needs the token vault (privacy.vault: true) and read access
to the data folder's keys (root or the service user). Every reveal, found or not, is
written into the audit chain as an audit.token_reveal event naming the token, who asked
(the login name) and why, before anything is printed.

With the daemon running, the request goes to its admin endpoint with the secret in
keys/admin.token: the daemon is found at the address it writes to DIR/admin.addr (so
-data DIR alone is enough), else at the config's admin:. With the daemon stopped, the
command records the event in the spool itself.

Usage:

	edgeaudit token reveal -reason TEXT [-config FILE] [-data DIR] TOKEN
`)
}
