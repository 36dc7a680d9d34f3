// Package pgstore is the receiver's PostgreSQL store: heads, batches and their events
// (exact bytes plus indexed fields), append-only, shared safely by several receivers.
package pgstore

import (
	"bytes"
	"context"
	"embed"
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"math"
	"os"
	"path"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/edgeaudit/edgeaudit/ledger"
	"github.com/edgeaudit/edgeaudit/receiver"
)

// Compile-time checks: the receiver's interfaces, implemented here.
var (
	_ receiver.Store   = (*Store)(nil)
	_ receiver.Querier = (*Store)(nil)
)

//go:embed migrations/*.sql
var migrations embed.FS

// migrateLockKey is the pg_advisory_xact_lock key Migrate holds: any constant of ours
// ("edgeaud" in ASCII) that other software on the same database is unlikely to use.
const migrateLockKey int64 = 0x65646765617564

// Store keeps a receiver's batches in PostgreSQL. It is safe for concurrent use, and
// several receivers (processes) may share one database: each Append locks the device's
// head row, so two receivers never store two batches at one seq.
type Store struct {
	pool *pgxpool.Pool
	log  *slog.Logger
}

// Open connects to dsn (a libpq connection string or URL) and checks the connection.
// It does not migrate: call Migrate, connected as the tables' owner, once before
// receivers use the database.
func Open(ctx context.Context, dsn string, logger *slog.Logger) (*Store, error) {
	cfg, err := pgxpool.ParseConfig(dsn)
	if err != nil {
		return nil, fmt.Errorf("pgstore open: %w", err)
	}
	// Durable on return: Append's commit must reach the WAL on disk, whatever the
	// server's default is.
	cfg.ConnConfig.RuntimeParams["synchronous_commit"] = "on"
	cfg.ConnConfig.RuntimeParams["application_name"] = "edgeaudit-receiver"
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("pgstore open: %w", err)
	}
	if err := pool.Ping(ctx); err != nil {
		pool.Close()
		return nil, fmt.Errorf("pgstore open: %w", err)
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	return &Store{pool: pool, log: logger.With("component", "receiver.pgstore")}, nil
}

// Close closes the pool, waiting for connections in use to be returned.
func (s *Store) Close() { s.pool.Close() }

// migration is one embedded migrations/<version>_<name>.sql.
type migration struct {
	version int
	name    string
	sql     string
}

func loadMigrations() ([]migration, error) {
	files, err := fs.Glob(migrations, "migrations/*.sql")
	if err != nil {
		return nil, err
	}
	var out []migration
	for _, f := range files {
		base := path.Base(f)
		num, _, ok := strings.Cut(base, "_")
		v, err := strconv.Atoi(num)
		if !ok || err != nil || v <= 0 {
			return nil, fmt.Errorf("migration %s: name must be <version>_<name>.sql", base)
		}
		b, err := migrations.ReadFile(f)
		if err != nil {
			return nil, err
		}
		out = append(out, migration{version: v, name: base, sql: string(b)})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].version < out[j].version })
	for i := 1; i < len(out); i++ {
		if out[i].version == out[i-1].version {
			return nil, fmt.Errorf("migrations %s and %s share version %d", out[i-1].name, out[i].name, out[i].version)
		}
	}
	return out, nil
}

// Migrate applies the embedded migrations that are not applied yet, in version order,
// in one transaction under an advisory lock: receivers starting at once wait for each
// other, and the second finds everything applied. schema_migrations records each
// version and when it was applied. A failure rolls everything back.
func (s *Store) Migrate(ctx context.Context) error { return s.migrate(ctx, math.MaxInt) }

