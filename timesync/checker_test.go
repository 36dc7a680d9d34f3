package timesync

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/beevik/ntp"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	// Every server address in these tests is a 127.0.0.1 literal (or a fake), so no
	// name is ever looked up; a lookup means something reaches for the network.
	net.DefaultResolver.PreferGo = true
	net.DefaultResolver.Dial = func(context.Context, string, string) (net.Conn, error) {
		return nil, errors.New("tests resolve no names")
	}
	goleak.VerifyTestMain(m)
}

// resp is a valid answer: a stratum 2 server, fresh reference time.
func resp(offset, rtt time.Duration) *ntp.Response {
	now := time.Now()
	return &ntp.Response{
		Version: 4, Stratum: 2, ClockOffset: offset, RTT: rtt, RootDistance: rtt/2 + time.Millisecond,
		Time: now, ReferenceTime: now.Add(-time.Second), ReferenceID: 0x7f000001,
	}
}

func kiss(code string) *ntp.Response {
	r := resp(0, time.Millisecond)
	r.Stratum, r.KissCode = 0, code
	return r
}

func with(r *ntp.Response, f func(*ntp.Response)) *ntp.Response { f(r); return r }

var errTimeout = fmt.Errorf("read udp 127.0.0.1:40000->127.0.0.1:9: %w", os.ErrDeadlineExceeded)

func TestValidate(t *testing.T) {
	for _, tt := range []struct {
		name string
		r    *ntp.Response
		want error // nil: valid
	}{
		{"good", resp(time.Millisecond, time.Millisecond), nil},
		{"stratum 16", with(resp(0, time.Millisecond), func(r *ntp.Response) { r.Stratum = 16 }), ntp.ErrInvalidStratum},
		{"leap alarm", with(resp(0, time.Millisecond), func(r *ntp.Response) { r.Leap = ntp.LeapNotInSync }), ntp.ErrInvalidLeapSecond},
		{"leap insert is fine", with(resp(0, time.Millisecond), func(r *ntp.Response) { r.Leap = ntp.LeapAddSecond }), nil},
		{"stale server clock", with(resp(0, time.Millisecond), func(r *ntp.Response) { r.ReferenceTime = r.Time.Add(-48 * time.Hour) }), ntp.ErrServerClockFreshness},
		{"kod RATE", kiss("RATE"), ErrKissRate},
		{"kod DENY", kiss("DENY"), ErrKissDeny},
		{"kod RSTR", kiss("RSTR"), ErrKissDeny},
		{"kod INIT", kiss("INIT"), ntp.ErrKissOfDeath},
		{"stratum 0 without code", kiss(""), ntp.ErrKissOfDeath},
		{"root distance", with(resp(0, time.Millisecond), func(r *ntp.Response) { r.RootDistance = 2 * time.Second }), ErrRootDistance},
	} {
		t.Run(tt.name, func(t *testing.T) {
			err := validate(tt.r, DefaultMaxRootDistance)
			if tt.want == nil {
				if err != nil {
					t.Fatalf("validate=%v, want nil", err)
				}
				return
			}
			if !errors.Is(err, tt.want) {
				t.Fatalf("validate=%v, want %v", err, tt.want)
			}
		})
	}
}

// fakeClock moves the wall and the monotonic clock; step moves the wall only.
type fakeClock struct {
	mu sync.Mutex
	r  reading
}

func (f *fakeClock) now() reading { f.mu.Lock(); defer f.mu.Unlock(); return f.r }
func (f *fakeClock) advance(d, step time.Duration) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.r.mono += d
	f.r.wall = f.r.wall.Add(d + step)
}

// fakeNTP answers from a table per server address and counts queries.
type fakeNTP struct {
	mu      sync.Mutex
	answers map[string]outcome
	queries map[string]int
}

type outcome struct {
	r   *ntp.Response
	err error
}

