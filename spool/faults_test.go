package spool

import (
	"context"
	"crypto/ecdsa"
	"encoding/binary"
	"errors"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/edgeaudit/edgeaudit/audit"
	"github.com/edgeaudit/edgeaudit/ledger"
)

// buildSpool writes n events of size bytes each into a closed spool at a new path, in
// batches of 50, and returns the path. Big enough for branch pages, a freelist and
// overflow-free leaves.
func buildSpool(t *testing.T, sig Signer, n, size int) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "spool.db")
	s := openSpool(t, path, Config{MaxEvents: 50, MaxAge: time.Hour}, sig)
	msg := strings.Repeat("m", size)
	var wg sync.WaitGroup
	wg.Add(n)
	for i := range n {
		e := ev(i)
		e.Message = msg
		if err := s.Append(t.Context(), e, func(err error) {
			if err != nil {
				t.Error(err)
			}
			wg.Done()
		}); err != nil {
			t.Fatal(err)
		}
	}
	wg.Wait()
	if err := s.Seal(t.Context()); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	return path
}

// pagesOf returns the first page number of each bbolt page type in the file.
func pagesOf(t *testing.T, path string) (pageSize int, first map[uint16]int, last int) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	pageSize = int(binary.LittleEndian.Uint32(b[boltPageHeader+8:]))
	hwm := int(binary.LittleEndian.Uint64(b[boltPageHeader+40:]))
	if m1 := binary.LittleEndian.Uint64(b[pageSize+boltPageHeader+48:]); m1 > binary.LittleEndian.Uint64(b[boltPageHeader+48:]) {
		hwm = int(binary.LittleEndian.Uint64(b[pageSize+boltPageHeader+40:]))
	}
	first = map[uint16]int{}
	// The freelist in use is the one the newer meta names; older ones are free pages.
	m0, m1 := b[boltPageHeader:], b[pageSize+boltPageHeader:]
	if binary.LittleEndian.Uint64(m1[48:]) > binary.LittleEndian.Uint64(m0[48:]) {
		m0 = m1
	}
	first[pageFreelist] = int(binary.LittleEndian.Uint64(m0[32:]))
	for p := 2; p < hwm; p++ {
		flags := binary.LittleEndian.Uint16(b[p*pageSize+8:])
		if _, ok := first[flags]; !ok && flags != 0 {
			first[flags] = p
		}
		p += int(binary.LittleEndian.Uint32(b[p*pageSize+12:])) // skip overflow pages
	}
	return pageSize, first, hwm - 1
}

const (
	pageBranch   = 0x01
	pageLeaf     = 0x02
	pageFreelist = 0x10
)