// migrate applies the migrations up to version upTo (tests stop at an older schema).
func (s *Store) migrate(ctx context.Context, upTo int) error {
	ms, err := loadMigrations()
	if err != nil {
		return fmt.Errorf("pgstore migrate: %w", err)
	}
	tx, err := s.pool.Begin(ctx)
	if err != nil {
		return fmt.Errorf("pgstore migrate: %w", err)
	}
	defer tx.Rollback(ctx) // a no-op after Commit
	if _, err := tx.Exec(ctx, "SELECT pg_advisory_xact_lock($1)", migrateLockKey); err != nil {
		return fmt.Errorf("pgstore migrate: lock: %w", err)
	}
	var exists bool
	if err := tx.QueryRow(ctx, "SELECT to_regclass('schema_migrations') IS NOT NULL").Scan(&exists); err != nil {
		return fmt.Errorf("pgstore migrate: %w", err)
	}
	if !exists {
		// Created only when missing: the writer role, which may not create tables, can
		// run Migrate on an up-to-date database.
		if _, err := tx.Exec(ctx, `CREATE TABLE schema_migrations (
			version integer PRIMARY KEY, name text NOT NULL, applied timestamptz NOT NULL DEFAULT now())`); err != nil {
			return fmt.Errorf("pgstore migrate: %w", err)
		}
	}
	applied := map[int]bool{}
	rows, err := tx.Query(ctx, "SELECT version FROM schema_migrations")
	if err != nil {
		return fmt.Errorf("pgstore migrate: %w", err)
	}
	for rows.Next() {
		var v int
		if err := rows.Scan(&v); err != nil {
			rows.Close()
			return fmt.Errorf("pgstore migrate: %w", err)
		}
		applied[v] = true
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("pgstore migrate: %w", err)
	}
	known := map[int]bool{}
	for _, m := range ms {
		known[m.version] = true
	}
	for v := range applied {
		if !known[v] {
			// A newer receiver migrated this database. This one may still work if
			// those migrations only added things, but an operator should know.
			s.log.Warn("database has a migration this receiver does not know; is an older version running?", "version", v)
		}
	}
	var done []string
	for _, m := range ms {
		if applied[m.version] || m.version > upTo {
			continue
		}
		if _, err := tx.Exec(ctx, m.sql); err != nil {
			return fmt.Errorf("pgstore migrate %s: %w", m.name, err)
		}
		if _, err := tx.Exec(ctx, "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)", m.version, m.name); err != nil {
			return fmt.Errorf("pgstore migrate %s: %w", m.name, err)
		}
		done = append(done, m.name)
	}
	if len(done) == 0 {
		return nil // nothing to commit; the deferred rollback releases the lock
	}
	if err := tx.Commit(ctx); err != nil {
		return fmt.Errorf("pgstore migrate: commit: %w", err)
	}
	s.log.Info("migrated", "applied", done)
	return nil
}

// Head implements receiver.Store.
func (s *Store) Head(ctx context.Context, site, device string) (receiver.Head, error) {
	var h receiver.Head
	var seq int64
	err := s.pool.QueryRow(ctx, "SELECT chain, seq, hash, receipt FROM heads WHERE site = $1 AND device = $2", site, device).
		Scan(&h.Chain, &seq, &h.Hash, &h.Receipt)
	if errors.Is(err, pgx.ErrNoRows) {
		return receiver.Head{}, nil
	}
	if err != nil {
		return receiver.Head{}, fmt.Errorf("pgstore head %s/%s: %w", site, device, err)
	}
	if seq == 0 {
		return receiver.Head{}, nil
	}
	h.Seq = uint64(seq)
	return h, nil
}

// Header implements receiver.Store.
func (s *Store) Header(ctx context.Context, site, device, chain string, seq uint64) ([]byte, error) {
	return s.bytesOf(ctx, "header", site, device, chain, seq)
}

// Batch implements receiver.Querier: the batch as received, in the wire format.
func (s *Store) Batch(ctx context.Context, site, device, chain string, seq uint64) ([]byte, error) {
	return s.bytesOf(ctx, "wire", site, device, chain, seq)
}

