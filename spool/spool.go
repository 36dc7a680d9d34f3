// Package spool is the appliance's crash-safe store: it group-commits events to bbolt,
// seals them into signed, hash-chained batches, keeps them until central acknowledges
// them, and recovers (or quarantines) after a crash.
package spool

import (
	"context"
	"crypto/ecdsa"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	bolt "go.etcd.io/bbolt"

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
	// ClockSynced, when set, says whether the clock is known to be right (the NTP
	// checker's Synced); events appended while it is false get ClockUnsynced.
	ClockSynced func() bool
	// OnSeal, when set, is called by the writer after a commit that sealed batches, so
	// that the uplink publishes them without waiting for its next poll. It must not
	// block (uplink.Notify does not).
	OnSeal func()

	// DataKey is the appliance's 32-byte data key (the daemon's Keyring.DataKey). The
	// spool derives its own event key from it (crypt.go) and never uses it directly. It
	// is needed to open a spool that holds encrypted events (else ErrKeyRequired) and
	// must be the key they were written with (else ErrWrongKey); nil for a spool in clear.
	DataKey []byte
	// Encrypt stores each new event encrypted under DataKey (AES-256-GCM); it needs
	// DataKey. Events stored in clear before stay readable. The spool's zero value is
	// off; the daemon turns it on by default (spool.encrypt).
	Encrypt bool
	// KeyReplaced is set by `edgeaudit keys recover` when the data key itself was lost
	// and a new one made: a spool encrypted under the old key can then never be read
	// again, so it is quarantined (kept, and named in the new chain) instead of refused.
	KeyReplaced bool
	// NoQuarantine makes Open return damage (a broken chain tail, a rolled-back or
	// unreadable file) as an *OpenError instead of moving the file aside and starting a
	// new chain: for tools that add one event to a stopped daemon's spool (an export,
	// a failed verify) and must leave a damaged spool as they found it. The daemon's
	// next start quarantines it and records why.
	NoQuarantine bool
}

// bbolt layout. Event keys are seq|index so that a batch's events are one cursor range
// and pruning a batch is a range delete.
var (
	bucketMeta    = []byte("meta")
	bucketEvents  = []byte("events")
	bucketBatches = []byte("batches")
	// bucketUnsigned holds prepared headers (seq → header bytes) of closed batches
	// waiting for their signature: headSeq+1 … in order (sign.go).
	bucketUnsigned = []byte("unsigned")

	keyChain      = []byte("chain")       // 32 hex digits
	keyHeadSeq    = []byte("head_seq")    // u64: last sealed seq
	keyHeadHash   = []byte("head_hash")   // 32 bytes: SHA-256 of that header
	keyAckedSeq   = []byte("acked_seq")   // u64: central acknowledged up to here
	keyPrunedSeq  = []byte("pruned_seq")  // u64: batches up to here were deleted
	keyPrunedHash = []byte("pruned_hash") // 32 bytes: hash of the pruned_seq header
)

// rawItem is what Append queues for the encoder: a copy of the event, so that the
// caller may reuse its event (and maps) as soon as Append returns. A rawItem with group
// set holds the events of one AppendAll; one with seal set is a Seal request, kept in
// order with the events before it.
type rawItem struct {
	ev    audit.Event
	cost  int64
	group []audit.Event
	costs []int64
	done  func(error)
	seal  chan error
}

type item struct {
	// buf is 0x00 followed by the event bytes: the RFC 6962 leaf input, so the leaf hash
	// is one allocation-free Sum256 and the stored bytes are buf[1:].
	buf      []byte
	received time.Time
	cost     int64 // admitted in space accounting; released at commit or loss
	more     int   // events of the same AppendAll that follow this one
	done     func(error)
	seal     chan error    // a Seal request instead of an event
	leaf     ledger.Hash   // SHA-256 of buf, the RFC 6962 leaf hash, computed by encode
	jseq     uint64        // the event's journal record (journal.go); 0: none
	barrier  chan struct{} // a flushJournal request instead of an event
}