// TestDamagedFileIsQuarantinedNotCrashed damages a real spool file the ways a disk or a
// careless restore does and opens it. bbolt itself panics or faults on most of these; the
// spool must not: it quarantines (or records) and continues on a chain that verifies.
func TestDamagedFileIsQuarantinedNotCrashed(t *testing.T) {
	defer func(d time.Duration) { checkBase = d }(checkBase)
	checkBase = 3 * time.Second
	sig := newSigner(t)
	orig := buildSpool(t, sig, 3000, 300)
	pageSize, first, last := pagesOf(t, orig)
	for _, typ := range []uint16{pageBranch, pageLeaf, pageFreelist} {
		if first[typ] == 0 {
			t.Fatalf("test spool has no page of type %#x (pages: %v)", typ, first)
		}
	}
	flip := func(page, off int) func([]byte) []byte {
		return func(b []byte) []byte { b[page*pageSize+off] ^= 0xff; return b }
	}
	tests := []struct {
		name   string
		damage func([]byte) []byte
		// want: the incident Open must record.
		want string
	}{
		{"truncated to half", func(b []byte) []byte { return b[:len(b)/2] }, ActionQuarantined},
		{"truncated to 8 KiB", func(b []byte) []byte { return b[:8<<10] }, ActionQuarantined},
		{"truncated to its last used page", func(b []byte) []byte { return b[:last*pageSize] }, ActionQuarantined},
		{"both meta pages flipped", func(b []byte) []byte { b[20] ^= 0xff; b[pageSize+20] ^= 0xff; return b }, ActionQuarantined},
		{"meta page 0 flipped", flip(0, boltPageHeader+48), ActionMetaDamaged},
		{"meta page 1 flipped", flip(1, boltPageHeader+48), ActionMetaDamaged},
		{"freelist page entry flipped", flip(first[pageFreelist], boltPageHeader+1), ActionQuarantined},
		{"freelist page count flipped", flip(first[pageFreelist], 10), ActionQuarantined},
		// The first branch page in the file may be an old, freed copy: flip every one.
		{"branch page elements flipped", func(b []byte) []byte {
			for p := 2; p <= last; p++ {
				if binary.LittleEndian.Uint16(b[p*pageSize+8:])&pageBranch != 0 {
					b[p*pageSize+boltPageHeader+8] ^= 0xff
				}
			}
			return b
		}, ActionQuarantined},
		// A branch page that names itself as its child: bbolt's own check never ends.
		{"branch page pointing at itself", func(b []byte) []byte {
			for p := 2; p <= last; p++ {
				if binary.LittleEndian.Uint16(b[p*pageSize+8:])&pageBranch != 0 {
					binary.LittleEndian.PutUint64(b[p*pageSize+boltPageHeader+8:], uint64(p))
				}
			}
			return b
		}, ActionQuarantined},
		{"leaf page element flipped", flip(first[pageLeaf], boltPageHeader+4), ActionQuarantined},
		{"leaf page count flipped", flip(first[pageLeaf], 10), ActionQuarantined},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b, err := os.ReadFile(orig)
			if err != nil {
				t.Fatal(err)
			}
			p := filepath.Join(t.TempDir(), "spool.db")
			if err := os.WriteFile(p, tt.damage(b), 0o600); err != nil {
				t.Fatal(err)
			}
			s := openSpool(t, p, Config{MaxEvents: 50, MaxAge: time.Hour}, sig)
			appendSync(t, s, ev(1))
			if err := s.Seal(t.Context()); err != nil {
				t.Fatal(err)
			}
			inc := s.Incidents()
			events := verifyAll(t, s)
			if err := s.Close(); err != nil {
				t.Fatal(err)
			}
			if !hasIncident(inc, tt.want) {
				t.Fatalf("incidents=%+v, want %s", inc, tt.want)
			}
			if !hasAction(events, tt.want) {
				t.Fatalf("chain does not record %s", tt.want)
			}
			if tt.want == ActionQuarantined {
				if m, _ := filepath.Glob(p + ".quarantine-*"); len(m) != 1 {
					t.Fatalf("quarantined files=%v, want one", m)
				}
			}
		})
	}
}

func hasIncident(inc []Incident, action string) bool {
	for _, i := range inc {
		if i.Action == action {
			return true
		}
	}
	return false
}

func hasAction(evs []audit.Event, action string) bool {
	for _, e := range evs {
		if e.Action == action {
			return true
		}
	}
	return false
}

