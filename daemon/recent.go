package daemon

import (
	"sort"
	"strconv"
	"sync"
	"time"
)

// recentWindow is how far back health looks for losses and rejections.
const recentWindow = time.Hour

// recent counts inputs lost and rejected over the last hour, in one-minute buckets, for
// health: the Prometheus counters say how many since start, a field tech asks whether
// it is happening now.
type recent struct {
	mu      sync.Mutex
	buckets [60]recentBucket
}

type recentBucket struct {
	minute int64 // unix minute the bucket holds; older contents are stale
	lost   map[string]uint64
	reject map[string]uint64
}

// Recent is what health shows: totals and the counts by "collector/transport/reason".
type Recent struct {
	Lost     uint64            `json:"lost"`
	Rejected uint64            `json:"rejected"`
	ByLost   map[string]uint64 `json:"lost_by_reason,omitempty"`
	ByReject map[string]uint64 `json:"rejected_by_reason,omitempty"`
}

func (r *recent) bucket(now time.Time) *recentBucket {
	m := now.Unix() / 60
	b := &r.buckets[m%int64(len(r.buckets))]
	if b.minute != m {
		*b = recentBucket{minute: m, lost: map[string]uint64{}, reject: map[string]uint64{}}
	}
	return b
}

func (r *recent) addLost(now time.Time, key string, n uint64) {
	r.mu.Lock()
	r.bucket(now).lost[key] += n
	r.mu.Unlock()
}

func (r *recent) addReject(now time.Time, key string) {
	r.mu.Lock()
	r.bucket(now).reject[key]++
	r.mu.Unlock()
}

// last returns the counts of the hour before now.
func (r *recent) last(now time.Time) Recent {
	out := Recent{ByLost: map[string]uint64{}, ByReject: map[string]uint64{}}
	from := now.Add(-recentWindow).Unix() / 60
	r.mu.Lock()
	defer r.mu.Unlock()
	for i := range r.buckets {
		b := &r.buckets[i]
		if b.minute <= from {
			continue
		}
		for k, n := range b.lost {
			out.Lost += n
			out.ByLost[k] += n
		}
		for k, n := range b.reject {
			out.Rejected += n
			out.ByReject[k] += n
		}
	}
	return out
}

// top names the largest counts of by, at most n, as "key N" in descending order.
func top(by map[string]uint64, n int) []string {
	keys := make([]string, 0, len(by))
	for k := range by {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool {
		if by[keys[i]] != by[keys[j]] {
			return by[keys[i]] > by[keys[j]]
		}
		return keys[i] < keys[j]
	})
	if len(keys) > n {
		keys = keys[:n]
	}
	out := make([]string, len(keys))
	for i, k := range keys {
		out[i] = k + " " + itoa(by[k])
	}
	return out
}

func itoa(n uint64) string { return strconv.FormatUint(n, 10) }
