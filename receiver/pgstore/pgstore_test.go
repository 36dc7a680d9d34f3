package pgstore_test

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/edgeaudit/edgeaudit/audit"
	"github.com/edgeaudit/edgeaudit/internal/testpg"
	"github.com/edgeaudit/edgeaudit/ledger"
	"github.com/edgeaudit/edgeaudit/receiver"
	"github.com/edgeaudit/edgeaudit/receiver/pgstore"
)

func count(t testing.TB, dsn, sql string, args ...any) int {
	t.Helper()
	conn, err := pgx.Connect(t.Context(), dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	var n int
	if err := conn.QueryRow(t.Context(), sql, args...).Scan(&n); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	return n
}

// TestAppendAndHead: an empty store has the zero head; each append moves the head and
// stores the header, the wire bytes and one row per event; devices are separate.
func TestAppendAndHead(t *testing.T) {
	s, dsn := openStore(t)
	ctx := t.Context()
	a := newAppliance(t, "s1", "d1")
	if h, err := s.Head(ctx, "s1", "d1"); err != nil || h.Seq != 0 || h.Chain != "" || h.Receipt != nil {
		t.Fatalf("empty head %+v err %v, want zero", h, err)
	}
	if _, err := s.Header(ctx, "s1", "d1", a.chain, 1); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("Header of an empty store: err=%v, want os.ErrNotExist", err)
	}
	for seq := 1; seq <= 3; seq++ {
		b := a.seal(t, fillEvents(5, seq))
		e := entry(t, "s1", "d1", b, fmt.Sprintf("receipt %d", seq))
		if err := s.Append(ctx, e); err != nil {
			t.Fatalf("append seq %d: %v", seq, err)
		}
		h, err := s.Head(ctx, "s1", "d1")
		if err != nil {
			t.Fatal(err)
		}
		if got, want := h, (receiver.Head{Chain: a.chain, Seq: uint64(seq), Hash: hashOf(b), Receipt: e.Receipt}); got.Chain != want.Chain ||
			got.Seq != want.Seq || got.Hash != want.Hash || !bytes.Equal(got.Receipt, want.Receipt) {
			t.Fatalf("head %+v, want %+v", got, want)
		}
		hb, err := s.Header(ctx, "s1", "d1", a.chain, uint64(seq))
		if err != nil || !bytes.Equal(hb, b.Header) {
			t.Fatalf("header seq %d: %q err %v, want the sealed bytes", seq, hb, err)
		}
	}
	if got, want := count(t, dsn, "SELECT count(*) FROM events"), 15; got != want {
		t.Fatalf("%d event rows, want %d", got, want)
	}
	if h, err := s.Head(ctx, "s1", "d2"); err != nil || h.Seq != 0 {
		t.Fatalf("other device head %+v err %v, want zero", h, err)
	}
	// The same entry again (a retry after a commit whose answer was lost) is a no-op.
	if err := s.Append(ctx, entry(t, "s1", "d1", a.batches[2], "receipt 3")); err != nil {
		t.Fatalf("retry of the head's own entry: %v, want nil", err)
	}
	if got, want := count(t, dsn, "SELECT count(*) FROM batches"), 3; got != want {
		t.Fatalf("%d batches after the retry, want %d", got, want)
	}
}

