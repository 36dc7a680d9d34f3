package spool

import (
	"crypto/cipher"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"runtime/debug"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/edgeaudit/edgeaudit/audit"
	"github.com/edgeaudit/edgeaudit/ledger"
)

// Retry pacing of a commit that failed or that the disk has no room for. The events stay
// in memory meanwhile (and Append refuses new ones, which is the collectors'
// backpressure); they are lost only if Close finds them still uncommitted after its
// grace, and then they are counted and recorded.
const (
	retryMin = 10 * time.Millisecond
	retryMax = time.Second
)

// urgentCommitEvents caps the bulk events that share a transaction with urgent ones;
// urgentBulkEvents caps bulk transactions for urgentWindow after one, so that the next
// urgent event does not wait long for the commit in progress (a full 8192-event commit
// takes some 30 ms here). journalBulkEvents caps them for urgentWindow after a journaled
// event: its sender waits for no bbolt commit, but its fdatasync waits for the flush of
// the bulk commit in progress. Under a syslog flood 768 took a 100 msgs/s HL7 sender's
// p99 from 28 to 15 ms for a fifth of the flood's rate; 512 to 10 ms for a third
// (docs/performance.md).
const (
	urgentCommitEvents = 64
	urgentBulkEvents   = 512
	urgentWindow       = time.Second
	journalBulkEvents  = 768
)

// journalCommitDelay and journalCommitEvents bound how long and for how many events the
// writer holds events the journal answered already before it commits them (at most
// about 50 such commits a second; the journal holds some 6,000). Each bbolt commit is two
// flushes that the journal's next fdatasync waits behind: a RELP sender with omrelp's
// window of 128 went from 75k to 81k events/s when 10 ms / 1,024 became 20 ms / 2,048.
const (
	journalCommitDelay  = 20 * time.Millisecond
	journalCommitEvents = 2048
)

// gatherMax bounds how long a transaction with urgent events waits for more of them.
// Senders that wait for their acknowledgement send their next event when the commit
// that holds the last one returns, so they arrive a round trip after it: without a
// wait the first of them gets a commit of its own and the rest queue for the next, and
// 16 senders share two commits where one would do (half the acknowledgements per fsync).
// The writer waits for as many urgent events as the last such commit carried, and for
// at most half the time a commit takes, up to gatherMax: never longer than the commit
// it saves.
const gatherMax = 5 * time.Millisecond

// encoder encodes queued events once, in order, for the writer; it closes the writer's
// queue when Close has closed its own. The events of one AppendAll go out back to back,
// the first carrying how many follow, so the writer commits them together.
func (s *Spool) encoder() {
	defer close(s.queue)
	for ri := range s.raw {
		if ri.seal != nil {
			s.queue <- item{seal: ri.seal}
			continue
		}
		if ri.group != nil {
			for i := range ri.group {
				it := s.encode(&ri.group[i], ri.costs[i])
				if i == 0 {
					it.more = len(ri.group) - 1
				}
				if i == len(ri.group)-1 {
					it.done = ri.done
				}
				s.queue <- it
			}
			continue
		}
		it := s.encode(&ri.ev, ri.cost)
		it.done = ri.done
		s.queue <- it
	}
}

func (s *Spool) encode(e *audit.Event, cost int64) item {
	buf := e.AppendJSON(append(make([]byte, 0, e.SizeHint()+1), 0))
	// The leaf hash here rather than in the writer: the writer, one goroutine for every
	// event, is the pipeline's bottleneck under a syslog flood.
	return item{buf: buf, leaf: sha256.Sum256(buf), received: e.Received, cost: cost}
}

