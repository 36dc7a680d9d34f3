package spool

import (
	"bytes"
	"context"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"path/filepath"
	"sync/atomic"
	"time"

	"github.com/edgeaudit/edgeaudit/internal/atomicfile"
)

// The journal makes an acknowledging sender's event durable with one fdatasync of a
// small preallocated file, instead of a bbolt commit (two fdatasyncs, and behind the
// bulk commit in progress). AppendUrgent's events go to the journal goroutine, which
// writes each group of them as records, fdatasyncs, calls their done (the HL7 ACK, the
// FHIR 201), and only then hands them to the writer, which commits them in bbolt as
// before and stores the last journal seq it committed (meta journal_applied) in the same
// transaction. After a crash, Open hands the records past journal_applied to the writer
// again: an acknowledged event is in the chain exactly once.
//
// Layout of path.journal (journalSize bytes, written in full when created so that a
// later fdatasync flushes data only, never an extent or a file size):
//
//	header (journalHeaderSize): "EAJ1" | gen u64 | salt [16] | crc32c of the preceding
//	records from journalHeaderSize, back to back:
//	    len u32 | crc32c u32 (of everything after it) | gen u64 | seq u64 | received
//	    unix ns i64 | payload (len bytes)
//
// A record belongs to the journal if its gen is the header's, its seq follows the one
// before it and its crc matches. When the file is full and every record in it is
// committed, a new header (gen+1, a fresh salt) makes all of them stale in one write.
// The payload is the item's bytes, with Options.Encrypt sealed with AES-256-GCM under a
// key of the generation's own (HKDF of the data key with the salt), with gen | seq |
// received as additional data.
//
// What a torn record means: it was being written when the process died, so it was never
// acknowledged, and the scan ends there. A record that fails its crc with a valid one
// after it is damage: it is skipped and recorded as a loss (audit.events_lost).
const (
	journalExt        = ".journal"
	journalHeaderSize = 4096
	journalRecHeader  = 4 + 4 + 8 + 8 + 8
	journalMagic      = "EAJ1"
	journalKeyInfo    = "edgeaudit spool journal v1|"
	// journalGroupMax bounds the records of one write.
	journalGroupMax = 256
)

// journalSize is the journal file's size: about 6,000 HL7 messages, a few seconds of the
// fastest acknowledging senders, which the writer commits within milliseconds. A
// variable for the tests that make it wrap.
var journalSize int64 = 4 << 20

var (
	keyJournalApplied = []byte("journal_applied") // u64: last journal seq committed
	crc32c            = crc32.MakeTable(crc32.Castagnoli)
)

// journal is the journal file and what the journal goroutine knows of it.
type journal struct {
	f           *os.File
	size        int64
	gen         uint64
	salt        [16]byte
	aead        cipher.AEAD // nil: records in clear
	randomNonce bool        // aead draws its own nonces (FIPS mode)
	off         int64       // where the next record goes
	seq         uint64      // last seq written
	buf         []byte

	in      chan item     // AppendUrgent → journal goroutine
	applied atomic.Uint64 // last seq the writer committed
	done    chan struct{}

	written   atomic.Uint64 // events answered after the journal's fdatasync
	replayed  atomic.Uint64
	writeErrs atomic.Uint64
}

// journalRecord is a record read back at Open.
type journalRecord struct {
	seq      uint64
	received time.Time
	buf      []byte
}