func (s *Store) bytesOf(ctx context.Context, column, site, device, chain string, seq uint64) ([]byte, error) {
	if seq > math.MaxInt64 {
		return nil, fmt.Errorf("pgstore %s seq %d: %w", column, seq, os.ErrNotExist)
	}
	var b []byte
	// column is one of two constants above, never input.
	err := s.pool.QueryRow(ctx, "SELECT "+column+" FROM batches WHERE site = $1 AND device = $2 AND chain = $3 AND seq = $4",
		site, device, chain, int64(seq)).Scan(&b)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, fmt.Errorf("pgstore %s %s/%s seq %d: %w", column, site, device, seq, os.ErrNotExist)
	}
	if err != nil {
		return nil, fmt.Errorf("pgstore %s %s/%s seq %d: %w", column, site, device, seq, err)
	}
	return b, nil
}

// Append implements receiver.Store. In one transaction it locks the device's head row
// (creating it when missing), checks that e follows the stored head (the next seq, the
// same chain, prev the head's hash), inserts the batch and its events and moves the
// head; the commit is durable (synchronous_commit on) before Append returns nil.
//
// When the stored head is not the one e follows (another receiver appended first), it
// writes nothing and returns an error wrapping receiver.ErrHeadMoved. The one exception
// is e itself, already stored as the head with the same receipt: a retry after a
// commit whose answer was lost, which returns nil.
func (s *Store) Append(ctx context.Context, e receiver.Entry) error {
	return s.append(ctx, e, copyEvents)
}

func (s *Store) append(ctx context.Context, e receiver.Entry, insertEvents func(context.Context, pgx.Tx, receiver.Entry, []eventRow) error) error {
	h := e.Header
	if h.Seq == 0 || h.Seq > math.MaxInt64 {
		return fmt.Errorf("pgstore append %s/%s: seq %d out of range", e.Site, e.Device, h.Seq)
	}
	rows := eventRows(e)
	tx, err := s.pool.BeginTx(ctx, pgx.TxOptions{})
	if err != nil {
		return fmt.Errorf("pgstore append %s/%s seq %d: %w", e.Site, e.Device, h.Seq, err)
	}
	defer tx.Rollback(ctx) // a no-op after Commit
	// One round trip: make sure the head row exists, then lock it. Every Append of the
	// device queues on this lock, so the check below sees the last committed head.
	br := tx.SendBatch(ctx, &pgx.Batch{QueuedQueries: []*pgx.QueuedQuery{
		{SQL: "INSERT INTO heads (site, device) VALUES ($1, $2) ON CONFLICT DO NOTHING", Arguments: []any{e.Site, e.Device}},
		{SQL: "SELECT chain, seq, hash, receipt FROM heads WHERE site = $1 AND device = $2 FOR UPDATE", Arguments: []any{e.Site, e.Device}},
	}})
	var cur receiver.Head
	var curSeq int64
	_, err = br.Exec()
	if err == nil {
		err = br.QueryRow().Scan(&cur.Chain, &curSeq, &cur.Hash, &cur.Receipt)
	}
	if cerr := br.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("pgstore append %s/%s seq %d: lock head: %w", e.Site, e.Device, h.Seq, err)
	}
	cur.Seq = uint64(curSeq)
	if cur.Seq == h.Seq && cur.Chain == h.Chain && cur.Hash == e.Hash && string(cur.Receipt) == string(e.Receipt) {
		return nil // this very entry, committed before
	}
	prev := ledger.ZeroHash
	if cur.Seq > 0 {
		prev = cur.Hash
	}
	if h.Seq != cur.Seq+1 || (cur.Seq > 0 && h.Chain != cur.Chain) || h.Prev != prev {
		return fmt.Errorf("pgstore append %s/%s seq %d: stored head is %s seq %d: %w",
			e.Site, e.Device, h.Seq, shortChain(cur.Chain), cur.Seq, receiver.ErrHeadMoved)
	}
	if _, err := tx.Exec(ctx, `INSERT INTO batches (site, device, chain, seq, hash, header, wire, events, receipt)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)`,
		e.Site, e.Device, h.Chain, int64(h.Seq), e.Hash, e.Batch.Header, e.Batch.AppendWire(nil), len(e.Batch.Events), e.Receipt); err != nil {
		return fmt.Errorf("pgstore append %s/%s seq %d: insert batch: %w", e.Site, e.Device, h.Seq, err)
	}
	if len(rows) > 0 {
		if err := insertEvents(ctx, tx, e, rows); err != nil {
			return fmt.Errorf("pgstore append %s/%s seq %d: insert events: %w", e.Site, e.Device, h.Seq, err)
		}
	}
	if _, err := tx.Exec(ctx, "UPDATE heads SET chain = $3, seq = $4, hash = $5, receipt = $6, updated = now() WHERE site = $1 AND device = $2",
		e.Site, e.Device, h.Chain, int64(h.Seq), e.Hash, e.Receipt); err != nil {
		return fmt.Errorf("pgstore append %s/%s seq %d: move head: %w", e.Site, e.Device, h.Seq, err)
	}
	if err := tx.Commit(ctx); err != nil {
		return fmt.Errorf("pgstore append %s/%s seq %d: commit: %w", e.Site, e.Device, h.Seq, err)
	}
	return nil
}

