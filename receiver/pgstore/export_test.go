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

func insertEvents(ctx context.Context, tx pgx.Tx, e receiver.Entry, rows []eventRow) error {
	ph := make([]string, len(eventColumns))
	for i := range ph {
		ph[i] = "$" + strconv.Itoa(i+1)
	}
	sql := "INSERT INTO events (" + strings.Join(eventColumns, ", ") + ") VALUES (" + strings.Join(ph, ", ") + ")"
	var b pgx.Batch
	null := func(s string) any {
		if s == "" {
			return nil
		}
		return s
	}
	for i, r := range rows {
		var t, study any
		if r.hasTime {
			t = r.time
		}
		if len(r.study) > 0 {
			study = r.study
		}
		b.Queue(sql, e.Site, e.Device, e.Header.Chain, int64(e.Header.Seq), int32(i), t,
			null(r.action), null(r.outcome), null(r.patient), null(r.user), study, r.off, r.len, keysOrNil(r.keys))
	}
	return tx.SendBatch(ctx, &b).Close()
}

// MigrateTo applies the migrations up to version upTo only.
func MigrateTo(s *Store, ctx context.Context, upTo int) error { return s.migrate(ctx, upTo) }

func keysOrNil(k []string) any {
	if len(k) == 0 {
		return nil
	}
	return k
}