// openJournal opens (or creates) the journal beside the spool and reads its records.
// damaged counts records that were written and cannot be read back.
func openJournal(path string, size int64, enc *eventCipher, encrypt bool) (j *journal, recs []journalRecord, damaged int, err error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, nil, 0, err
	}
	defer func() {
		if err != nil {
			f.Close()
		}
	}()
	st, err := f.Stat()
	if err != nil {
		return nil, nil, 0, err
	}
	j = &journal{f: f, size: size, in: make(chan item, urgentQueueSize), done: make(chan struct{})}
	if encrypt && enc != nil {
		j.randomNonce = enc.randomNonce
	}
	if st.Size() < size {
		// Written in full once, so that records overwrite allocated blocks.
		if err := j.zero(st.Size()); err != nil {
			return nil, nil, 0, err
		}
		if err := atomicfile.SyncDir(filepath.Dir(path)); err != nil {
			return nil, nil, 0, err
		}
	}
	// Read a record at a time, not the whole file: 4 MiB read at Open stayed in the
	// daemon's idle RSS.
	hdr := make([]byte, journalHeaderSize)
	if _, err := f.ReadAt(hdr, 0); err != nil && !errors.Is(err, io.EOF) {
		return nil, nil, 0, err
	}
	gen, salt, ok := parseJournalHeader(hdr)
	if !ok {
		// A header that never was (a new file) or one torn while it was being replaced,
		// which happens only when every record in the file is committed: nothing to replay.
		if err := j.reset(enc, encrypt, 1); err != nil {
			return nil, nil, 0, err
		}
		return j, nil, 0, nil
	}
	j.gen, j.salt = gen, salt
	if err := j.keys(enc, encrypt); err != nil {
		return nil, nil, 0, err
	}
	recs, damaged, j.off = j.scan(f, size)
	if len(recs) > 0 {
		j.seq = recs[len(recs)-1].seq
	}
	return j, recs, damaged, nil
}

func parseJournalHeader(h []byte) (gen uint64, salt [16]byte, ok bool) {
	const n = 4 + 8 + 16
	if string(h[:4]) != journalMagic || crc32.Checksum(h[:n], crc32c) != binary.BigEndian.Uint32(h[n:]) {
		return 0, salt, false
	}
	copy(salt[:], h[12:n])
	return binary.BigEndian.Uint64(h[4:12]), salt, true
}

// scan reads the records of the current generation; it returns them, how many were
// damaged, and where the next record goes.
func (j *journal) scan(f io.ReaderAt, size int64) (recs []journalRecord, damaged int, end int64) {
	off := int64(journalHeaderSize)
	var want uint64 // the seq the next record must have; 0: any (the first)
	for {
		r, next, ok := j.record(f, size, off, want)
		if ok {
			recs = append(recs, r)
			want, off = r.seq+1, next
			continue
		}
		// A record that does not check out, with a good one right after it, is damage
		// to an acknowledged record; anything else is the end (or a torn last write).
		if next > off {
			w2 := want
			if w2 > 0 {
				w2++
			}
			if r2, next2, ok2 := j.record(f, size, next, w2); ok2 {
				damaged++
				recs = append(recs, r2)
				want, off = r2.seq+1, next2
				continue
			}
		}
		return recs, damaged, off
	}
}

// record parses the record at off. next is where the record after it would start when
// its length is plausible, even if the record itself does not check out.
func (j *journal) record(f io.ReaderAt, size, off int64, want uint64) (r journalRecord, next int64, ok bool) {
	if off+journalRecHeader > size {
		return r, off, false
	}
	var h [journalRecHeader]byte
	if _, err := f.ReadAt(h[:], off); err != nil {
		return r, off, false
	}
	n := int64(binary.BigEndian.Uint32(h[0:4]))
	if n == 0 || off+journalRecHeader+n > size {
		return r, off, false
	}
	next = off + journalRecHeader + n
	// body is what the crc covers: the header after the crc, then the payload.
	body := make([]byte, journalRecHeader-8+n)
	copy(body, h[8:])
	if _, err := f.ReadAt(body[journalRecHeader-8:], off+journalRecHeader); err != nil {
		return r, next, false
	}
	gen, seq := binary.BigEndian.Uint64(h[8:16]), binary.BigEndian.Uint64(h[16:24])
	if j.crc(body) != binary.BigEndian.Uint32(h[4:8]) || gen != j.gen || (want != 0 && seq != want) {
		return r, next, false
	}
	r = journalRecord{seq: seq, received: time.Unix(0, int64(binary.BigEndian.Uint64(h[24:32])))}
	payload := body[journalRecHeader-8:]
	if j.aead == nil {
		r.buf = payload
		return r, next, true
	}
	plain, err := j.open(payload, h[8:32])
	if err != nil {
		return r, next, false
	}
	r.buf = plain
	return r, next, true
}

