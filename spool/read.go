package spool

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"runtime/debug"
	"time"

	bolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"

	"github.com/edgeaudit/edgeaudit/audit"
	"github.com/edgeaudit/edgeaudit/ledger"
)

var randRead = rand.Read

// readBatch loads sealed batch seq: header, signature and its events in leaf order, in
// clear (decrypted with enc where they are stored encrypted).
func readBatch(tx *bolt.Tx, seq uint64, enc *eventCipher) (*ledger.Batch, error) {
	v := tx.Bucket(bucketBatches).Get(seqKey(seq))
	if v == nil {
		return nil, fmt.Errorf("batch %d: %w", seq, ErrNotFound)
	}
	hb, sig, err := decodeStored(v)
	if err != nil {
		return nil, fmt.Errorf("batch %d: %w", seq, err)
	}
	b := &ledger.Batch{Header: bytes.Clone(hb), Signature: bytes.Clone(sig)}
	chain := string(tx.Bucket(bucketMeta).Get(keyChain))
	prefix := seqKey(seq)
	c := tx.Bucket(bucketEvents).Cursor()
	for k, v := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, v = c.Next() {
		if int(binary.BigEndian.Uint32(k[8:])) != len(b.Events) {
			return nil, fmt.Errorf("batch %d: event %d missing", seq, len(b.Events))
		}
		e, err := openEvent(enc, chain, k, v)
		if isKeyError(err) {
			return nil, fmt.Errorf("batch %d: %w", seq, err)
		}
		if err != nil {
			return nil, &EventError{Seq: seq, Index: binary.BigEndian.Uint32(k[8:]), Err: err}
		}
		b.Events = append(b.Events, e)
	}
	return b, nil
}

// EventError is a stored event of a sealed batch that cannot be read back: it does not
// decrypt under the right key (altered, or moved from another place) or is in no known
// format. Err wraps ErrDamaged. verify reports it as that batch's root failing: the
// stored events are no longer those the root covers.
type EventError struct {
	Seq   uint64
	Index uint32
	Err   error
}

func (e *EventError) Error() string {
	return fmt.Sprintf("batch %d, event %d: %v", e.Seq, e.Index, e.Err)
}

func (e *EventError) Unwrap() error { return e.Err }

// ErrNotFound means a batch is not (or no longer) in the spool.
var ErrNotFound = errors.New("not found")

// Position is the spool's chain position, as readers see it.
type Position struct {
	Chain      string
	HeadSeq    uint64 // last sealed batch
	HeadHash   string
	AckedSeq   uint64 // central acknowledged up to here
	PrunedSeq  uint64 // batches up to here were deleted (acked and past retention)
	PrunedHash string // header hash of batch PrunedSeq: the anchor for verifying the rest
	OpenEvents int    // committed events not yet in a signed batch (the open batch and those waiting for a signature)
	Unsigned   int    // closed batches waiting for their signature
}

func position(tx *bolt.Tx) Position {
	m := tx.Bucket(bucketMeta)
	if m == nil {
		return Position{}
	}
	p := Position{
		Chain: string(m.Get(keyChain)), HeadSeq: getU64(m, keyHeadSeq),
		HeadHash: hex.EncodeToString(m.Get(keyHeadHash)), AckedSeq: getU64(m, keyAckedSeq),
		PrunedSeq: getU64(m, keyPrunedSeq), PrunedHash: hex.EncodeToString(m.Get(keyPrunedHash)),
	}
	// Counted a batch at a time from its last key (seq | index, indexes from 0 without
	// gaps), not event by event: /healthz and /metrics ask for it several times a
	// second, and a walk over every open event touched all their pages in bbolt's map,
	// which then counted in the daemon's RSS.
	c := tx.Bucket(bucketEvents).Cursor()
	for k, _ := c.Seek(seqKey(p.HeadSeq + 1)); len(k) == 12; {
		seq := binary.BigEndian.Uint64(k[:8])
		next, _ := c.Seek(seqKey(seq + 1))
		var last []byte
		if next == nil {
			last, _ = c.Last()
		} else {
			last, _ = c.Prev()
		}
		if len(last) == 12 && binary.BigEndian.Uint64(last[:8]) == seq {
			p.OpenEvents += int(binary.BigEndian.Uint32(last[8:])) + 1
		}
		k, _ = c.Seek(seqKey(seq + 1))
	}
	if ub := tx.Bucket(bucketUnsigned); ub != nil {
		uc := ub.Cursor()
		if first, _ := uc.First(); first != nil {
			last, _ := uc.Last()
			p.Unsigned = int(binary.BigEndian.Uint64(last) - binary.BigEndian.Uint64(first) + 1)
		}
	}
	return p
}

// Position returns the chain position.
func (s *Spool) Position() (p Position, err error) {
	err = s.db.View(func(tx *bolt.Tx) error { p = position(tx); return nil })
	return p, err
}

