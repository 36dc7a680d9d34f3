package pgstore

import (
	"context"
	"fmt"
	"strconv"
	"strings"

	"github.com/edgeaudit/edgeaudit/receiver"
)

// Query implements receiver.Querier. Each set field is one indexed condition; the
// matches come in (site, device, chain, seq, index) order, the primary key's.
//
// Event times are stored with PostgreSQL's microsecond precision (truncated), and
// From and To are truncated the same way, so two times within one microsecond compare
// as equal.
func (s *Store) Query(ctx context.Context, q receiver.Query, fn func(receiver.Match) error) error {
	sql, args := querySQL(q)
	rows, err := s.pool.Query(ctx, sql, args...)
	if err != nil {
		return fmt.Errorf("pgstore query: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var m receiver.Match
		var seq int64
		var idx int32
		if err := rows.Scan(&m.Site, &m.Device, &m.Chain, &seq, &idx, &m.Event); err != nil {
			return fmt.Errorf("pgstore query: %w", err)
		}
		m.Seq, m.Index = uint64(seq), int(idx)
		if err := fn(m); err != nil {
			return err
		}
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("pgstore query: %w", err)
	}
	return nil
}

// querySQL builds the statement for q: conditions only for the fields that are set,
// every value a parameter.
func querySQL(q receiver.Query) (string, []any) {
	var where []string
	var args []any
	cond := func(expr string, v any) {
		args = append(args, v)
		where = append(where, strings.ReplaceAll(expr, "$?", "$"+strconv.Itoa(len(args))))
	}
	if q.Site != "" {
		cond("site = $?", q.Site)
	}
	if q.Device != "" {
		cond("device = $?", q.Device)
	}
	// Each value filter is also a key (migration 0002) that the GIN on keys finds; the
	// column conditions are exact.
	var keys []string
	if q.Patient != "" {
		keys = append(keys, "p:"+q.Patient)
		cond("patient = $?", q.Patient)
	}
	if q.User != "" {
		keys = append(keys, "u:"+q.User)
		cond("actor_user = $?", q.User)
	}
	if prefix, ok := strings.CutSuffix(q.Action, "*"); ok && strings.HasSuffix(prefix, ".") {
		// "phi.*": every action under "phi." ("phi.view", "phi.export"); keys hold each
		// prefix of an action that ends with a dot.
		keys = append(keys, "a:"+prefix)
		cond(`action LIKE $? ESCAPE '\'`, likeEscape(prefix)+"%")
	} else if q.Action != "" {
		keys = append(keys, "a:"+q.Action)
		cond("action = $?", q.Action)
	}
	if q.Outcome != "" {
		cond("outcome = $?", q.Outcome)
	}
	if q.Study != "" {
		keys = append(keys, "s:"+q.Study)
		cond("study @> ARRAY[$?::text]", q.Study)
	}
	if len(keys) > 0 {
		cond(`keys @> $?::text[] COLLATE "C" AND keys IS NOT NULL`, keys)
	}
	if !q.From.IsZero() {
		cond("time >= $?", q.From)
	}
	if !q.To.IsZero() {
		cond("time < $?", q.To)
	}
	// event_bodies (migration 0002): the events' bytes from their batch's wire column,
	// read for the matches only.
	sql := "SELECT site, device, chain, seq, idx, body FROM event_bodies"
	if len(where) > 0 {
		sql += " WHERE " + strings.Join(where, " AND ")
	}
	sql += " ORDER BY site, device, chain, seq, idx"
	if q.Limit > 0 {
		args = append(args, q.Limit)
		sql += " LIMIT $" + strconv.Itoa(len(args))
	}
	return sql, args
}

// likeEscape escapes LIKE's wildcards and its escape character.
func likeEscape(s string) string {
	return strings.NewReplacer(`\`, `\\`, `%`, `\%`, `_`, `\_`).Replace(s)
}