// crc is a record's checksum: over the generation's salt too, so that a record left
// from an earlier life of the file never passes for one of this generation.
func (j *journal) crc(body []byte) uint32 {
	return crc32.Update(crc32.Checksum(j.salt[:], crc32c), crc32c, body)
}

// keys derives the generation's AEAD.
func (j *journal) keys(enc *eventCipher, encrypt bool) error {
	j.aead = nil
	if !encrypt || enc == nil {
		return nil
	}
	key, err := hkdf.Expand(sha256.New, enc.prk, journalKeyInfo+string(j.salt[:]), 32)
	if err != nil {
		return fmt.Errorf("derive journal key: %w", err)
	}
	j.aead, err = enc.newAEAD(key)
	return err
}

func (j *journal) open(payload, aad []byte) ([]byte, error) {
	if j.randomNonce {
		return j.aead.Open(nil, nil, payload, aad)
	}
	if len(payload) < nonceSize {
		return nil, errors.New("short")
	}
	return j.aead.Open(nil, payload[:nonceSize], payload[nonceSize:], aad)
}

// zero writes zeros from off to the end of the file and fdatasyncs.
func (j *journal) zero(off int64) error {
	z := make([]byte, 64<<10)
	for off < j.size {
		n := min(int64(len(z)), j.size-off)
		if _, err := j.f.WriteAt(z[:n], off); err != nil {
			return err
		}
		off += n
	}
	return j.f.Sync()
}

// reset starts generation gen with a fresh salt: every record in the file is stale.
func (j *journal) reset(enc *eventCipher, encrypt bool, gen uint64) error {
	var salt [16]byte
	if _, err := rand.Read(salt[:]); err != nil {
		return err
	}
	h := make([]byte, journalHeaderSize)
	copy(h, journalMagic)
	binary.BigEndian.PutUint64(h[4:12], gen)
	copy(h[12:28], salt[:])
	binary.BigEndian.PutUint32(h[28:32], crc32.Checksum(h[:28], crc32c))
	if _, err := j.f.WriteAt(h, 0); err != nil {
		return err
	}
	if err := fdatasync(j.f); err != nil {
		return err
	}
	j.gen, j.salt, j.off = gen, salt, journalHeaderSize
	return j.keys(enc, encrypt)
}

// write appends items as records and fdatasyncs; on success each item has its seq.
func (j *journal) write(items []item) error {
	j.buf = j.buf[:0]
	seq := j.seq
	var nonces []byte
	if j.aead != nil && !j.randomNonce {
		nonces = make([]byte, nonceSize*len(items))
		if _, err := randRead(nonces); err != nil {
			return err
		}
	}
	for i := range items {
		seq++
		start := len(j.buf)
		j.buf = append(j.buf, make([]byte, journalRecHeader)...)
		h := j.buf[start:]
		binary.BigEndian.PutUint64(h[8:16], j.gen)
		binary.BigEndian.PutUint64(h[16:24], seq)
		binary.BigEndian.PutUint64(h[24:32], uint64(items[i].received.UnixNano()))
		aad := bytes.Clone(h[8:32])
		switch {
		case j.aead == nil:
			j.buf = append(j.buf, items[i].buf...)
		case j.randomNonce:
			j.buf = j.aead.Seal(j.buf, nil, items[i].buf, aad)
		default:
			nonce := nonces[i*nonceSize : (i+1)*nonceSize]
			j.buf = j.aead.Seal(append(j.buf, nonce...), nonce, items[i].buf, aad)
		}
		rec := j.buf[start:]
		binary.BigEndian.PutUint32(rec[0:4], uint32(len(rec)-journalRecHeader))
		binary.BigEndian.PutUint32(rec[4:8], j.crc(rec[8:]))
	}
	if j.off+int64(len(j.buf)) > j.size {
		return errJournalFull
	}
	if _, err := j.f.WriteAt(j.buf, j.off); err != nil {
		return err
	}
	// unsafeNoSync: only the fsync-ordering test's negative control (nosync.go).
	if !unsafeNoSync {
		if err := fdatasync(j.f); err != nil {
			return err
		}
	}
	for i := range items {
		items[i].jseq = j.seq + uint64(i) + 1
	}
	j.seq = seq
	j.off += int64(len(j.buf))
	return nil
}