// writer owns the chain head. Each round it takes what is queued, commits it in one
// transaction, and only then calls the events' done callbacks. A round that cannot be
// committed is kept and retried, never dropped (see commitRetrying). Signatures from the
// signer goroutine ride along in the next round's transaction (sign.go).
func (s *Spool) writer() {
	defer close(s.done)
	// bbolt reads pages through a memory map; a damaged page must fail this goroutine's
	// transaction with an error (recovered in commit), not fault the whole process.
	debug.SetPanicOnFault(true)
	tick := min(s.cfg.MaxAge/4, 250*time.Millisecond)
	ticker := time.NewTicker(tick)
	defer ticker.Stop()
	s.dispatch() // headers left unsigned by the last run
	items := make([]item, 0, s.cfg.CommitEvents)
	var lastUrgent time.Time    // when a transaction last carried an urgent event
	var lastJournaled time.Time // when one last carried a journaled event
	var g gather
	lastDrop := time.Now()
	for {
		if time.Since(lastDrop) >= dropInterval {
			s.dropMapped()
			lastDrop = time.Now()
		}
		items = items[:0]
		var sealWaiter chan error
		closed := false
		take := func(it item, ok bool) {
			switch {
			case !ok:
				closed = true
			case it.seal != nil:
				sealWaiter = it.seal
			default:
				items = append(items, it)
				// The rest of an AppendAll group is on its way from the encoder: wait for
				// it, so the group never straddles two transactions.
				for range it.more {
					items = append(items, <-s.queue)
				}
			}
		}
		// Urgent events (AppendUrgent, through the journal) first: those the journal
		// answered already, so that it stays short, and those it could not take (a failed
		// journal write), whose senders wait for this commit.
		waiting, urgentSeen := 0, false
		takeUrgent := func(it item) {
			items = append(items, it)
			urgentSeen = true
			if it.done != nil {
				waiting++
			}
		}
		urgent := func() {
			for {
				select {
				case it := <-s.urgent:
					takeUrgent(it)
				default:
					return
				}
			}
		}
		urgent()
		if len(items) == 0 {
			select {
			case it := <-s.urgent:
				takeUrgent(it)
			case it, ok := <-s.queue:
				take(it, ok)
			case r := <-s.signed:
				s.takeSignature(r)
			case <-ticker.C:
			}
		}
		// Events the journal answered already have no sender waiting: committing each of
		// its groups at once would cost the disk two more flushes per group, which the
		// journal's own fdatasyncs then wait behind. They are gathered for a moment, so
		// that one bbolt commit takes many groups.
		if waiting == 0 && len(items) > 0 && items[len(items)-1].jseq > 0 && !closed && sealWaiter == nil {
			t := time.NewTimer(journalCommitDelay)
		hold:
			for len(items) < journalCommitEvents && waiting == 0 {
				select {
				case it := <-s.urgent:
					takeUrgent(it)
				case it, ok := <-s.queue:
					take(it, ok) // bulk, a Seal or Close: commit now
					break hold
				case <-t.C:
					break hold
				}
			}
			t.Stop()
		}
		// A transaction that carries events whose senders wait takes few bulk ones: a
		// small one commits quickly. While such senders are active, bulk transactions
		// stay short too: their next event, arriving mid-commit, waits for the commit in
		// progress. (With the journal working, no sender waits for a commit.)
		limit := s.cfg.CommitEvents
		now := time.Now()
		if waiting > 0 {
			limit, lastUrgent = min(limit, urgentCommitEvents), now
			more, _ := g.wait(s.urgent, waiting)
			for _, it := range more {
				takeUrgent(it)
			}
		} else if now.Sub(lastUrgent) < urgentWindow {
			limit = min(limit, urgentBulkEvents)
		} else if urgentSeen || now.Sub(lastJournaled) < urgentWindow {
			// Journaled events too: their senders are answered by the journal's
			// fdatasync, which the disk serves after the flush of the bulk commit in
			// progress, so the length of a bulk commit is their latency's tail.
			limit = min(limit, journalBulkEvents)
			if urgentSeen {
				lastJournaled = now
			}
		}
		// Take what else is queued; a Seal request ends the transaction, so that it
		// seals exactly the events appended before it.
	drain:
		for !closed && sealWaiter == nil && len(items) < limit {
			select {
			case it, ok := <-s.queue:
				take(it, ok)
			default:
				break drain
			}
		}
		// An urgent event sent before a Seal or Close returned from its send before the
		// seal or the close reached the queue: it is in s.urgent now, and goes in this
		// transaction. (AppendUrgent sends under s.mu's read lock; Close closes raw under
		// the write lock.)
		urgent()
		s.takeSignatures()
		began := time.Now()
		err := s.commitRetrying(items, sealWaiter != nil, closed)
		if waiting > 0 {
			g.committed(waiting, time.Since(began))
		}
		for _, it := range items {
			if it.done != nil {
				it.done(err)
			}
		}
		if sealWaiter != nil {
			if err != nil {
				sealWaiter <- err
			} else {
				// Answered once the batch just closed, and all before it, are signed.
				s.sign.waiters = append(s.sign.waiters, sealWait{target: s.st.sealedSeq, ch: sealWaiter})
				s.wakeWaiters()
			}
		}
		if closed {
			s.finishSigning()
			return
		}
	}
}

