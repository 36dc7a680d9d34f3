// Package spool is the appliance's crash-safe store: it group-commits events to bbolt,
// seals them into signed, hash-chained batches, keeps them until central acknowledges
// them, and recovers (or quarantines) after a crash.
package spool

import (
	"context"
	"crypto/ecdsa"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	bolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"

	"github.com/edgeaudit/edgeaudit/audit"
	"github.com/edgeaudit/edgeaudit/internal/atomicfile"
	"github.com/edgeaudit/edgeaudit/internal/ratelog"
	"github.com/edgeaudit/edgeaudit/ledger"
)

// Sentinel errors.
var (
	// ErrFull means the size limit or the disk's reserve is reached: back off and retry;
	// nothing was stored.
	ErrFull = errors.New("spool full")
	// ErrClosed means Close has begun.
	ErrClosed = errors.New("spool closed")
	// ErrLocked means another process (a running daemon) holds the spool.
	ErrLocked = errors.New("spool is locked by another process")
)

// Signer signs batch headers. attest implements it for software keys and the TPM.
type Signer interface {
	// Sign returns an ASN.1 DER ECDSA P-256 signature over a SHA-256 digest. It may be
	// slow (a TPM) and is called once per batch, from the writer goroutine only.
	Sign(ctx context.Context, digest []byte) ([]byte, error)
	// KeyID is hex SHA-256 of the public key's SubjectPublicKeyInfo.
	KeyID() string
	// Public is the key that verifies Sign's output.
	Public() *ecdsa.PublicKey
}

// Options are the spool's collaborators.
type Options struct {
	Site, Device string
	Signer       Signer
	// TimeSync returns the clock evidence for a header; nil means state "unknown".
	TimeSync func() ledger.TimeSync
	Logger   *slog.Logger
	// Now is the clock; nil means time.Now. Tests replace it.
	Now func() time.Time
}

// bbolt layout. Event keys are seq|index so that a batch's events are one cursor range
// and pruning a batch is a range delete.
var (
	bucketMeta    = []byte("meta")
	bucketEvents  = []byte("events")
	bucketBatches = []byte("batches")

	keyChain      = []byte("chain")       // 32 hex digits
	keyHeadSeq    = []byte("head_seq")    // u64: last sealed seq
	keyHeadHash   = []byte("head_hash")   // 32 bytes: SHA-256 of that header
	keyAckedSeq   = []byte("acked_seq")   // u64: central acknowledged up to here
	keyPrunedSeq  = []byte("pruned_seq")  // u64: batches up to here were deleted
	keyPrunedHash = []byte("pruned_hash") // 32 bytes: hash of the pruned_seq header
)

// rawItem is what Append queues for the encoder: a copy of the event, so that the
// caller may reuse its event (and maps) as soon as Append returns. A rawItem with seal
// set is a Seal request, kept in order with the events before it.
type rawItem struct {
	ev   audit.Event
	done func(error)
	seal chan error
}

type item struct {
	// buf is 0x00 followed by the event bytes: the RFC 6962 leaf input, so the leaf hash
	// is one allocation-free Sum256 and the stored bytes are buf[1:].
	buf      []byte
	received time.Time
	done     func(error)
	seal     chan error // a Seal request instead of an event
}

// rawQueueSize bounds the events waiting for the encoder; the commit queue behind it
// holds Config.QueueSize encoded events.
const rawQueueSize = 4096

// state is the chain head and the open batch; only the writer goroutine touches it
// after Open.
type state struct {
	chain       string
	headSeq     uint64
	headHash    ledger.Hash
	leaves      []ledger.Hash // open batch (seq headSeq+1)
	first, last time.Time     // received times in the open batch
	opened      time.Time     // wall clock when the open batch got its first event
	lastSeal    time.Time
}

