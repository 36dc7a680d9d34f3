// Package ledger is the batch wire format shared by the appliance and the central side:
// headers, RFC 6962 Merkle trees over event bytes, inclusion proofs, signatures and the
// hash chain, and their verification. It imports nothing of ours.
package ledger

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"math/bits"
)

// Hash is a SHA-256 digest.
type Hash = [sha256.Size]byte

// LeafHash is RFC 6962 MTH of one entry: SHA-256(0x00 || data).
func LeafHash(data []byte) Hash {
	h := sha256.New()
	h.Write([]byte{0})
	h.Write(data)
	var out Hash
	h.Sum(out[:0])
	return out
}

// NodeHash is the RFC 6962 interior node: SHA-256(0x01 || left || right).
func NodeHash(left, right Hash) Hash {
	var buf [1 + 2*sha256.Size]byte
	buf[0] = 1
	copy(buf[1:], left[:])
	copy(buf[1+sha256.Size:], right[:])
	return sha256.Sum256(buf[:])
}

// EmptyRoot is MTH({}) = SHA-256 of the empty string, the root of a heartbeat batch.
var EmptyRoot = sha256.Sum256(nil)

// Root computes the RFC 6962 Merkle tree hash from the leaf hashes. It works bottom-up
// in place on a copy, which gives the same tree as the RFC's recursive split at the
// largest power of two below n: an odd node at the end of a level is carried up unhashed.
func Root(leaves []Hash) Hash {
	switch len(leaves) {
	case 0:
		return EmptyRoot
	case 1:
		return leaves[0]
	}
	level := make([]Hash, len(leaves))
	copy(level, leaves)
	return rootInPlace(level)
}

// rootInPlace is Root of level (at least two leaves), overwriting it.
func rootInPlace(level []Hash) Hash {
	var buf [1 + 2*sha256.Size]byte
	buf[0] = 1
	for n := len(level); n > 1; {
		next := 0
		for i := 0; i < n; i += 2 {
			if i+1 < n {
				copy(buf[1:], level[i][:])
				copy(buf[1+sha256.Size:], level[i+1][:])
				level[next] = sha256.Sum256(buf[:])
			} else {
				level[next] = level[i]
			}
			next++
		}
		n = next
	}
	return level[0]
}

// ErrProof means an inclusion proof does not lead to the expected root.
var ErrProof = errors.New("inclusion proof does not match root")

// InclusionProof returns the RFC 6962 audit path for leaf index in a tree of the given
// leaves (RFC 9162 §2.1.3.1), ordered from the leaf upwards.
func InclusionProof(leaves []Hash, index int) ([]Hash, error) {
	if index < 0 || index >= len(leaves) {
		return nil, fmt.Errorf("inclusion proof: index %d out of range [0,%d)", index, len(leaves))
	}
	var path []Hash
	var walk func(lo, hi, m int)
	// walk appends the path for leaf m within leaves[lo:hi], deepest sibling first.
	walk = func(lo, hi, m int) {
		n := hi - lo
		if n == 1 {
			return
		}
		k := 1 << (bits.Len(uint(n-1)) - 1) // largest power of two < n
		if m < k {
			walk(lo, lo+k, m)
			path = append(path, Root(leaves[lo+k:hi]))
		} else {
			walk(lo+k, hi, m-k)
			path = append(path, Root(leaves[lo:lo+k]))
		}
	}
	walk(0, len(leaves), index)
	return path, nil
}

// VerifyInclusion checks an audit path (RFC 9162 §2.1.3.2) for leaf at index in a tree of
// size leaves with the given root.
func VerifyInclusion(leaf Hash, index, size uint64, proof []Hash, root Hash) error {
	if index >= size {
		return fmt.Errorf("verify inclusion: index %d out of range for size %d", index, size)
	}
	fn, sn := index, size-1
	r := leaf
	for _, p := range proof {
		if sn == 0 {
			return ErrProof
		}
		if fn&1 == 1 || fn == sn {
			r = NodeHash(p, r)
			if fn&1 == 0 {
				for fn&1 == 0 && fn != 0 {
					fn >>= 1
					sn >>= 1
				}
			}
		} else {
			r = NodeHash(r, p)
		}
		fn >>= 1
		sn >>= 1
	}
	if sn != 0 || r != root {
		return ErrProof
	}
	return nil
}