// TestAppendHeadMoved: an entry that does not follow the stored head is refused with
// ErrHeadMoved and writes nothing.
func TestAppendHeadMoved(t *testing.T) {
	s, dsn := openStore(t)
	ctx := t.Context()
	a := newAppliance(t, "s1", "d1")
	for seq := 1; seq <= 4; seq++ {
		a.seal(t, fillEvents(2, seq))
	}
	for i := range 2 {
		if err := s.Append(ctx, entry(t, "s1", "d1", a.batches[i], "r")); err != nil {
			t.Fatal(err)
		}
	}
	other := newAppliance(t, "s1", "d1")
	other.chain = strings.Repeat("cd", 16)
	otherChain := other.seal(t, fillEvents(2, 1))
	// seq 3 of a fork: right seq, wrong prev.
	fork := newAppliance(t, "s1", "d1")
	fork.key = a.key
	fork.batches = slices.Clone(a.batches[:1])
	fork.seal(t, fillEvents(3, 2))
	forkNext := fork.seal(t, fillEvents(3, 3))
	tests := []struct {
		name string
		e    receiver.Entry
	}{
		{"seq already stored, another receipt", entry(t, "s1", "d1", a.batches[1], "another receiver's receipt")},
		{"seq below the head", entry(t, "s1", "d1", a.batches[0], "r")},
		{"a gap", entry(t, "s1", "d1", a.batches[3], "r")},
		{"prev is not the head", entry(t, "s1", "d1", forkNext, "r")},
		{"another chain", entry(t, "s1", "d1", otherChain, "r")},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := s.Append(ctx, tt.e)
			if !errors.Is(err, receiver.ErrHeadMoved) {
				t.Fatalf("err=%v, want ErrHeadMoved", err)
			}
			if h, _ := s.Head(ctx, "s1", "d1"); h.Seq != 2 || h.Hash != hashOf(a.batches[1]) {
				t.Fatalf("head %+v, want seq 2 unchanged", h)
			}
			if got, want := count(t, dsn, "SELECT count(*) FROM batches"), 2; got != want {
				t.Fatalf("%d batches, want %d", got, want)
			}
			if got, want := count(t, dsn, "SELECT count(*) FROM events"), 4; got != want {
				t.Fatalf("%d events, want %d", got, want)
			}
		})
	}
	// A first batch that is not seq 1, or whose prev is not zeros, on an empty device.
	b := newAppliance(t, "s1", "d2")
	b.seal(t, fillEvents(1, 1))
	if err := s.Append(ctx, entry(t, "s1", "d2", b.seal(t, fillEvents(1, 2)), "r")); !errors.Is(err, receiver.ErrHeadMoved) {
		t.Fatalf("seq 2 on an empty device: err=%v, want ErrHeadMoved", err)
	}
}

// TestAppendConcurrent: receivers racing to store one seq of one device (each with its
// own receipt): exactly one wins, the others get ErrHeadMoved.
func TestAppendConcurrent(t *testing.T) {
	s, dsn := openStore(t)
	a := newAppliance(t, "s1", "d1")
	for seq := 1; seq <= 10; seq++ {
		a.seal(t, fillEvents(20, seq))
	}
	const writers = 4
	for i, b := range a.batches {
		var wg sync.WaitGroup
		errs := make([]error, writers)
		for w := range writers {
			wg.Go(func() { errs[w] = s.Append(t.Context(), entry(t, "s1", "d1", b, fmt.Sprintf("receipt by %d", w))) })
		}
		wg.Wait()
		won := 0
		for _, err := range errs {
			switch {
			case err == nil:
				won++
			case !errors.Is(err, receiver.ErrHeadMoved):
				t.Fatalf("seq %d: %v", i+1, err)
			}
		}
		if won != 1 {
			t.Fatalf("seq %d: %d appends succeeded, want exactly 1 (errors %v)", i+1, won, errs)
		}
	}
	if got, want := count(t, dsn, "SELECT count(*) FROM batches"), 10; got != want {
		t.Fatalf("%d batches, want %d", got, want)
	}
	if got, want := count(t, dsn, "SELECT count(*) FROM events"), 200; got != want {
		t.Fatalf("%d events, want %d", got, want)
	}
}

