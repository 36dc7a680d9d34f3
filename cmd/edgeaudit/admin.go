package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/edgeaudit/edgeaudit/daemon"
	"github.com/edgeaudit/edgeaudit/spool"
)

// errDaemonDown: no daemon answers on the admin endpoint; the command works on the data
// folder itself instead.
var errDaemonDown = errors.New("daemon not running")

// adminPost sends a privileged request to the running daemon's admin endpoint, with
// the admin token from the data folder. It returns the body of a 200 answer; any other
// status is an error carrying the daemon's message.
func adminPost(ctx context.Context, cfg *daemon.Config, path, contentType string, body []byte) ([]byte, error) {
	if cfg.Admin == "" {
		return nil, errDaemonDown
	}
	secret, err := os.ReadFile(cfg.AdminTokenPath())
	if errors.Is(err, os.ErrNotExist) {
		return nil, errDaemonDown
	}
	if err != nil {
		return nil, fmt.Errorf("read admin token (run as root or the service user): %w", err)
	}
	client, base := daemon.AdminClient(cfg.Admin, 30*time.Second)
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, base+path, bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Authorization", "Bearer "+strings.TrimSpace(string(secret)))
	req.Header.Set("Content-Type", contentType)
	req.Header.Set("X-Edgeaudit-User", whoami())
	resp, err := client.Do(req)
	if err != nil {
		var op *net.OpError
		if errors.As(err, &op) && op.Op == "dial" {
			return nil, errDaemonDown
		}
		return nil, err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if resp.StatusCode != http.StatusOK {
		return b, fmt.Errorf("daemon answered %s: %s", resp.Status, strings.TrimSpace(string(b)))
	}
	return b, nil
}

// applianceConfig loads the appliance's config file (the defaults without one), with
// -data overriding data_dir, and fills the defaults.
func applianceConfig(configPath, dataDir string) (daemon.Config, error) {
	cfg, err := daemon.LoadConfig(configPath)
	if err != nil {
		return cfg, err
	}
	if dataDir != "" {
		cfg.DataDir = dataDir
	}
	cfg.SetDefaults()
	return cfg, nil
}

// offlineKeys opens the keys of a stopped daemon's data folder: only existing ones (a
// tool never makes the first key of an appliance), in a software file or the TPM as
// keys.tpm says.
func offlineKeys(cfg *daemon.Config) (*daemon.Keyring, error) {
	if _, err := os.Stat(cfg.SpoolPath()); err != nil {
		return nil, fmt.Errorf("no spool in %s: %w", cfg.DataDir, err)
	}
	return daemon.OpenKeys(cfg, slog.New(slog.DiscardHandler))
}

// openSpoolReader opens the spool in a stopped daemon's data folder for reading. A spool
// whose events are encrypted is opened again with the data key, from the keys as the
// config at configPath ("" = the defaults) says (daemon.OpenDataKey: the signing key
// is not needed, and a TPM serves this one connection only while the key is unsealed).
func openSpoolReader(configPath, dataDir string) (*spool.Reader, error) {
	path := filepath.Join(dataDir, "spool.db")
	r, err := spool.OpenReader(path)
	if err != nil || !r.Encrypted() {
		return r, err
	}
	r.Close()
	cfg, err := daemon.LoadConfig(configPath)
	if err != nil {
		return nil, err
	}
	cfg.DataDir = dataDir
	cfg.SetDefaults()
	key, err := daemon.OpenDataKey(&cfg, slog.New(slog.DiscardHandler))
	if err != nil {
		return nil, fmt.Errorf("open the data key of the encrypted spool (give -config when the keys are in a TPM): %w", err)
	}
	return spool.OpenReaderWithKey(path, key)
}

// withOfflineSpool opens the spool of a stopped daemon with its existing signing key
// (never a new one), runs fn, seals what fn recorded so that it is in the chain now and
// not at the next start, and closes the spool.
func withOfflineSpool(ctx context.Context, cfg *daemon.Config, fn func(*spool.Spool) error) error {
	keys, err := offlineKeys(cfg)
	if err != nil {
		return err
	}
	defer keys.Close()
	return daemon.WithSpool(ctx, cfg, cfg.SpoolOptions(keys), fn)
}
