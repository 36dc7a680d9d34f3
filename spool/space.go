package spool

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync/atomic"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/edgeaudit/edgeaudit/audit"
	"github.com/edgeaudit/edgeaudit/internal/atomicfile"
	"github.com/edgeaudit/edgeaudit/internal/diskspace"
)

// Space accounting. Append admits an event only if what is already queued plus the event
// still fits the room left at the last refresh: the free space above min_free_bytes and
// below max_size_bytes, less the evidence reserve. The appliance's own events (start,
// stop, losses, quarantines, the final seal) may use the reserve, so the chain can say
// what happened when it is full. The writer refreshes the room after every commit and
// checks the disk against what each commit needs before it writes, so ENOSPC is met
// only when something else fills the disk between two checks.
type space struct {
	room   atomic.Int64 // bytes left for collectors' events at the last refresh
	queued atomic.Int64 // cost of events accepted but not yet committed
}

// eventCost is what an event may take on disk until it is committed: its encoding twice
// over (bbolt's copy-on-write keeps the old page until the transaction ends) plus the
// per-key overhead.
func eventCost(e *audit.Event) int64 { return 2*int64(e.SizeHint()) + 64 }

// eventCost is eventCost with what encryption adds to the stored bytes (twice, as
// above).
func (s *Spool) eventCost(e *audit.Event) int64 {
	if s.opts.Encrypt {
		return eventCost(e) + 2*encOverhead
	}
	return eventCost(e)
}

// admit reserves cost for an event, or reports that it does not fit. evidence events may
// go down to -reserve.
func (s *Spool) admit(cost int64, evidence bool) bool {
	if !evidence && (s.holding.Load() || s.full.Load()) {
		return false
	}
	// Collectors' events stop while less than fullSlack is left, so that "full" in
	// health and in Append mean the same; evidence may go into the reserve.
	floor := int64(fullSlack)
	if evidence {
		floor = -s.cfg.EvidenceReserveBytes
	}
	q := s.space.queued.Add(cost)
	if s.space.room.Load()-q < floor {
		s.space.queued.Add(-cost)
		if !evidence {
			s.full.Store(true)
		}
		return false
	}
	return true
}

// fullSlack: collectors' events stop while less than this would be left. Once refused,
// they stay refused until the room is back above fullSlack+fullHysteresis, so that a
// spool at its limit does not flap between taking and refusing events, and "full" in
// health means what Append does.
const (
	fullSlack      = 64 << 10
	fullHysteresis = 64 << 10
)

// release returns an event's cost once it is committed, lost, or was never queued.
func (sp *space) release(cost int64) { sp.queued.Add(-cost) }

// noLimit stands for "no limit known" in room arithmetic without overflowing.
const noLimit = int64(1) << 60

// refreshSpace recomputes the room from the spool's live size and its file system's free
// space, and the full flag from it.
func (s *Spool) refreshSpace() {
	room := noLimit
	if s.cfg.MaxSizeBytes > 0 {
		room = s.cfg.MaxSizeBytes - s.usedBytes()
	}
	if free, ok := s.freeBytes(); ok {
		room = min(room, free-s.cfg.MinFreeBytes)
	}
	room -= s.cfg.EvidenceReserveBytes
	s.space.room.Store(room)
	left := room - s.space.queued.Load()
	full := left < fullSlack || s.holding.Load() || (s.full.Load() && left < fullSlack+fullHysteresis)
	if full && !s.full.Load() {
		if ok, _ := s.logs.Allow("full", time.Now()); ok {
			s.log.Warn("spool full: refusing new events (backpressure) until central acknowledges and retention prunes",
				"max_size_bytes", s.cfg.MaxSizeBytes, "min_free_bytes", s.cfg.MinFreeBytes, "room", room)
		}
	}
	s.full.Store(full)
}

// usedBytes is the spool file's size less its free pages.
func (s *Spool) usedBytes() int64 {
	var size int64
	s.db.View(func(tx *bolt.Tx) error { size = tx.Size(); return nil })
	st := s.db.Stats()
	return size - int64(st.FreePageN+st.PendingPageN)*s.pageSize
}

