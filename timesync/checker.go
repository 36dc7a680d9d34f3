// Package timesync checks the local clock against NTP servers and keeps the time-sync
// evidence that every batch header carries (ledger.TimeSync).
package timesync

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/beevik/ntp"

	"github.com/edgeaudit/edgeaudit/internal/ratelog"
	"github.com/edgeaudit/edgeaudit/ledger"
)

// States, the values of ledger.TimeSync.State (docs/format.md "time_sync").
const (
	// StateUnknown: no check has finished yet.
	StateUnknown = "unknown"
	// StateSynced: a good answer within max_age and |offset| <= max_offset.
	StateSynced = "synced"
	// StateOffset: a good answer within max_age, but |offset| > max_offset: the local
	// clock is wrong by about offset_ns.
	StateOffset = "offset"
	// StateUnsynced: no good answer within max_age (no server reachable, only bad
	// answers, or the clock was stepped and no server answered since).
	StateUnsynced = "unsynced"
)

// Kind says what a Change is.
type Kind string

// Kinds of Change; the daemon records each as a self-audit event (README).
const (
	KindSynced   Kind = "synced"   // the state became synced (also the first good check)
	KindOffset   Kind = "offset"   // the state became offset
	KindUnsynced Kind = "unsynced" // the state became unsynced
	KindStep     Kind = "step"     // the wall clock jumped against the monotonic clock
)

// Change is one transition of the checker, or a clock step.
type Change struct {
	Kind Kind
	// From and To are the states before and after the check; equal for a step that did
	// not change the state.
	From, To string
	// Step is, for KindStep, how much more the wall clock advanced than the monotonic
	// clock since the previous check (negative: the clock went back).
	Step time.Duration
	// State is the evidence after the check, as State returns it.
	State ledger.TimeSync
	// At is the local wall time of the check.
	At time.Time
}

// Reporter receives the checker's changes; the daemon turns them into self-audit
// events.
type Reporter interface {
	// Report is called from Run's goroutine, once per change and in order. The Change
	// is the reporter's to keep. It should not block for long (the next check waits
	// for it) and may call State, Synced and Stats. It returns nothing: a reporter that
	// cannot record a change logs or counts that itself.
	Report(Change)
}

// Sentinel errors, wrapped by the errors of a server's answer.
var (
	// ErrKissRate: the server sent kiss code RATE; it is queried less often.
	ErrKissRate = errors.New("kiss of death RATE (querying too often)")
	// ErrKissDeny: the server sent kiss code DENY or RSTR; it is not queried again
	// until the checker restarts.
	ErrKissDeny = errors.New("kiss of death: access denied")
	// ErrRootDistance: the answer's root distance is above ntp.max_root_distance.
	ErrRootDistance = errors.New("root distance above ntp.max_root_distance")
	// ErrRunning: Run was called while it runs.
	ErrRunning = errors.New("timesync checker already running")
)

// reading is one look at both clocks: the wall clock (without Go's monotonic reading)
// and the monotonic clock as time since the checker was made.
type reading struct {
	wall time.Time
	mono time.Duration
}

// queryFunc asks one server once. The real one is ntpQuery; unit tests replace it.
type queryFunc func(ctx context.Context, addr string, timeout time.Duration) (*ntp.Response, error)

// answer is a good answer, reduced to what the evidence needs.
type answer struct {
	server       string
	offset, rtt  time.Duration
	rootDistance time.Duration
	stratum      int
	leap         int
	refID        string
	at           reading
}

type server struct {
	name, addr string

	// Written by Run's goroutine under Checker.mu.
	lastQuery    time.Time
	last         *answer // last good answer
	err          error   // last failure; nil after a good answer
	failures     int     // consecutive
	failingSince time.Time
	backoff      int           // RATE: query every backoff intervals (0 or 1: every check)
	nextAt       time.Duration // monotonic reading before which it is not queried
	denied       bool
}

// Checker queries the configured NTP servers every interval and keeps the clock
// evidence. State, Synced and Stats are safe for concurrent use with Run.
type Checker struct {
	cfg   Config
	rep   Reporter
	log   *slog.Logger
	query queryFunc
	clock func() reading
	rl    ratelog.Limiter

	running atomic.Bool
	snap    atomic.Pointer[ledger.TimeSync]
	synced  atomic.Bool

	mu      sync.Mutex
	servers []*server
	best    *answer // the evidence behind the state; nil when none
	prev    *reading
	checks  uint64
	steps   uint64
	state   string
}