// TestRollbackDetected brings back an older copy of the spool (what bbolt's fallback to
// its older meta page, or a restored backup, looks like), a forked one, and none at all.
func TestRollbackDetected(t *testing.T) {
	sig := newSigner(t)
	cfg := Config{MaxEvents: 5, MaxAge: time.Hour}
	tests := []struct {
		name string
		// after returns what to put at path once the spool has moved on from old.
		after func(t *testing.T, path string, old []byte)
		want  string
	}{
		{"older copy", func(t *testing.T, path string, old []byte) { os.WriteFile(path, old, 0o600) }, ActionRollback},
		{"fork", func(t *testing.T, path string, old []byte) {
			// Another copy of the spool, from the older file, goes its own way.
			hp := headPath(path)
			os.Rename(hp, hp+".away")
			os.WriteFile(path, old, 0o600)
			s := openSpool(t, path, cfg, sig)
			for i := range 10 {
				appendSync(t, s, ev(100+i))
			}
			s.Close()
			os.Rename(hp+".away", hp)
		}, ActionRollback},
		{"vanished", func(t *testing.T, path string, old []byte) { os.Remove(path) }, ActionVanished},
		{"truncated to 0", func(t *testing.T, path string, old []byte) { os.Truncate(path, 0) }, ActionVanished},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "spool.db")
			s := openSpool(t, path, cfg, sig)
			for i := range 10 {
				appendSync(t, s, ev(i))
			}
			s.Close()
			old, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			s = openSpool(t, path, cfg, sig)
			for i := range 10 {
				appendSync(t, s, ev(10+i))
			}
			s.Close()
			tt.after(t, path, old)

			s = openSpool(t, path, cfg, sig)
			defer s.Close()
			if err := s.Seal(t.Context()); err != nil {
				t.Fatal(err)
			}
			if inc := s.Incidents(); !hasIncident(inc, tt.want) {
				t.Fatalf("incidents=%+v, want %s", inc, tt.want)
			}
			events := verifyAll(t, s)
			var found *audit.Event
			for i := range events {
				if events[i].Action == tt.want {
					found = &events[i]
				}
			}
			if found == nil {
				t.Fatalf("new chain does not record %s", tt.want)
			}
			if got, want := found.Detail["expected_seq"], "4"; got != want {
				t.Fatalf("expected_seq=%q, want %q (the head before the rollback)", got, want)
			}
		})
	}
}

// TestQuarantineNeverOverwrites quarantines twice within the same clock tick.
func TestQuarantineNeverOverwrites(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "spool.db")
	fixed := time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)
	for i := range 3 {
		if err := os.WriteFile(path, []byte(strings.Repeat("garbage ", 2000+i)), 0o600); err != nil {
			t.Fatal(err)
		}
		s, err := Open(path, Config{MinFreeBytes: 1}, Options{Signer: newSigner(t), Now: func() time.Time { return fixed }})
		if err != nil {
			t.Fatal(err)
		}
		s.Close()
		os.Remove(headPath(path)) // each garbage file is a new spool, not a rollback
	}
	m, _ := filepath.Glob(path + ".quarantine-*")
	if len(m) != 3 {
		t.Fatalf("quarantined files=%v, want 3 (none overwritten)", m)
	}
	sizes := map[int64]bool{}
	for _, f := range m {
		fi, _ := os.Stat(f)
		sizes[fi.Size()] = true
	}
	if len(sizes) != 3 {
		t.Fatalf("quarantined sizes=%v, want the three different files", sizes)
	}
}

// TestIOErrorIsNotDamage: a spool that cannot be opened for a reason that is not the
// file's content must not be quarantined (that would break a healthy chain).
func TestIOErrorIsNotDamage(t *testing.T) {
	path := filepath.Join(t.TempDir(), "spool.db")
	if err := os.Mkdir(path, 0o700); err != nil { // EISDIR stands for EIO/EACCES
		t.Fatal(err)
	}
	_, err := Open(path, Config{MinFreeBytes: 1}, Options{Signer: newSigner(t)})
	var oe *OpenError
	if !errors.As(err, &oe) {
		t.Fatalf("err=%v, want *OpenError", err)
	}
	if m, _ := filepath.Glob(path + ".quarantine-*"); len(m) != 0 {
		t.Fatalf("quarantined %v on an I/O error", m)
	}
}

// commitFault fails the spool's commits while broken is set, as a failing disk would.
type commitFault struct {
	broken atomic.Bool
	fails  atomic.Int64
}

// install makes s's commits consult f.
func (f *commitFault) install(s *Spool) {
	fn := func() error {
		if f.broken.Load() {
			f.fails.Add(1)
			return errors.New("injected I/O error")
		}
		return nil
	}
	s.commitFault.Store(&fn)
}

// flakySigner fails while broken is set: a commit that seals then fails, as one on a
// full disk or with a TPM that is briefly away does.
type flakySigner struct {
	Signer
	broken atomic.Bool
	fails  atomic.Int64
}

