package evidence

import (
	"fmt"
	"slices"
	"testing"

	"github.com/edgeaudit/edgeaudit/ledger"
)

// The package's tree gives ledger's root and ledger.InclusionProof's path for every
// leaf of every tree shape up to 70 leaves.
func TestTreeMatchesLedger(t *testing.T) {
	if got := newTree(nil).root(); got != ledger.EmptyRoot {
		t.Fatalf("empty tree root %x, want %x", got, ledger.EmptyRoot)
	}
	for n := 1; n <= 70; n++ {
		var events [][]byte
		leaves := make([]ledger.Hash, n)
		for i := range n {
			events = append(events, fmt.Appendf(nil, `{"id":"%d"}`, i))
			leaves[i] = ledger.LeafHash(events[i])
		}
		tr := newTree(leaves)
		if got, want := tr.root(), ledger.EventsRoot(events); got != want {
			t.Fatalf("n=%d: root %x, want EventsRoot %x", n, got, want)
		}
		for i := range n {
			want, err := ledger.InclusionProof(leaves, i)
			if err != nil {
				t.Fatal(err)
			}
			if got := tr.proof(i); !slices.Equal(got, want) {
				t.Fatalf("n=%d i=%d: path %x, want %x", n, i, got, want)
			}
		}
	}
}