// rawQueueSize bounds the events waiting for the encoder; the commit queue behind it
// holds Config.QueueSize encoded events.
const rawQueueSize = 4096

// state is the chain head and the open batch; only the writer goroutine touches it
// after Open.
type state struct {
	chain    string
	headSeq  uint64 // last signed batch: the head readers see
	headHash ledger.Hash
	// sealedSeq is the last batch whose header is prepared; unsigned holds the headers of
	// headSeq+1 … sealedSeq, waiting for their signatures (see sign.go).
	sealedSeq   uint64
	sealedHash  ledger.Hash
	unsigned    []pendingHeader
	leaves      []ledger.Hash // open batch (seq sealedSeq+1)
	bytes       int64         // encoded size of the open batch's events
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

	mu      sync.RWMutex // held for reading while sending on raw; Close takes it to close raw
	closed  bool
	closing atomic.Bool  // set by Close before it takes mu, for the writer's retry loop
	raw     chan rawItem // Append → encoder
	queue   chan item    // encoder → writer
	// urgent carries AppendUrgent's events, encoded by the caller, straight to the
	// writer, which takes them before what queue holds: a sender waiting for its
	// acknowledgement (HL7, FHIR) does not wait behind a bulk syslog flood.
	urgent chan item
	done   chan struct{}
	jn     *journal // AppendUrgent's events go through it (journal.go)

	enc *eventCipher // nil: no data key; encrypted events cannot be read
	// encBuf and nonceBuf are the writer's buffers for encrypted events (writer.go).
	encBuf, nonceBuf []byte
	st               state   // writer-owned
	sign             signing // writer-owned
	stale            bool    // writer-owned: a failed commit's reload failed; reload before committing

	// The signer goroutine (sign.go): jobs from the writer, results back to it.
	signJobs    chan signJob
	signed      chan signResult
	signStop    chan struct{}
	signDone    chan struct{}
	signCtx     context.Context
	signCancel  context.CancelFunc
	signFailing atomic.Bool
	unsignedN   atomic.Int64 // prepared headers waiting for a signature, for Stats

	// commitFault, when set (tests only), fails commits as a failing disk would; the
	// real-disk version of those faults is TestFullTmpfs.
	commitFault atomic.Pointer[func() error]
	head        *headFile // writer-owned after Open
	space       space
	full        atomic.Bool // collectors' events are refused
	holding     atomic.Bool // a commit is failing or waits for room; its events are kept
	headErr     atomic.Bool // the last head file write failed
	pageSize    int64
	mmapSize    int64      // bbolt's initial map; room to grow during a background check
	pc          *pageCheck // the background page check of this Open, if one runs (bgcheck.go)
	stats       counters
	logs        ratelog.Limiter

	incMu     sync.Mutex
	incidents []Incident // what Open and the scrub found, for health

	lastScrub atomic.Pointer[ScrubPass] // the last full pass, nil before the first ends
}

// ScrubPass is a full pass of the scrub: when it ended and what it found.
type ScrubPass struct {
	Ended   time.Time
	Checked uint64
	Damaged int
}

type counters struct {
	appended, committed, commits, sealed, refusedFull, commitErrors, pruned, lost, headErrors atomic.Uint64
	scrubbed, scrubDamaged, signErrors                                                        atomic.Uint64
}

