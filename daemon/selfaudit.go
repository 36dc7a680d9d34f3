package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/edgeaudit/edgeaudit/audit"
	"github.com/edgeaudit/edgeaudit/collectors"
	"github.com/edgeaudit/edgeaudit/spool"
)

// Self-audit actions: what the appliance records about itself, in its own chain.
const (
	ActionStart         = "audit.start"
	ActionStop          = "audit.stop"
	ActionInputRejected = "audit.input_rejected"
	ActionInputLost     = "audit.input_lost"
	ActionRejectsDigest = "audit.input_rejected_summary"
)

// selfAuditWindow bounds how often loss is summarized and how many individual reject
// events one reason may produce per window; a hostile sender must not be able to turn
// rejections into a flood of chain entries.
const (
	selfAuditWindow     = 10 * time.Second
	rejectEventsPerRule = 50
	selfQueue           = 4096
)

// selfAudit implements collectors.Reporter: it counts what collectors could not keep and
// writes it into the chain (invariant 3), never blocking a collector.
type selfAudit struct {
	sink collectors.Sink
	log  *slog.Logger
	now  func() time.Time

	rejects *prometheus.CounterVec
	lost    *prometheus.CounterVec

	ch chan audit.Event

	recent recent // the last hour's losses and rejections, for health

	mu         sync.Mutex
	window     map[[3]string]int    // reject events per (collector, transport, reason) in this window
	suppressed map[[3]string]uint64 // rejects counted but not written individually
	lostAcc    map[[3]string]uint64 // losses to summarize at the window's end
}

func newSelfAudit(sink collectors.Sink, reg prometheus.Registerer, log *slog.Logger) *selfAudit {
	s := &selfAudit{
		sink: sink, log: log, now: time.Now,
		rejects: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "edgeaudit_input_rejected_total", Help: "Inputs refused, by collector, transport and reason.",
		}, []string{"collector", "transport", "reason"}),
		lost: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "edgeaudit_input_lost_total", Help: "Inputs lost without being seen (e.g. UDP drops), by collector, transport and reason.",
		}, []string{"collector", "transport", "reason"}),
		ch:         make(chan audit.Event, selfQueue),
		window:     map[[3]string]int{},
		suppressed: map[[3]string]uint64{},
		lostAcc:    map[[3]string]uint64{},
	}
	reg.MustRegister(s.rejects, s.lost)
	return s
}

var _ collectors.Reporter = (*selfAudit)(nil)

func (s *selfAudit) event(action, outcome, reason string) audit.Event {
	return selfEvent(s.now(), action, outcome, reason)
}

// selfEvent is an event the appliance records about itself at now.
func selfEvent(now time.Time, action, outcome, reason string) audit.Event {
	now = now.UTC()
	return audit.Event{
		Time: now, Received: now,
		Source: audit.Source{Kind: audit.KindSelf, Transport: "internal", App: "edgeaudit"},
		Action: action, Outcome: outcome, Reason: reason,
	}
}

// Reject implements collectors.Reporter.
func (s *selfAudit) Reject(kind, transport, peerIP, reason, sha256 string, size int64) {
	s.rejects.WithLabelValues(kind, transport, reason).Inc()
	s.recent.addReject(s.now(), kind+"/"+transport+"/"+reason)
	key := [3]string{kind, transport, reason}
	s.mu.Lock()
	n := s.window[key]
	if n >= rejectEventsPerRule {
		s.suppressed[key]++
		s.mu.Unlock()
		return
	}
	s.window[key] = n + 1
	s.mu.Unlock()
	e := s.event(ActionInputRejected, audit.OutcomeMinorFailure, reason)
	e.Source.IP = peerIP
	e.RawSHA256 = sha256
	e.Detail = map[string]string{"collector": kind, "transport": transport, "size": strconv.FormatInt(size, 10)}
	s.enqueue(e, key)
}

// Lost implements collectors.Reporter. Losses are summed and written once a window.
func (s *selfAudit) Lost(kind, transport, reason string, n uint64) {
	s.lost.WithLabelValues(kind, transport, reason).Add(float64(n))
	s.recent.addLost(s.now(), kind+"/"+transport+"/"+reason, n)
	s.mu.Lock()
	s.lostAcc[[3]string{kind, transport, reason}] += n
	s.mu.Unlock()
}

func (s *selfAudit) enqueue(e audit.Event, key [3]string) {
	select {
	case s.ch <- e:
	default:
		s.mu.Lock()
		s.suppressed[key]++
		s.mu.Unlock()
	}
}

// record appends a self-audit event and waits for its commit (start, stop). It goes
// through the ordinary queue, not the urgent lane: the stop event must come after every
// event appended before it (the collectors' drain, the last summaries).
func (s *selfAudit) record(ctx context.Context, e audit.Event) error {
	return collectors.AppendInOrder(ctx, s.sink, &e)
}

// run writes queued self-audit events and the per-window summaries until ctx is done,
// then flushes what is left with a short deadline of its own.
func (s *selfAudit) run(ctx context.Context) {
	t := time.NewTicker(selfAuditWindow)
	defer t.Stop()
	for {
		select {
		case e := <-s.ch:
			s.write(ctx, e)
		case <-t.C:
			for _, e := range s.summaries() {
				s.write(ctx, e)
			}
		case <-ctx.Done():
			fctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			defer cancel()
			for {
				select {
				case e := <-s.ch:
					s.write(fctx, e)
				default:
					for _, e := range s.summaries() {
						s.write(fctx, e)
					}
					return
				}
			}
		}
	}
}

// write appends e, waiting out backpressure: evidence of loss must not itself be lost
// while the spool is only temporarily full.
func (s *selfAudit) write(ctx context.Context, e audit.Event) {
	for delay := 10 * time.Millisecond; ; delay = min(delay*2, time.Second) {
		err := s.sink.Append(ctx, &e, nil)
		if err == nil {
			return
		}
		if !errors.Is(err, spool.ErrFull) {
			s.log.Error("write self-audit event", "action", e.Action, "err", err)
			return
		}
		select {
		case <-time.After(delay):
		case <-ctx.Done():
			s.log.Error("self-audit event not written before shutdown", "action", e.Action)
			return
		}
	}
}

func (s *selfAudit) summaries() []audit.Event {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []audit.Event
	for k, n := range s.lostAcc {
		e := s.event(ActionInputLost, audit.OutcomeSeriousFailure, k[2])
		e.Count = int(n)
		e.Detail = map[string]string{"collector": k[0], "transport": k[1], "window": selfAuditWindow.String()}
		out = append(out, e)
	}
	for k, n := range s.suppressed {
		e := s.event(ActionRejectsDigest, audit.OutcomeMinorFailure, k[2])
		e.Count = int(n)
		e.Detail = map[string]string{"collector": k[0], "transport": k[1], "window": selfAuditWindow.String(),
			"note": fmt.Sprintf("%d further rejects for this reason were counted but not recorded one by one", n)}
		out = append(out, e)
	}
	clear(s.lostAcc)
	clear(s.suppressed)
	clear(s.window)
	return out
}
