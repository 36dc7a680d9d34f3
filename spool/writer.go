package spool

import (
	"context"
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
	return item{buf: buf, received: e.Received, cost: cost}
}

// writer owns the chain head. Each round it takes what is queued, commits it in one
// transaction, and only then calls the events' done callbacks. A round that cannot be
// committed is kept and retried, never dropped (see commitRetrying).
func (s *Spool) writer() {
	defer close(s.done)
	// bbolt reads pages through a memory map; a damaged page must fail this goroutine's
	// transaction with an error (recovered in commit), not fault the whole process.
	debug.SetPanicOnFault(true)
	tick := min(s.cfg.MaxAge/4, 250*time.Millisecond)
	ticker := time.NewTicker(tick)
	defer ticker.Stop()
	items := make([]item, 0, s.cfg.CommitEvents)
	for {
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
		select {
		case it, ok := <-s.queue:
			take(it, ok)
		case <-ticker.C:
		}
		// Take what else is queued; a Seal request ends the transaction, so that it
		// seals exactly the events appended before it.
	drain:
		for !closed && sealWaiter == nil && len(items) < s.cfg.CommitEvents {
			select {
			case it, ok := <-s.queue:
				take(it, ok)
			default:
				break drain
			}
		}
		err := s.commitRetrying(items, sealWaiter != nil, closed)
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
			s.recordLoss(items, err)
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
	if len(items) == 0 && !dueAge && !dueHeartbeat && !(forceSeal && len(st.leaves) > 0) {
		s.refreshSpace()
		return nil
	}
	sealed := 0
	err = s.db.Update(func(tx *bolt.Tx) error {
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
	s.stats.commits.Add(1)
	s.stats.committed.Add(uint64(len(items)))
	s.stats.sealed.Add(uint64(sealed))
	if sealed > 0 {
		s.writeHead()
		if s.opts.OnSeal != nil {
			s.opts.OnSeal()
		}
	}
	s.refreshSpace()
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
	st.leaves, st.bytes = st.leaves[:0], 0
	st.first, st.last, st.lastSeal = time.Time{}, time.Time{}, now
	return nil
}