// Spool is an open spool. Append, Seal, Ack, Prune and the readers are safe for concurrent
// use; one internal writer goroutine owns the chain head.
type Spool struct {
	cfg  Config
	opts Options
	path string
	db   *bolt.DB
	log  *slog.Logger

	mu     sync.RWMutex // held for reading while sending on raw; Close takes it to close raw
	closed bool
	raw    chan rawItem // Append → encoder
	queue  chan item    // encoder → writer
	done   chan struct{}

	st       state // writer-owned
	full     atomic.Bool
	pageSize int64
	stats    counters
	logs     ratelog.Limiter
}

type counters struct {
	appended, committed, commits, sealed, refusedFull, commitErrors, pruned atomic.Uint64
}

// Stats is a snapshot of the spool's counters.
type Stats struct {
	Appended, Committed, Commits, Sealed, RefusedFull, CommitErrors, Pruned uint64
	HeadSeq, AckedSeq                                                       uint64
	Full                                                                    bool
}

// Open opens or creates the spool at path (the bbolt file; its folder is created 0700),
// verifies the chain tail, and starts the writer. A spool that fails verification or
// cannot be read is moved aside as path.quarantine-<time> and a new chain is started
// whose first event names it.
func Open(path string, cfg Config, opts Options) (*Spool, error) {
	cfg.SetDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("open spool: %w", err)
	}
	if opts.Signer == nil {
		return nil, errors.New("open spool: no signer")
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("open spool: %w", err)
	}
	if err := atomicfile.RemoveTemps(dir); err != nil {
		return nil, fmt.Errorf("open spool: %w", err)
	}
	s := &Spool{
		cfg: cfg, opts: opts, path: path, log: opts.Logger,
		raw:   make(chan rawItem, min(rawQueueSize, cfg.QueueSize)),
		queue: make(chan item, cfg.QueueSize),
		done:  make(chan struct{}),
	}
	var selfEvents []audit.Event
	err := s.openDB()
	if err == nil {
		err = s.load()
	}
	if err != nil {
		if errors.Is(err, ErrLocked) {
			return nil, fmt.Errorf("open spool %s: %w", path, err)
		}
		ev, qerr := s.quarantine(err)
		if qerr != nil {
			return nil, fmt.Errorf("open spool: %w (while quarantining after: %v)", qerr, err)
		}
		selfEvents = append(selfEvents, ev)
	}
	s.updateFull()
	go s.encoder()
	go s.writer()
	for i := range selfEvents {
		if err := s.Append(context.Background(), &selfEvents[i], nil); err != nil {
			s.log.Error("record quarantine event", "err", err)
		}
	}
	return s, nil
}

func (s *Spool) openDB() error {
	// The default 4 KiB page size stays: 64 KiB pages saved pwrite calls but gave no
	// measurable throughput and doubled peak RSS (docs/performance.md).
	db, err := bolt.Open(s.path, 0o600, &bolt.Options{Timeout: DefaultOpenTimeout, FreelistType: bolt.FreelistMapType})
	if err != nil {
		if errors.Is(err, berrors.ErrTimeout) {
			return ErrLocked
		}
		return fmt.Errorf("open bbolt: %w", err)
	}
	// Each growth of the file costs an fsync; grow in larger steps than the 16 MiB default
	// (a small file still only doubles).
	db.AllocSize = allocSize
	s.db = db
	s.pageSize = int64(db.Info().PageSize)
	return nil
}

