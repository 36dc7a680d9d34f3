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
	"github.com/edgeaudit/edgeaudit/ledger"
	"github.com/edgeaudit/edgeaudit/spool"
)

// errDaemonDown: no daemon answers on the admin endpoint; the command works on the data
// folder itself instead.
var errDaemonDown = errors.New("daemon not running")

// adminPost sends a privileged request to the running daemon's admin endpoint, with
// the admin token from the data folder. It returns the body of a 200 answer; any other
// status is an error carrying the daemon's message.
func adminPost(ctx context.Context, cfg *daemon.Config, path, contentType string, body []byte) ([]byte, error) {
	req, err := adminRequest(ctx, cfg, http.MethodPost, path, bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", contentType)
	resp, err := adminDo(req, &http.Client{Timeout: 30 * time.Second, Transport: daemon.AdminTransport(adminAddr(cfg))})
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	return io.ReadAll(io.LimitReader(resp.Body, 1<<20))
}

// adminAddr is where the daemon that runs on cfg.DataDir answers: the address it
// published in the data folder (daemon.AdminAddrFile), else the config's admin.
func adminAddr(cfg *daemon.Config) string {
	if a := daemon.ReadAdminAddr(cfg.DataDir); a != "" {
		return a
	}
	return cfg.Admin
}

// adminRequest builds a privileged request to the daemon that runs on cfg.DataDir,
// with the admin token from the data folder; errDaemonDown when there is no address or
// no token (a daemon that never ran there).
func adminRequest(ctx context.Context, cfg *daemon.Config, method, path string, body io.Reader) (*http.Request, error) {
	addr := adminAddr(cfg)
	if addr == "" {
		return nil, errDaemonDown
	}
	secret, err := os.ReadFile(cfg.AdminTokenPath())
	if errors.Is(err, os.ErrNotExist) {
		return nil, errDaemonDown
	}
	if err != nil {
		return nil, fmt.Errorf("read admin token (run as root or the service user): %w", err)
	}
	req, err := http.NewRequestWithContext(ctx, method, daemon.AdminBase(addr)+path, body)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Authorization", "Bearer "+strings.TrimSpace(string(secret)))
	req.Header.Set(daemon.UserHeader, whoami())
	return req, nil
}

// adminDo sends req and returns the response of a 200 answer. It is errDaemonDown when
// nothing listens there, and when what answers refuses this data folder's admin token:
// that is not the daemon of this data folder (one killed before it removed admin.addr,
// its port since taken, or another daemon on the default admin port); the command then
// works on the spool, which says "stop the daemon first" if the daemon does run. Any
// other status is an error carrying the daemon's message.
func adminDo(req *http.Request, client *http.Client) (*http.Response, error) {
	resp, err := client.Do(req)
	if err != nil {
		var op *net.OpError
		if errors.As(err, &op) && op.Op == "dial" {
			return nil, errDaemonDown
		}
		return nil, err
	}
	if resp.StatusCode == http.StatusOK {
		return resp, nil
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if resp.StatusCode == http.StatusUnauthorized {
		return nil, errDaemonDown
	}
	return nil, fmt.Errorf("daemon answered %s: %s", resp.Status, strings.TrimSpace(string(b)))
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
	opts := cfg.SpoolOptions(keys)
	if err := chainNames(cfg, &opts); err != nil {
		return err
	}
	return daemon.WithSpool(ctx, cfg, opts, fn)
}

// chainNames sets the site and device of opts to those the spool's chain already has:
// a command given only -data DIR knows no config, and a batch it sealed under the
// default names would break the chain (verify: reason chain).
func chainNames(cfg *daemon.Config, opts *spool.Options) error {
	r, err := spool.OpenReader(cfg.SpoolPath())
	if err != nil {
		return err
	}
	defer r.Close()
	pos, err := r.Position()
	if err != nil || pos.HeadSeq == 0 {
		return err
	}
	hb, err := r.Header(pos.HeadSeq)
	if errors.Is(err, spool.ErrNotFound) {
		return nil // pruned up to the head: nothing to continue from but the config
	}
	if err != nil {
		return err
	}
	h, err := ledger.ParseHeader(hb)
	if err != nil {
		return fmt.Errorf("read the chain's head: %w", err)
	}
	if h.Site != opts.Site || h.Device != opts.Device {
		def := daemon.DefaultConfig()
		def.SetDefaults()
		if cfg.Site != def.Site || cfg.Device != def.Device {
			// A config that names other ones is the wrong config for this spool.
			return fmt.Errorf("the chain in %s is site %q device %q, the config says %q %q: give the daemon's config", cfg.SpoolPath(), h.Site, h.Device, cfg.Site, cfg.Device)
		}
		opts.Site, opts.Device = h.Site, h.Device
	}
	return nil
}
