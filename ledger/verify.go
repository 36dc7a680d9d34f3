package ledger

import (
	"crypto/ecdsa"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
)

// Reasons a batch fails verification; `edgeaudit verify` prints them with the seq.
const (
	ReasonDecode    = "decode"    // header bytes are not a valid header
	ReasonVersion   = "version"   // unknown format version or algorithm
	ReasonKey       = "key"       // signed by a key that is not trusted
	ReasonSignature = "signature" // signature does not verify over the header bytes
	ReasonChain     = "chain"     // site, device or chain id differs from the earlier batches
	ReasonGap       = "gap"       // one or more seqs are missing
	ReasonOrder     = "order"     // seq went backwards or repeated
	ReasonPrev      = "prev"      // prev is not the hash of the previous header
	ReasonCount     = "count"     // header count differs from the number of events
	ReasonRoot      = "root"      // Merkle root does not match the events
	ReasonReceipt   = "receipt"   // central's receipt does not verify or does not match the chain
)

// VerifyError names the first bad batch and why.
type VerifyError struct {
	Seq    uint64
	Reason string
	Detail string
}

func (e *VerifyError) Error() string {
	return fmt.Sprintf("seq %d: %s: %s", e.Seq, e.Reason, e.Detail)
}

// Verifier checks a chain batch by batch, in order. It is not safe for concurrent use.
type Verifier struct {
	keys map[string]*ecdsa.PublicKey

	started   bool
	next      uint64
	prev      string
	chain     string
	site, dev string
	// AllowPartial accepts a first batch other than seq 1 (a chain whose beginning was
	// pruned after central acknowledged it) without checking its prev.
	AllowPartial bool
	// AllowGaps accepts missing seqs anywhere (a filtered export keeps only the
	// batches that hold a match): each batch's signature, count and root are still
	// checked, and prev only where seqs are adjacent. It implies AllowPartial.
	AllowGaps bool
	// rotated counts the key rotations followed.
	rotated int
}

// NewVerifier trusts the given public keys.
func NewVerifier(keys ...*ecdsa.PublicKey) (*Verifier, error) {
	v := &Verifier{keys: map[string]*ecdsa.PublicKey{}}
	for _, k := range keys {
		id, err := KeyID(k)
		if err != nil {
			return nil, err
		}
		v.keys[id] = k
	}
	return v, nil
}

// Anchor makes the verifier expect seq+1 next, linked to prevHash (hex): the state that a
// spool keeps for batches it has pruned.
func (v *Verifier) Anchor(seq uint64, prevHash string) {
	v.started, v.next, v.prev = true, seq+1, prevHash
}

// Next returns the seq the verifier expects next (0 before the first batch).
func (v *Verifier) Next() uint64 { return v.next }

// Verify checks b as the next batch of the chain and returns its parsed header. On error
// the verifier's state is unchanged, so the caller can report and stop.
func (v *Verifier) Verify(b *Batch) (Header, error) {
	h, err := ParseHeader(b.Header)
	if err != nil {
		return h, &VerifyError{Seq: v.next, Reason: ReasonDecode, Detail: err.Error()}
	}
	fail := func(reason, format string, args ...any) (Header, error) {
		return h, &VerifyError{Seq: h.Seq, Reason: reason, Detail: fmt.Sprintf(format, args...)}
	}
	if h.Version != FormatVersion || h.Alg != AlgECDSAP256SHA256 {
		return fail(ReasonVersion, "version %d alg %q", h.Version, h.Alg)
	}
	key, ok := v.keys[h.KeyID]
	if !ok {
		return fail(ReasonKey, "key_id %s is not a trusted key", short(h.KeyID))
	}
	digest := sha256.Sum256(b.Header)
	if !ecdsa.VerifyASN1(key, digest[:], b.Signature) {
		return fail(ReasonSignature, "signature does not verify with key %s", short(h.KeyID))
	}
	if v.chain != "" && (h.Chain != v.chain || h.Site != v.site || h.Device != v.dev) {
		return fail(ReasonChain, "chain %s site %q device %q, earlier batches had %s %q %q",
			short(h.Chain), h.Site, h.Device, short(v.chain), v.site, v.dev)
	}
	switch {
	case !v.started && h.Seq == 1:
		if h.Prev != ZeroHash {
			return fail(ReasonPrev, "first batch has prev %s, want zeros", short(h.Prev))
		}
	case !v.started:
		if !v.AllowPartial && !v.AllowGaps {
			return fail(ReasonGap, "chain starts at seq %d, not 1 (earlier batches missing)", h.Seq)
		}
	case h.Seq > v.next:
		if v.AllowGaps {
			break
		}
		return fail(ReasonGap, "expected seq %d, got %d (%d missing)", v.next, h.Seq, h.Seq-v.next)
	case h.Seq < v.next:
		return fail(ReasonOrder, "expected seq %d, got %d", v.next, h.Seq)
	case h.Prev != v.prev:
		return fail(ReasonPrev, "prev %s is not the hash of seq %d's header %s", short(h.Prev), h.Seq-1, short(v.prev))
	}
	if h.Count != len(b.Events) {
		return fail(ReasonCount, "header count %d, batch has %d events", h.Count, len(b.Events))
	}
	root := EventsRoot(b.Events)
	if hex.EncodeToString(root[:]) != h.Root {
		return fail(ReasonRoot, "root %s, events hash to %s", short(h.Root), short(hex.EncodeToString(root[:])))
	}
	// A key rotation (ActionKeyRotated) in a batch the old key signed hands trust on:
	// the new key signs from the next batch, and the old one is retired, so that a
	// stolen old key cannot add to the chain after it.
	next, err := FindRotation(b.Events)
	if err != nil {
		return fail(ReasonKey, "%v", err)
	}
	if next != nil {
		id, err := KeyID(next)
		if err != nil {
			return fail(ReasonKey, "%v", err)
		}
		delete(v.keys, h.KeyID)
		v.keys[id] = next
		v.rotated++
	}
	hh := HeaderHash(b.Header)
	v.started, v.next, v.prev = true, h.Seq+1, hex.EncodeToString(hh[:])
	v.chain, v.site, v.dev = h.Chain, h.Site, h.Device
	return h, nil
}

// Rotations returns how many key rotations the verifier followed.
func (v *Verifier) Rotations() int { return v.rotated }

func short(hexs string) string {
	if len(hexs) > 16 {
		return hexs[:16]
	}
	return hexs
}