func (f *flakySigner) Sign(ctx context.Context, d []byte) ([]byte, error) {
	if f.broken.Load() {
		f.fails.Add(1)
		return nil, errors.New("signer unavailable")
	}
	return f.Signer.Sign(ctx, d)
}
func (f *flakySigner) Public() *ecdsa.PublicKey { return f.Signer.Public() }

// TestFailedCommitKeepsEvents: events whose commit fails are kept and committed once the
// fault clears; none is acknowledged with an error, none is lost, and meanwhile the
// spool refuses new events (backpressure) instead of accepting and dropping them.
func TestFailedCommitKeepsEvents(t *testing.T) {
	sig := &commitFault{}
	s := openSpool(t, filepath.Join(t.TempDir(), "spool.db"), Config{MaxEvents: 10, MaxAge: time.Hour}, newSigner(t))
	defer s.Close()
	sig.install(s)
	sig.broken.Store(true)
	// One AppendAll, so that all n are accepted before the first (failing) commit makes
	// the spool refuse further appends.
	const n = 25
	var wg sync.WaitGroup
	var errs atomic.Int64
	wg.Add(1)
	evs := make([]*audit.Event, n)
	for i := range evs {
		evs[i] = ev(i)
	}
	if err := s.AppendAll(t.Context(), evs, func(err error) {
		if err != nil {
			errs.Add(1)
		}
		wg.Done()
	}); err != nil {
		t.Fatal(err)
	}
	// Wait until the writer has failed a few times and holds the events.
	deadline := time.Now().Add(10 * time.Second)
	for sig.fails.Load() < 3 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	if !s.Stats().Holding {
		t.Fatal("spool does not report holding while commits fail")
	}
	if err := s.Append(t.Context(), ev(99), nil); !errors.Is(err, ErrFull) {
		t.Fatalf("append while commits fail: err=%v, want ErrFull (backpressure)", err)
	}
	sig.broken.Store(false)
	wg.Wait()
	if got := errs.Load(); got != 0 {
		t.Fatalf("%d events were acknowledged with an error (lost), want 0", got)
	}
	if err := s.Seal(t.Context()); err != nil {
		t.Fatal(err)
	}
	if got := len(verifyAll(t, s)); got != n {
		t.Fatalf("stored=%d, want %d", got, n)
	}
	if st := s.Stats(); st.Lost != 0 || st.Holding {
		t.Fatalf("stats=%+v, want Lost=0 and not holding", st)
	}
}

// TestLossRecordedAtClose: when the fault outlasts Close's grace, the events are counted
// as lost, and the next Open writes the loss into the chain.
func TestLossRecordedAtClose(t *testing.T) {
	path := filepath.Join(t.TempDir(), "spool.db")
	signer := newSigner(t)
	sig := &commitFault{}
	cfg := Config{MaxEvents: 5, MaxAge: time.Hour, CloseGrace: 200 * time.Millisecond}
	s := openSpool(t, path, cfg, signer)
	sig.install(s)
	sig.broken.Store(true)
	// One AppendAll, so that all n are accepted before the first (failing) commit makes
	// the spool refuse further appends.
	const n = 12
	var errs atomic.Int64
	evs := make([]*audit.Event, n)
	for i := range evs {
		evs[i] = ev(i)
	}
	if err := s.AppendAll(t.Context(), evs, func(err error) {
		if err != nil {
			errs.Add(1)
		}
	}); err != nil {
		t.Fatal(err)
	}
	s.Close()
	if got := s.Stats().Lost; got != n {
		t.Fatalf("lost=%d, want %d", got, n)
	}
	if got := errs.Load(); got != 1 {
		t.Fatalf("done(err) called %d times for the group, want once", got)
	}
	s = openSpool(t, path, cfg, signer)
	defer s.Close()
	if err := s.Seal(t.Context()); err != nil {
		t.Fatal(err)
	}
	var lost *audit.Event
	for _, e := range verifyAll(t, s) {
		if e.Action == ActionEventsLost {
			lost = &e
		}
	}
	if lost == nil || lost.Count != n {
		t.Fatalf("loss event=%+v, want %s with count %d", lost, ActionEventsLost, n)
	}
	if _, err := os.Stat(path + lossFileExt); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("loss file still there after it was recorded: %v", err)
	}
}