// Stats is a snapshot of the spool's counters.
type Stats struct {
	Appended, Committed, Commits, Sealed, RefusedFull, CommitErrors, Pruned uint64
	// Lost counts events accepted but never committed (Close gave up on a failing disk);
	// each loss is also in the loss file and then in the chain.
	Lost uint64
	// HeadFileErrors counts failed writes of the head file.
	HeadFileErrors uint64
	// JournalWritten counts acknowledged events made durable in the journal first,
	// JournalReplayed those a start committed from it after an unclean stop, and
	// JournalWriteErrors the failed journal writes (their senders then waited for the
	// bbolt commit).
	JournalWritten, JournalReplayed, JournalWriteErrors uint64
	// Scrubbed and ScrubDamaged count batches the background scrub verified and found bad.
	Scrubbed, ScrubDamaged uint64
	// Unsigned is how many closed batches wait for their signature; SignErrors counts
	// failed signatures (each retried); SignFailing is true while the signer fails.
	Unsigned          uint64
	SignErrors        uint64
	SignFailing       bool
	HeadSeq, AckedSeq uint64
	// Full: collectors' events are refused. Holding: a commit is failing or waiting for
	// room, and its events are kept in memory.
	Full, Holding bool
	// UsedBytes is the spool's live size (its file less free pages), FileBytes the
	// file's size; FreeBytes what its file system has free (-1 when unknown). Room is
	// what may still be committed before the spool refuses events (max_size_bytes,
	// min_free_bytes and the evidence reserve taken into account).
	UsedBytes, FileBytes, FreeBytes, Room int64
	// LastScrub is the last full pass of the scrub; nil until one ended.
	LastScrub *ScrubPass
}

// Incident is something wrong with the spool that an operator must see: found at Open
// (a quarantine, a rollback, a vanished spool, a damaged meta page) or by the scrub.
type Incident struct {
	Action string    `json:"action"` // the self-audit action recorded for it
	Reason string    `json:"reason"`
	Seq    uint64    `json:"seq,omitempty"`
	Time   time.Time `json:"time"`
	// Failure is true when the chain cannot be trusted as it is (health: failure); false
	// for what was repaired (health: warning).
	Failure bool `json:"failure"`
}

// Incidents returns what Open and the scrub found since this spool was opened.
func (s *Spool) Incidents() []Incident {
	s.incMu.Lock()
	defer s.incMu.Unlock()
	return slices.Clone(s.incidents)
}

// resolveIncident marks the newest failure incident of action as repaired: health then
// shows it as a warning (it happened; the chain holds both events), no longer a failure.
func (s *Spool) resolveIncident(action, note string) {
	s.incMu.Lock()
	defer s.incMu.Unlock()
	for i := len(s.incidents) - 1; i >= 0; i-- {
		if in := &s.incidents[i]; in.Action == action && in.Failure {
			in.Failure = false
			in.Reason += " (" + note + ")"
			return
		}
	}
}

func (s *Spool) addIncident(in Incident) {
	s.incMu.Lock()
	s.incidents = append(s.incidents, in)
	s.incMu.Unlock()
}

