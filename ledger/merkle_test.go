package ledger

import (
	"encoding/hex"
	"fmt"
	"testing"
)

// rfcRoot is the RFC 6962 §2.1 definition, recursive, as the reference.
func rfcRoot(d [][]byte) Hash {
	n := len(d)
	if n == 0 {
		return EmptyRoot
	}
	if n == 1 {
		return LeafHash(d[0])
	}
	k := 1
	for k*2 < n {
		k *= 2
	}
	return NodeHash(rfcRoot(d[:k]), rfcRoot(d[k:]))
}

func leavesOf(n int) ([][]byte, []Hash) {
	var data [][]byte
	var hs []Hash
	for i := range n {
		b := []byte(fmt.Sprintf("event-%d", i))
		data = append(data, b)
		hs = append(hs, LeafHash(b))
	}
	return data, hs
}

func TestRootMatchesRFCDefinition(t *testing.T) {
	for n := range 70 {
		data, hs := leavesOf(n)
		if got, want := Root(hs), rfcRoot(data); got != want {
			t.Fatalf("n=%d: root %x, want %x", n, got, want)
		}
	}
}

// The empty-tree and one-leaf values of RFC 6962 are well known (e.g. Certificate
// Transparency's test data): MTH({}) = SHA-256("").
func TestKnownValues(t *testing.T) {
	if got, want := hex.EncodeToString(EmptyRoot[:]), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"; got != want {
		t.Fatalf("empty root %s, want %s", got, want)
	}
	l := LeafHash(nil)
	if got, want := hex.EncodeToString(l[:]), "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d"; got != want {
		t.Fatalf("leaf(empty) %s, want %s", got, want)
	}
}

func TestInclusionProofs(t *testing.T) {
	for n := 1; n <= 40; n++ {
		_, hs := leavesOf(n)
		root := Root(hs)
		for i := range n {
			p, err := InclusionProof(hs, i)
			if err != nil {
				t.Fatal(err)
			}
			if err := VerifyInclusion(hs[i], uint64(i), uint64(n), p, root); err != nil {
				t.Fatalf("n=%d i=%d: %v", n, i, err)
			}
			// A proof must not verify for another leaf, index or root.
			if n > 1 {
				if err := VerifyInclusion(hs[(i+1)%n], uint64(i), uint64(n), p, root); err == nil {
					t.Fatalf("n=%d i=%d: proof verified for another leaf", n, i)
				}
				if err := VerifyInclusion(hs[i], uint64((i+1)%n), uint64(n), p, root); err == nil && hs[i] != hs[(i+1)%n] {
					t.Fatalf("n=%d i=%d: proof verified at another index", n, i)
				}
			}
			bad := root
			bad[0] ^= 1
			if err := VerifyInclusion(hs[i], uint64(i), uint64(n), p, bad); err == nil {
				t.Fatalf("n=%d i=%d: proof verified against a wrong root", n, i)
			}
		}
	}
	if _, err := InclusionProof(nil, 0); err == nil {
		t.Fatal("proof for an empty tree: want error")
	}
}

func BenchmarkRoot1000(b *testing.B) {
	_, hs := leavesOf(1000)
	for b.Loop() {
		Root(hs)
	}
}