// load creates the buckets of a new spool, or reads and verifies the head of an existing
// one and rebuilds the open batch from its stored events.
func (s *Spool) load() (err error) {
	// bbolt panics on some kinds of page corruption; a corrupt spool must be quarantined,
	// not crash the appliance in a restart loop.
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("%w: bbolt: %v", ledger.ErrFormat, r)
		}
	}()
	err = s.db.Update(func(tx *bolt.Tx) error {
		meta, err := tx.CreateBucketIfNotExists(bucketMeta)
		if err != nil {
			return err
		}
		for _, b := range [][]byte{bucketEvents, bucketBatches} {
			if _, err := tx.CreateBucketIfNotExists(b); err != nil {
				return err
			}
		}
		if meta.Get(keyChain) == nil {
			var id [16]byte
			if _, err := randRead(id[:]); err != nil {
				return err
			}
			return meta.Put(keyChain, []byte(hex.EncodeToString(id[:])))
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("init spool: %w", err)
	}
	var st state
	err = s.db.View(func(tx *bolt.Tx) error {
		meta := tx.Bucket(bucketMeta)
		st.chain = string(meta.Get(keyChain))
		st.headSeq = getU64(meta, keyHeadSeq)
		copy(st.headHash[:], meta.Get(keyHeadHash))
		if err := s.verifyTail(tx, st.headSeq, st.headHash); err != nil {
			return err
		}
		// Events of the open batch: committed but not yet sealed when we stopped.
		c := tx.Bucket(bucketEvents).Cursor()
		prefix := seqKey(st.headSeq + 1)
		for k, v := c.Seek(prefix); k != nil; k, v = c.Next() {
			if binary.BigEndian.Uint64(k) != st.headSeq+1 {
				return fmt.Errorf("%w: event key for seq %d beyond the open batch %d", ErrChainBroken, binary.BigEndian.Uint64(k), st.headSeq+1)
			}
			if idx := binary.BigEndian.Uint32(k[8:]); int(idx) != len(st.leaves) {
				return fmt.Errorf("%w: open batch event %d missing", ErrChainBroken, len(st.leaves))
			}
			st.leaves = append(st.leaves, ledger.LeafHash(v))
			if e, err := audit.Decode(v); err == nil {
				if st.first.IsZero() || e.Received.Before(st.first) {
					st.first = e.Received
				}
				if e.Received.After(st.last) {
					st.last = e.Received
				}
			}
		}
		if k, _ := tx.Bucket(bucketBatches).Cursor().Last(); k != nil && binary.BigEndian.Uint64(k) > st.headSeq {
			return fmt.Errorf("%w: batch %d stored beyond head %d", ErrChainBroken, binary.BigEndian.Uint64(k), st.headSeq)
		}
		return nil
	})
	if err != nil {
		return err
	}
	now := s.opts.Now()
	if len(st.leaves) > 0 {
		st.opened = now // seal the recovered batch one max_age from now
	}
	st.lastSeal = now
	s.st = st
	if len(st.leaves) > 0 || st.headSeq > 0 {
		s.log.Info("spool recovered", "head_seq", st.headSeq, "open_events", len(st.leaves))
	}
	return nil
}

// ErrChainBroken means the stored chain does not verify.
var ErrChainBroken = errors.New("chain broken")

// allocSize is bbolt's file growth step, see openDB.
const allocSize = 64 << 20

// tailCheck is how many of the newest batches Open verifies in full; the rest was
// verified when it was written, and `edgeaudit verify` checks everything.
const tailCheck = 8

func (s *Spool) verifyTail(tx *bolt.Tx, headSeq uint64, headHash ledger.Hash) error {
	meta := tx.Bucket(bucketMeta)
	prunedSeq := getU64(meta, keyPrunedSeq)
	if headSeq == 0 {
		if tx.Bucket(bucketBatches).Stats().KeyN > 0 {
			return fmt.Errorf("%w: batches stored but head is 0", ErrChainBroken)
		}
		return nil
	}
	from := max(prunedSeq+1, 1)
	if headSeq > tailCheck {
		from = max(from, headSeq-tailCheck+1)
	}
	if from > headSeq {
		// Everything up to the head is pruned: the head must be the prune anchor.
		if string(meta.Get(keyPrunedHash)) != string(headHash[:]) {
			return fmt.Errorf("%w: head hash differs from the pruned anchor", ErrChainBroken)
		}
		return nil
	}
	var prev string // hex hash the next header must name; "" = unknown
	switch {
	case from == 1:
		prev = ledger.ZeroHash
	case from-1 == prunedSeq:
		prev = hex.EncodeToString(meta.Get(keyPrunedHash))
	default:
		if b, err := readBatch(tx, from-1); err == nil {
			hh := ledger.HeaderHash(b.Header)
			prev = hex.EncodeToString(hh[:])
		}
	}
	// Signatures by another key (before a rotation, or after the key file was lost) are
	// not ours to judge here: links and roots are still checked, and `edgeaudit verify`
	// with the right keys checks every signature.
	pub, ours := s.opts.Signer.Public(), s.opts.Signer.KeyID()
	var last []byte
	for seq := from; seq <= headSeq; seq++ {
		b, err := readBatch(tx, seq)
		if err != nil {
			return fmt.Errorf("%w: seq %d: %v", ErrChainBroken, seq, err)
		}
		h, err := ledger.ParseHeader(b.Header)
		switch {
		case err != nil:
			return fmt.Errorf("%w: seq %d: %v", ErrChainBroken, seq, err)
		case h.Seq != seq:
			return fmt.Errorf("%w: seq %d stored under key %d", ErrChainBroken, h.Seq, seq)
		case prev != "" && h.Prev != prev:
			return fmt.Errorf("%w: seq %d: prev does not match the previous header", ErrChainBroken, seq)
		case h.Count != len(b.Events) || ledger.EventsRoot(b.Events) != mustHex32(h.Root):
			return fmt.Errorf("%w: seq %d: events do not match count and root", ErrChainBroken, seq)
		case h.KeyID == ours && !ecdsa.VerifyASN1(pub, sha256Of(b.Header), b.Signature):
			return fmt.Errorf("%w: seq %d: signature does not verify", ErrChainBroken, seq)
		}
		hh := ledger.HeaderHash(b.Header)
		prev, last = hex.EncodeToString(hh[:]), b.Header
	}
	if ledger.HeaderHash(last) != headHash {
		return fmt.Errorf("%w: head hash does not match batch %d", ErrChainBroken, headSeq)
	}
	return nil
}

func sha256Of(b []byte) []byte {
	d := sha256.Sum256(b)
	return d[:]
}

func mustHex32(s string) ledger.Hash {
	var h ledger.Hash
	hex.Decode(h[:], []byte(s))
	return h
}

// quarantine moves a spool that cannot be trusted aside and starts a new one. It never
// deletes: the old file stays for forensics, named in the new chain's first event.
func (s *Spool) quarantine(cause error) (audit.Event, error) {
	if s.db != nil {
		s.db.Close()
		s.db = nil
	}
	now := s.opts.Now().UTC()
	moved := fmt.Sprintf("%s.quarantine-%s", s.path, now.Format("20060102T150405Z"))
	sum, size := fileDigest(s.path)
	if err := os.Rename(s.path, moved); err != nil {
		return audit.Event{}, fmt.Errorf("quarantine spool: %w", err)
	}
	if err := atomicfile.SyncDir(filepath.Dir(s.path)); err != nil {
		return audit.Event{}, err
	}
	s.log.Error("spool failed verification; moved aside and started a new chain", "file", moved, "err", cause)
	if err := s.openDB(); err != nil {
		return audit.Event{}, err
	}
	if err := s.load(); err != nil {
		return audit.Event{}, err
	}
	return audit.Event{
		Time: now, Received: now,
		Source:  audit.Source{Kind: audit.KindSelf, Transport: "internal", App: "edgeaudit"},
		Action:  "audit.spool_quarantined",
		Outcome: audit.OutcomeSeriousFailure,
		Reason:  cause.Error(),
		Detail: map[string]string{
			"file": filepath.Base(moved), "sha256": sum, "size": fmt.Sprint(size),
		},
		RawSHA256: sum,
	}, nil
}

func fileDigest(path string) (string, int64) {
	f, err := os.Open(path)
	if err != nil {
		return "", 0
	}
	defer f.Close()
	h := sha256.New()
	n, _ := f.WriteTo(h)
	return hex.EncodeToString(h.Sum(nil)), n
}

// Append implements collectors.Sink. It copies e and queues it; a separate encoder
// goroutine encodes it, so that a busy connection's goroutine, the bottleneck of a single
// fast sender, does only its parsing. Order is kept: events are encoded and committed in
// the order Append accepted them.
func (s *Spool) Append(ctx context.Context, e *audit.Event, done func(error)) error {
	if s.full.Load() {
		s.stats.refusedFull.Add(1)
		return ErrFull
	}
	if e.ID == "" {
		e.ID = audit.NewID(e.Received)
	}
	ri := rawItem{ev: *e, done: done}
	// The caller may reuse what e points to once Append returns.
	ri.ev.Detail = maps.Clone(e.Detail)
	ri.ev.Study = slices.Clone(e.Study)
	ri.ev.Codes = slices.Clone(e.Codes)
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.closed {
		return ErrClosed
	}
	select {
	case s.raw <- ri:
		s.stats.appended.Add(1)
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Seal seals the open batch now if it holds events (shutdown, tests), after every event
// appended before the call. It waits for the commit.
func (s *Spool) Seal(ctx context.Context) error {
	ch := make(chan error, 1)
	s.mu.RLock()
	if s.closed {
		s.mu.RUnlock()
		return ErrClosed
	}
	select {
	case s.raw <- rawItem{seal: ch}:
		s.mu.RUnlock()
	case <-ctx.Done():
		s.mu.RUnlock()
		return ctx.Err()
	}
	select {
	case err := <-ch:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Close stops taking events, commits what is queued (without sealing it: the next Open
// continues the open batch) and closes the database.
func (s *Spool) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	close(s.raw)
	s.mu.Unlock()
	<-s.done
	if err := s.db.Close(); err != nil {
		return fmt.Errorf("close spool: %w", err)
	}
	return nil
}

// encoder encodes queued events once, in order, for the writer; it closes the writer's
// queue when Close has closed its own.
func (s *Spool) encoder() {
	defer close(s.queue)
	for ri := range s.raw {
		if ri.seal != nil {
			s.queue <- item{seal: ri.seal}
			continue
		}
		e := &ri.ev
		buf := e.AppendJSON(append(make([]byte, 0, e.SizeHint()+1), 0))
		s.queue <- item{buf: buf, received: e.Received, done: ri.done}
	}
}

func (s *Spool) writer() {
	defer close(s.done)
	tick := min(s.cfg.MaxAge/4, 250*time.Millisecond)
	ticker := time.NewTicker(tick)
	defer ticker.Stop()
	items := make([]item, 0, s.cfg.CommitEvents)
	for {
		items = items[:0]
		var sealWaiter chan error
		closed := false
		select {
		case it, ok := <-s.queue:
			switch {
			case !ok:
				closed = true
			case it.seal != nil:
				sealWaiter = it.seal
			default:
				items = append(items, it)
			}
		case <-ticker.C:
		}
		// Take what else is queued; a Seal request ends the transaction, so that it
		// seals exactly the events appended before it.
	drain:
		for !closed && sealWaiter == nil && len(items) < s.cfg.CommitEvents {
			select {
			case it, ok := <-s.queue:
				switch {
				case !ok:
					closed = true
				case it.seal != nil:
					sealWaiter = it.seal
				default:
					items = append(items, it)
				}
			default:
				break drain
			}
		}
		err := s.commit(items, sealWaiter != nil)
		for _, it := range items {
			if it.done != nil {
				it.done(err)
			}
		}
		if sealWaiter != nil {
			sealWaiter <- err
		}
		if closed {
			return
		}
	}
}

// commit writes items in one transaction and seals every batch that becomes due. On
// failure nothing of it is visible and the writer reloads its state from bbolt.
func (s *Spool) commit(items []item, forceSeal bool) error {
	now := s.opts.Now()
	st := &s.st
	dueAge := len(st.leaves) > 0 && now.Sub(st.opened) >= s.cfg.MaxAge
	dueHeartbeat := now.Sub(st.lastSeal) >= s.cfg.Heartbeat
	if len(items) == 0 && !dueAge && !dueHeartbeat && !(forceSeal && len(st.leaves) > 0) {
		if s.full.Load() {
			s.updateFull()
		}
		return nil
	}
	sealed := 0
	err := s.db.Update(func(tx *bolt.Tx) error {
		ev := tx.Bucket(bucketEvents)
		ev.FillPercent = 1.0 // keys only ever grow: full pages make the file ~half the size
		var key [12]byte
		for _, it := range items {
			binary.BigEndian.PutUint64(key[:8], st.headSeq+1)
			binary.BigEndian.PutUint32(key[8:], uint32(len(st.leaves)))
			if err := ev.Put(key[:], it.buf[1:]); err != nil {
				return err
			}
			if len(st.leaves) == 0 {
				st.opened, st.first, st.last = now, it.received, it.received
			}
			// The leaf hash is computed here rather than in Append: with one busy sender
			// connection, its goroutine is the bottleneck and the writer has CPU to spare.
			st.leaves = append(st.leaves, sha256.Sum256(it.buf))
			if it.received.Before(st.first) {
				st.first = it.received
			}
			if it.received.After(st.last) {
				st.last = it.received
			}
			if len(st.leaves) >= s.cfg.MaxEvents {
				if err := s.seal(tx, now); err != nil {
					return err
				}
				sealed++
			}
		}
		if len(st.leaves) > 0 && (forceSeal || now.Sub(st.opened) >= s.cfg.MaxAge) ||
			len(st.leaves) == 0 && sealed == 0 && now.Sub(st.lastSeal) >= s.cfg.Heartbeat {
			if err := s.seal(tx, now); err != nil {
				return err
			}
			sealed++
		}
		return nil
	})
	if err != nil {
		s.stats.commitErrors.Add(1)
		s.log.Error("spool commit", "events", len(items), "err", err)
		if lerr := s.reload(); lerr != nil {
			s.log.Error("spool reload after failed commit", "err", lerr)
		}
		return fmt.Errorf("commit: %w", err)
	}
	s.stats.commits.Add(1)
	s.stats.committed.Add(uint64(len(items)))
	s.stats.sealed.Add(uint64(sealed))
	s.updateFull()
	return nil
}

// reload rebuilds the writer state from bbolt after a failed transaction, so the head
// never exists only in memory.
func (s *Spool) reload() error {
	lastSeal := s.st.lastSeal
	if err := s.load(); err != nil {
		return err
	}
	s.st.lastSeal = lastSeal
	return nil
}

// seal closes the open batch inside tx: header, signature, head.
func (s *Spool) seal(tx *bolt.Tx, now time.Time) error {
	st := &s.st
	h := ledger.Header{
		Site: s.opts.Site, Device: s.opts.Device, Chain: st.chain,
		Seq: st.headSeq + 1, Prev: ledger.ZeroHash,
		Sealed: now.UTC().Format(audit.TimeFormat),
		KeyID:  s.opts.Signer.KeyID(),
	}
	if st.headSeq > 0 {
		h.Prev = hex.EncodeToString(st.headHash[:])
	}
	if len(st.leaves) > 0 {
		h.First = st.first.UTC().Format(audit.TimeFormat)
		h.Last = st.last.UTC().Format(audit.TimeFormat)
	}
	if s.opts.TimeSync != nil {
		h.TimeSync = s.opts.TimeSync()
	} else {
		h.TimeSync = ledger.TimeSync{State: "unknown"}
	}
	hb, sig, err := h.Seal(ledger.Root(st.leaves), len(st.leaves), func(d []byte) ([]byte, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		return s.opts.Signer.Sign(ctx, d)
	})
	if err != nil {
		return err
	}
	if err := tx.Bucket(bucketBatches).Put(seqKey(h.Seq), encodeStored(hb, sig)); err != nil {
		return err
	}
	hh := ledger.HeaderHash(hb)
	meta := tx.Bucket(bucketMeta)
	if err := meta.Put(keyHeadSeq, u64(h.Seq)); err != nil {
		return err
	}
	if err := meta.Put(keyHeadHash, hh[:]); err != nil {
		return err
	}
	st.headSeq, st.headHash = h.Seq, hh
	st.leaves = st.leaves[:0]
	st.first, st.last, st.lastSeal = time.Time{}, time.Time{}, now
	return nil
}

// updateFull recomputes the backpressure flag from the spool's live size and the free
// space of its file system.
func (s *Spool) updateFull() {
	full := false
	if s.cfg.MaxSizeBytes > 0 {
		var size int64
		s.db.View(func(tx *bolt.Tx) error { size = tx.Size(); return nil })
		st := s.db.Stats()
		used := size - int64(st.FreePageN+st.PendingPageN)*s.pageSize
		full = used >= s.cfg.MaxSizeBytes
	}
	var fs syscall.Statfs_t
	if err := syscall.Statfs(filepath.Dir(s.path), &fs); err == nil {
		if int64(fs.Bavail)*fs.Bsize < s.cfg.MinFreeBytes {
			full = true
		}
	}
	if full && !s.full.Load() {
		if ok, _ := s.logs.Allow("full", s.opts.Now()); ok {
			s.log.Warn("spool full: refusing new events (backpressure) until central acknowledges and retention prunes",
				"max_size_bytes", s.cfg.MaxSizeBytes, "min_free_bytes", s.cfg.MinFreeBytes)
		}
	}
	s.full.Store(full)
}

// Stats returns the counters.
func (s *Spool) Stats() Stats {
	var head, acked uint64
	s.db.View(func(tx *bolt.Tx) error {
		m := tx.Bucket(bucketMeta)
		head, acked = getU64(m, keyHeadSeq), getU64(m, keyAckedSeq)
		return nil
	})
	c := &s.stats
	return Stats{
		Appended: c.appended.Load(), Committed: c.committed.Load(), Commits: c.commits.Load(),
		Sealed: c.sealed.Load(), RefusedFull: c.refusedFull.Load(), CommitErrors: c.commitErrors.Load(),
		Pruned: c.pruned.Load(), HeadSeq: head, AckedSeq: acked, Full: s.full.Load(),
	}
}

func seqKey(seq uint64) []byte { return u64(seq) }

func u64(v uint64) []byte {
	var b [8]byte
	binary.BigEndian.PutUint64(b[:], v)
	return b[:]
}

func getU64(b *bolt.Bucket, k []byte) uint64 {
	v := b.Get(k)
	if len(v) != 8 {
		return 0
	}
	return binary.BigEndian.Uint64(v)
}

// A stored batch is u16 signature length | signature | header bytes.
func encodeStored(header, sig []byte) []byte {
	out := make([]byte, 0, 2+len(sig)+len(header))
	out = binary.BigEndian.AppendUint16(out, uint16(len(sig)))
	out = append(out, sig...)
	return append(out, header...)
}

func decodeStored(v []byte) (header, sig []byte, err error) {
	if len(v) < 2 {
		return nil, nil, fmt.Errorf("%w: stored batch too short", ledger.ErrFormat)
	}
	n := int(binary.BigEndian.Uint16(v))
	if len(v) < 2+n {
		return nil, nil, fmt.Errorf("%w: stored signature truncated", ledger.ErrFormat)
	}
	return v[2+n:], v[2 : 2+n], nil
}