// Open opens or creates the spool at path (the bbolt file; its folder is created 0700),
// checks it, and starts the writer.
//
// A file that is damaged (truncated, unreadable pages, a chain tail that does not
// verify) or rolled back (behind or forked from the head file kept beside it) is moved
// aside as path.quarantine-<time> and a new chain starts whose first event names it; a
// spool that vanished while its head file remains starts a new chain that says so. An
// I/O or permission error is not damage: Open then returns an *OpenError and touches
// nothing, because quarantining a healthy spool on a transient error would break the
// chain for nothing.
func Open(path string, cfg Config, opts Options) (*Spool, error) {
	cfg.SetDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("open spool: %w", err)
	}
	if opts.Signer == nil {
		return nil, errors.New("open spool: no signer")
	}
	enc, err := newEventCipher(opts.DataKey)
	if err != nil {
		return nil, fmt.Errorf("open spool: %w", err)
	}
	if opts.Encrypt && enc == nil {
		return nil, errors.New("open spool: encrypt needs the data key")
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, &OpenError{Path: path, Err: err}
	}
	if err := atomicfile.RemoveTemps(dir); err != nil {
		return nil, &OpenError{Path: path, Err: err}
	}
	s := &Spool{
		cfg: cfg, opts: opts, path: path, log: opts.Logger, enc: enc,
		raw:    make(chan rawItem, min(rawQueueSize, cfg.QueueSize)),
		queue:  make(chan item, cfg.QueueSize),
		urgent: make(chan item, urgentQueueSize),
		done:   make(chan struct{}),

		signJobs: make(chan signJob, signPipeline),
		signed:   make(chan signResult, signPipeline),
		signStop: make(chan struct{}),
		signDone: make(chan struct{}),
	}
	s.signCtx, s.signCancel = context.WithCancel(context.Background())
	evidence, err := s.recover()
	if err != nil {
		return nil, err
	}
	if err := s.rekeyUnsigned(); err != nil {
		s.stopPageCheck()
		s.db.Close()
		return nil, &OpenError{Path: path, Err: err}
	}
	if s.st.headSeq > 0 || len(s.st.leaves) > 0 || len(s.st.unsigned) > 0 {
		// Logged here, once per Open: the reload after every failed commit reads the
		// same state, and must not log it each time.
		s.log.Info("spool recovered", "head_seq", s.st.headSeq, "unsigned", len(s.st.unsigned), "open_events", len(s.st.leaves))
	}
	hf, err := openHeadFile(headPath(path))
	if err != nil {
		s.stopPageCheck()
		s.db.Close()
		return nil, &OpenError{Path: path, Err: err}
	}
	s.head = hf
	// The head file names this chain from now on, also when recovery started a new one.
	s.writeHead()
	jn, recs, damaged, err := openJournal(path+journalExt, journalSize, s.enc, s.opts.Encrypt)
	if err != nil {
		s.head.close()
		s.stopPageCheck()
		s.db.Close()
		return nil, &OpenError{Path: path, Err: fmt.Errorf("open journal: %w", err)}
	}
	s.jn = jn
	var applied uint64
	s.db.View(func(tx *bolt.Tx) error { applied = getU64(tx.Bucket(bucketMeta), keyJournalApplied); return nil })
	// Seqs only grow, also past a journal that was replaced: a record of this run must
	// never pass for one the writer committed already.
	jn.applied.Store(applied)
	jn.seq = max(jn.seq, applied)
	// Start as full: collectors' events are taken only once the room is above the
	// hysteresis band, as after any other refusal.
	s.full.Store(true)
	s.refreshSpace()
	go s.encoder()
	go s.signLoop()
	go s.writer()
	go s.journalLoop()
	if n := s.replayJournal(recs, applied); n > 0 {
		s.log.Info("acknowledged events from the journal committed again after an unclean stop", "events", n)
	}
	now := s.opts.Now()
	if damaged > 0 {
		e := selfEvent(now, "audit.events_lost", audit.OutcomeSeriousFailure, "journal records could not be read back (damaged, or torn by a crash during their write)")
		e.Count = damaged
		e.Detail = map[string]string{"events": fmt.Sprint(damaged), "cause": "journal record unreadable"}
		evidence = append(evidence, e)
	}
	for i := range evidence {
		if err := s.Append(context.Background(), &evidence[i], nil); err != nil {
			s.log.Error("record spool incident", "action", evidence[i].Action, "err", err)
		}
	}
	if e, done, ok := s.lossEvent(now); ok {
		if err := s.Append(context.Background(), &e, done); err != nil {
			s.log.Error("record earlier loss", "err", err)
		}
	}
	if s.pc != nil {
		close(s.pc.opened)
	}
	return s, nil
}

// OpenError is a spool that could not be opened for a reason that is not damage: the
// file was left as it is.
type OpenError struct {
	Path string
	Err  error
}

func (e *OpenError) Error() string {
	if isKeyError(e.Err) {
		return fmt.Sprintf("open spool %s: %v (the file was not touched: its events are encrypted under the data key it was written with; start with that key (keys/data.key, or the TPM seal in keys/tpm), or, if it is lost for good, run `edgeaudit keys recover`, which moves this spool aside)", e.Path, e.Err)
	}
	return fmt.Sprintf("open spool %s: %v (the file was not touched: this is an I/O or permission problem, not damage; fix it and start again)", e.Path, e.Err)
}

