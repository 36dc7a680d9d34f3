package spool

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"sync"
	"sync/atomic"

	bolt "go.etcd.io/bbolt"

	"github.com/edgeaudit/edgeaudit/audit"
	"github.com/edgeaudit/edgeaudit/internal/atomicfile"
)

// After an unclean stop bbolt's full page check of a large spool runs in the background
// (issue 11: start-up under 5 s with an 8 GB spool, where the check takes about a
// minute from a cold cache). A child process takes a snapshot (a read transaction),
// releases its lock on the file and walks every page of the snapshot, while this process
// opens the file, verifies the chain's tail and the open batch as always, and takes
// events. This process holds a read transaction of the same snapshot until the child is
// done, so that bbolt reuses none of the pages the child reads; the map is opened with
// room to grow meanwhile (bgMmapHeadroom), because a remap waits for every read
// transaction to end.
//
// Damage found this way is recorded at once (health, and an audit.spool_page_check_failed
// event in the chain) and in the recheck file beside the spool: the next start checks in
// the foreground, and quarantines the file as it would have done at this start. A stop
// before the check ended leaves no clean-close record, so the next start checks again.

// ActionPageCheckFailed is the self-audit action of damage found by the background
// page check.
const ActionPageCheckFailed = "audit.spool_page_check_failed"

// bgCheckMinBytes is the file size from which the check runs in the background; a
// smaller file is checked before the start, which then takes under about two seconds.
// A variable for tests.
var bgCheckMinBytes int64 = 256 << 20

// bgMmapHeadroom is how far the writer can grow the file during a background check
// before a remap waits for the check to end (virtual address space only).
const bgMmapHeadroom = 8 << 30

const recheckFileExt = ".recheck"

func recheckPath(spoolPath string) string { return spoolPath + recheckFileExt }

var errSnapshotMismatch = errors.New("the spool changed between the check's snapshot and its open")

// pageCheck is a background page check in progress (or done) for this Open.
type pageCheck struct {
	bg       *bgCheck
	guard    *bolt.Tx
	opened   chan struct{} // closed once Open has started the spool
	stop     chan struct{} // closed by stopPageCheck
	stopOnce sync.Once
	done     chan struct{} // closed when the result is handled
	passed   atomic.Bool
}

// beginPageCheck takes the guard transaction of bg's snapshot on the just opened file.
func (s *Spool) beginPageCheck(bg *bgCheck) error {
	guard, err := s.db.Begin(false)
	if err != nil {
		bg.cancel()
		<-bg.result
		return fmt.Errorf("check spool: %w", err)
	}
	if uint64(guard.ID()) != bg.txid {
		guard.Rollback()
		bg.cancel()
		<-bg.result
		return fmt.Errorf("%w (txid %d, now %d)", errSnapshotMismatch, bg.txid, guard.ID())
	}
	pc := &pageCheck{bg: bg, guard: guard, opened: make(chan struct{}), stop: make(chan struct{}), done: make(chan struct{})}
	s.pc = pc
	go func() {
		defer close(pc.done)
		res := <-bg.result
		pc.guard.Rollback()
		select {
		case <-pc.opened:
		case <-pc.stop:
		}
		select {
		case <-pc.opened:
			s.pageCheckDone(res)
		default: // Open failed; its error says why
		}
	}()
	return nil
}

// stopPageCheck ends a background check still running (Close, or an Open that failed)
// and waits until its guard transaction is closed.
func (s *Spool) stopPageCheck() {
	pc := s.pc
	if pc == nil {
		return
	}
	pc.stopOnce.Do(func() {
		close(pc.stop)
		pc.bg.cancel()
	})
	<-pc.done
}

// pageCheckPending reports whether a background check began and has not passed: the
// file then gets no clean-close record.
func (s *Spool) pageCheckPending() bool { return s.pc != nil && !s.pc.passed.Load() }

func (s *Spool) pageCheckDone(res error) {
	now := s.opts.Now()
	switch {
	case res == nil:
		s.pc.passed.Store(true)
		s.log.Info("background page check of the spool passed")
	case errors.Is(res, errCheckStopped):
		s.log.Info("background page check of the spool stopped before it ended; the next start checks again")
	case isDamage(res):
		reason := "the background page check found damage: " + res.Error()
		s.log.Error("spool damaged; the next start checks it again and quarantines it", "err", res)
		if err := atomicfile.WriteFile(recheckPath(s.path), []byte(reason+"\n"), 0o600); err != nil {
			s.log.Error("record that the spool must be checked again at the next start", "err", err)
		}
		e := s.incident(now, ActionPageCheckFailed, audit.OutcomeSeriousFailure, reason, 0, true,
			map[string]string{"snapshot_txid": strconv.FormatUint(s.pc.bg.txid, 10), "action": "restart the service: the next start quarantines the spool and starts a new chain"})
		if err := s.Append(context.Background(), &e, nil); err != nil {
			s.log.Error("record spool incident", "action", e.Action, "err", err)
		}
	default:
		// Not the file's fault (I/O, the child could not run): the next start checks
		// again, since no clean-close record is written.
		s.log.Warn("background page check of the spool did not complete", "err", res)
	}
}

// recheckWanted reports whether an earlier background check found damage.
func recheckWanted(path string) bool {
	_, err := os.Stat(recheckPath(path))
	return err == nil
}
