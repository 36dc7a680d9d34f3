package central

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"

	"github.com/edgeaudit/edgeaudit/internal/configerr"
	"github.com/edgeaudit/edgeaudit/receiver"
)

// Store is what central keeps batches in and queries: both stores implement it.
type Store interface {
	receiver.Store
	receiver.Querier
}

// ErrNoQueries: the configured store cannot answer queries (yet).
var ErrNoQueries = errors.New("store does not answer queries")

// OpenStore opens the configured store for queries (`edgeaudit query`): a folder, or a
// PostgreSQL database. close releases it; call it once when done.
func OpenStore(ctx context.Context, cfg Config, logger *slog.Logger) (Store, func(), error) {
	s, closeFn, err := openStore(ctx, cfg, logger)
	if err != nil {
		return nil, nil, err
	}
	q, ok := s.(Store)
	if !ok {
		closeFn()
		return nil, nil, fmt.Errorf("open store %s: %w", storeName(cfg.Store), ErrNoQueries)
	}
	return q, closeFn, nil
}

// storeName is the store for messages, without a DSN's password.
func storeName(s string) string {
	if IsPostgres(s) {
		return "postgres://…"
	}
	return s
}

// openStore opens the receiver's store: a FolderStore (its folder created 0700), or a
// PostgreSQL store, migrated.
func openStore(ctx context.Context, cfg Config, logger *slog.Logger) (receiver.Store, func(), error) {
	if IsPostgres(cfg.Store) {
		return openPostgres(ctx, cfg.Store, logger)
	}
	if cfg.Store == "" {
		return nil, nil, &configerr.Error{Field: "receive.store", Err: errors.New("required")}
	}
	if err := os.MkdirAll(cfg.Store, 0o700); err != nil {
		return nil, nil, fmt.Errorf("open store: %w", err)
	}
	return receiver.FolderStore{Dir: cfg.Store}, func() {}, nil
}
