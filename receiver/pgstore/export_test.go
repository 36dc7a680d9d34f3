package pgstore

import (
	"context"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5"

	"github.com/edgeaudit/edgeaudit/receiver"
)

// AppendInsertBatch is Append with the events inserted by a pgx.Batch of INSERT
// statements (one round trip) instead of COPY, for BenchmarkAppend's comparison.
func AppendInsertBatch(s *Store, ctx context.Context, e receiver.Entry) error {
	return s.append(ctx, e, insertEvents)
}

func insertEvents(ctx context.Context, tx pgx.Tx, rows [][]any) error {
	ph := make([]string, len(eventColumns))
	for i := range ph {
		ph[i] = "$" + strconv.Itoa(i+1)
	}
	sql := "INSERT INTO events (" + strings.Join(eventColumns, ", ") + ") VALUES (" + strings.Join(ph, ", ") + ")"
	var b pgx.Batch
	for _, r := range rows {
		b.Queue(sql, r...)
	}
	return tx.SendBatch(ctx, &b).Close()
}