func (f *fakeNTP) query(_ context.Context, addr string, _ time.Duration) (*ntp.Response, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.queries[addr]++
	o, ok := f.answers[addr]
	if !ok {
		return nil, errTimeout
	}
	return o.r, o.err
}

// recorder is a Reporter that keeps every change.
type recorder struct {
	mu      sync.Mutex
	changes []Change
}

func (r *recorder) Report(c Change) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.changes = append(r.changes, c)
}

func (r *recorder) take() []Change {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := r.changes
	r.changes = nil
	return out
}

func kinds(cs []Change) []Kind {
	var out []Kind
	for _, c := range cs {
		out = append(out, c.Kind)
	}
	return out
}

const (
	srvA = "127.0.0.1:1001"
	srvB = "127.0.0.1:1002"
)

// checkStep is one check: the clocks move first, then the servers answer as given.
type checkStep struct {
	advance time.Duration              // both clocks (default one interval)
	step    time.Duration              // the wall clock only
	answers map[string]outcome         // missing server: timeout
	state   string                     // want
	kinds   []Kind                     // want, in order
	queried map[string]int             // want queries per server in this check (nil: don't care)
	check   func(*testing.T, *Checker) // more assertions
}

func TestCheckTransitions(t *testing.T) {
	good := func(off time.Duration) outcome { return outcome{r: resp(off, time.Millisecond)} }
	for _, tt := range []struct {
		name    string
		servers []string
		steps   []checkStep
	}{
		{"good", []string{srvA}, []checkStep{{
			answers: map[string]outcome{srvA: good(3 * time.Millisecond)}, state: StateSynced, kinds: []Kind{KindSynced},
			check: func(t *testing.T, c *Checker) {
				ts := c.State()
				if ts.Server != srvA || ts.OffsetNS != int64(3*time.Millisecond) || ts.Stratum != 2 || ts.RefID != "127.0.0.1" ||
					ts.RTTNS != int64(time.Millisecond) || ts.MaxOffset != int64(DefaultMaxOffset) || ts.Checked == "" || ts.Error != "" {
					t.Errorf("State()=%+v", ts)
				}
				if !c.Synced() {
					t.Error("Synced()=false")
				}
			},
		}}},
		{"stratum 16", []string{srvA}, []checkStep{{
			answers: map[string]outcome{srvA: {r: with(resp(0, time.Millisecond), func(r *ntp.Response) { r.Stratum = 16 })}},
			state:   StateUnsynced, kinds: []Kind{KindUnsynced},
			check: func(t *testing.T, c *Checker) {
				if ts := c.State(); !strings.Contains(ts.Error, "invalid stratum") || ts.Server != "" || ts.Checked != "" {
					t.Errorf("State()=%+v, want an error naming the stratum and no answer", ts)
				}
			},
		}}},
		{"leap alarm", []string{srvA}, []checkStep{{
			answers: map[string]outcome{srvA: {r: with(resp(0, time.Millisecond), func(r *ntp.Response) { r.Leap = ntp.LeapNotInSync })}},
			state:   StateUnsynced, kinds: []Kind{KindUnsynced},
		}}},
		{"timeout", []string{srvA}, []checkStep{{
			state: StateUnsynced, kinds: []Kind{KindUnsynced},
			check: func(t *testing.T, c *Checker) {
				if got, want := c.State().Error, srvA+": no answer (timeout)"; got != want {
					t.Errorf("error=%q, want %q", got, want)
				}
				if c.Synced() {
					t.Error("Synced()=true")
				}
			},
		}}},
		{"offset beyond max and back", []string{srvA}, []checkStep{
			{answers: map[string]outcome{srvA: good(-2 * time.Second)}, state: StateOffset, kinds: []Kind{KindOffset},
				check: func(t *testing.T, c *Checker) {
					if ts := c.State(); ts.OffsetNS != int64(-2*time.Second) || !strings.Contains(ts.Error, "ntp.max_offset") {
						t.Errorf("State()=%+v", ts)
					}
				}},
			{answers: map[string]outcome{srvA: good(-2 * time.Second)}, state: StateOffset},
			{answers: map[string]outcome{srvA: good(400 * time.Millisecond)}, state: StateSynced, kinds: []Kind{KindSynced}},
		}},
		{"no answer ages out after max_age", []string{srvA}, []checkStep{
			{answers: map[string]outcome{srvA: good(0)}, state: StateSynced, kinds: []Kind{KindSynced}},
			{state: StateSynced},
			{state: StateSynced},
			{state: StateSynced},
			{state: StateSynced}, // 4 intervals: max_age
			{state: StateUnsynced, kinds: []Kind{KindUnsynced},
				check: func(t *testing.T, c *Checker) {
					ts := c.State()
					if ts.Server != srvA || ts.Checked == "" || !strings.Contains(ts.Error, "no good answer for 5m20s") {
						t.Errorf("State()=%+v, want the stale answer and its age", ts)
					}
				}},
			{answers: map[string]outcome{srvA: good(0)}, state: StateSynced, kinds: []Kind{KindSynced}},
		}},
		{"step", []string{srvA}, []checkStep{
			{answers: map[string]outcome{srvA: good(0)}, state: StateSynced, kinds: []Kind{KindSynced}},
			{step: 5 * time.Second, answers: map[string]outcome{srvA: good(-5 * time.Second)}, state: StateOffset, kinds: []Kind{KindStep, KindOffset},
				check: func(t *testing.T, c *Checker) {
					if got := c.Stats().Steps; got != 1 {
						t.Errorf("Steps=%d, want 1", got)
					}
				}},
			{step: 900 * time.Millisecond, answers: map[string]outcome{srvA: good(0)}, state: StateSynced, kinds: []Kind{KindSynced}},
			{step: -3 * time.Second, state: StateUnsynced, kinds: []Kind{KindStep, KindUnsynced}},
		}},
		{"kod RATE backs off", []string{srvA, srvB}, []checkStep{
			{answers: map[string]outcome{srvA: {r: kiss("RATE")}, srvB: good(0)}, state: StateSynced, kinds: []Kind{KindSynced},
				queried: map[string]int{srvA: 1, srvB: 1}},
			{answers: map[string]outcome{srvA: good(0), srvB: good(0)}, state: StateSynced, queried: map[string]int{srvB: 1}},
			{answers: map[string]outcome{srvA: {r: kiss("RATE")}, srvB: good(0)}, state: StateSynced, queried: map[string]int{srvA: 1, srvB: 1}},
			{state: StateSynced, queried: map[string]int{srvB: 1}},
			{state: StateSynced, queried: map[string]int{srvB: 1}},
			{state: StateSynced, queried: map[string]int{srvB: 1},
				check: func(t *testing.T, c *Checker) {
					if got := c.Stats().Servers[0].Backoff; got != 4 {
						t.Errorf("backoff=%d, want 4", got)
					}
				}},
			{answers: map[string]outcome{srvA: good(0), srvB: good(0)}, state: StateSynced, queried: map[string]int{srvA: 1, srvB: 1},
				check: func(t *testing.T, c *Checker) {
					if got := c.Stats().Servers[0].Backoff; got != 1 {
						t.Errorf("backoff after a good answer=%d, want 1", got)
					}
				}},
		}},
		{"kod DENY stops querying", []string{srvA, srvB}, []checkStep{
			{answers: map[string]outcome{srvA: {r: kiss("DENY")}}, state: StateUnsynced, kinds: []Kind{KindUnsynced},
				queried: map[string]int{srvA: 1, srvB: 1}},
			{answers: map[string]outcome{srvA: good(0)}, state: StateUnsynced, queried: map[string]int{srvB: 1}},
			{advance: 100 * DefaultInterval, answers: map[string]outcome{srvA: good(0), srvB: good(0)}, state: StateSynced,
				kinds: []Kind{KindSynced}, queried: map[string]int{srvB: 1},
				check: func(t *testing.T, c *Checker) {
					st := c.Stats()
					if !st.Servers[0].Denied || st.Servers[1].Denied || st.Server != srvB {
						t.Errorf("Stats()=%+v, want %s denied and %s used", st, srvA, srvB)
					}
				}},
		}},
		{"best answer is the lowest root distance", []string{srvA, srvB}, []checkStep{
			{answers: map[string]outcome{
				srvA: {r: with(resp(10*time.Millisecond, time.Millisecond), func(r *ntp.Response) { r.RootDistance = 20 * time.Millisecond })},
				srvB: {r: with(resp(20*time.Millisecond, 5*time.Millisecond), func(r *ntp.Response) { r.RootDistance = 4 * time.Millisecond })},
			}, state: StateSynced, kinds: []Kind{KindSynced},
				check: func(t *testing.T, c *Checker) {
					if ts := c.State(); ts.Server != srvB || ts.OffsetNS != int64(20*time.Millisecond) {
						t.Errorf("State()=%+v, want %s's answer", ts, srvB)
					}
				}},
		}},
		{"one server down is not unsynced", []string{srvA, srvB}, []checkStep{
			{answers: map[string]outcome{srvB: good(0)}, state: StateSynced, kinds: []Kind{KindSynced},
				check: func(t *testing.T, c *Checker) {
					st := c.Stats()
					if st.Servers[0].Error == "" || st.Servers[0].Failures != 1 || st.Servers[1].Error != "" || st.Servers[1].LastGood.IsZero() {
						t.Errorf("Stats().Servers=%+v", st.Servers)
					}
				}},
		}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			c, err := New(Config{Servers: tt.servers}, nil, nil)
			if err != nil {
				t.Fatal(err)
			}
			rec := &recorder{}
			c.rep = rec
			clk := &fakeClock{r: reading{wall: time.Date(2026, 12, 1, 8, 0, 0, 0, time.UTC)}}
			c.clock = clk.now
			f := &fakeNTP{}
			c.query = f.query
			for i, s := range tt.steps {
				if i > 0 {
					adv := s.advance
					if adv == 0 {
						adv = DefaultInterval
					}
					clk.advance(adv, s.step)
				}
				f.mu.Lock()
				f.answers, f.queries = s.answers, map[string]int{}
				f.mu.Unlock()
				c.check(t.Context())
				if got, want := c.State().State, s.state; got != want {
					t.Fatalf("check %d: state=%q, want %q (%+v)", i, got, want, c.State())
				}
				if got, want := c.Synced(), s.state == StateSynced; got != want {
					t.Fatalf("check %d: Synced()=%v, want %v", i, got, want)
				}
				changes := rec.take()
				if got, want := kinds(changes), s.kinds; !slices.Equal(got, want) {
					t.Fatalf("check %d: changes %v, want %v", i, got, want)
				}
				for _, ch := range changes {
					if ch.To != s.state || ch.State.State != s.state {
						t.Errorf("check %d: change %+v does not end in %q", i, ch, s.state)
					}
					if ch.Kind == KindStep && (ch.Step != s.step) {
						t.Errorf("check %d: step=%v, want %v", i, ch.Step, s.step)
					}
				}
				if s.queried != nil {
					f.mu.Lock()
					got := f.queries
					f.mu.Unlock()
					for _, srv := range tt.servers {
						if got[srv] != s.queried[srv] {
							t.Errorf("check %d: queries=%v, want %v", i, got, s.queried)
							break
						}
					}
				}
				if s.check != nil {
					s.check(t, c)
				}
			}
		})
	}
}

