package spool

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"runtime/debug"
	"strconv"
	"time"

	bolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"

	"github.com/edgeaudit/edgeaudit/audit"
	"github.com/edgeaudit/edgeaudit/internal/atomicfile"
	"github.com/edgeaudit/edgeaudit/ledger"
)

// Recovery actions recorded in the new chain (see Open).
const (
	ActionQuarantined  = "audit.spool_quarantined"
	ActionRollback     = "audit.spool_rollback"
	ActionVanished     = "audit.spool_vanished"
	ActionMetaDamaged  = "audit.spool_meta_damaged"
	ActionHeadDamaged  = "audit.spool_head_file_damaged"
	ActionChainDamaged = "audit.chain_damaged"
	ActionEventsLost   = "audit.events_lost"
)

// ErrRolledBack means the spool is behind, or forked from, the head recorded outside it.
var ErrRolledBack = errors.New("spool rolled back")

// recover opens the bbolt file, checking it before and after bbolt maps it, and returns
// the evidence events the new or continued chain must start with. Damage leads to
// quarantine and a new chain; anything else is returned as an *OpenError.
func (s *Spool) recover() ([]audit.Event, error) {
	now := s.opts.Now()
	var evidence []audit.Event
	expect, haveHead, herr := readHeadFile(headPath(s.path))
	switch {
	case errors.Is(herr, ErrDamaged):
		evidence = append(evidence, s.incident(now, ActionHeadDamaged, audit.OutcomeMinorFailure, herr.Error(), 0, false, nil))
		haveHead = false
	case herr != nil:
		return nil, &OpenError{Path: s.path, Err: herr}
	}
	mi, err := precheck(s.path)
	existed := mi.size > 0
	var bg *bgCheck
	if err == nil && existed {
		when, clean := unchangedSinceClose(s.path, mi)
		recheck := recheckWanted(s.path)
		switch {
		case clean && !recheck:
			// bbolt's full page check reads every page of the file through a
			// MADV_RANDOM map: a minute per 2 GB from a cold cache. A file exactly as
			// this spool's last clean Close left it needs none: the scrub reads every
			// batch again in the background.
			s.log.Info("spool file unchanged since its clean close; page check skipped", "closed", when, "bytes", mi.size)
		case !recheck && backgroundCheckSupported && strconv.IntSize == 64 && mi.size >= bgCheckMinBytes:
			// After an unclean stop a large file is checked in the background
			// (bgcheck.go); on 64-bit systems only, since the map gets bgMmapHeadroom
			// of address space more.
			if bg, err = startBackgroundCheck(s.path, 2*s.cfg.MaxEvents+64); errors.Is(err, errNoSnapshot) {
				err = checkInChild(context.Background(), s.path)
			} else if bg != nil {
				s.mmapSize = mi.size + bgMmapHeadroom
				s.log.Info("spool not closed cleanly; its page check runs in the background", "bytes", mi.size)
			}
		default:
			err = checkInChild(context.Background(), s.path)
			if recheck && (err == nil || isDamage(err)) {
				os.Remove(recheckPath(s.path)) // checked again, as the earlier check asked
			}
		}
	}
	if err == nil {
		err = s.openDB()
	}
	if bg != nil {
		if err != nil {
			bg.cancel()
			<-bg.result
		} else if err = s.beginPageCheck(bg); errors.Is(err, errSnapshotMismatch) {
			// Something wrote between the child's snapshot and this open: check it as
			// a whole before the start instead.
			s.log.Warn("spool changed while its background check started; checking it now", "err", err)
			s.db.Close()
			s.db = nil
			if err = checkInChild(context.Background(), s.path); err == nil {
				err = s.openDB()
			}
		}
	}
	if err == nil {
		err = s.load()
	}
	if err == nil && mi.fallback {
		// bbolt may have fallen back one transaction: if a seal was lost with it, the head
		// file check below notices; either way the damage is recorded.
		evidence = append(evidence, s.incident(now, ActionMetaDamaged, audit.OutcomeMinorFailure,
			fmt.Sprintf("meta page %v of the spool is damaged; bbolt uses the other one", mi.damaged), 0, false, nil))
	}
	if err == nil && haveHead && existed {
		err = s.checkHead(expect)
	}
	if err != nil {
		s.stopPageCheck()
		s.pc = nil
		if errors.Is(err, ErrLocked) {
			return nil, fmt.Errorf("open spool %s: %w", s.path, err)
		}
		// A wrong or missing data key is not damage: the file is fine, and quarantining
		// it would make its events unreachable for nothing. Only when keys recover has
		// replaced a lost data key can it never be read again.
		if s.opts.NoQuarantine || !isDamage(err) && !(isKeyError(err) && s.opts.KeyReplaced) {
			if s.db != nil {
				s.db.Close()
			}
			return nil, &OpenError{Path: s.path, Err: err}
		}
		action := ActionQuarantined
		var detail map[string]string
		if errors.Is(err, ErrRolledBack) {
			action = ActionRollback
			detail = map[string]string{"expected_seq": fmt.Sprint(expect.Seq), "expected_hash": hex.EncodeToString(expect.Hash[:]),
				"expected_chain": expect.Chain, "found_seq": fmt.Sprint(s.st.headSeq), "found_hash": hex.EncodeToString(s.st.headHash[:])}
		}
		ev, qerr := s.quarantine(err, action, detail)
		if qerr != nil {
			return nil, &OpenError{Path: s.path, Err: fmt.Errorf("quarantine: %w (after: %v)", qerr, err)}
		}
		evidence = append(evidence, ev)
		return evidence, nil
	}
	if !existed && haveHead && expect.Seq > 0 {
		evidence = append(evidence, s.incident(now, ActionVanished, audit.OutcomeSeriousFailure,
			fmt.Sprintf("the spool file was missing or empty, but the head file names seq %d of chain %s", expect.Seq, expect.Chain),
			expect.Seq, true, map[string]string{"expected_seq": fmt.Sprint(expect.Seq), "expected_hash": hex.EncodeToString(expect.Hash[:]), "expected_chain": expect.Chain}))
	}
	return evidence, nil
}