func shortChain(c string) string {
	if c == "" {
		return "(none)"
	}
	if len(c) > 8 {
		return c[:8]
	}
	return c
}

// eventColumns are the columns Append fills in events. body stays NULL (rows written
// before migration 0002 have it): an event's bytes are the slice body_off, body_len of
// its batch's wire column, stored once (event_bodies puts them back together).
var eventColumns = []string{"site", "device", "chain", "seq", "idx", "time", "action", "outcome", "patient", "actor_user", "study", "body_off", "body_len", "keys"}

// eventRow is one event's row, less the batch's columns. Empty strings are NULL.
type eventRow struct {
	time                           time.Time
	hasTime                        bool
	action, outcome, patient, user string
	study                          []string
	off, len                       int32
	keys                           []string // eventKeys
}

// eventRows are e's events as rows. An event that is not JSON (or whose fields have
// other types, or hold a NUL, which a text column cannot) is stored with no extracted
// fields: storing never depends on the content, which the signature already vouches for.
func eventRows(e receiver.Entry) []eventRow {
	rows := make([]eventRow, len(e.Batch.Events))
	// Where each event starts in the wire bytes (ledger.Batch.AppendWire):
	// magic, u32 header length, header, u16 signature length, signature, u32 count,
	// then a u32 length before each event.
	off := len(ledger.Magic) + 4 + len(e.Batch.Header) + 2 + len(e.Batch.Signature) + 4
	for i, ev := range e.Batch.Events {
		r := &rows[i]
		off += 4
		r.off, r.len = int32(off), int32(len(ev))
		off += len(ev)
		f, ok := extractFields(ev)
		if !ok || hasNUL(f) {
			continue
		}
		if tm, err := time.Parse(time.RFC3339Nano, f.Time); err == nil {
			r.time, r.hasTime = tm, true
		}
		r.action, r.outcome, r.patient, r.user = f.Action, f.Outcome, f.Patient, f.Actor.User
		if len(f.Study) > 0 {
			r.study = f.Study
		}
		r.keys = eventKeys(f)
	}
	return rows
}

// eventKeys are the keys of an event that the GIN index on keys finds (migration
// 0002): "p:" patient, "u:" user, "a:" action and "a:" each prefix of the action that
// ends with a dot (for "phi.*"), "s:" each study token. Empty values have none.
func eventKeys(f eventFields) []string {
	k := make([]string, 0, 4+len(f.Study))
	if f.Patient != "" {
		k = append(k, "p:"+f.Patient)
	}
	if f.Actor.User != "" {
		k = append(k, "u:"+f.Actor.User)
	}
	if f.Action != "" {
		k = append(k, "a:"+f.Action)
		for i := 0; i < len(f.Action)-1; i++ {
			if f.Action[i] == '.' {
				k = append(k, "a:"+f.Action[:i+1])
			}
		}
	}
	for _, s := range f.Study {
		k = append(k, "s:"+s)
	}
	if len(k) == 0 {
		return nil
	}
	return k
}

func hasNUL(f eventFields) bool {
	for _, s := range append([]string{f.Time, f.Action, f.Outcome, f.Patient, f.Actor.User}, f.Study...) {
		if strings.IndexByte(s, 0) >= 0 {
			return true
		}
	}
	return false
}

