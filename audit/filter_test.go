package audit

import (
	"net/url"
	"testing"
	"time"
)

func TestFilterMatch(t *testing.T) {
	at := time.Date(2026, 12, 1, 8, 0, 0, 0, time.UTC)
	e := Event{Time: at, Action: ActionPHIView, Patient: "pat_a",
		Source: Source{Kind: KindDICOM, Host: "pacs1", App: "viewer", AETitle: "PACS_AE", IP: "10.0.0.5"}}
	tests := []struct {
		name string
		f    Filter
		want bool
	}{
		{"zero", Filter{}, true},
		{"since before", Filter{Since: at.Add(-time.Hour)}, true},
		{"since equal", Filter{Since: at}, true},
		{"since after", Filter{Since: at.Add(time.Second)}, false},
		{"until after", Filter{Until: at.Add(time.Second)}, true},
		{"until equal", Filter{Until: at}, false},
		{"action", Filter{Actions: []string{ActionPHIView}}, true},
		{"action other", Filter{Actions: []string{ActionLogin}}, false},
		{"action one of", Filter{Actions: []string{ActionLogin, ActionPHIView}}, true},
		{"action prefix", Filter{Actions: []string{"phi.*"}}, true},
		{"action prefix other", Filter{Actions: []string{"auth.*"}}, false},
		{"patient", Filter{Patient: "pat_a"}, true},
		{"patient other", Filter{Patient: "pat_b"}, false},
		{"source host", Filter{Sources: []string{"pacs1"}}, true},
		{"source app", Filter{Sources: []string{"viewer"}}, true},
		{"source ae title", Filter{Sources: []string{"PACS_AE"}}, true},
		{"source ip", Filter{Sources: []string{"10.0.0.5"}}, true},
		{"source kind", Filter{Sources: []string{"dicom"}}, true},
		{"source other", Filter{Sources: []string{"ris1"}}, false},
		{"all parts", Filter{Since: at, Until: at.Add(time.Minute), Actions: []string{"phi.*"}, Patient: "pat_a", Sources: []string{"pacs1"}}, true},
		{"one part fails", Filter{Since: at, Actions: []string{"phi.*"}, Patient: "pat_b"}, false},
	}
	raw := e.AppendJSON(nil)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.f.Match(&e); got != tt.want {
				t.Fatalf("Match=%v, want %v", got, tt.want)
			}
			if got := tt.f.MatchJSON(raw); got != tt.want {
				t.Fatalf("MatchJSON=%v, want %v", got, tt.want)
			}
			back, err := ParseFilter(tt.f.Values())
			if err != nil {
				t.Fatal(err)
			}
			if got := back.Match(&e); got != tt.want {
				t.Fatalf("after Values/ParseFilter: Match=%v, want %v", got, tt.want)
			}
		})
	}
	if (&Filter{Patient: "pat_a"}).MatchJSON([]byte("not json")) {
		t.Fatal("bytes that are not an event matched a filter")
	}
}

func TestParseFilter(t *testing.T) {
	tests := []struct {
		name    string
		q       url.Values
		actions int
		sources int
		wantErr bool
	}{
		{"empty", url.Values{}, 0, 0, false},
		{"repeated and commas", url.Values{"action": {"phi.view,auth.login", "order.create"}, "source": {"a, b"}}, 3, 2, false},
		{"bad since", url.Values{"since": {"24h"}}, 0, 0, true},
		{"since after until", url.Values{"since": {"2026-12-02T00:00:00Z"}, "until": {"2026-12-01T00:00:00Z"}}, 0, 0, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f, err := ParseFilter(tt.q)
			if got := err != nil; got != tt.wantErr {
				t.Fatalf("err=%v, want error %v", err, tt.wantErr)
			}
			if err != nil {
				return
			}
			if got, want := len(f.Actions), tt.actions; got != want {
				t.Fatalf("actions=%v, want %d", f.Actions, want)
			}
			if got, want := len(f.Sources), tt.sources; got != want {
				t.Fatalf("sources=%v, want %d", f.Sources, want)
			}
		})
	}
}

// The quick test on the bytes never rejects an event that matches, whatever the values
// hold (JSON escapes some characters).
func TestFilterMayMatchNeverRejectsAMatch(t *testing.T) {
	tests := []struct {
		name string
		e    Event
		f    Filter
	}{
		{"plain host", Event{Source: Source{Host: "pacs1"}}, Filter{Sources: []string{"pacs1"}}},
		{"host with a quote", Event{Source: Source{Host: `pa"cs`}}, Filter{Sources: []string{`pa"cs`}}},
		{"app with html", Event{Source: Source{App: "a<b>&c"}}, Filter{Sources: []string{"a<b>&c"}}},
		{"unicode app", Event{Source: Source{App: "Röntgen"}}, Filter{Sources: []string{"Röntgen"}}},
		{"action prefix", Event{Action: "phi.view"}, Filter{Actions: []string{"phi.*"}}},
		{"patient", Event{Patient: "pat_0123"}, Filter{Patient: "pat_0123"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if !tt.f.Match(&tt.e) {
				t.Fatal("test case does not match by Match")
			}
			if !tt.f.MatchJSON(tt.e.AppendJSON(nil)) {
				t.Fatalf("MatchJSON rejects %s", tt.e.AppendJSON(nil))
			}
		})
	}
}