// TestSamplesKeepLowestRTT: with samples: 3 the answer with the lowest round trip
// counts, and a failed sample does not hide the good ones.
func TestSamplesKeepLowestRTT(t *testing.T) {
	c, err := New(Config{Servers: []string{srvA}, Samples: 3}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	var n int
	rtts := []time.Duration{5 * time.Millisecond, 0, 2 * time.Millisecond}
	c.query = func(context.Context, string, time.Duration) (*ntp.Response, error) {
		rtt := rtts[n]
		n++
		if rtt == 0 {
			return nil, errTimeout
		}
		return resp(rtt, rtt), nil
	}
	c.check(t.Context())
	if got, want := n, 3; got != want {
		t.Fatalf("queries=%d, want %d", got, want)
	}
	if got, want := c.State().RTTNS, int64(2*time.Millisecond); got != want {
		t.Fatalf("rtt=%v, want %v", time.Duration(got), time.Duration(want))
	}
}

// TestRunLifecycle: Run checks at once and every interval, a second Run is refused,
// and a cancel ends a query in flight and returns nil with nothing left running.
func TestRunLifecycle(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		c, err := New(Config{Servers: []string{srvA}, Interval: 10 * time.Second}, nil, nil)
		if err != nil {
			t.Fatal(err)
		}
		var mu sync.Mutex
		queries := 0
		hang := false
		c.query = func(ctx context.Context, _ string, _ time.Duration) (*ntp.Response, error) {
			mu.Lock()
			queries++
			h := hang
			mu.Unlock()
			if h {
				<-ctx.Done()
				return nil, ctx.Err()
			}
			return resp(0, time.Millisecond), nil
		}
		ctx, cancel := context.WithCancel(t.Context())
		done := make(chan error, 1)
		go func() { done <- c.Run(ctx) }()
		synctest.Wait()
		if err := c.Run(ctx); !errors.Is(err, ErrRunning) {
			t.Fatalf("second Run=%v, want ErrRunning", err)
		}
		time.Sleep(35 * time.Second)
		synctest.Wait()
		mu.Lock()
		if got, want := queries, 4; got != want { // at 0, 10, 20 and 30 s
			t.Fatalf("queries after 35s=%d, want %d", got, want)
		}
		hang = true
		mu.Unlock()
		if got, want := c.Stats().Checks, uint64(4); got != want {
			t.Fatalf("checks=%d, want %d", got, want)
		}
		time.Sleep(5 * time.Second) // the check at 40 s hangs in its query
		synctest.Wait()
		cancel()
		if err := <-done; err != nil {
			t.Fatalf("Run=%v, want nil", err)
		}
		if got, want := c.Stats().Checks, uint64(4); got != want {
			t.Fatalf("checks after a cancelled check=%d, want %d (a cancelled check changes nothing)", got, want)
		}
		if got, want := c.State().State, StateSynced; got != want {
			t.Fatalf("state=%q, want %q", got, want)
		}
	})
}