// TestBatchBytes: Batch returns the wire bytes as appended, and they verify as a chain;
// an unknown seq is os.ErrNotExist.
func TestBatchBytes(t *testing.T) {
	s, _ := openStore(t)
	a := newAppliance(t, "s1", "d1")
	for seq := 1; seq <= 3; seq++ {
		if err := s.Append(t.Context(), entry(t, "s1", "d1", a.seal(t, fillEvents(7, seq)), "r")); err != nil {
			t.Fatal(err)
		}
	}
	v, err := ledger.NewVerifier(&a.key.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	for i, b := range a.batches {
		got, err := s.Batch(t.Context(), "s1", "d1", a.chain, uint64(i+1))
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, b.AppendWire(nil)) {
			t.Fatalf("seq %d: stored wire bytes differ from the appended batch", i+1)
		}
		dec, err := ledger.NewReader(bytes.NewReader(got)).Next()
		if err != nil {
			t.Fatal(err)
		}
		if _, err := v.Verify(dec); err != nil {
			t.Fatalf("stored chain: %v", err)
		}
	}
	for _, tt := range []struct {
		name, chain string
		seq         uint64
	}{{"beyond the head", a.chain, 4}, {"another chain", strings.Repeat("cd", 16), 1}, {"seq 0", a.chain, 0}, {"huge seq", a.chain, 1 << 63}} {
		if _, err := s.Batch(t.Context(), "s1", "d1", tt.chain, tt.seq); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s: err=%v, want os.ErrNotExist", tt.name, err)
		}
	}
}

