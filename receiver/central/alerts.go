package central

import (
	"context"
	"log/slog"
	"os"
	"strconv"
	"sync"
	"time"

	"github.com/edgeaudit/edgeaudit/audit"
	"github.com/edgeaudit/edgeaudit/internal/ratelog"
	"github.com/edgeaudit/edgeaudit/receiver"
)

// Trail is central's own audit trail (receiver.AuditTrail fits): Record seals events
// into central's chain in the store. It is called from one goroutine at a time here.
type Trail interface {
	// Record stores events durably as a batch of central's own chain before it
	// returns nil; on error nothing is recorded.
	Record(ctx context.Context, events ...audit.Event) error
}

// Actions central records about itself beyond the taxonomy's.
const (
	// ActionAlertSummary counts the alerts of one reason not written one by one
	// in a minute (Detail "suppressed").
	ActionAlertSummary = "security.alert_summary"
	// appName is the Source.App of central's own events.
	appName = "edgeaudit-receive"
	// alertWindow is the period of alerts_per_minute.
	alertWindow = time.Minute
	// alertQueue bounds the alerts waiting for the trail; beyond it they are counted
	// into the summary, so a slow trail never blocks Handle.
	alertQueue = 256
	// maxDetail bounds a refusal's detail text in an alert.
	maxDetail = 240
)

// Alert reasons beyond the receiver's refusal reasons.
const (
	ReasonKeyConflict = "key_conflict" // a device published a key other than its enrolled one
	ReasonBadKey      = "bad_key"      // a key topic message that is not one P-256 PEM key
)

// alerter turns refusals and key conflicts into security.alert events in central's
// trail: at most perMinute per reason per minute, the rest counted and written as one
// security.alert_summary per reason. It never blocks its callers.
type alerter struct {
	perMinute int
	host      string
	now       func() time.Time
	ch        chan audit.Event

	mu         sync.Mutex
	window     time.Time
	counts     map[string]int
	suppressed map[string]uint64
}

func newAlerter(perMinute int) *alerter {
	host, _ := os.Hostname()
	return &alerter{perMinute: perMinute, host: host, now: time.Now, ch: make(chan audit.Event, alertQueue),
		counts: map[string]int{}, suppressed: map[string]uint64{}}
}

// event is one of central's own events.
func (a *alerter) event(action, outcome, reason string, detail map[string]string) audit.Event {
	now := a.now().UTC()
	return audit.Event{ID: audit.NewID(now), Time: now, Received: now,
		Source: audit.Source{Kind: audit.KindSelf, Host: a.host, App: appName, Transport: "internal"},
		Action: action, Outcome: outcome, Reason: reason, Detail: detail}
}

// refused is the receiver's OnRefuse hook.
func (a *alerter) refused(ref *receiver.RefusedError) {
	d := ref.Detail
	if len(d) > maxDetail {
		d = d[:maxDetail]
	}
	det := map[string]string{"site": ref.Site, "device": ref.Device, "seq": strconv.FormatUint(ref.Seq, 10),
		"reason": ref.Reason(), "detail": d}
	if ref.Quarantined != "" {
		det["quarantined"] = ref.Quarantined
	}
	if ref.Hint != "" {
		det["hint"] = ref.Hint
	}
	a.alert(ref.Reason(), a.event(audit.ActionSecurityAlert, audit.OutcomeMinorFailure, "batch refused: "+ref.Reason(), det))
}

// alert queues ev unless its reason used up this minute's allowance or the queue is
// full; then it is counted for the summary.
func (a *alerter) alert(reason string, ev audit.Event) {
	a.mu.Lock()
	sums := a.rollLocked()
	ok := a.counts[reason] < a.perMinute
	if ok {
		a.counts[reason]++
	} else {
		a.suppressed[reason]++
	}
	a.mu.Unlock()
	for _, s := range sums {
		a.enqueue("", s)
	}
	if ok {
		a.enqueue(reason, ev)
	}
}

func (a *alerter) enqueue(reason string, ev audit.Event) {
	select {
	case a.ch <- ev:
	default:
		if reason != "" {
			a.mu.Lock()
			a.suppressed[reason]++
			a.mu.Unlock()
		}
	}
}

// rollLocked starts a new window when the current one is over and returns the
// summaries of the one that ended.
func (a *alerter) rollLocked() []audit.Event {
	now := a.now()
	if now.Sub(a.window) < alertWindow {
		return nil
	}
	sums := a.summariesLocked()
	a.window = now
	clear(a.counts)
	return sums
}

func (a *alerter) summariesLocked() []audit.Event {
	var out []audit.Event
	for reason, n := range a.suppressed {
		out = append(out, a.event(ActionAlertSummary, audit.OutcomeMinorFailure, "alerts suppressed: "+reason,
			map[string]string{"reason": reason, "suppressed": strconv.FormatUint(n, 10), "window": alertWindow.String()}))
	}
	clear(a.suppressed)
	return out
}

// record queues ev whatever the allowance (an enrolment, not an alert); it waits for
// room in the queue until ctx is done.
func (a *alerter) record(ctx context.Context, ev audit.Event) {
	select {
	case a.ch <- ev:
	case <-ctx.Done():
	}
}

// run writes queued events to trail until ctx is done, and the summaries of each
// minute that had suppressed alerts. At the end it writes what is queued and the last
// summaries, within stopTimeout. It is the only caller of trail.Record while it runs.
func (a *alerter) run(ctx context.Context, stopTimeout time.Duration, trail Trail, log *slog.Logger) {
	var limit ratelog.Limiter
	record := func(ctx context.Context, evs ...audit.Event) {
		if len(evs) == 0 {
			return
		}
		if err := trail.Record(ctx, evs...); err != nil {
			if ok, n := limit.Allow("record", time.Now()); ok {
				log.Error("record alert in central's trail", attrError, err, "events", len(evs), "suppressed", n)
			}
		}
	}
	tick := time.NewTicker(alertWindow)
	defer tick.Stop()
	for {
		select {
		case ev := <-a.ch:
			// Group what is queued into one batch of central's chain.
			evs := []audit.Event{ev}
			for more := true; more && len(evs) < alertQueue; {
				select {
				case ev := <-a.ch:
					evs = append(evs, ev)
				default:
					more = false
				}
			}
			record(ctx, evs...)
		case <-tick.C:
			a.mu.Lock()
			sums := a.rollLocked()
			a.mu.Unlock()
			record(ctx, sums...)
		case <-ctx.Done():
			var evs []audit.Event
			for more := true; more; {
				select {
				case ev := <-a.ch:
					evs = append(evs, ev)
				default:
					more = false
				}
			}
			a.mu.Lock()
			evs = append(evs, a.summariesLocked()...)
			a.mu.Unlock()
			stopCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), stopTimeout)
			defer cancel()
			record(stopCtx, evs...)
			return
		}
	}
}