// freeBytes is what the spool's file system has free for an unprivileged writer
// (statfs(2)'s f_bavail; on Windows what GetDiskFreeSpaceEx leaves the caller).
func (s *Spool) freeBytes() (int64, bool) {
	u, err := diskspace.Of(filepath.Dir(s.path))
	if err != nil {
		return 0, false
	}
	return u.Free, true
}

// commitNeed estimates what the next commit writes: the items, the pages on the path to
// them, the meta page and the freelist.
func (s *Spool) commitNeed(items []item) int64 {
	need := 64 * s.pageSize
	for _, it := range items {
		need += it.cost
	}
	st := s.db.Stats()
	return need + int64(st.FreePageN+st.PendingPageN)*8
}

// The loss file records events that were accepted but could not be committed before
// Close gave up (a disk that stayed full or failing through the close grace). The chain
// cannot hold that record at that moment, so it goes into a small file beside the spool,
// and the next Open writes it into the chain as an audit.events_lost event.
const lossFileExt = ".lost"

// lossRecord is the loss file's content.
type lossRecord struct {
	Events uint64    `json:"events"`
	First  time.Time `json:"first"`
	Last   time.Time `json:"last"`
	Reason string    `json:"reason"`
}

func (s *Spool) recordLoss(items []item, cause error) {
	n := uint64(len(items))
	if n == 0 {
		return
	}
	s.stats.lost.Add(n)
	for _, it := range items {
		s.space.release(it.cost)
	}
	path := s.path + lossFileExt
	rec, _ := readLoss(path)
	now := time.Now().UTC()
	if rec.Events == 0 {
		rec.First = now
	}
	rec.Events += n
	rec.Last = now
	rec.Reason = cause.Error()
	b, _ := json.Marshal(rec)
	if err := atomicfile.WriteFile(path, b, 0o600); err != nil {
		s.log.Error("events lost and the loss could not be recorded", "events", n, "err", err)
		return
	}
	s.log.Error("events lost: could not be committed before close; recorded for the next start", "events", n, "err", cause)
}

func readLoss(path string) (lossRecord, error) {
	var rec lossRecord
	b, err := os.ReadFile(path)
	if err != nil {
		return rec, err
	}
	if err := json.Unmarshal(b, &rec); err != nil {
		return rec, fmt.Errorf("read loss file: %w", err)
	}
	return rec, nil
}

// lossEvent turns a loss file left by an earlier run into evidence; done removes the
// file once the event is committed.
func (s *Spool) lossEvent(now time.Time) (audit.Event, func(error), bool) {
	path := s.path + lossFileExt
	rec, err := readLoss(path)
	if errors.Is(err, os.ErrNotExist) {
		return audit.Event{}, nil, false
	}
	e := selfEvent(now, "audit.events_lost", audit.OutcomeSeriousFailure, "")
	if err != nil {
		e.Reason = "loss file unreadable: " + err.Error()
	} else {
		e.Reason = rec.Reason
		e.Count = int(rec.Events)
		e.Detail = map[string]string{
			"events": fmt.Sprint(rec.Events), "first": rec.First.Format(time.RFC3339Nano), "last": rec.Last.Format(time.RFC3339Nano),
			"cause": "accepted but not committed before close",
		}
	}
	done := func(err error) {
		if err == nil {
			os.Remove(path)
			atomicfile.SyncDir(filepath.Dir(path))
		}
	}
	return e, done, true
}

// selfEvent is an event of the spool about itself.
func selfEvent(now time.Time, action, outcome, reason string) audit.Event {
	now = now.UTC()
	return audit.Event{
		Time: now, Received: now,
		Source:  audit.Source{Kind: audit.KindSelf, Transport: "internal", App: "edgeaudit"},
		Action:  action,
		Outcome: outcome,
		Reason:  reason,
	}
}
