package spool

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"os"
)

// ErrDamaged means the spool file is not a bbolt file that can be mapped safely: a
// truncated file, unreadable meta pages, or pages that point outside the file. It is
// damage, not an I/O problem: the file is quarantined.
var ErrDamaged = errors.New("spool file damaged")

// bbolt's on-disk constants (go.etcd.io/bbolt internal/common), checked before bbolt
// maps the file: bbolt panics or faults (SIGBUS) on a file shorter than its meta page
// says, and that cannot be recovered in-process once the mapping is read.
const (
	boltMagic      = 0xED0CDAED
	boltVersion    = 2
	boltPageHeader = 16 // id u64, flags u16, count u16, overflow u32
	boltMetaSize   = 64 // magic, version, pageSize, flags, root(16), freelist, pgid, txid, checksum
	boltMetaFlag   = 0x04
)

// boltMeta is the part of a bbolt meta page the precheck needs.
type boltMeta struct {
	pageSize uint32
	root     uint64 // root bucket page
	freelist uint64 // freelist page; all ones when the freelist is not synced
	hwm      uint64 // high water mark: pages in use, the file must hold at least this many
	txid     uint64
}

// metaInfo is what the precheck learned about the two meta pages.
type metaInfo struct {
	size     int64
	use      boltMeta // the meta bbolt will use (the valid one with the larger txid)
	damaged  []int    // meta pages (0 or 1) that do not validate
	fallback bool     // the meta with the larger txid is damaged: bbolt would use an older one
}

// precheck reads the two meta pages of a bbolt file without mapping it and checks that
// the file is as long as they say. A missing or empty file is not damage (bbolt creates
// it); os errors other than "not exist" are returned as they are, so that a permission or
// I/O problem is never mistaken for damage.
func precheck(path string) (metaInfo, error) {
	var mi metaInfo
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return mi, nil
	}
	if err != nil {
		return mi, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return mi, err
	}
	mi.size = fi.Size()
	if mi.size == 0 {
		return mi, nil
	}
	// Meta 0 sits at offset 0; meta 1 one page later. The page size comes from a valid
	// meta 0, else the OS page size bbolt would have used, else 4 KiB.
	m0, err0 := readMeta(f, 0)
	if err0 != nil && !errors.Is(err0, ErrDamaged) {
		return mi, err0
	}
	ps := int64(os.Getpagesize())
	if err0 == nil {
		ps = int64(m0.pageSize)
	}
	m1, err1 := readMeta(f, ps)
	if err1 != nil && !errors.Is(err1, ErrDamaged) {
		return mi, err1
	}
	switch {
	case err0 != nil && err1 != nil:
		return mi, fmt.Errorf("%w: both meta pages invalid (%v; %v)", ErrDamaged, err0, err1)
	case err0 != nil:
		mi.use, mi.damaged = m1, []int{0}
	case err1 != nil:
		mi.use, mi.damaged = m0, []int{1}
	case m1.txid > m0.txid:
		mi.use = m1
	default:
		mi.use = m0
	}
	// A damaged meta page whose neighbour is a transaction older than the newest bbolt
	// could have written: bbolt silently falls back one transaction. The page is
	// unreadable, so whether it was newer cannot be known; the head file decides.
	mi.fallback = len(mi.damaged) > 0
	if err0 == nil && err1 == nil && m0.pageSize != m1.pageSize {
		return mi, fmt.Errorf("%w: meta pages disagree on the page size (%d, %d)", ErrDamaged, m0.pageSize, m1.pageSize)
	}
	u := mi.use
	if need := int64(u.hwm) * int64(u.pageSize); mi.size < need {
		return mi, fmt.Errorf("%w: file is %d bytes, its meta page says %d pages of %d bytes (%d bytes): truncated",
			ErrDamaged, mi.size, u.hwm, u.pageSize, need)
	}
	if u.hwm < 4 || u.root < 2 || u.root >= u.hwm || (u.freelist != ^uint64(0) && (u.freelist < 2 || u.freelist >= u.hwm)) {
		return mi, fmt.Errorf("%w: meta page points outside the file (root %d, freelist %d, pages %d)", ErrDamaged, u.root, u.freelist, u.hwm)
	}
	return mi, nil
}

func readMeta(f *os.File, off int64) (boltMeta, error) {
	var b [boltPageHeader + boltMetaSize]byte
	if _, err := f.ReadAt(b[:], off); err != nil {
		if errors.Is(err, io.EOF) {
			return boltMeta{}, fmt.Errorf("%w: meta page at %d is past the end of the file", ErrDamaged, off)
		}
		return boltMeta{}, err
	}
	le := binary.LittleEndian
	if flags := le.Uint16(b[8:]); flags&boltMetaFlag == 0 {
		return boltMeta{}, fmt.Errorf("%w: page at %d is not a meta page (flags %#x)", ErrDamaged, off, flags)
	}
	m := b[boltPageHeader:]
	h := fnv.New64a()
	h.Write(m[:56])
	switch {
	case le.Uint32(m[0:]) != boltMagic:
		return boltMeta{}, fmt.Errorf("%w: meta page at %d: bad magic", ErrDamaged, off)
	case le.Uint32(m[4:]) != boltVersion:
		return boltMeta{}, fmt.Errorf("%w: meta page at %d: version %d", ErrDamaged, off, le.Uint32(m[4:]))
	case le.Uint64(m[56:]) != h.Sum64():
		return boltMeta{}, fmt.Errorf("%w: meta page at %d: checksum mismatch", ErrDamaged, off)
	}
	bm := boltMeta{
		pageSize: le.Uint32(m[8:]),
		root:     le.Uint64(m[16:]),
		freelist: le.Uint64(m[32:]),
		hwm:      le.Uint64(m[40:]),
		txid:     le.Uint64(m[48:]),
	}
	if bm.pageSize < 512 || bm.pageSize > 1<<20 || bm.pageSize&(bm.pageSize-1) != 0 {
		return boltMeta{}, fmt.Errorf("%w: meta page at %d: page size %d", ErrDamaged, off, bm.pageSize)
	}
	return bm, nil
}