// incident records an incident for health and returns its evidence event.
func (s *Spool) incident(now time.Time, action, outcome, reason string, seq uint64, failure bool, detail map[string]string) audit.Event {
	s.addIncident(Incident{Action: action, Reason: reason, Seq: seq, Time: now.UTC(), Failure: failure})
	e := selfEvent(now, action, outcome, reason)
	e.Detail = detail
	return e
}

// isDamage tells damage (quarantine) from trouble that is not the file's fault.
func isDamage(err error) bool {
	for _, target := range []error{ErrDamaged, ErrChainBroken, ErrRolledBack, ledger.ErrFormat,
		berrors.ErrInvalid, berrors.ErrVersionMismatch, berrors.ErrChecksum, berrors.ErrInvalidMapping} {
		if errors.Is(err, target) {
			return true
		}
	}
	return false
}

// checkHead compares the loaded head with the head file: the spool may be ahead (a crash
// between the commit and the head file write) but never behind or on another branch.
func (s *Spool) checkHead(expect headRecord) error {
	st := &s.st
	switch {
	case expect.Chain != chainPrefix(st.chain):
		return fmt.Errorf("%w: spool holds chain %s, the head file names chain %s", ErrRolledBack, chainPrefix(st.chain), expect.Chain)
	case st.headSeq < expect.Seq:
		return fmt.Errorf("%w: spool head is seq %d, the head file names seq %d", ErrRolledBack, st.headSeq, expect.Seq)
	case expect.Seq == 0:
		return nil
	}
	var got ledger.Hash
	known := false
	err := s.db.View(func(tx *bolt.Tx) error {
		meta := tx.Bucket(bucketMeta)
		if b, err := readBatch(tx, expect.Seq, s.enc); err == nil {
			got, known = ledger.HeaderHash(b.Header), true
		} else if getU64(meta, keyPrunedSeq) == expect.Seq {
			copy(got[:], meta.Get(keyPrunedHash))
			known = true
		}
		return nil
	})
	if err != nil {
		return err
	}
	if known && got != expect.Hash {
		return fmt.Errorf("%w: batch %d differs from the one the head file names (a fork)", ErrRolledBack, expect.Seq)
	}
	return nil
}