// New validates cfg (after defaults) and returns a checker that starts nothing; Run
// does the work. rep may be nil. The state is "unknown" until Run's first check.
func New(cfg Config, rep Reporter, logger *slog.Logger) (*Checker, error) {
	cfg.Servers = append([]string(nil), cfg.Servers...)
	cfg.ApplyDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	start := time.Now()
	c := &Checker{
		cfg: cfg, rep: rep, log: logger.With(logComponent, "timesync"), query: ntpQuery,
		clock: func() reading {
			now := time.Now()
			return reading{wall: now.Round(0), mono: now.Sub(start)}
		},
		state: StateUnknown,
	}
	for _, s := range cfg.Servers {
		addr, _ := serverAddr(s) // checked by Validate
		c.servers = append(c.servers, &server{name: s, addr: addr})
	}
	c.snap.Store(&ledger.TimeSync{State: StateUnknown, MaxOffset: int64(cfg.MaxOffset)})
	return c, nil
}

// Config is the checker's config with the defaults applied.
func (c *Checker) Config() Config { return c.cfg }

// State is the clock evidence for a batch header (spool.Options.TimeSync). It is one
// atomic load and a copy: cheap enough for every seal. The state is re-evaluated at each
// check, so max_age is honoured to within one interval.
func (c *Checker) State() ledger.TimeSync { return *c.snap.Load() }

// Synced reports whether the state is "synced": a flag for collectors that mark events
// received while the clock is not trusted.
func (c *Checker) Synced() bool { return c.synced.Load() }

