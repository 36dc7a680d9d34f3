package audit

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/url"
	"slices"
	"strings"
	"time"
)

// Filter selects events for an export: by the event's time, its action, its patient
// token and where it came from. The zero Filter matches every event. The same Filter
// runs in the daemon (an export through the admin endpoint) and in the CLI (an export of
// a stopped spool), so that both select the same events.
type Filter struct {
	// Since and Until bound the event's time (the source's time, as `query` uses it):
	// Since <= time < Until. Zero: unbounded.
	Since, Until time.Time
	// Actions are taxonomy codes; one matching is enough. "phi.*" matches every action
	// that starts with "phi.". Empty: any action.
	Actions []string
	// Patient is a patient token (pat_…), matched exactly against the event's patient.
	Patient string
	// Sources match the event's source exactly: its host, app, AE title, IP address or
	// kind (syslog, dicom, hl7, fhir, self); one matching is enough. Empty: any source.
	Sources []string
}

// IsZero reports whether f matches every event.
func (f *Filter) IsZero() bool {
	return f.Since.IsZero() && f.Until.IsZero() && len(f.Actions) == 0 && f.Patient == "" && len(f.Sources) == 0
}

// Match reports whether e passes every part of f.
func (f *Filter) Match(e *Event) bool {
	if !f.Since.IsZero() && e.Time.Before(f.Since) {
		return false
	}
	if !f.Until.IsZero() && !e.Time.Before(f.Until) {
		return false
	}
	if f.Patient != "" && e.Patient != f.Patient {
		return false
	}
	if len(f.Actions) > 0 && !slices.ContainsFunc(f.Actions, func(a string) bool { return actionMatches(a, e.Action) }) {
		return false
	}
	if len(f.Sources) > 0 {
		s := &e.Source
		if !slices.ContainsFunc(f.Sources, func(v string) bool {
			return v == s.Host || v == s.App || v == s.AETitle || v == s.IP || v == s.Kind
		}) {
			return false
		}
	}
	return true
}

// matchFields are the parts of an event a Filter reads; decoding only them keeps a
// filtered export near the speed of an unfiltered one.
type matchFields struct {
	Time    time.Time `json:"time"`
	Action  string    `json:"action"`
	Patient string    `json:"patient"`
	Source  Source    `json:"source"`
}

// MatchJSON is Match for an event's stored bytes. Bytes that are not an event match no
// filter but the zero one.
func (f *Filter) MatchJSON(b []byte) bool {
	if f.IsZero() {
		return true
	}
	if !f.mayMatch(b) {
		return false
	}
	var m matchFields
	if err := json.Unmarshal(b, &m); err != nil {
		return false
	}
	return f.Match(&Event{Time: m.Time, Action: m.Action, Patient: m.Patient, Source: m.Source})
}

// mayMatch is a quick test on the bytes before they are decoded: a patient, action or
// source that the filter needs must appear in them verbatim. It is only applied to
// values that JSON writes unescaped (letters, digits and ._:-), so it never rejects an
// event that matches.
func (f *Filter) mayMatch(b []byte) bool {
	if f.Patient != "" && verbatim(f.Patient) && !bytes.Contains(b, []byte(f.Patient)) {
		return false
	}
	anyIn := func(vals []string, trim bool) bool {
		for _, v := range vals {
			if trim {
				v = strings.TrimSuffix(v, "*")
			}
			if !verbatim(v) || bytes.Contains(b, []byte(v)) {
				return true
			}
		}
		return false
	}
	return (len(f.Actions) == 0 || anyIn(f.Actions, true)) && (len(f.Sources) == 0 || anyIn(f.Sources, false))
}

// verbatim reports whether JSON encodes s as it is.
func verbatim(s string) bool {
	for _, c := range []byte(s) {
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '.' || c == '_' || c == ':' || c == '-') {
			return false
		}
	}
	return true
}

func actionMatches(pattern, action string) bool {
	if p, ok := strings.CutSuffix(pattern, "*"); ok {
		return strings.HasPrefix(action, p)
	}
	return pattern == action
}

// Values encodes f as URL query parameters (since, until, action, patient, source),
// the form the admin endpoint's GET /v1/export takes.
func (f *Filter) Values() url.Values {
	v := url.Values{}
	if !f.Since.IsZero() {
		v.Set("since", f.Since.UTC().Format(time.RFC3339Nano))
	}
	if !f.Until.IsZero() {
		v.Set("until", f.Until.UTC().Format(time.RFC3339Nano))
	}
	for _, a := range f.Actions {
		v.Add("action", a)
	}
	if f.Patient != "" {
		v.Set("patient", f.Patient)
	}
	for _, s := range f.Sources {
		v.Add("source", s)
	}
	return v
}

// ParseFilter is the inverse of Values. Repeated and comma-separated action and source
// values are both accepted.
func ParseFilter(v url.Values) (Filter, error) {
	var f Filter
	for _, t := range []struct {
		key string
		dst *time.Time
	}{{"since", &f.Since}, {"until", &f.Until}} {
		s := v.Get(t.key)
		if s == "" {
			continue
		}
		tm, err := time.Parse(time.RFC3339Nano, s)
		if err != nil {
			return f, fmt.Errorf("%s %q is not an RFC 3339 time", t.key, s)
		}
		*t.dst = tm
	}
	f.Actions = SplitList(v["action"])
	f.Patient = v.Get("patient")
	f.Sources = SplitList(v["source"])
	if !f.Since.IsZero() && !f.Until.IsZero() && !f.Since.Before(f.Until) {
		return f, fmt.Errorf("since %s is not before until %s", v.Get("since"), v.Get("until"))
	}
	return f, nil
}

// SplitList flattens repeated, comma-separated values, dropping empty ones.
func SplitList(vals []string) []string {
	var out []string
	for _, v := range vals {
		for s := range strings.SplitSeq(v, ",") {
			if s = strings.TrimSpace(s); s != "" {
				out = append(out, s)
			}
		}
	}
	return out
}

// Detail describes f for the self-audit event of an export: filter.since,
// filter.until, filter.action, filter.patient and filter.source, the lists joined by
// commas. It is empty for the zero Filter.
func (f *Filter) Detail() map[string]string {
	d := map[string]string{}
	for k, vs := range f.Values() {
		d["filter."+k] = strings.Join(vs, ",")
	}
	return d
}