// Batches calls fn for each sealed batch with seq >= from, in order, until fn returns an
// error. A batch passed to fn stays valid after fn returns.
func (s *Spool) Batches(from uint64, fn func(*ledger.Batch) error) error {
	return batches(s.db, s.enc, from, fn)
}

func batches(db *bolt.DB, enc *eventCipher, from uint64, fn func(*ledger.Batch) error) error {
	// One read transaction per batch: a long export must not pin old pages (and so grow
	// the file) while the writer keeps committing.
	for seq := max(from, 1); ; seq++ {
		var b *ledger.Batch
		err := safeView(db, func(tx *bolt.Tx) error {
			var err error
			// Only the prune mark: position would also count the open events, on
			// every batch read.
			if m := tx.Bucket(bucketMeta); m != nil {
				if pruned := getU64(m, keyPrunedSeq); seq <= pruned {
					seq = pruned + 1
				}
			}
			b, err = readBatch(tx, seq, enc)
			return err
		})
		if errors.Is(err, ErrNotFound) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("seq %d: %w", seq, err)
		}
		if err := fn(b); err != nil {
			return err
		}
	}
}

// safeView is db.View with a damaged page (a bbolt panic, a fault in the map) turned into
// ErrDamaged.
func safeView(db *bolt.DB, fn func(*bolt.Tx) error) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("%w: bbolt: %v", ErrDamaged, r)
		}
	}()
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	return db.View(fn)
}

// Ack records that central verified and stored every batch up to seq. It never moves
// backwards and never past the head.
func (s *Spool) Ack(seq uint64) error {
	return s.db.Update(func(tx *bolt.Tx) error {
		m := tx.Bucket(bucketMeta)
		seq = min(seq, getU64(m, keyHeadSeq))
		if seq <= getU64(m, keyAckedSeq) {
			return nil
		}
		return m.Put(keyAckedSeq, u64(seq))
	})
}

// Prune deletes batches that central acknowledged and that were sealed more than the
// retention ago, oldest first, in transactions of at most 64 batches. It returns how many
// it deleted. Nothing unacknowledged is ever deleted (invariant 2).
func (s *Spool) Prune(now time.Time) (int, error) {
	total := 0
	for {
		n, err := s.pruneSome(now, 64)
		total += n
		if err != nil || n < 64 {
			if total > 0 {
				s.stats.pruned.Add(uint64(total))
				s.refreshSpace()
			}
			return total, err
		}
	}
}

func (s *Spool) pruneSome(now time.Time, limit int) (int, error) {
	n := 0
	err := s.db.Update(func(tx *bolt.Tx) error {
		m := tx.Bucket(bucketMeta)
		acked, pruned := getU64(m, keyAckedSeq), getU64(m, keyPrunedSeq)
		bb, eb := tx.Bucket(bucketBatches), tx.Bucket(bucketEvents)
		for seq := pruned + 1; seq <= acked && n < limit; seq++ {
			v := bb.Get(seqKey(seq))
			if v == nil {
				return fmt.Errorf("prune: batch %d missing", seq)
			}
			hb, _, err := decodeStored(v)
			if err != nil {
				return err
			}
			h, err := ledger.ParseHeader(hb)
			if err != nil {
				return fmt.Errorf("prune batch %d: %w", seq, err)
			}
			sealed, err := time.Parse(audit.TimeFormat, h.Sealed)
			if err != nil || now.Sub(sealed) < s.cfg.Retention {
				break
			}
			hh := ledger.HeaderHash(hb)
			prefix := seqKey(seq)
			c := eb.Cursor()
			for k, _ := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, _ = c.Seek(prefix) {
				if err := c.Delete(); err != nil {
					return err
				}
			}
			if err := bb.Delete(prefix); err != nil {
				return err
			}
			if err := m.Put(keyPrunedSeq, u64(seq)); err != nil {
				return err
			}
			if err := m.Put(keyPrunedHash, hh[:]); err != nil {
				return err
			}
			n++
		}
		return nil
	})
	return n, err
}

// Reader is read-only access to a spool file that no daemon holds, for the CLI's
// verify and export.
type Reader struct {
	db        *bolt.DB
	enc       *eventCipher
	encrypted bool
}

// OpenReader opens a spool file read-only without a data key. It fails with ErrLocked
// while a daemon runs, and with ErrDamaged (naming the file and the reason) for a file
// that bbolt could not read without crashing: the same checks as Open, before bbolt
// maps it. Position and Header work on any spool; reading the events of a spool whose
// events are encrypted (Encrypted) fails with ErrKeyRequired: use OpenReaderWithKey.
func OpenReader(path string) (*Reader, error) {
	return OpenReaderWithKey(path, nil)
}