var errJournalFull = errors.New("journal full")

// journalLoop is the journal goroutine: it writes each group of urgent events, answers
// their senders, and hands the events to the writer. A group the journal cannot take (a
// write that failed, or a file full of records the writer has not committed yet) goes
// to the writer with its done, to be answered after the bbolt commit as without a
// journal: slower, never lost.
func (s *Spool) journalLoop() {
	j := s.jn
	defer close(j.done)
	var g gather
	group := make([]item, 0, journalGroupMax)
	for {
		it, ok := <-j.in
		if !ok {
			return
		}
		group = append(group[:0], it)
		open := true
	drain:
		for len(group) < journalGroupMax && group[len(group)-1].barrier == nil {
			select {
			case it, ok := <-j.in:
				if !ok {
					open = false
					break drain
				}
				group = append(group, it)
			default:
				break drain
			}
		}
		if open && group[len(group)-1].barrier == nil {
			var more []item
			more, open = g.wait(j.in, len(group))
			group = append(group, more...)
		}
		var barrier chan struct{}
		if last := group[len(group)-1]; last.barrier != nil {
			barrier, group = last.barrier, group[:len(group)-1]
		}
		if len(group) > 0 {
			began := time.Now()
			err := s.journalWrite(group)
			g.committed(len(group), time.Since(began))
			if err == nil {
				j.written.Add(uint64(len(group)))
			}
			for i := range group {
				if err == nil && group[i].done != nil {
					group[i].done(nil)
					group[i].done = nil
				}
				s.urgent <- group[i]
			}
		}
		if barrier != nil {
			close(barrier)
		}
		if !open {
			return
		}
	}
}

// journalWrite writes group, starting a new generation first when the file is full and
// the writer has committed everything in it.
func (s *Spool) journalWrite(group []item) error {
	j := s.jn
	err := j.write(group)
	if errors.Is(err, errJournalFull) && j.applied.Load() >= j.seq {
		if err = j.reset(s.enc, s.opts.Encrypt, j.gen+1); err == nil {
			err = j.write(group)
		}
	}
	if err != nil && !errors.Is(err, errJournalFull) {
		j.writeErrs.Add(1)
		if ok, n := s.logs.Allow("journal", time.Now()); ok {
			s.log.Error("journal write failed; acknowledging after the spool commit instead", "err", err, "suppressed", n)
		}
	}
	return err
}

// flushJournal returns once every urgent event sent before it has reached the writer's
// queue (Seal: the batch it closes holds them).
func (s *Spool) flushJournal(ctx context.Context) error {
	ch := make(chan struct{})
	s.mu.RLock()
	if s.closed {
		s.mu.RUnlock()
		return ErrClosed
	}
	select {
	case s.jn.in <- item{barrier: ch}:
		s.mu.RUnlock()
	case <-ctx.Done():
		s.mu.RUnlock()
		return ctx.Err()
	}
	select {
	case <-ch:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// replayJournal hands the records the writer had not committed to it again, in order.
func (s *Spool) replayJournal(recs []journalRecord, applied uint64) int {
	n := 0
	for _, r := range recs {
		if r.seq <= applied {
			continue
		}
		s.urgent <- item{buf: r.buf, leaf: sha256.Sum256(r.buf), received: r.received, jseq: r.seq}
		n++
	}
	s.jn.replayed.Add(uint64(n))
	return n
}

// close ends the journal. When the writer committed every record, a new generation
// first makes them stale, so that the next Open has nothing to hand over again.
func (j *journal) close(enc *eventCipher, encrypt bool) error {
	var err error
	if j.applied.Load() >= j.seq && j.off > journalHeaderSize {
		err = j.reset(enc, encrypt, j.gen+1)
	}
	return errors.Join(err, j.f.Close())
}