func (e *OpenError) Unwrap() error { return e.Err }

// Append implements collectors.Sink. It copies e and queues it; a separate encoder
// goroutine encodes it, so that a busy connection's goroutine, the bottleneck of a single
// fast sender, does only its parsing. Order is kept: events are encoded and committed in
// the order Append accepted them.
//
// It returns ErrFull when the event does not fit the room left (see space.go); the
// appliance's own events (source kind self) may use the evidence reserve.
func (s *Spool) Append(ctx context.Context, e *audit.Event, done func(error)) error {
	ev, cost, err := s.admitCopy(e)
	if err != nil {
		return err
	}
	if err := s.send(ctx, rawItem{ev: ev, cost: cost, done: done}); err != nil {
		s.space.release(cost)
		return err
	}
	s.stats.appended.Add(1)
	return nil
}

// admitCopy is what Append and AppendUrgent do first: take room for e (ErrFull when it
// does not fit), give it an ID, and return the copy to queue, marked when the clock is
// not known right.
func (s *Spool) admitCopy(e *audit.Event) (audit.Event, int64, error) {
	cost := s.eventCost(e)
	if !s.admit(cost, e.Source.Kind == audit.KindSelf) {
		s.stats.refusedFull.Add(1)
		return audit.Event{}, 0, ErrFull
	}
	if e.ID == "" {
		e.ID = audit.NewID(e.Received)
	}
	ev := copyEvent(e)
	if s.opts.ClockSynced != nil && !s.opts.ClockSynced() {
		ev.ClockUnsynced = true
	}
	return ev, cost, nil
}

// urgentQueueSize bounds AppendUrgent's events waiting for the writer; a sender that
// waits for each acknowledgement has at most one there.
const urgentQueueSize = 256

// AppendUrgent is Append for a sender that waits for the commit before it sends again
// (collectors.AppendSync: HL7 ACKs, FHIR 201s, a token reveal): the
// event goes to the writer ahead of queued bulk events, so its acknowledgement waits for
// the next commit, not for every event queued before it. It is encoded here, in the
// caller's goroutine. Everything else is as Append.
func (s *Spool) AppendUrgent(ctx context.Context, e *audit.Event, done func(error)) error {
	ev, cost, err := s.admitCopy(e)
	if err != nil {
		return err
	}
	it := s.encode(&ev, cost)
	it.done = done
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.closed {
		s.space.release(cost)
		return ErrClosed
	}
	select {
	case s.jn.in <- it:
	case <-ctx.Done():
		s.space.release(cost)
		return ctx.Err()
	}
	s.stats.appended.Add(1)
	return nil
}

// AppendAll queues evs to be committed in one bbolt transaction: all of them or none (a
// FHIR transaction Bundle). It returns an error, and never calls done, if none was
// queued; otherwise done is called once, with nil after the commit that holds all of
// them, or with the error that kept all of them out.
func (s *Spool) AppendAll(ctx context.Context, evs []*audit.Event, done func(error)) error {
	if len(evs) == 0 {
		return errors.New("append all: no events")
	}
	ri := rawItem{group: make([]audit.Event, len(evs)), costs: make([]int64, len(evs)), done: done}
	var total int64
	evidence := true
	for i, e := range evs {
		ri.costs[i] = s.eventCost(e)
		total += ri.costs[i]
		evidence = evidence && e.Source.Kind == audit.KindSelf
	}
	if !s.admit(total, evidence) {
		s.stats.refusedFull.Add(1)
		return ErrFull
	}
	unsynced := s.opts.ClockSynced != nil && !s.opts.ClockSynced()
	for i, e := range evs {
		if e.ID == "" {
			e.ID = audit.NewID(e.Received)
		}
		ri.group[i] = copyEvent(e)
		ri.group[i].ClockUnsynced = ri.group[i].ClockUnsynced || unsynced
	}
	if err := s.send(ctx, ri); err != nil {
		s.space.release(total)
		return err
	}
	s.stats.appended.Add(uint64(len(evs)))
	return nil
}

