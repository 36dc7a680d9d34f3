package central

import (
	"context"
	"fmt"
	"log/slog"

	"github.com/edgeaudit/edgeaudit/receiver"
	"github.com/edgeaudit/edgeaudit/receiver/pgstore"
)

// openPostgres opens the PostgreSQL store and applies its migrations.
func openPostgres(ctx context.Context, dsn string, logger *slog.Logger) (receiver.Store, func(), error) {
	s, err := pgstore.Open(ctx, dsn, logger)
	if err != nil {
		return nil, nil, fmt.Errorf("open store postgres: %w", err)
	}
	if err := s.Migrate(ctx); err != nil {
		s.Close()
		return nil, nil, fmt.Errorf("open store postgres: %w", err)
	}
	return s, s.Close, nil
}