// Run checks at once and then every interval until ctx is done; it returns nil then,
// after the queries it started have returned. No reachable server is a state
// ("unsynced"), never an error.
func (c *Checker) Run(ctx context.Context) error {
	if !c.running.CompareAndSwap(false, true) {
		return ErrRunning
	}
	defer c.running.Store(false)
	t := time.NewTicker(c.cfg.Interval)
	defer t.Stop()
	for {
		c.check(ctx)
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// result is one server's outcome in one check.
type result struct {
	queried bool
	ans     *answer
	err     error
	at      reading
}

// check is one round: detect a clock step, query every due server, pick the best
// answer, update the state and report the changes. A check cancelled by ctx changes
// nothing.
func (c *Checker) check(ctx context.Context) {
	now := c.clock()
	results := make([]result, len(c.servers))
	var wg sync.WaitGroup
	c.mu.Lock()
	for i, s := range c.servers {
		if s.denied || now.mono < s.nextAt {
			continue
		}
		wg.Go(func() {
			r := c.queryServer(ctx, s.addr, s.name)
			r.queried = true
			results[i] = r
		})
	}
	c.mu.Unlock()
	wg.Wait()
	if ctx.Err() != nil {
		return
	}

	var changes []Change
	c.mu.Lock()
	c.checks++
	from := c.state
	if c.prev != nil {
		step := (now.wall.Sub(c.prev.wall)) - (now.mono - c.prev.mono)
		if step > c.cfg.StepThreshold || step < -c.cfg.StepThreshold {
			c.steps++
			// The last answer's offset was measured against the clock before the step.
			c.best = nil
			changes = append(changes, Change{Kind: KindStep, Step: step, At: now.wall})
			c.log.Warn("local clock stepped", logStep, step)
		}
	}
	c.prev = &now

	var best *answer
	for i, s := range c.servers {
		r := results[i]
		if !r.queried {
			continue
		}
		c.apply(s, r)
		if r.ans != nil && (best == nil || r.ans.rootDistance < best.rootDistance ||
			r.ans.rootDistance == best.rootDistance && r.ans.rtt < best.rtt) {
			best = r.ans
		}
	}
	if best != nil {
		c.best = best
	}
	ts := c.evaluate(now)
	c.state = ts.State
	c.snap.Store(&ts)
	c.synced.Store(ts.State == StateSynced)
	for i := range changes {
		changes[i].From, changes[i].To, changes[i].State = from, ts.State, ts
	}
	if ts.State != from {
		changes = append(changes, Change{Kind: Kind(ts.State), From: from, To: ts.State, State: ts, At: now.wall})
		c.logState(ts)
	}
	c.mu.Unlock()
	if c.rep != nil {
		for _, ch := range changes {
			c.rep.Report(ch)
		}
	}
}

// queryServer asks one server cfg.Samples times and returns the good answer with the
// lowest round trip, or the last failure. A kiss-o'-death ends the sampling.
func (c *Checker) queryServer(ctx context.Context, addr, name string) result {
	var res result
	for range c.cfg.Samples {
		resp, err := c.query(ctx, addr, c.cfg.Timeout)
		at := c.clock()
		if err == nil {
			err = validate(resp, c.cfg.MaxRootDistance)
		}
		if err != nil {
			if res.ans == nil {
				res.err, res.at = fmt.Errorf("query %s: %w", name, err), at
			}
			if errors.Is(err, ErrKissRate) || errors.Is(err, ErrKissDeny) || ctx.Err() != nil {
				break
			}
			continue
		}
		if res.ans == nil || resp.RTT < res.ans.rtt {
			res.ans, res.err, res.at = &answer{
				server: name, offset: resp.ClockOffset, rtt: resp.RTT, rootDistance: resp.RootDistance,
				stratum: int(resp.Stratum), leap: int(resp.Leap), refID: resp.ReferenceString(), at: at,
			}, nil, at
		}
	}
	return res
}

// validate accepts an answer fit to set a clock by: not a kiss-o'-death, a stratum of
// 1..15, no leap alarm, a fresh and plausible server clock (ntp.Response.Validate), and a
// root distance within limit.
func validate(r *ntp.Response, maxRootDistance time.Duration) error {
	if r.IsKissOfDeath() {
		switch r.KissCode {
		case "RATE":
			return ErrKissRate
		case "DENY", "RSTR":
			return fmt.Errorf("%w (%s)", ErrKissDeny, r.KissCode)
		}
		if r.KissCode == "" {
			return fmt.Errorf("stratum 0: %w", ntp.ErrKissOfDeath)
		}
		return fmt.Errorf("kiss code %s: %w", r.KissCode, ntp.ErrKissOfDeath)
	}
	if err := r.Validate(); err != nil {
		return fmt.Errorf("bad answer (stratum %d, leap %d): %w", r.Stratum, r.Leap, err)
	}
	if r.RootDistance > maxRootDistance {
		return fmt.Errorf("%w: %v > %v", ErrRootDistance, r.RootDistance, maxRootDistance)
	}
	return nil
}

// apply records one server's result; c.mu is held.
func (c *Checker) apply(s *server, r result) {
	s.lastQuery = r.at.wall
	if r.ans != nil {
		if s.failures > 0 {
			c.log.Info("ntp server answers again", logServer, s.name, logFailures, s.failures,
				logAfter, r.at.wall.Sub(s.failingSince).Round(time.Millisecond))
		}
		s.last, s.err, s.failures, s.backoff, s.nextAt = r.ans, nil, 0, 0, 0
		return
	}
	if s.failures == 0 {
		s.failingSince = r.at.wall
	}
	s.err = r.err
	s.failures++
	switch {
	case errors.Is(r.err, ErrKissDeny):
		s.denied = true
		c.log.Error("ntp server refuses this client; not queried again until restart", logServer, s.name, logErr, r.err)
		return
	case errors.Is(r.err, ErrKissRate):
		s.backoff = min(max(2*s.backoff, 2), maxBackoff)
		// A little early, so that the check at backoff intervals from now is not
		// skipped by a ticker that fired a moment before.
		s.nextAt = r.at.mono + time.Duration(s.backoff)*c.cfg.Interval - c.cfg.Interval/2
	}
	if ok, n := c.rl.Allow(s.name, r.at.wall); ok {
		c.log.Warn("ntp server gives no good answer", logServer, s.name, logErr, r.err,
			logFailures, s.failures, logSuppressed, n, logBackoff, max(s.backoff, 1))
	}
}

// evaluate is the evidence at now; c.mu is held.
func (c *Checker) evaluate(now reading) ledger.TimeSync {
	ts := ledger.TimeSync{State: StateUnsynced, MaxOffset: int64(c.cfg.MaxOffset)}
	if b := c.best; b != nil {
		ts.Server, ts.OffsetNS, ts.Checked = b.server, int64(b.offset), b.at.wall.UTC().Format(time.RFC3339Nano)
		ts.RTTNS, ts.RootDistanceNS, ts.Stratum, ts.Leap, ts.RefID = int64(b.rtt), int64(b.rootDistance), b.stratum, b.leap, b.refID
		switch age := now.mono - b.at.mono; {
		case age > c.cfg.MaxAge:
			ts.Error = fmt.Sprintf("no good answer for %v: %s", age.Round(time.Second), c.errorSummary())
		case b.offset > c.cfg.MaxOffset || b.offset < -c.cfg.MaxOffset:
			ts.State = StateOffset
			ts.Error = fmt.Sprintf("offset %v beyond ntp.max_offset %v", b.offset, c.cfg.MaxOffset)
		default:
			ts.State = StateSynced
		}
		return ts
	}
	ts.Error = c.errorSummary()
	return ts
}

// maxErrorServers bounds the servers named in a header's error.
const maxErrorServers = 4

// errorSummary names the servers' last failures, shortly; c.mu is held.
func (c *Checker) errorSummary() string {
	var parts []string
	n := 0
	for _, s := range c.servers {
		if s.err == nil {
			continue
		}
		if n++; n <= maxErrorServers {
			parts = append(parts, s.name+": "+short(s.err))
		}
	}
	if n > maxErrorServers {
		parts = append(parts, fmt.Sprintf("and %d more", n-maxErrorServers))
	}
	if len(parts) == 0 {
		return "no good answer"
	}
	return strings.Join(parts, "; ")
}

// short is an error as a header carries it: the cause without socket addresses.
func short(err error) string {
	var dns *net.DNSError
	switch {
	case errors.Is(err, os.ErrDeadlineExceeded):
		return "no answer (timeout)"
	case errors.Is(err, syscall.ECONNREFUSED):
		return "connection refused"
	case errors.Is(err, ErrKissRate), errors.Is(err, ErrKissDeny), errors.Is(err, ErrRootDistance), errors.Is(err, ntp.ErrKissOfDeath):
	case errors.As(err, &dns):
		return "lookup: " + dns.Err
	}
	msg := err.Error()
	if i := strings.Index(msg, ": "); i >= 0 && strings.HasPrefix(msg, "query ") {
		msg = msg[i+2:]
	}
	return msg
}

func (c *Checker) logState(ts ledger.TimeSync) {
	attrs := []any{logState, ts.State, logServer, ts.Server, logOffset, time.Duration(ts.OffsetNS)}
	switch ts.State {
	case StateSynced:
		c.log.Info("clock synced", attrs...)
	default:
		c.log.Warn("clock not synced", append(attrs, logErr, ts.Error)...)
	}
}

// ntpQuery is one real query; ctx ends it early by closing the socket.
func ntpQuery(ctx context.Context, addr string, timeout time.Duration) (*ntp.Response, error) {
	var stop func() bool
	opt := ntp.QueryOptions{Timeout: timeout, Dialer: func(_, remote string) (net.Conn, error) {
		dctx, cancel := context.WithTimeout(ctx, timeout)
		defer cancel()
		var d net.Dialer
		conn, err := d.DialContext(dctx, "udp", remote)
		if err != nil {
			return nil, err
		}
		stop = context.AfterFunc(ctx, func() { conn.Close() })
		return conn, nil
	}}
	r, err := ntp.QueryWithOptions(addr, opt)
	if stop != nil {
		stop()
	}
	if err != nil && ctx.Err() != nil {
		return nil, ctx.Err()
	}
	return r, err
}

// Stats is a snapshot for health and metrics (JSON for `edgeaudit health --json`;
// durations in nanoseconds).
type Stats struct {
	State  string `json:"state"`
	Synced bool   `json:"synced"`
	// The answer behind the state; zero before the first good answer.
	Server       string        `json:"server,omitempty"`
	Offset       time.Duration `json:"offset_ns"`
	RTT          time.Duration `json:"rtt_ns"`
	RootDistance time.Duration `json:"root_distance_ns"`
	LastGood     time.Time     `json:"last_good,omitzero"`
	Error        string        `json:"error,omitempty"`
	Checks       uint64        `json:"checks"` // finished checks
	Steps        uint64        `json:"steps"`  // clock steps seen
	Servers      []ServerStats `json:"servers"`
}

// ServerStats is one configured server.
type ServerStats struct {
	Server    string        `json:"server"`
	LastQuery time.Time     `json:"last_query,omitzero"` // zero before the first query
	LastGood  time.Time     `json:"last_good,omitzero"`
	Offset    time.Duration `json:"offset_ns"` // of the last good answer
	RTT       time.Duration `json:"rtt_ns"`
	Stratum   int           `json:"stratum,omitempty"`
	Error     string        `json:"error,omitempty"`  // the last failure; "" after a good answer
	Failures  int           `json:"failures"`         // consecutive failures
	Backoff   int           `json:"backoff"`          // queried every Backoff intervals (RATE); 1 normally
	Denied    bool          `json:"denied,omitempty"` // DENY or RSTR: not queried until restart
}

// Stats returns the state and each server's last result.
func (c *Checker) Stats() Stats {
	c.mu.Lock()
	defer c.mu.Unlock()
	ts := c.State() // stored under c.mu: consistent with best and servers
	st := Stats{State: ts.State, Synced: ts.State == StateSynced, Error: ts.Error, Checks: c.checks, Steps: c.steps}
	if b := c.best; b != nil {
		st.Server, st.Offset, st.RTT, st.RootDistance, st.LastGood = b.server, b.offset, b.rtt, b.rootDistance, b.at.wall
	}
	for _, s := range c.servers {
		ss := ServerStats{Server: s.name, LastQuery: s.lastQuery, Failures: s.failures, Backoff: max(s.backoff, 1), Denied: s.denied}
		if s.last != nil {
			ss.LastGood, ss.Offset, ss.RTT, ss.Stratum = s.last.at.wall, s.last.offset, s.last.rtt, s.last.stratum
		}
		if s.err != nil {
			ss.Error = s.err.Error()
		}
		st.Servers = append(st.Servers, ss)
	}
	return st
}
