package uplink

import (
	"strings"
	"testing"
)

// Receipts carried by hand follow the MQTT path's rules: bad ones are listed, a
// rollback or fork is reported and never acked, the highest matching one acks.
func TestApplyReceipts(t *testing.T) {
	v := hmacVerifier{key: []byte("central")}
	other := hmacVerifier{key: []byte("someone else")}
	for _, tc := range []struct {
		name      string
		receipts  func(s *memSource) [][]byte
		acked     uint64 // before
		wantAcked uint64
		wantBad   int
		wantKinds []string
		wantMoved bool
	}{
		{"highest wins, order free", func(s *memSource) [][]byte {
			return [][]byte{v.sign(7, s.hashes[6]), v.sign(3, s.hashes[2])}
		}, 0, 7, 0, nil, true},
		{"older than acked changes nothing", func(s *memSource) [][]byte {
			return [][]byte{v.sign(3, s.hashes[2])}
		}, 5, 5, 0, nil, false},
		{"bad signature listed, good applied", func(s *memSource) [][]byte {
			return [][]byte{other.sign(10, s.hashes[9]), v.sign(4, s.hashes[3])}
		}, 0, 4, 1, nil, true},
		{"rollback reported, not acked", func(s *memSource) [][]byte {
			return [][]byte{v.sign(12, strings.Repeat("cd", 32))}
		}, 0, 0, 0, []string{IncidentRollback}, false},
		{"fork reported, not acked", func(s *memSource) [][]byte {
			return [][]byte{v.sign(6, strings.Repeat("ef", 32)), v.sign(2, s.hashes[1])}
		}, 0, 2, 0, []string{IncidentFork}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			src := newSource(t)
			src.add(t, "d1", 10, 1, 50)
			src.acked = tc.acked
			rep := &reporter{}
			res, err := ApplyReceipts(src, v, rep, tc.receipts(src))
			if err != nil {
				t.Fatal(err)
			}
			if got := src.ackedSeq(); got != tc.wantAcked {
				t.Errorf("acked=%d, want %d", got, tc.wantAcked)
			}
			if res.AckedSeq != tc.wantAcked || res.Moved != tc.wantMoved {
				t.Errorf("result acked=%d moved=%v, want %d %v", res.AckedSeq, res.Moved, tc.wantAcked, tc.wantMoved)
			}
			if len(res.Bad) != tc.wantBad {
				t.Errorf("bad=%v, want %d", res.Bad, tc.wantBad)
			}
			var kinds []string
			for _, in := range rep.incidents() {
				kinds = append(kinds, in.Kind)
			}
			if strings.Join(kinds, ",") != strings.Join(tc.wantKinds, ",") || len(res.Incidents) != len(tc.wantKinds) {
				t.Errorf("incidents reported %v (result %d), want %v", kinds, len(res.Incidents), tc.wantKinds)
			}
		})
	}
}