// TestQuery: every Query field alone and combined, the action prefix, the time range,
// the limit and the order; each match carries the exact sealed bytes and where they are.
func TestQuery(t *testing.T) {
	s, _ := openStore(t)
	ctx := t.Context()
	d1, d2 := newAppliance(t, "s1", "d1"), newAppliance(t, "s2", "d2")
	// Event ids say where they are: <device>-<seq>-<index>.
	batches := []struct {
		a      *appliance
		events []audit.Event
	}{
		{d1, []audit.Event{
			event("d1-1-0", 0, "phi.view", "success", "pt-a", "alice", "st-1"),
			event("d1-1-1", 1, "phi.export", "success", "pt-a", "bob", "st-1", "st-2"),
			event("d1-1-2", 2, "auth.login", "serious_failure", "", "mallory"),
		}},
		{d1, []audit.Event{
			event("d1-2-0", 10, "phi.view", "minor_failure", "pt-b", "alice", "st-2"),
			event("d1-2-1", 11, "phiX.view", "success", "pt-b", "alice"), // not under "phi."
			event("d1-2-2", 12, "phi", "success", "pt-a", "bob"),         // "phi" itself is not under "phi."
		}},
		{d2, []audit.Event{
			event("d2-1-0", 5, "phi.view", "success", "pt-a", "alice", "st-3"),
			event("d2-1-1", 6, "auth.login", "success", "", "alice"),
		}},
	}
	for _, b := range batches {
		if err := s.Append(ctx, entry(t, b.a.site, b.a.device, b.a.seal(t, b.events), "r")); err != nil {
			t.Fatal(err)
		}
	}
	// Not JSON at all: stored, found by site, never by a field.
	if err := s.Append(ctx, entry(t, "s2", "d2", d2.sealRaw(t, [][]byte{[]byte("not json"), []byte(`{"action":7}`)}), "r")); err != nil {
		t.Fatal(err)
	}
	at := func(min int) time.Time { return time.Date(2026, 12, 1, 8, min, 0, 0, time.UTC) }
	tests := []struct {
		name string
		q    receiver.Query
		want []string // event ids, in order; "raw:<bytes>" for non-JSON events
	}{
		{"everything", receiver.Query{}, []string{"d1-1-0", "d1-1-1", "d1-1-2", "d1-2-0", "d1-2-1", "d1-2-2", "d2-1-0", "d2-1-1", "raw:not json", `raw:{"action":7}`}},
		{"site", receiver.Query{Site: "s2"}, []string{"d2-1-0", "d2-1-1", "raw:not json", `raw:{"action":7}`}},
		{"device", receiver.Query{Device: "d1", Limit: 2}, []string{"d1-1-0", "d1-1-1"}},
		{"patient", receiver.Query{Patient: "pt-a"}, []string{"d1-1-0", "d1-1-1", "d1-2-2", "d2-1-0"}},
		{"user", receiver.Query{User: "alice"}, []string{"d1-1-0", "d1-2-0", "d1-2-1", "d2-1-0", "d2-1-1"}},
		{"action exact", receiver.Query{Action: "phi.view"}, []string{"d1-1-0", "d1-2-0", "d2-1-0"}},
		{"action prefix", receiver.Query{Action: "phi.*"}, []string{"d1-1-0", "d1-1-1", "d1-2-0", "d2-1-0"}},
		{"outcome", receiver.Query{Outcome: "serious_failure"}, []string{"d1-1-2"}},
		{"study", receiver.Query{Study: "st-2"}, []string{"d1-1-1", "d1-2-0"}},
		{"from", receiver.Query{From: at(10)}, []string{"d1-2-0", "d1-2-1", "d1-2-2"}},
		{"to is exclusive", receiver.Query{To: at(5)}, []string{"d1-1-0", "d1-1-1", "d1-1-2"}},
		{"from and to", receiver.Query{From: at(1), To: at(11)}, []string{"d1-1-1", "d1-1-2", "d1-2-0", "d2-1-0", "d2-1-1"}},
		{"patient and user", receiver.Query{Patient: "pt-a", User: "alice"}, []string{"d1-1-0", "d2-1-0"}},
		{"failed phi access by alice", receiver.Query{User: "alice", Action: "phi.*", Outcome: "minor_failure"}, []string{"d1-2-0"}},
		{"site, study and time", receiver.Query{Site: "s1", Study: "st-1", From: at(1)}, []string{"d1-1-1"}},
		{"limit", receiver.Query{User: "alice", Limit: 3}, []string{"d1-1-0", "d1-2-0", "d1-2-1"}},
		{"no match", receiver.Query{Patient: "pt-a", Outcome: "major_failure"}, nil},
		{"wildcards are literal", receiver.Query{Action: "ph_.*"}, nil},
	}
	all := map[string]receiver.Match{}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var got []string
			err := s.Query(ctx, tt.q, func(m receiver.Match) error {
				ev, err := audit.Decode(m.Event)
				id := "raw:" + string(m.Event)
				if err == nil && ev.ID != "" {
					id = ev.ID
				}
				got = append(got, id)
				all[id] = m
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(got, tt.want) {
				t.Fatalf("got %q, want %q", got, tt.want)
			}
		})
	}
	// Each match names its batch and index, and its bytes are that event's, exactly.
	for id, m := range all {
		wire, err := s.Batch(ctx, m.Site, m.Device, m.Chain, m.Seq)
		if err != nil {
			t.Fatalf("%s: %v", id, err)
		}
		b, err := ledger.NewReader(bytes.NewReader(wire)).Next()
		if err != nil {
			t.Fatal(err)
		}
		if m.Index >= len(b.Events) || !bytes.Equal(b.Events[m.Index], m.Event) {
			t.Fatalf("%s: match %s/%s seq %d index %d is not the stored event", id, m.Site, m.Device, m.Seq, m.Index)
		}
		if want := strings.SplitN(id, "-", 3); !strings.HasPrefix(id, "raw:") && (m.Device != want[0] || fmt.Sprint(m.Seq) != want[1] || fmt.Sprint(m.Index) != want[2]) {
			t.Fatalf("%s: match at %s seq %d index %d", id, m.Device, m.Seq, m.Index)
		}
	}
	// fn's error stops the query and is returned as it is.
	stop := errors.New("stop")
	n := 0
	if err := s.Query(ctx, receiver.Query{}, func(receiver.Match) error { n++; return stop }); err != stop || n != 1 {
		t.Fatalf("Query returned %v after %d matches, want the callback's error after 1", err, n)
	}
}

// TestMigrate: migrating again changes nothing, and receivers migrating one fresh
// database at once all succeed with each version applied once.
func TestMigrate(t *testing.T) {
	s, dsn := openStore(t)
	if err := s.Migrate(t.Context()); err != nil {
		t.Fatalf("second Migrate: %v", err)
	}
	if got, want := count(t, dsn, "SELECT count(*) FROM schema_migrations"), 2; got != want {
		t.Fatalf("%d rows in schema_migrations, want %d", got, want)
	}

	fresh := openFresh(t)
	const receivers = 4
	var wg sync.WaitGroup
	errs := make([]error, receivers)
	for i := range receivers {
		wg.Go(func() {
			st, err := pgstore.Open(t.Context(), fresh, nil)
			if err != nil {
				errs[i] = err
				return
			}
			defer st.Close()
			errs[i] = st.Migrate(t.Context())
		})
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("concurrent Migrate %d: %v", i, err)
		}
	}
	if got, want := count(t, fresh, "SELECT count(*) FROM schema_migrations"), 2; got != want {
		t.Fatalf("%d rows in schema_migrations, want %d", got, want)
	}
	if got, want := count(t, fresh, "SELECT count(*) FROM pg_tables WHERE tablename IN ('heads', 'batches', 'events')"), 3; got != want {
		t.Fatalf("%d tables, want %d", got, want)
	}
}