// finishSigning gives the headers still unsigned at Close the close grace to be signed
// and committed, then stops the signer. What is left stays in the unsigned bucket for
// the next Open.
func (s *Spool) finishSigning() {
	deadline := time.NewTimer(s.cfg.CloseGrace)
	defer deadline.Stop()
wait:
	for s.sign.inflight > 0 || len(s.sign.sigs) > 0 {
		if len(s.sign.sigs) > 0 {
			if err := s.commitRetrying(nil, false, true); err != nil {
				break
			}
			s.wakeWaiters()
			continue
		}
		select {
		case r := <-s.signed:
			s.takeSignature(r)
		case <-deadline.C:
			break wait
		}
	}
	close(s.signStop)
	s.signCancel()
	close(s.signJobs)
	for _, w := range s.sign.waiters {
		w.ch <- ErrClosed
	}
	s.sign.waiters = nil
	if n := len(s.st.unsigned); n > 0 {
		s.log.Warn("closing with batches not yet signed; they are signed at the next open", "unsigned", n)
	}
}

// commitRetrying commits items, and while that fails keeps them and tries again with
// backoff: a full disk, an I/O error or a signer that is briefly away must not lose what
// the spool already accepted. Meanwhile Append refuses with ErrFull. Once Close has begun
// (closing), it retries only for the close grace; what is still uncommitted then is
// counted as lost and recorded in the loss file that the next Open writes into the chain.
func (s *Spool) commitRetrying(items []item, forceSeal, closing bool) error {
	var (
		err      error
		failures int
		first    time.Time
		delay    = retryMin
		deadline time.Time
	)
	for {
		if closing || s.isClosed() {
			if deadline.IsZero() {
				deadline = time.Now().Add(s.cfg.CloseGrace)
			}
		}
		err = s.tryCommit(items, forceSeal)
		if err == nil {
			if failures > 0 {
				s.holding.Store(false)
				s.log.Info("spool commits again", "failures", failures, "took", time.Since(first).Round(time.Millisecond), "events", len(items))
			}
			return nil
		}
		if failures == 0 {
			first = time.Now()
		}
		failures++
		s.holding.Store(true)
		if ok, n := s.logs.Allow("commit", time.Now()); ok {
			s.log.Error("spool commit failed; keeping the events and retrying (senders get backpressure)",
				"events", len(items), "err", err, "failures", failures, "suppressed", n)
		}
		if !deadline.IsZero() && !time.Now().Before(deadline) {
			// Journaled events are not lost: the next Open commits them from the journal.
			var lost []item
			for _, it := range items {
				if it.jseq == 0 {
					lost = append(lost, it)
				} else {
					s.space.release(it.cost)
				}
			}
			s.recordLoss(lost, err)
			return fmt.Errorf("commit: %w", err)
		}
		wait := delay
		if !deadline.IsZero() {
			wait = min(wait, time.Until(deadline))
		}
		time.Sleep(max(wait, 0))
		delay = min(2*delay, retryMax)
	}
}