// OpenReaderWithKey is OpenReader with the appliance's data key, which the events are
// decrypted with (see Options.DataKey); a key the spool was not written with is
// ErrWrongKey. The events Batches and OpenEvents return are in clear.
func OpenReaderWithKey(path string, dataKey []byte) (r *Reader, err error) {
	enc, err := newEventCipher(dataKey)
	if err != nil {
		return nil, fmt.Errorf("open spool %s: %w", path, err)
	}
	if _, err := os.Stat(path); err != nil {
		return nil, fmt.Errorf("open spool: %w", err)
	}
	mi, err := precheck(path)
	if err != nil {
		return nil, fmt.Errorf("open spool %s: %w", path, err)
	}
	// The full page check is skipped for a file as the daemon's clean close left it
	// (recover.go); the record stays for the daemon's next start.
	if _, clean := cleanSince(path, mi); !clean {
		err = checkInChild(context.Background(), path)
	}
	if err != nil {
		if errors.Is(err, ErrLocked) {
			return nil, fmt.Errorf("open spool %s: %w (stop the daemon first)", path, ErrLocked)
		}
		return nil, fmt.Errorf("open spool %s: %w", path, err)
	}
	defer func() {
		if rec := recover(); rec != nil {
			r, err = nil, fmt.Errorf("open spool %s: %w: bbolt: %v", path, ErrDamaged, rec)
		}
	}()
	db, err := bolt.Open(path, 0o600, &bolt.Options{ReadOnly: true, Timeout: time.Second})
	if err != nil {
		if errors.Is(err, berrors.ErrTimeout) {
			return nil, fmt.Errorf("open spool %s: %w (stop the daemon first)", path, ErrLocked)
		}
		return nil, fmt.Errorf("open spool %s: %w", path, err)
	}
	readAhead(db, mi.size)
	r = &Reader{db: db, enc: enc}
	err = safeView(db, func(tx *bolt.Tx) error {
		if m := tx.Bucket(bucketMeta); m != nil {
			r.encrypted = m.Get(keyKeyCheck) != nil
		}
		if enc == nil {
			return nil // Position still works; reading an encrypted event says why not
		}
		return checkKey(tx, enc)
	})
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("open spool %s: %w", path, err)
	}
	return r, nil
}

// Encrypted reports whether the spool may hold encrypted events (encryption was on when
// it was written): reading them needs OpenReaderWithKey.
func (r *Reader) Encrypted() bool { return r.encrypted }

// Header returns the stored header bytes of sealed batch seq, without reading (or
// decrypting) its events.
func (r *Reader) Header(seq uint64) (header []byte, err error) {
	err = safeView(r.db, func(tx *bolt.Tx) error {
		v := tx.Bucket(bucketBatches).Get(seqKey(seq))
		if v == nil {
			return fmt.Errorf("batch %d: %w", seq, ErrNotFound)
		}
		hb, _, err := decodeStored(v)
		header = bytes.Clone(hb)
		return err
	})
	return header, err
}

// Position returns the chain position.
func (r *Reader) Position() (p Position, err error) {
	err = safeView(r.db, func(tx *bolt.Tx) error { p = position(tx); return nil })
	return p, err
}

// Batches is Spool.Batches for a read-only spool.
func (r *Reader) Batches(from uint64, fn func(*ledger.Batch) error) error {
	return batches(r.db, r.enc, from, fn)
}

// OpenEvents returns the committed events not yet in a signed batch: those of batches
// that wait for their signature, then those of the open batch, in order.
func (r *Reader) OpenEvents() ([][]byte, error) {
	return eventsAfter(r.db, r.enc, nil)
}

// EventsAfter returns, in order and in clear, every committed event of the batches
// after seq: with seq the head of an earlier Position, the events sealed since then and
// those not sealed yet, read in one short transaction. It is what an export through the
// running daemon adds to the sealed batches up to that head.
func (s *Spool) EventsAfter(seq uint64) ([][]byte, error) {
	return eventsAfter(s.db, s.enc, &seq)
}

// eventsAfter reads the events after seq, or after the head when seq is nil.
func eventsAfter(db *bolt.DB, enc *eventCipher, seq *uint64) ([][]byte, error) {
	var out [][]byte
	err := safeView(db, func(tx *bolt.Tx) error {
		chain := string(tx.Bucket(bucketMeta).Get(keyChain))
		after := getU64(tx.Bucket(bucketMeta), keyHeadSeq)
		if seq != nil {
			after = *seq
		}
		c := tx.Bucket(bucketEvents).Cursor()
		for k, v := c.Seek(seqKey(after + 1)); k != nil; k, v = c.Next() {
			e, err := openEvent(enc, chain, k, v)
			if err != nil {
				return fmt.Errorf("open event: %w", err)
			}
			out = append(out, e)
		}
		return nil
	})
	return out, err
}

// Close closes the file.
func (r *Reader) Close() error { return r.db.Close() }
