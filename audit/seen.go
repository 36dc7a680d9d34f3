package audit

import (
	"encoding/hex"
	"hash/maphash"
	"sync"
	"sync/atomic"
)

// SeenSet remembers the identifiers the appliance has tokenized from structured fields
// (HL7 PID-3, DICOM ParticipantObjectID, FHIR identifiers, accession and order numbers,
// study UIDs) so that the redactor recognizes them when they reappear in free text,
// without keeping them in clear: an entry is a 64-bit keyed hash of the value (maphash
// under a seed drawn at start and never written anywhere) and the value's token. It
// holds at most Max entries, the oldest forgotten first, and lives only in memory, so a
// restart forgets everything. Safe for concurrent use.
//
// An entry costs about 60 bytes (the map slot of a uint64 key and a 17-byte value, and
// the 8-byte slot of the eviction ring), so the default 100,000 entries take about 6 MiB.
type SeenSet struct {
	seed maphash.Seed
	max  int
	// lens has bit n set when some remembered value is n bytes long (bit 63: 63 or
	// more): words of other lengths are skipped without hashing.
	lens atomic.Uint64

	mu   sync.RWMutex
	m    map[uint64]seenEntry
	ring []uint64 // keys in insertion order, a circle of max slots
	next int
}

type seenEntry struct {
	mac  [TokenLen / 2]byte
	kind uint8 // index into seenKinds; seenAmbiguous when two tokens claim the value
}

// seenKinds are the kinds a SeenSet remembers; the index is stored.
var seenKinds = [...]string{IDPatient, IDAccession, IDOrder, IDStudy}

const seenAmbiguous = 255

// Bounds of remembered values: shorter ones ("12", "CT") would turn up in ordinary text
// as counters and ports; a value must also hold a digit.
const (
	SeenMinLen        = 5
	SeenMaxLen        = 64
	DefaultSeenMax    = 100_000
	seenLenOverflowAt = 63
)

// NewSeenSet returns a set of at most max entries (DefaultSeenMax if max <= 0).
func NewSeenSet(max int) *SeenSet {
	if max <= 0 {
		max = DefaultSeenMax
	}
	return &SeenSet{seed: maphash.MakeSeed(), max: max, m: make(map[uint64]seenEntry)}
}

// Len is the number of entries.
func (s *SeenSet) Len() int {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return len(s.m)
}

func seenCandidate(v string) bool {
	if len(v) < SeenMinLen || len(v) > SeenMaxLen {
		return false
	}
	for i := 0; i < len(v); i++ {
		if '0' <= v[i] && v[i] <= '9' {
			return true
		}
	}
	return false
}

func lenBit(n int) uint64 {
	if n > seenLenOverflowAt {
		n = seenLenOverflowAt
	}
	return 1 << n
}

// Add remembers value with its token tok ("<kind>_<hex>"). Values too short or too long,
// with no digit, or of another kind are ignored. A value already remembered under
// another token (one MRN in two domains, a string that is both an MRN and an accession)
// is marked ambiguous: free text then gets a txt token for it.
func (s *SeenSet) Add(value, tok string) {
	if !seenCandidate(value) {
		return
	}
	kind, mac, ok := splitToken(tok)
	if !ok {
		return
	}
	h := maphash.String(s.seed, value)
	s.mu.RLock()
	e, found := s.m[h]
	s.mu.RUnlock()
	if found && (e.kind == seenAmbiguous || e.kind == kind && e.mac == mac) {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if e, found = s.m[h]; found {
		if e.kind != kind || e.mac != mac {
			e.kind = seenAmbiguous
			s.m[h] = e
		}
		return
	}
	if len(s.ring) < s.max {
		s.ring = append(s.ring, h)
	} else {
		delete(s.m, s.ring[s.next])
		s.ring[s.next] = h
		s.next = (s.next + 1) % s.max
	}
	s.m[h] = seenEntry{mac: mac, kind: kind}
	if b := lenBit(len(value)); s.lens.Load()&b == 0 {
		for {
			old := s.lens.Load()
			if s.lens.CompareAndSwap(old, old|b) {
				break
			}
		}
	}
}

// mayHold is the cheap test before hashing: a word of this length could be remembered.
func (s *SeenSet) mayHold(n int) bool { return s.lens.Load()&lenBit(n) != 0 }

// Lookup returns the token remembered for word, "txt" kind when ambiguous.
func (s *SeenSet) Lookup(word string, tok *Tokenizer) (string, bool) {
	if !seenCandidate(word) || !s.mayHold(len(word)) {
		return "", false
	}
	h := maphash.String(s.seed, word)
	s.mu.RLock()
	e, ok := s.m[h]
	s.mu.RUnlock()
	if !ok {
		return "", false
	}
	if e.kind == seenAmbiguous {
		return tok.Token(IDText, word), true
	}
	return seenKinds[e.kind] + "_" + hex.EncodeToString(e.mac[:]), true
}

// splitToken parses "<kind>_<hex>" of a remembered kind.
func splitToken(tok string) (uint8, [TokenLen / 2]byte, bool) {
	var mac [TokenLen / 2]byte
	for i, k := range seenKinds {
		if len(tok) == len(k)+1+TokenLen && tok[:len(k)] == k && tok[len(k)] == '_' {
			if _, err := hex.Decode(mac[:], []byte(tok[len(k)+1:])); err != nil {
				return 0, mac, false
			}
			return uint8(i), mac, true
		}
	}
	return 0, mac, false
}