// isClosed reports whether Close has begun. It must not take s.mu: Close may be waiting
// for the write lock behind an Append blocked on the full queue that this very writer
// is not draining while it retries, and a pending writer blocks new readers.
func (s *Spool) isClosed() bool { return s.closing.Load() }

// errNoRoom is a commit that was not attempted because the file system has less free
// space than the commit needs: ENOSPC avoided rather than met.
var errNoRoom = errors.New("no room on the file system for the next commit")

// tryCommit makes one attempt. It first makes sure the writer state is what bbolt holds
// (after a failed attempt it is reloaded; if that reload failed, nothing is committed on
// a head that exists only in memory), then checks that the disk has room for what the
// commit will write.
func (s *Spool) tryCommit(items []item, forceSeal bool) error {
	if s.stale {
		if err := s.reload(); err != nil {
			return fmt.Errorf("reload head after a failed commit: %w", err)
		}
		s.stale = false
	}
	if free, ok := s.freeBytes(); ok {
		if need := s.commitNeed(items); free < need {
			s.refreshSpace()
			return fmt.Errorf("%w: %d bytes free, about %d needed", errNoRoom, free, need)
		}
	}
	err := s.commit(items, forceSeal)
	if err != nil {
		s.stats.commitErrors.Add(1)
		s.stale = true // the transaction rolled back; the in-memory head is not bbolt's
		if rerr := s.reload(); rerr == nil {
			s.stale = false
		}
		s.refreshSpace()
	}
	return err
}