// TestEvidenceReserve: a full spool refuses collectors' events but still takes the
// appliance's own.
func TestEvidenceReserve(t *testing.T) {
	s := openSpool(t, filepath.Join(t.TempDir(), "spool.db"), Config{MaxEvents: 100, MaxAge: time.Hour, MaxSizeBytes: 1 << 20}, newSigner(t))
	defer s.Close()
	big := strings.Repeat("x", 2000)
	for i := 0; ; i++ {
		if i > 10000 {
			t.Fatal("spool never filled")
		}
		e := ev(i)
		e.Message = big
		err := s.Append(t.Context(), e, nil)
		if errors.Is(err, ErrFull) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	self := selfEvent(time.Now(), "audit.stop", audit.OutcomeSuccess, "")
	appendSync(t, s, &self)
	if err := s.Seal(t.Context()); err != nil {
		t.Fatal(err)
	}
	if evs := verifyAll(t, s); evs[len(evs)-1].Action != "audit.stop" {
		t.Fatalf("last event=%s, want the stop event stored from the reserve", evs[len(evs)-1].Action)
	}
}

// TestAppendAllOneCommit: a group larger than a commit still lands in one transaction.
func TestAppendAllOneCommit(t *testing.T) {
	s := openSpool(t, filepath.Join(t.TempDir(), "spool.db"), Config{MaxEvents: 7, MaxAge: time.Hour, CommitEvents: 4}, newSigner(t))
	defer s.Close()
	appendSync(t, s, ev(0))
	before := s.Stats().Commits
	evs := make([]*audit.Event, 20)
	for i := range evs {
		evs[i] = ev(i)
	}
	ch := make(chan error, 1)
	if err := s.AppendAll(t.Context(), evs, func(err error) { ch <- err }); err != nil {
		t.Fatal(err)
	}
	if err := <-ch; err != nil {
		t.Fatal(err)
	}
	if got := s.Stats().Commits - before; got != 1 {
		t.Fatalf("commits for one AppendAll=%d, want 1", got)
	}
}

// TestScrubFindsOldDamage damages a batch older than the tail Open verifies and shows
// that the scrub finds and records it while the good batches stay.
func TestScrubFindsOldDamage(t *testing.T) {
	sig := newSigner(t)
	path := filepath.Join(t.TempDir(), "spool.db")
	s := openSpool(t, path, Config{MaxEvents: 5, MaxAge: time.Hour}, sig)
	for i := range 100 {
		appendSync(t, s, ev(i))
	}
	s.Close()
	editDB(t, path, func(tx *bolt.Tx) error {
		k := make([]byte, 12)
		copy(k, seqKey(2))
		v := tx.Bucket(bucketEvents).Get(k)
		return tx.Bucket(bucketEvents).Put(k, []byte(strings.Replace(string(v), "event", "EVENT", 1)))
	})
	s = openSpool(t, path, Config{MaxEvents: 5, MaxAge: time.Hour}, sig)
	defer s.Close()
	if inc := s.Incidents(); len(inc) != 0 {
		t.Fatalf("Open found %+v; the damage is meant to be older than its tail check", inc)
	}
	res, err := s.Scrub(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Damaged) != 1 || res.Damaged[0] != 2 {
		t.Fatalf("scrub damaged=%v, want [2]", res.Damaged)
	}
	if !hasIncident(s.Incidents(), ActionChainDamaged) {
		t.Fatal("no incident for health")
	}
	if err := s.Seal(t.Context()); err != nil {
		t.Fatal(err)
	}
	p, _ := s.Position()
	if p.HeadSeq != 21 {
		t.Fatalf("head=%d, want 21: the damage event sealed on top, nothing discarded", p.HeadSeq)
	}
}

// TestFullTmpfs fills a real small file system while events stream in, with the attack
// config min_free_bytes: 1, then frees it. Every event acknowledged is stored; none is
// acknowledged with an error; refusals are ErrFull at Append (backpressure).
func TestFullTmpfs(t *testing.T) {
	dir := smallFS(t, 16<<20)
	sig := newSigner(t)
	path := filepath.Join(dir, "spool.db")
	s, err := Open(path, Config{MaxEvents: 100, MaxAge: 50 * time.Millisecond, MinFreeBytes: 1}, Options{Signer: sig})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	var acked, failed atomic.Int64
	refused := 0
	msg := strings.Repeat("y", 1500)
	deadline := time.Now().Add(20 * time.Second)
	for i := 0; i < 200000 && time.Now().Before(deadline); i++ {
		e := ev(i)
		e.Message = msg
		err := s.Append(t.Context(), e, func(err error) {
			if err != nil {
				failed.Add(1)
			} else {
				acked.Add(1)
			}
		})
		if errors.Is(err, ErrFull) {
			refused++
			if refused > 200 {
				break
			}
			time.Sleep(time.Millisecond)
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	if refused == 0 {
		t.Fatal("the file system never filled")
	}
	if err := s.Seal(t.Context()); err != nil {
		t.Fatal(err)
	}
	if got := failed.Load(); got != 0 {
		t.Fatalf("%d events acknowledged with an error, want 0", got)
	}
	if got, want := int64(len(verifyAll(t, s))), acked.Load(); got < want {
		t.Fatalf("stored=%d < acknowledged=%d", got, want)
	}
	t.Logf("acked=%d refused=%d commit errors=%d", acked.Load(), refused, s.Stats().CommitErrors)
}

// smallFS mounts a tmpfs of size bytes for the test (root only; CI runs as root).
func smallFS(t *testing.T, size int) string {
	t.Helper()
	if os.Getuid() != 0 {
		if os.Getenv("CI") == "true" {
			t.Fatal("CI=true: the full-disk tests need root to mount a tmpfs")
		}
		t.Skip("needs root to mount a tmpfs")
	}
	dir := t.TempDir()
	out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size="+strconv.Itoa(size)+",mode=0700", "tmpfs", dir).CombinedOutput()
	if err != nil {
		t.Fatalf("mount tmpfs: %v: %s", err, out)
	}
	t.Cleanup(func() { exec.Command("umount", "-l", dir).Run() })
	return dir
}

// countingHandler counts log records by message.
type countingHandler struct {
	mu sync.Mutex
	n  map[string]int
}

func (h *countingHandler) Enabled(context.Context, slog.Level) bool { return true }
func (h *countingHandler) Handle(_ context.Context, r slog.Record) error {
	h.mu.Lock()
	h.n[r.Message]++
	h.mu.Unlock()
	return nil
}
func (h *countingHandler) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h *countingHandler) WithGroup(string) slog.Handler      { return h }

func (h *countingHandler) count(prefix string) int {
	h.mu.Lock()
	defer h.mu.Unlock()
	n := 0
	for m, c := range h.n {
		if strings.HasPrefix(m, prefix) {
			n += c
		}
	}
	return n
}

// TestFailingCommitLogsAreRateLimited: a commit that fails again and again (a full disk)
// logs its failure once per 30 s with the count of what was suppressed, and its recovery
// once; the reload after each failure logs nothing (it used to log "spool recovered"
// every time, 17 lines a second).
func TestFailingCommitLogsAreRateLimited(t *testing.T) {
	h := &countingHandler{n: map[string]int{}}
	sig := &commitFault{}
	s, err := Open(filepath.Join(t.TempDir(), "spool.db"), Config{MaxEvents: 1, MaxAge: time.Hour, MinFreeBytes: 1},
		Options{Signer: newSigner(t), Logger: slog.New(h)})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	sig.install(s)
	sig.broken.Store(true)
	ch := make(chan error, 1)
	if err := s.Append(t.Context(), ev(1), func(err error) { ch <- err }); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(20 * time.Second)
	for sig.fails.Load() < 8 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if sig.fails.Load() < 8 {
		t.Fatalf("only %d failed commits in 20 s", sig.fails.Load())
	}
	sig.broken.Store(false)
	if err := <-ch; err != nil {
		t.Fatal(err)
	}
	if got := h.count("spool commit failed"); got != 1 {
		t.Fatalf("%d 'commit failed' lines for %d failures, want 1", got, sig.fails.Load())
	}
	if got := h.count("spool recovered"); got != 0 {
		t.Fatalf("%d 'spool recovered' lines from reloads, want 0", got)
	}
	if got := h.count("spool commits again"); got != 1 {
		t.Fatalf("%d recovery lines, want 1", got)
	}
}

// TestCloseWhileCommitsFailAndQueueIsFull: the writer retries a failing commit while an
// Append of the appliance's own event is blocked on the full queue and Close waits for
// it. Close must still return (after close_grace, with the events counted as lost): the
// writer must not wait on the lock that Close is queued for.
func TestCloseWhileCommitsFailAndQueueIsFull(t *testing.T) {
	sig := &commitFault{}
	s := openSpool(t, filepath.Join(t.TempDir(), "spool.db"),
		Config{MaxEvents: 1, MaxAge: time.Hour, QueueSize: 2, CloseGrace: 100 * time.Millisecond}, newSigner(t))
	sig.install(s)
	sig.broken.Store(true)
	blocked := make(chan struct{})
	go func() {
		defer close(blocked)
		for i := range 50 {
			e := selfEvent(time.Now(), "audit.test", audit.OutcomeSuccess, strconv.Itoa(i))
			if err := s.Append(context.Background(), &e, nil); err != nil {
				return // ErrClosed once Close has begun
			}
		}
	}()
	for sig.fails.Load() < 2 {
		time.Sleep(5 * time.Millisecond)
	}
	closed := make(chan error, 1)
	go func() { closed <- s.Close() }()
	select {
	case err := <-closed:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("Close did not return: the writer and Close wait on each other")
	}
	<-blocked
	if s.Stats().Lost == 0 {
		t.Fatal("no loss counted for the events that could not be committed")
	}
}

// TestSealAtMaxBytes: batches are sealed by size as well as by count, so that each fits
// the uplink's message limit (issue 8); an event larger than the limit is sealed alone.
func TestSealAtMaxBytes(t *testing.T) {
	const limit = 16 << 10
	s := openSpool(t, filepath.Join(t.TempDir(), "spool.db"), Config{MaxEvents: 1000, MaxBytes: limit, MaxAge: time.Hour}, newSigner(t))
	defer s.Close()
	for i := range 100 {
		e := ev(i)
		e.Message = strings.Repeat("b", 1000)
		if i == 50 {
			e.Message = strings.Repeat("B", 2*limit) // one event over the limit
		}
		appendSync(t, s, e)
	}
	if err := s.Seal(t.Context()); err != nil {
		t.Fatal(err)
	}
	n, batches := 0, 0
	err := s.Batches(1, func(b *ledger.Batch) error {
		batches++
		size := 0
		for _, e := range b.Events {
			size += len(e)
		}
		last := len(b.Events[len(b.Events)-1])
		// Sealed as soon as the limit is reached: without its last event, a batch is under it.
		if size-last >= limit {
			t.Errorf("batch with %d events holds %d bytes before its last event, limit %d", len(b.Events), size-last, limit)
		}
		n += len(b.Events)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if got := len(verifyAll(t, s)); got != n || n != 100 {
		t.Fatalf("events=%d verified=%d, want 100", n, got)
	}
	if batches < 100*1000/limit {
		t.Fatalf("%d batches for 100 KB of events with a %d-byte limit, want at least %d", batches, limit, 100*1000/limit)
	}
}