// copyEvent copies e with its maps and slices: the caller may reuse what e points to
// once Append returns.
func copyEvent(e *audit.Event) audit.Event {
	c := *e
	c.Detail = maps.Clone(e.Detail)
	c.Study = slices.Clone(e.Study)
	c.Codes = slices.Clone(e.Codes)
	return c
}

func (s *Spool) send(ctx context.Context, ri rawItem) error {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.closed {
		return ErrClosed
	}
	select {
	case s.raw <- ri:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Seal seals the open batch now if it holds events (shutdown, tests), after every event
// appended before the call. It waits until that batch, and every batch closed before it,
// is signed and committed: while the signer fails, that is until ctx ends.
func (s *Spool) Seal(ctx context.Context) error {
	// Urgent events sent before Seal are in the batch it closes: the journal hands them
	// to the writer first.
	if err := s.flushJournal(ctx); err != nil {
		return err
	}
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
// continues the open batch) and closes the database. If the queued events cannot be
// committed (a disk that stays full or failing), Close retries for close_grace, then
// counts them as lost and records the loss for the next Open. Closed batches still
// waiting for a signature get close_grace too; what is left stays in the spool and is
// signed at the next Open.
func (s *Spool) Close() error {
	s.closing.Store(true)
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	close(s.jn.in)
	s.mu.Unlock()
	// The journal hands its last events to the writer before the writer's queue closes.
	<-s.jn.done
	close(s.raw)
	<-s.done
	<-s.signDone
	// bbolt's Close waits for every read transaction: the background check's guard
	// first. A check stopped before it ended leaves no clean-close record.
	s.stopPageCheck()
	herr, jerr, derr := s.head.close(), s.jn.close(s.enc, s.opts.Encrypt), s.db.Close()
	if derr == nil && !s.pageCheckPending() {
		// The next Open may skip the full page check of a file left as it is now.
		if err := recordCleanClose(s.path, time.Now()); err != nil {
			s.log.Warn("record clean close; the next start checks every page", "err", err)
		}
	}
	return errors.Join(wrapErr("close head file", herr), wrapErr("close journal", jerr), wrapErr("close spool", derr))
}

func wrapErr(op string, err error) error {
	if err == nil {
		return nil
	}
	return fmt.Errorf("%s: %w", op, err)
}

// Stats returns the counters.
func (s *Spool) Stats() Stats {
	var head, acked uint64
	var size int64
	s.db.View(func(tx *bolt.Tx) error {
		m := tx.Bucket(bucketMeta)
		head, acked = getU64(m, keyHeadSeq), getU64(m, keyAckedSeq)
		size = tx.Size()
		return nil
	})
	free, ok := s.freeBytes()
	if !ok {
		free = -1
	}
	c := &s.stats
	st := Stats{
		UsedBytes: s.usedBytes(), FileBytes: size, FreeBytes: free, Room: s.space.room.Load(), LastScrub: s.lastScrub.Load(),
		Appended: c.appended.Load(), Committed: c.committed.Load(), Commits: c.commits.Load(),
		Sealed: c.sealed.Load(), RefusedFull: c.refusedFull.Load(), CommitErrors: c.commitErrors.Load(),
		Pruned: c.pruned.Load(), Lost: c.lost.Load(), HeadFileErrors: c.headErrors.Load(),
		Scrubbed: c.scrubbed.Load(), ScrubDamaged: c.scrubDamaged.Load(),
		HeadSeq: head, AckedSeq: acked, Full: s.full.Load(), Holding: s.holding.Load(),
		Unsigned: uint64(max(s.unsignedN.Load(), 0)), SignErrors: c.signErrors.Load(), SignFailing: s.signFailing.Load(),
	}
	if s.jn != nil {
		st.JournalWritten, st.JournalReplayed, st.JournalWriteErrors = s.jn.written.Load(), s.jn.replayed.Load(), s.jn.writeErrs.Load()
	}
	return st
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
