package daemon

import (
	"fmt"
	"log/slog"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/edgeaudit/edgeaudit/audit"
	"github.com/edgeaudit/edgeaudit/timesync"
)

// Self-audit actions of the clock (timesync/README.md).
const (
	ActionTimeSynced   = "audit.time_synced"
	ActionTimeOffset   = "audit.time_offset"
	ActionTimeUnsynced = "audit.time_unsynced"
	ActionTimeStep     = "audit.time_step"
)

// NTPSection is the `ntp:` section: the checker's config, or off. A config file without
// `ntp:` checks nothing (a file opens only what it names); the zero-config daemon asks
// pool.ntp.org.
type NTPSection struct {
	timesync.Config `yaml:",inline"`
	// Off disables the time checks: batch headers then say time_sync "unknown".
	Off bool `yaml:"off"`
}

// ntpReporter turns the checker's changes into self-audit events. Report runs on the
// checker's goroutine and never blocks: the event goes through the self-audit queue.
type ntpReporter struct {
	self *selfAudit
	log  *slog.Logger
}

var _ timesync.Reporter = (*ntpReporter)(nil)

func (r *ntpReporter) Report(c timesync.Change) {
	var e audit.Event
	switch c.Kind {
	case timesync.KindSynced:
		e = selfEvent(c.At, ActionTimeSynced, audit.OutcomeSuccess,
			fmt.Sprintf("clock synced to %s, offset %s", c.State.Server, time.Duration(c.State.OffsetNS)))
	case timesync.KindOffset:
		e = selfEvent(c.At, ActionTimeOffset, audit.OutcomeMinorFailure, c.State.Error)
	case timesync.KindUnsynced:
		e = selfEvent(c.At, ActionTimeUnsynced, audit.OutcomeMinorFailure, c.State.Error)
	case timesync.KindStep:
		e = selfEvent(c.At, ActionTimeStep, audit.OutcomeMinorFailure, fmt.Sprintf("the local clock stepped by %s", c.Step))
	default:
		return
	}
	e.Detail = map[string]string{"from": c.From, "to": c.To, "server": c.State.Server,
		"offset_ns": fmt.Sprint(c.State.OffsetNS)}
	if c.Kind == timesync.KindStep {
		e.Detail["step_ns"] = fmt.Sprint(int64(c.Step))
	}
	r.self.enqueue(e, [3]string{"timesync", "ntp", string(c.Kind)})
}

// ntpHealth adds the clock check: synced, not checked yet (a notice), or a warning.
func ntpHealth(h *Health, c *timesync.Checker) {
	if c == nil {
		h.add("clock", CheckNotice, "time sync not checked (no ntp: section): batch headers say time_sync unknown")
		return
	}
	st := c.Stats()
	h.TimeSync = &TimeSyncHealth{State: st.State, Server: st.Server, OffsetNS: int64(st.Offset), Error: st.Error}
	if !st.LastGood.IsZero() {
		h.TimeSync.LastGood = st.LastGood.UTC().Format(time.RFC3339)
	}
	switch st.State {
	case timesync.StateSynced:
		h.add("clock", CheckOK, "clock synced: offset %s from %s", st.Offset, st.Server)
	case timesync.StateUnknown:
		h.add("clock", CheckNotice, "clock not checked yet")
	default:
		h.add("clock", CheckWarning, "clock %s: %s", st.State, st.Error)
	}
}

// TimeSyncHealth is the clock part of /healthz.
type TimeSyncHealth struct {
	State    string `json:"state"`
	Server   string `json:"server,omitempty"`
	OffsetNS int64  `json:"offset_ns"`
	LastGood string `json:"last_good,omitempty"`
	Error    string `json:"error,omitempty"`
}

type ntpMetrics struct{ c *timesync.Checker }

var (
	mNTPSynced = prometheus.NewDesc("edgeaudit_time_synced", "1 while the clock is synced within ntp.max_offset.", nil, nil)
	mNTPOffset = prometheus.NewDesc("edgeaudit_time_offset_seconds", "Offset of the best NTP answer (server minus local).", nil, nil)
	mNTPChecks = prometheus.NewDesc("edgeaudit_time_checks_total", "NTP checks finished.", nil, nil)
	mNTPSteps  = prometheus.NewDesc("edgeaudit_time_steps_total", "Steps of the local clock seen.", nil, nil)
	mNTPFails  = prometheus.NewDesc("edgeaudit_time_server_failures", "Consecutive failed queries, per server.", []string{"server"}, nil)
)

func (m *ntpMetrics) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{mNTPSynced, mNTPOffset, mNTPChecks, mNTPSteps, mNTPFails} {
		ch <- d
	}
}

func (m *ntpMetrics) Collect(ch chan<- prometheus.Metric) {
	st := m.c.Stats()
	synced := 0.0
	if st.Synced {
		synced = 1
	}
	ch <- prometheus.MustNewConstMetric(mNTPSynced, prometheus.GaugeValue, synced)
	ch <- prometheus.MustNewConstMetric(mNTPOffset, prometheus.GaugeValue, st.Offset.Seconds())
	ch <- prometheus.MustNewConstMetric(mNTPChecks, prometheus.CounterValue, float64(st.Checks))
	ch <- prometheus.MustNewConstMetric(mNTPSteps, prometheus.CounterValue, float64(st.Steps))
	for _, s := range st.Servers {
		ch <- prometheus.MustNewConstMetric(mNTPFails, prometheus.GaugeValue, float64(s.Failures), s.Server)
	}
}
