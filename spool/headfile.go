package spool

import (
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"hash/crc32"
	"os"
	"path/filepath"
	"time"

	"github.com/edgeaudit/edgeaudit/internal/atomicfile"
	"github.com/edgeaudit/edgeaudit/ledger"
)

// The head file keeps the chain head (chain id, seq, header hash) outside bbolt, so that
// a spool that comes back shorter (bbolt fell back to its older meta page, a restored
// backup), forked, or gone is detected at start instead of silently continued
// (invariant 9).
//
// It is written after every commit that sealed a batch, before that commit's senders are
// acknowledged. A temp-file-and-rename per seal would cost three syncs on the hot path,
// so the file is instead two fixed 64-byte slots written in turn with pwrite and one
// fdatasync, each with its own CRC: a torn write damages only the slot being written,
// and the reader takes the valid slot with the higher seq (bbolt's meta pages work the
// same way). The file is created once through atomicfile, so it never exists half-made.
const (
	headSlot    = 64
	headMagic   = "EAH1"
	headFileExt = ".head"
)

// headRecord is one slot.
type headRecord struct {
	Chain   string // 32 hex digits
	Seq     uint64
	Hash    ledger.Hash
	Written time.Time
}

// headFile is the open head file; only the writer goroutine writes it.
type headFile struct {
	f    *os.File
	next int64 // slot to write next
}

func headPath(spoolPath string) string { return spoolPath + headFileExt }

// readHeadFile returns the newest valid record, ok=false when the file does not exist,
// and ErrDamaged when it exists but no slot validates.
func readHeadFile(path string) (rec headRecord, ok bool, err error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return rec, false, nil
	}
	if err != nil {
		return rec, false, fmt.Errorf("read head file: %w", err)
	}
	found := false
	for i := 0; i+headSlot <= len(b) && i < 2*headSlot; i += headSlot {
		r, err := decodeHead(b[i : i+headSlot])
		if err != nil {
			continue
		}
		if !found || r.Seq > rec.Seq || r.Seq == rec.Seq && r.Written.After(rec.Written) {
			rec, found = r, true
		}
	}
	if !found {
		return rec, true, fmt.Errorf("%w: head file %s has no valid slot", ErrDamaged, filepath.Base(path))
	}
	return rec, true, nil
}

// openHeadFile opens (or creates, atomically and empty) the head file for writing.
func openHeadFile(path string) (*headFile, error) {
	if _, err := os.Stat(path); errors.Is(err, os.ErrNotExist) {
		if err := atomicfile.WriteFile(path, make([]byte, 2*headSlot), 0o600); err != nil {
			return nil, fmt.Errorf("create head file: %w", err)
		}
	}
	f, err := os.OpenFile(path, os.O_RDWR, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open head file: %w", err)
	}
	return &headFile{f: f}, nil
}

// write stores rec in the next slot and syncs it.
func (h *headFile) write(rec headRecord) error {
	b := encodeHead(rec)
	if _, err := h.f.WriteAt(b, h.next*headSlot); err != nil {
		return fmt.Errorf("write head file: %w", err)
	}
	if err := fdatasync(h.f); err != nil {
		return fmt.Errorf("sync head file: %w", err)
	}
	h.next ^= 1
	return nil
}

func (h *headFile) close() error {
	if h == nil || h.f == nil {
		return nil
	}
	return h.f.Close()
}

// A slot is magic(4) | chain id, first 8 bytes(8) | seq(8) | header hash(32) | written,
// unix ns(8) | CRC-32C of the rest(4): 64 bytes. Eight bytes of the chain id are enough
// to tell one chain from another; the full id is in bbolt and in every header.
func encodeHead(r headRecord) []byte {
	b := make([]byte, headSlot)
	copy(b, headMagic)
	ch, _ := hex.DecodeString(r.Chain)
	copy(b[4:12], ch)
	binary.BigEndian.PutUint64(b[12:], r.Seq)
	copy(b[20:52], r.Hash[:])
	binary.BigEndian.PutUint64(b[52:], uint64(r.Written.UnixNano()))
	binary.BigEndian.PutUint32(b[60:], crc32.Checksum(b[:60], castagnoli))
	return b
}

func decodeHead(b []byte) (headRecord, error) {
	var r headRecord
	if string(b[:4]) != headMagic || binary.BigEndian.Uint32(b[60:]) != crc32.Checksum(b[:60], castagnoli) {
		return r, ErrDamaged
	}
	r.Chain = hex.EncodeToString(b[4:12])
	r.Seq = binary.BigEndian.Uint64(b[12:])
	copy(r.Hash[:], b[20:52])
	r.Written = time.Unix(0, int64(binary.BigEndian.Uint64(b[52:]))).UTC()
	return r, nil
}

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// chainPrefix is how much of a chain id the head file keeps.
func chainPrefix(chain string) string {
	if len(chain) > 16 {
		return chain[:16]
	}
	return chain
}