// commit writes items in one transaction and seals every batch that becomes due. On
// failure nothing of it is visible; the caller reloads the writer state.
func (s *Spool) commit(items []item, forceSeal bool) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("%w: bbolt: %v", ErrDamaged, r)
		}
	}()
	now := s.opts.Now()
	st := &s.st
	dueAge := len(st.leaves) > 0 && now.Sub(st.opened) >= s.cfg.MaxAge
	dueHeartbeat := now.Sub(st.lastSeal) >= s.cfg.Heartbeat
	sigs := s.sign.sigs
	if len(items) == 0 && len(sigs) == 0 && !dueAge && !dueHeartbeat && !(forceSeal && len(st.leaves) > 0) {
		s.refreshSpace()
		return nil
	}
	sealed := 0
	var jseq uint64 // the last journal record among items
	err = s.db.Update(func(tx *bolt.Tx) error {
		if f := s.commitFault.Load(); f != nil {
			if err := (*f)(); err != nil {
				return err
			}
		}
		if err := s.putSignatures(tx, sigs); err != nil {
			return err
		}
		ev := tx.Bucket(bucketEvents)
		ev.FillPercent = 1.0 // keys only ever grow: full pages make the file ~half the size
		var key [12]byte
		// Encrypted events go into one writer-owned buffer, sized for the whole commit so
		// that it never moves while bbolt holds slices of it (bbolt keeps each value
		// slice until the transaction ends, and nothing of it after), and reused by the
		// next commit: a fresh 3 MiB each commit cost the writer GC time. Their nonces
		// come from one read of crypto/rand.
		var stored, nonces, aad []byte
		if s.opts.Encrypt && len(items) > 0 {
			n := 0
			for _, it := range items {
				n += len(it.buf) - 1 + encOverhead
			}
			if cap(s.encBuf) < n {
				s.encBuf = make([]byte, 0, n)
			}
			stored = s.encBuf[:0]
			if cap(s.nonceBuf) < nonceSize*len(items) {
				s.nonceBuf = make([]byte, nonceSize*len(items))
			}
			nonces = s.nonceBuf[:nonceSize*len(items)]
			if !s.enc.randomNonce {
				if _, err := randRead(nonces); err != nil {
					return fmt.Errorf("event nonces: %w", err)
				}
			}
			aad = make([]byte, 0, len(st.chain)+len(key))
		}
		var batchAEAD cipher.AEAD
		batchSeq := uint64(0)
		for i, it := range items {
			binary.BigEndian.PutUint64(key[:8], st.sealedSeq+1)
			binary.BigEndian.PutUint32(key[8:], uint32(len(st.leaves)))
			val := it.buf[1:]
			if s.opts.Encrypt {
				start := len(stored)
				// A commit may seal a batch and go on in the next: each event under
				// its own batch's key.
				if seq := st.sealedSeq + 1; batchAEAD == nil || batchSeq != seq {
					var err error
					if batchAEAD, err = s.enc.batch(st.chain, seq); err != nil {
						return err
					}
					batchSeq = seq
				}
				stored = s.enc.seal(stored, batchAEAD, eventAAD(aad[:0], st.chain, key[:]), nonces[i*nonceSize:(i+1)*nonceSize], val)
				val = stored[start:]
			}
			if err := ev.Put(key[:], val); err != nil {
				return err
			}
			jseq = max(jseq, it.jseq)
			if len(st.leaves) == 0 {
				st.opened, st.first, st.last = now, it.received, it.received
			}
			st.leaves = append(st.leaves, it.leaf)
			st.bytes += int64(len(it.buf) - 1)
			if it.received.Before(st.first) {
				st.first = it.received
			}
			if it.received.After(st.last) {
				st.last = it.received
			}
			if len(st.leaves) >= s.cfg.MaxEvents || st.bytes >= s.cfg.MaxBytes {
				if err := s.seal(tx, now); err != nil {
					return err
				}
				sealed++
			}
		}
		if jseq > 0 {
			if err := tx.Bucket(bucketMeta).Put(keyJournalApplied, u64(jseq)); err != nil {
				return err
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
		return err
	}
	var cost int64
	for _, it := range items {
		cost += it.cost
	}
	s.space.release(cost)
	if jseq > 0 {
		s.jn.applied.Store(jseq)
	}
	s.stats.commits.Add(1)
	s.stats.committed.Add(uint64(len(items)))
	if n := len(sigs); n > 0 {
		st.unsigned = st.unsigned[n:]
		s.sign.sigs = s.sign.sigs[:0]
		s.stats.sealed.Add(uint64(n))
		s.writeHead()
		if s.opts.OnSeal != nil {
			s.opts.OnSeal()
		}
		s.wakeWaiters()
	}
	s.unsignedN.Store(int64(len(st.unsigned)))
	if sealed > 0 || len(sigs) > 0 {
		s.dispatch()
	}
	s.refreshSpace()
	return nil
}

// putSignatures stores the signed batches headSeq+1 … and moves the head to the last.
func (s *Spool) putSignatures(tx *bolt.Tx, sigs []signResult) error {
	if len(sigs) == 0 {
		return nil
	}
	st := &s.st
	batches, unsigned := tx.Bucket(bucketBatches), tx.Bucket(bucketUnsigned)
	var hh ledger.Hash
	for i, r := range sigs {
		p := st.unsigned[i]
		if p.seq != r.seq || p.seq != st.headSeq+1+uint64(i) {
			return fmt.Errorf("signature for seq %d, the next unsigned header is %d", r.seq, p.seq)
		}
		if err := batches.Put(seqKey(p.seq), encodeStored(p.header, r.sig)); err != nil {
			return err
		}
		if err := unsigned.Delete(seqKey(p.seq)); err != nil {
			return err
		}
		hh = ledger.HeaderHash(p.header)
	}
	last := sigs[len(sigs)-1].seq
	meta := tx.Bucket(bucketMeta)
	if err := meta.Put(keyHeadSeq, u64(last)); err != nil {
		return err
	}
	if err := meta.Put(keyHeadHash, hh[:]); err != nil {
		return err
	}
	st.headSeq, st.headHash = last, hh
	return nil
}

// writeHead records the new head in the head file. The batch is committed already, so a
// failure here cannot be undone: it is logged (rate-limited), counted, and shown in
// health, and the next successful write repairs it.
func (s *Spool) writeHead() {
	if s.head == nil {
		return
	}
	err := s.head.write(headRecord{Chain: s.st.chain, Seq: s.st.headSeq, Hash: s.st.headHash, Written: time.Now()})
	if err != nil {
		s.stats.headErrors.Add(1)
		s.headErr.Store(true)
		if ok, n := s.logs.Allow("head", time.Now()); ok {
			s.log.Error("write head file", "err", err, "suppressed", n)
		}
		return
	}
	s.headErr.Store(false)
}

// reload rebuilds the writer state from bbolt after a failed transaction, so the head
// never exists only in memory. It only reads: a reload must work on a full disk.
func (s *Spool) reload() error {
	lastSeal := s.st.lastSeal
	if err := s.readState(); err != nil {
		return err
	}
	s.st.lastSeal = lastSeal
	return nil
}

// seal closes the open batch inside tx: its header is prepared and stored unsigned, and
// the next batch links to it. The signature comes later (sign.go).
func (s *Spool) seal(tx *bolt.Tx, now time.Time) error {
	st := &s.st
	h := ledger.Header{
		Site: s.opts.Site, Device: s.opts.Device, Chain: st.chain,
		Seq: st.sealedSeq + 1, Prev: ledger.ZeroHash,
		Sealed: now.UTC().Format(audit.TimeFormat),
		KeyID:  s.opts.Signer.KeyID(),
	}
	if st.sealedSeq > 0 {
		h.Prev = hex.EncodeToString(st.sealedHash[:])
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
	hb, err := h.Prepare(ledger.Root(st.leaves), len(st.leaves))
	if err != nil {
		return err
	}
	if err := tx.Bucket(bucketUnsigned).Put(seqKey(h.Seq), hb); err != nil {
		return err
	}
	st.sealedSeq, st.sealedHash = h.Seq, ledger.HeaderHash(hb)
	st.unsigned = append(st.unsigned, pendingHeader{seq: h.Seq, header: hb})
	st.leaves, st.bytes = st.leaves[:0], 0
	st.first, st.last, st.lastSeal = time.Time{}, time.Time{}, now
	return nil
}

// gather is the writer's memory of its last commit with urgent events: how many it
// carried and how long commits take, so the next can wait for as many (see gatherMax).
type gather struct {
	want   int           // urgent events in the last such commit
	commit time.Duration // moving average of their commit time
	buf    []item
}

// wait collects urgent events until have+len(got) reaches the last commit's count or
// half a commit's time has passed, whichever is first. It returns at once when the last
// commit held no more than have: one sender, or senders that have gone quiet (a wait that
// times out lowers want to what came, so the cost of a sender leaving is one wait). It
// also returns after a barrier (flushJournal), which it takes, and when the channel is
// closed (open false).
func (g *gather) wait(urgent <-chan item, have int) (got []item, open bool) {
	g.buf = g.buf[:0]
	if have >= g.want {
		return nil, true
	}
	d := min(g.commit/2, gatherMax)
	if d <= 0 {
		return nil, true
	}
	t := time.NewTimer(d)
	defer t.Stop()
	for have+len(g.buf) < g.want {
		select {
		case it, ok := <-urgent:
			if !ok {
				return g.buf, false
			}
			g.buf = append(g.buf, it)
			if it.barrier != nil {
				return g.buf, true
			}
		case <-t.C:
			return g.buf, true
		}
	}
	return g.buf, true
}

// committed records a commit that carried n urgent events and took d.
func (g *gather) committed(n int, d time.Duration) {
	g.want = n
	if g.commit == 0 {
		g.commit = d
	} else {
		g.commit += (d - g.commit) / 8
	}
}