// copyEvents inserts the event rows with one COPY in the binary format, encoded here
// (pgx's CopyFrom encodes each value through its type map, which was most of the
// client's CPU per batch).
func copyEvents(ctx context.Context, tx pgx.Tx, e receiver.Entry, rows []eventRow) error {
	buf := appendCopyRows(make([]byte, 0, 64+len(rows)*(160+len(e.Site)+len(e.Device)+len(e.Header.Chain))), e, rows)
	_, err := tx.Conn().PgConn().CopyFrom(ctx, bytes.NewReader(buf),
		"COPY events ("+strings.Join(eventColumns, ", ")+") FROM STDIN (FORMAT binary)")
	return err
}

// textArray appends a text[] value, NULL when a is empty: a one-dimensional array is
// ndim, has-nulls, element type, length, lower bound, then each element as a length
// and its bytes.
func textArray(b []byte, a []string) []byte {
	be := binary.BigEndian
	if len(a) == 0 {
		return be.AppendUint32(b, math.MaxUint32)
	}
	n := 20
	for _, s := range a {
		n += 4 + len(s)
	}
	b = be.AppendUint32(b, uint32(n))
	b = be.AppendUint32(b, 1)
	b = be.AppendUint32(b, 0)
	b = be.AppendUint32(b, textOID)
	b = be.AppendUint32(b, uint32(len(a)))
	b = be.AppendUint32(b, 1)
	for _, s := range a {
		b = be.AppendUint32(b, uint32(len(s)))
		b = append(b, s...)
	}
	return b
}

// pgEpoch is PostgreSQL's timestamp zero, 2000-01-01 UTC, in Unix microseconds.
const pgEpoch = 946684800 * 1000000

// textOID is the type of the study array's elements.
const textOID = 25

// appendCopyRows appends the COPY binary format
// (https://www.postgresql.org/docs/15/sql-copy.html, "Binary Format") of rows.
func appendCopyRows(b []byte, e receiver.Entry, rows []eventRow) []byte {
	be := binary.BigEndian
	b = append(b, "PGCOPY\n\xff\r\n\x00"...)
	b = be.AppendUint32(b, 0) // flags
	b = be.AppendUint32(b, 0) // header extension length
	text := func(b []byte, s string) []byte {
		if s == "" {
			return be.AppendUint32(b, math.MaxUint32) // -1: NULL
		}
		b = be.AppendUint32(b, uint32(len(s)))
		return append(b, s...)
	}
	i32 := func(b []byte, v int32) []byte {
		b = be.AppendUint32(b, 4)
		return be.AppendUint32(b, uint32(v))
	}
	seq := int64(e.Header.Seq)
	for i := range rows {
		r := &rows[i]
		b = be.AppendUint16(b, uint16(len(eventColumns)))
		b = be.AppendUint32(b, uint32(len(e.Site)))
		b = append(b, e.Site...)
		b = be.AppendUint32(b, uint32(len(e.Device)))
		b = append(b, e.Device...)
		b = be.AppendUint32(b, uint32(len(e.Header.Chain)))
		b = append(b, e.Header.Chain...)
		b = be.AppendUint32(b, 8)
		b = be.AppendUint64(b, uint64(seq))
		b = i32(b, int32(i))
		if r.hasTime {
			// Microseconds, truncated as pgx does.
			us := r.time.Unix()*1000000 + int64(r.time.Nanosecond())/1000 - pgEpoch
			b = be.AppendUint32(b, 8)
			b = be.AppendUint64(b, uint64(us))
		} else {
			b = be.AppendUint32(b, math.MaxUint32)
		}
		b = text(b, r.action)
		b = text(b, r.outcome)
		b = text(b, r.patient)
		b = text(b, r.user)
		b = textArray(b, r.study)
		b = i32(b, r.off)
		b = i32(b, r.len)
		b = textArray(b, r.keys)
	}
	return be.AppendUint16(b, math.MaxUint16) // -1: the end
}