// TestStateConcurrent: State, Synced and Stats race with checks without a data race
// (run with -race) and always see a whole state.
func TestStateConcurrent(t *testing.T) {
	c, err := New(Config{Servers: []string{srvA}}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	var flip bool
	c.query = func(context.Context, string, time.Duration) (*ntp.Response, error) {
		flip = !flip
		if flip {
			return resp(time.Millisecond, time.Millisecond), nil
		}
		return resp(time.Second, time.Millisecond), nil
	}
	ctx, cancel := context.WithCancel(t.Context())
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			for ctx.Err() == nil {
				ts := c.State()
				switch {
				case ts.State == StateSynced && ts.OffsetNS != int64(time.Millisecond),
					ts.State == StateOffset && ts.OffsetNS != int64(time.Second):
					t.Errorf("torn state %+v", ts)
					return
				}
				c.Synced()
				c.Stats()
			}
		})
	}
	for range 200 {
		c.check(ctx)
	}
	cancel()
	wg.Wait()
}

func BenchmarkState(b *testing.B) {
	c, err := New(Config{Servers: []string{srvA}}, nil, nil)
	if err != nil {
		b.Fatal(err)
	}
	c.query = func(context.Context, string, time.Duration) (*ntp.Response, error) {
		return resp(time.Millisecond, time.Millisecond), nil
	}
	c.check(b.Context())
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if c.State().State != StateSynced {
				b.Fatal("not synced")
			}
		}
	})
}