// openFresh is a new, empty database of the shared cluster.
func openFresh(t testing.TB) string {
	t.Helper()
	_, dsn := openStoreNoMigrate(t)
	return dsn
}

func openStoreNoMigrate(t testing.TB) (*pgstore.Store, string) {
	t.Helper()
	dsn := testpg.Shared(t).NewDatabase(t)
	s, err := pgstore.Open(t.Context(), dsn, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	return s, dsn
}

// TestAppendOnly: the triggers refuse UPDATE, DELETE and TRUNCATE of batches and events
// even to the owner (a superuser here), and heads are never deleted; the writer role
// can append and read through the store but its grants refuse updates and deletes.
func TestAppendOnly(t *testing.T) {
	s, dsn := openStore(t)
	a := newAppliance(t, "s1", "d1")
	if err := s.Append(t.Context(), entry(t, "s1", "d1", a.seal(t, fillEvents(3, 1)), "r")); err != nil {
		t.Fatal(err)
	}
	conn, err := pgx.Connect(t.Context(), dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	stmts := []string{
		"UPDATE batches SET events = 0",
		"DELETE FROM batches",
		"TRUNCATE batches CASCADE",
		"UPDATE events SET action = 'x'",
		"DELETE FROM events",
		"TRUNCATE events",
		"DELETE FROM heads",
		"TRUNCATE heads",
	}
	exec := func(sql string) error {
		// Each statement in a transaction rolled back: if a refusal ever failed, the
		// next statement still finds the rows.
		tx, err := conn.Begin(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		defer tx.Rollback(t.Context())
		_, err = tx.Exec(t.Context(), sql)
		return err
	}
	for _, sql := range stmts {
		if err := exec(sql); err == nil || !strings.Contains(err.Error(), "append-only") {
			t.Errorf("as the owner, %q: err=%v, want the append-only trigger's refusal", sql, err)
		}
	}

	// The writer, through a login role that is a member of it.
	login := fmt.Sprintf("writer_%d", time.Now().UnixNano())
	if _, err := conn.Exec(t.Context(), fmt.Sprintf("CREATE ROLE %s LOGIN IN ROLE edgeaudit_writer", login)); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Exec(context.Background(), "DROP ROLE "+login) })
	wdsn := strings.Replace(dsn, "user=edgeaudit", "user="+login, 1)
	ws, err := pgstore.Open(t.Context(), wdsn, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer ws.Close()
	if err := ws.Migrate(t.Context()); err != nil {
		t.Fatalf("Migrate as the writer on an up-to-date database: %v", err)
	}
	if err := ws.Append(t.Context(), entry(t, "s1", "d1", a.seal(t, fillEvents(3, 2)), "r2")); err != nil {
		t.Fatalf("append as the writer: %v", err)
	}
	if h, err := ws.Head(t.Context(), "s1", "d1"); err != nil || h.Seq != 2 {
		t.Fatalf("head as the writer: %+v %v, want seq 2", h, err)
	}
	if err := ws.Query(t.Context(), receiver.Query{}, func(receiver.Match) error { return nil }); err != nil {
		t.Fatalf("query as the writer: %v", err)
	}
	wconn, err := pgx.Connect(t.Context(), wdsn)
	if err != nil {
		t.Fatal(err)
	}
	defer wconn.Close(context.Background())
	for _, sql := range append(stmts, "DROP TABLE events", "ALTER TABLE batches DISABLE TRIGGER batches_append_only") {
		_, err := wconn.Exec(t.Context(), sql)
		if err == nil || strings.Contains(err.Error(), "append-only") {
			t.Errorf("as the writer, %q: err=%v, want a permission error before any trigger", sql, err)
		}
	}
	if got, want := count(t, dsn, "SELECT count(*) FROM events"), 6; got != want {
		t.Fatalf("%d events, want %d", got, want)
	}
}

// keys is a DeviceKeys of enrolled public keys.
type keys map[string]*ecdsa.PublicKey

func (k keys) Key(_ context.Context, site, device string) (*ecdsa.PublicKey, error) {
	if p, ok := k[site+"/"+device]; ok {
		return p, nil
	}
	return nil, fmt.Errorf("key %s/%s: %w", site, device, receiver.ErrUnknownDevice)
}

type signer struct{ k *ecdsa.PrivateKey }

func (s signer) Sign(_ context.Context, d []byte) ([]byte, error) {
	return ecdsa.SignASN1(rand.Reader, s.k, d)
}
func (s signer) Public() *ecdsa.PublicKey { return &s.k.PublicKey }

func newSigner(t testing.TB) signer {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return signer{k}
}

// TestHandleOverPgstore: receiver.Handle end to end on the PostgreSQL store: in order,
// a gap held and filled, a duplicate re-receipted with the head's bytes, a tampered
// batch refused; a restarted receiver continues from the stored head; the stored chain
// verifies and the events are queryable.
func TestHandleOverPgstore(t *testing.T) {
	s, _ := openStore(t)
	ctx := t.Context()
	a := newAppliance(t, "s1", "d1")
	for seq := 1; seq <= 6; seq++ {
		a.seal(t, fillEvents(10, seq))
	}
	central := newSigner(t)
	k := keys{"s1/d1": &a.key.PublicKey}
	newRecv := func() *receiver.Receiver {
		r, err := receiver.New(receiver.Config{Quarantine: t.TempDir()}, s, k, central, nil)
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	r := newRecv()
	handle := func(r *receiver.Receiver, b *ledger.Batch) (uint64, []byte, error) {
		rc, err := r.Handle(ctx, "s1", "d1", b.AppendWire(nil))
		if err != nil || rc == nil {
			return 0, rc, err
		}
		got, err := ledger.VerifyReceipt(rc, central.Public())
		if err != nil {
			t.Fatalf("receipt: %v", err)
		}
		return got.Seq, rc, nil
	}
	tampered := *a.batches[3]
	tampered.Events = slices.Clone(tampered.Events)
	tampered.Events[0] = bytes.Replace(tampered.Events[0], []byte("phi.view"), []byte("phi.edit"), 1)
	steps := []struct {
		name    string
		b       *ledger.Batch
		want    uint64
		wantErr error
	}{
		{"first", a.batches[0], 1, nil},
		{"ahead: held", a.batches[2], 1, nil},
		{"fills the gap", a.batches[1], 3, nil},
		{"tampered", &tampered, 0, receiver.ErrTampered},
		{"next", a.batches[3], 4, nil},
	}
	var last []byte
	for _, st := range steps {
		seq, rc, err := handle(r, st.b)
		if st.wantErr != nil {
			if !errors.Is(err, st.wantErr) || rc != nil {
				t.Fatalf("%s: err=%v receipt %v, want a refusal wrapping %v", st.name, err, rc != nil, st.wantErr)
			}
			continue
		}
		if err != nil || seq != st.want {
			t.Fatalf("%s: receipt seq %d err %v, want %d", st.name, seq, err, st.want)
		}
		last = rc
	}
	if seq, rc, err := handle(r, a.batches[1]); err != nil || seq != 4 || !bytes.Equal(rc, last) {
		t.Fatalf("duplicate: seq %d err %v same bytes %v, want the head's receipt (4)", seq, err, bytes.Equal(rc, last))
	}
	r2 := newRecv()
	for i, want := range []uint64{5, 6} {
		if seq, _, err := handle(r2, a.batches[4+i]); err != nil || seq != want {
			t.Fatalf("restarted receiver: seq %d err %v, want %d", seq, err, want)
		}
	}
	v, err := ledger.NewVerifier(&a.key.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	for seq := uint64(1); seq <= 6; seq++ {
		w, err := s.Batch(ctx, "s1", "d1", a.chain, seq)
		if err != nil {
			t.Fatal(err)
		}
		b, err := ledger.NewReader(bytes.NewReader(w)).Next()
		if err != nil {
			t.Fatal(err)
		}
		if _, err := v.Verify(b); err != nil {
			t.Fatalf("stored chain: %v", err)
		}
	}
	n := 0
	if err := s.Query(ctx, receiver.Query{Site: "s1", Device: "d1", Action: "phi.*"}, func(receiver.Match) error { n++; return nil }); err != nil {
		t.Fatal(err)
	}
	if n != 60 {
		t.Fatalf("%d events found, want 60 (6 batches of 10, the tampered one never stored)", n)
	}
	if st := r.Stats(); st.Batches != 4 || st.Duplicates != 1 || st.Refused[receiver.ReasonTampered] != 1 {
		t.Fatalf("stats %+v, want 4 stored, 1 duplicate, 1 tampered", st)
	}
}

// TestMigrateKeepsBodies: rows stored under 0001 (the event bytes in events.body) and
// rows stored after 0002 (offsets into batches.wire) come back alike from Query and
// from event_bodies, byte for byte.
func TestMigrateKeepsBodies(t *testing.T) {
	s, dsn := openStoreNoMigrate(t)
	ctx := t.Context()
	if err := pgstore.MigrateTo(s, ctx, 1); err != nil {
		t.Fatal(err)
	}
	a := newAppliance(t, "s1", "d1")
	old := a.seal(t, fillEvents(3, 0))
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	e := entry(t, "s1", "d1", old, "r1")
	// What an Append before 0002 wrote.
	if _, err := conn.Exec(ctx, `INSERT INTO heads (site, device, chain, seq, hash, receipt) VALUES ('s1', 'd1', $1, 1, $2, 'r1')`, e.Header.Chain, e.Hash); err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Exec(ctx, `INSERT INTO batches (site, device, chain, seq, hash, header, wire, events, receipt) VALUES ('s1', 'd1', $1, 1, $2, $3, $4, 3, 'r1')`,
		e.Header.Chain, e.Hash, old.Header, old.AppendWire(nil)); err != nil {
		t.Fatal(err)
	}
	for i, ev := range old.Events {
		if _, err := conn.Exec(ctx, `INSERT INTO events (site, device, chain, seq, idx, action, body) VALUES ('s1', 'd1', $1, 1, $2, 'phi.view', $3)`, e.Header.Chain, i, ev); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Migrate(ctx); err != nil {
		t.Fatal(err)
	}
	next := a.seal(t, fillEvents(4, 1))
	if err := s.Append(ctx, entry(t, "s1", "d1", next, "r2")); err != nil {
		t.Fatal(err)
	}
	if got, want := count(t, dsn, "SELECT count(*) FROM events WHERE body IS NULL"), 4; got != want {
		t.Fatalf("%d new rows without a body, want %d", got, want)
	}
	want := append(append([][]byte{}, old.Events...), next.Events...)
	var got [][]byte
	if err := s.Query(ctx, receiver.Query{Action: "phi.*"}, func(m receiver.Match) error { got = append(got, m.Event); return nil }); err != nil {
		t.Fatal(err)
	}
	if len(got) != len(want) {
		t.Fatalf("Query: %d matches, want %d", len(got), len(want))
	}
	for i := range want {
		if string(got[i]) != string(want[i]) {
			t.Fatalf("Query match %d: %q, want %q", i, got[i], want[i])
		}
	}
	rows, err := conn.Query(ctx, "SELECT body FROM event_bodies ORDER BY seq, idx")
	if err != nil {
		t.Fatal(err)
	}
	bodies, err := pgx.CollectRows(rows, pgx.RowTo[[]byte])
	if err != nil {
		t.Fatal(err)
	}
	for i := range want {
		if string(bodies[i]) != string(want[i]) {
			t.Fatalf("event_bodies row %d: %q, want %q", i, bodies[i], want[i])
		}
	}
}