func (s *Spool) openDB() (err error) {
	// bbolt panics on some damaged files (an invalid freelist page) and reads the rest
	// through its memory map; both must become an error here, not a crash loop.
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("%w: bbolt: %v", ErrDamaged, r)
		}
	}()
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	// The default 4 KiB page size stays: 64 KiB pages saved pwrite calls but gave no
	// measurable throughput and doubled peak RSS (docs/performance.md).
	db, err := bolt.Open(s.path, 0o600, &bolt.Options{Timeout: DefaultOpenTimeout, FreelistType: bolt.FreelistMapType, NoSync: unsafeNoSync,
		InitialMmapSize: int(s.mmapSize)})
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
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("%w: bbolt: %v", ErrDamaged, r)
		}
	}()
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	err = s.db.Update(func(tx *bolt.Tx) error {
		meta, err := tx.CreateBucketIfNotExists(bucketMeta)
		if err != nil {
			return err
		}
		for _, b := range [][]byte{bucketEvents, bucketBatches, bucketUnsigned} {
			if _, err := tx.CreateBucketIfNotExists(b); err != nil {
				return err
			}
		}
		if meta.Get(keyChain) == nil {
			var id [16]byte
			if _, err := randRead(id[:]); err != nil {
				return err
			}
			if err := meta.Put(keyChain, []byte(hex.EncodeToString(id[:]))); err != nil {
				return err
			}
		}
		if err := checkKey(tx, s.enc); err != nil {
			return err
		}
		if s.opts.Encrypt && meta.Get(keyKeyCheck) == nil {
			return meta.Put(keyKeyCheck, s.enc.check)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("init spool: %w", err)
	}
	return s.readState()
}

// readState reads and verifies the head and rebuilds the open batch; it only reads, so
// that it works on a full disk (the reload after a failed commit).
func (s *Spool) readState() (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("%w: bbolt: %v", ErrDamaged, r)
		}
	}()
	var st state
	err = s.db.View(func(tx *bolt.Tx) error {
		meta := tx.Bucket(bucketMeta)
		st.chain = string(meta.Get(keyChain))
		st.headSeq = getU64(meta, keyHeadSeq)
		copy(st.headHash[:], meta.Get(keyHeadHash))
		if err := s.verifyTail(tx, st.headSeq, st.headHash); err != nil {
			return err
		}
		if err := readUnsigned(tx, &st, s.enc); err != nil {
			return err
		}
		// Events of the open batch: committed but not yet sealed when we stopped.
		c := tx.Bucket(bucketEvents).Cursor()
		open := st.sealedSeq + 1
		for k, v := c.Seek(seqKey(open)); k != nil; k, v = c.Next() {
			if binary.BigEndian.Uint64(k) != open {
				return fmt.Errorf("%w: event key for seq %d beyond the open batch %d", ErrChainBroken, binary.BigEndian.Uint64(k), open)
			}
			if idx := binary.BigEndian.Uint32(k[8:]); int(idx) != len(st.leaves) {
				return fmt.Errorf("%w: open batch event %d missing", ErrChainBroken, len(st.leaves))
			}
			v, err := openEvent(s.enc, st.chain, k, v)
			if err != nil {
				return fmt.Errorf("open batch: %w", err)
			}
			st.leaves = append(st.leaves, ledger.LeafHash(v))
			st.bytes += int64(len(v))
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
	return nil
}

// readUnsigned reads the prepared headers that wait for a signature (headSeq+1 … in
// order) and checks each against the chain and against its stored events, so that what
// is signed after a restart is what was closed before it.
func readUnsigned(tx *bolt.Tx, st *state, enc *eventCipher) error {
	st.sealedSeq, st.sealedHash = st.headSeq, st.headHash
	ub := tx.Bucket(bucketUnsigned)
	if ub == nil { // a spool from before unsigned headers, opened read-only
		return nil
	}
	events := tx.Bucket(bucketEvents)
	c := ub.Cursor()
	for k, v := c.First(); k != nil; k, v = c.Next() {
		seq := binary.BigEndian.Uint64(k)
		if seq != st.sealedSeq+1 {
			return fmt.Errorf("%w: unsigned header %d after seq %d", ErrChainBroken, seq, st.sealedSeq)
		}
		h, err := ledger.ParseHeader(v)
		if err != nil {
			return fmt.Errorf("%w: unsigned header %d: %v", ErrChainBroken, seq, err)
		}
		prev := ledger.ZeroHash
		if st.sealedSeq > 0 {
			prev = hex.EncodeToString(st.sealedHash[:])
		}
		if h.Seq != seq || h.Chain != st.chain || h.Prev != prev {
			return fmt.Errorf("%w: unsigned header %d does not link to seq %d", ErrChainBroken, seq, st.sealedSeq)
		}
		var leaves []ledger.Hash
		ec := events.Cursor()
		prefix := seqKey(seq)
		for ek, ev := ec.Seek(prefix); ek != nil && bytes.HasPrefix(ek, prefix); ek, ev = ec.Next() {
			plain, err := openEvent(enc, st.chain, ek, ev)
			if isKeyError(err) {
				return err
			}
			if err != nil {
				return fmt.Errorf("%w: unsigned header %d: %v", ErrChainBroken, seq, err)
			}
			leaves = append(leaves, ledger.LeafHash(plain))
		}
		if root := ledger.Root(leaves); len(leaves) != h.Count || hex.EncodeToString(root[:]) != h.Root {
			return fmt.Errorf("%w: unsigned header %d does not match its %d stored events", ErrChainBroken, seq, len(leaves))
		}
		st.unsigned = append(st.unsigned, pendingHeader{seq: seq, header: bytes.Clone(v)})
		st.sealedSeq, st.sealedHash = seq, ledger.HeaderHash(v)
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
		if b, err := readBatch(tx, from-1, s.enc); err == nil {
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
		b, err := readBatch(tx, seq, s.enc)
		if isKeyError(err) {
			return err
		}
		if err != nil {
			return fmt.Errorf("%w: seq %d: %v", ErrChainBroken, seq, err)
		}
		if reason := checkBatch(b, seq, prev, pub, ours); reason != "" {
			return fmt.Errorf("%w: seq %d: %s", ErrChainBroken, seq, reason)
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
// deletes and never overwrites: the old file stays for forensics under a name no earlier
// quarantine holds, named in the new chain's first event.
func (s *Spool) quarantine(cause error, action string, detail map[string]string) (audit.Event, error) {
	if s.db != nil {
		s.db.Close()
		s.db = nil
	}
	now := s.opts.Now()
	sum, size := fileDigest(s.path)
	moved, err := moveAside(s.path, now)
	if err != nil {
		return audit.Event{}, err
	}
	s.log.Error("spool cannot be trusted; moved aside and started a new chain", "file", moved, "action", action, "err", cause)
	s.st = state{}
	if err := s.openDB(); err != nil {
		return audit.Event{}, err
	}
	if err := s.load(); err != nil {
		return audit.Event{}, err
	}
	d := map[string]string{"file": filepath.Base(moved), "sha256": sum, "size": fmt.Sprint(size)}
	maps.Copy(d, detail)
	e := s.incident(now, action, audit.OutcomeSeriousFailure, cause.Error(), 0, true, d)
	e.RawSHA256 = sum
	return e, nil
}

// moveAside renames path to path.quarantine-<UTC time to the nanosecond>, adding -1,
// -2, ... if that name exists: link(2) fails rather than replace an existing file, which
// rename(2) would do silently.
func moveAside(path string, now time.Time) (string, error) {
	base := fmt.Sprintf("%s.quarantine-%s", path, now.UTC().Format("20060102T150405.000000000Z"))
	for i := 0; i < 1000; i++ {
		moved := base
		if i > 0 {
			moved = fmt.Sprintf("%s-%d", base, i)
		}
		err := os.Link(path, moved)
		if errors.Is(err, os.ErrExist) {
			continue
		}
		if err != nil {
			return "", fmt.Errorf("quarantine spool: %w", err)
		}
		if err := os.Remove(path); err != nil {
			return "", fmt.Errorf("quarantine spool: %w", err)
		}
		if err := atomicfile.SyncDir(filepath.Dir(path)); err != nil {
			return "", fmt.Errorf("quarantine spool: %w", err)
		}
		return moved, nil
	}
	return "", fmt.Errorf("quarantine spool: no free name after %s", base)
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

// The clean-close record lets Open skip bbolt's full page check (the one O(file size)
// step of a start) for a file that nothing has touched since this spool closed it. Close
// writes it after bbolt's file is closed: the meta page's txid and page count as the
// precheck reads them, and the file's size and modification time. Any later write, by
// bbolt (every transaction, the one Open itself makes too, raises the txid) or by
// anything else (mtime), a truncation (size), a copy or restore in place that is not
// this file (mtime), or a crash after Open (the txid of Open's own transaction) makes it
// stale, and Open then checks in full as before. It is advisory only: a missing,
// unreadable or stale record means a full check, never less checking.
const cleanFileExt = ".clean"

type cleanRecord struct {
	TxID   uint64    `json:"txid"`
	Pages  uint64    `json:"pages"`
	Size   int64     `json:"size"`
	MTime  int64     `json:"mtime_ns"`
	Closed time.Time `json:"closed"`
}

func cleanPath(spoolPath string) string { return spoolPath + cleanFileExt }

// recordCleanClose writes the clean-close record for the closed file at path.
func recordCleanClose(path string, now time.Time) error {
	mi, err := precheck(path)
	if err != nil {
		return err
	}
	// The file's mtime is set a second or more into the past, so that a write after this
	// one, even within the same tick of the file system's coarse clock, gives it another.
	mtime := now.Truncate(time.Second).Add(-time.Second)
	if err := os.Chtimes(path, time.Time{}, mtime); err != nil {
		return err
	}
	fi, err := os.Stat(path)
	if err != nil {
		return err
	}
	b, err := json.Marshal(cleanRecord{TxID: mi.use.txid, Pages: mi.use.hwm, Size: fi.Size(), MTime: fi.ModTime().UnixNano(), Closed: now.UTC()})
	if err != nil {
		return err
	}
	return atomicfile.WriteFile(cleanPath(path), b, 0o600)
}

// unchangedSinceClose reports whether the file at path (whose precheck is mi) is the one
// the last clean Close recorded, and when that was. It removes the record either way:
// from here on the file is this Open's.
func unchangedSinceClose(path string, mi metaInfo) (time.Time, bool) {
	when, ok := cleanSince(path, mi)
	os.Remove(cleanPath(path))
	return when, ok
}

// cleanSince is unchangedSinceClose without removing the record: for read-only opens.
func cleanSince(path string, mi metaInfo) (time.Time, bool) {
	b, err := os.ReadFile(cleanPath(path))
	if err != nil {
		return time.Time{}, false
	}
	var rec cleanRecord
	if json.Unmarshal(b, &rec) != nil || len(mi.damaged) > 0 {
		return time.Time{}, false
	}
	fi, err := os.Stat(path)
	if err != nil {
		return time.Time{}, false
	}
	ok := rec.TxID == mi.use.txid && rec.Pages == mi.use.hwm && rec.Size == mi.size && rec.Size == fi.Size() && rec.MTime == fi.ModTime().UnixNano()
	return rec.Closed, ok
}