// logRecorder keeps log records for assertions.
type logRecorder struct {
	mu      sync.Mutex
	records []slog.Record
}

func (h *logRecorder) Enabled(context.Context, slog.Level) bool { return true }
func (h *logRecorder) Handle(_ context.Context, r slog.Record) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.records = append(h.records, r.Clone())
	return nil
}
func (h *logRecorder) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h *logRecorder) WithGroup(string) slog.Handler      { return h }

func (h *logRecorder) messages(level slog.Level) []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	var out []string
	for _, r := range h.records {
		if r.Level == level {
			msg := r.Message
			r.Attrs(func(a slog.Attr) bool {
				if a.Key == logFailures || a.Key == logSuppressed {
					msg += " " + a.Key + "=" + a.Value.String()
				}
				return true
			})
			out = append(out, msg)
		}
	}
	return out
}

// TestLogRateLimited: a server failing at every check is logged at its first failure
// and then at most every 30 s with the count of lines left out; its recovery is logged
// once with the number of failures.
func TestLogRateLimited(t *testing.T) {
	h := &logRecorder{}
	c, err := New(Config{Servers: []string{srvA}, Interval: 10 * time.Second}, nil, slog.New(h))
	if err != nil {
		t.Fatal(err)
	}
	clk := &fakeClock{r: reading{wall: time.Date(2026, 12, 1, 8, 0, 0, 0, time.UTC)}}
	c.clock = clk.now
	f := &fakeNTP{queries: map[string]int{}}
	c.query = f.query
	for i := range 5 { // at 0, 10, 20, 30, 40 s: logged at 0 and at 30 (2 left out)
		if i > 0 {
			clk.advance(10*time.Second, 0)
		}
		c.check(t.Context())
	}
	f.answers = map[string]outcome{srvA: {r: resp(0, time.Millisecond)}}
	clk.advance(10*time.Second, 0)
	c.check(t.Context())
	var failing []string
	for _, m := range h.messages(slog.LevelWarn) {
		if strings.HasPrefix(m, "ntp server gives no good answer") {
			failing = append(failing, m)
		}
	}
	if got, want := failing, []string{
		"ntp server gives no good answer failures=1 suppressed=0",
		"ntp server gives no good answer failures=4 suppressed=2",
	}; !slices.Equal(got, want) {
		t.Fatalf("warnings %q, want %q", got, want)
	}
	if got, want := h.messages(slog.LevelInfo), []string{"ntp server answers again failures=5", "clock synced"}; !slices.Equal(got, want) {
		t.Fatalf("info %q, want %q", got, want)
	}
}

// TestStatsJSON: the health endpoint's JSON names the fields and leaves out the unset
// times.
func TestStatsJSON(t *testing.T) {
	c, err := New(Config{Servers: []string{srvA, srvB}}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	f := &fakeNTP{answers: map[string]outcome{srvA: {r: resp(2*time.Millisecond, time.Millisecond)}}, queries: map[string]int{}}
	c.query = f.query
	c.check(t.Context())
	b, err := json.Marshal(c.Stats())
	if err != nil {
		t.Fatal(err)
	}
	var got map[string]any
	if err := json.Unmarshal(b, &got); err != nil {
		t.Fatal(err)
	}
	if got["state"] != StateSynced || got["offset_ns"] != float64(2*time.Millisecond) || got["server"] != srvA || got["last_good"] == nil {
		t.Fatalf("stats JSON %s", b)
	}
	servers := got["servers"].([]any)
	b1 := servers[1].(map[string]any)
	if _, ok := b1["last_good"]; ok || b1["failures"] != float64(1) || !strings.Contains(b1["error"].(string), "timeout") {
		t.Fatalf("second server JSON %v, want no last_good, one failure and its error", b1)
	}
}
