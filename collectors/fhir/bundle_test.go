package fhir

import (
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/edgeaudit/edgeaudit/audit"
)

// bundleOf builds a Bundle of typ whose entries are the given JSON resources, each
// POSTed to AuditEvent unless method overrides it ("" = POST).
func bundleOf(typ string, entries ...[2]string) string {
	var b strings.Builder
	b.WriteString(`{"resourceType":"Bundle","type":"` + typ + `","entry":[`)
	for i, e := range entries {
		if i > 0 {
			b.WriteByte(',')
		}
		m := e[1]
		if m == "" {
			m = "POST"
		}
		b.WriteString(`{"resource":` + e[0] + `,"request":{"method":"` + m + `","url":"AuditEvent"}}`)
	}
	b.WriteString(`]}`)
	return b.String()
}

type bundleResponse struct {
	ResourceType string `json:"resourceType"`
	Type         string `json:"type"`
	Entry        []struct {
		Response struct {
			Status   string          `json:"status"`
			Location string          `json:"location"`
			Outcome  json.RawMessage `json:"outcome"`
		} `json:"response"`
	} `json:"entry"`
	Issue []struct {
		Code string `json:"code"`
	} `json:"issue"`
}

// postBundleTo posts body to the running collector's base and decodes the answer.
func postBundleTo(t testing.TB, c *Collector, body string) (*http.Response, bundleResponse) {
	t.Helper()
	resp, err := http.DefaultClient.Do(newPost(t, "http://"+c.Addr().String()+"/", "application/fhir+json", body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	var br bundleResponse
	if err := json.Unmarshal(b, &br); err != nil {
		t.Fatalf("answer does not decode: %v: %s", err, b)
	}
	return resp, br
}

func statuses(br bundleResponse) string {
	var s []string
	for _, e := range br.Entry {
		s = append(s, e.Response.Status)
	}
	return strings.Join(s, ",")
}

// TestTransactionAllOrNothing: a transaction is committed in one commit or not at all.
// When the commit fails, no event of it is stored and the answer is one OperationOutcome
// with 503 (never a transaction-response, never part of it stored); a sink that cannot
// commit several events at once gets 501 and nothing appended.
func TestTransactionAllOrNothing(t *testing.T) {
	tx := bundleOf("transaction", [2]string{loginJSON}, [2]string{loginJSON}, [2]string{loginJSON})

	t.Run("commit fails", func(t *testing.T) {
		// refuseAfter makes a sink that takes events one by one fail half way, as a
		// spool filling up does; commitErr makes the all-at-once commit fail.
		sink := &fakeSink{refuseAfter: 1, commitErr: errors.New("disk full")}
		c := newTestCollector(t, Config{HTTP: "127.0.0.1:0"}, sink, &fakeReporter{})
		startCollector(t, c)
		resp, br := postBundleTo(t, c, tx)
		mustStatus(t, resp, http.StatusServiceUnavailable)
		if resp.Header.Get("Retry-After") == "" || br.ResourceType != "OperationOutcome" || len(br.Issue) != 1 || br.Issue[0].Code != "transient" {
			t.Fatalf("Retry-After=%q answer=%+v, want one transient OperationOutcome", resp.Header.Get("Retry-After"), br)
		}
		if n := len(sink.raw()); n != 0 {
			t.Fatalf("%d events of a failed transaction stored, want 0", n)
		}
		if got := c.Stats().Events; got != 0 {
			t.Fatalf("Stats.Events=%d, want 0", got)
		}
	})

	t.Run("committed at once", func(t *testing.T) {
		sink := &fakeSink{}
		c := newTestCollector(t, Config{HTTP: "127.0.0.1:0"}, sink, &fakeReporter{})
		startCollector(t, c)
		resp, br := postBundleTo(t, c, tx)
		mustStatus(t, resp, http.StatusOK)
		if br.Type != "transaction-response" || statuses(br) != "201 Created,201 Created,201 Created" {
			t.Fatalf("answer=%+v", br)
		}
		if n := len(sink.raw()); n != 3 {
			t.Fatalf("%d events stored, want 3", n)
		}
		if got := sink.logLines(); len(got) != 1 || strings.Count(got[0], " ") != 3 {
			t.Fatalf("commits=%q, want one commit of all three events", got)
		}
		for i, e := range br.Entry {
			if !strings.HasPrefix(e.Response.Location, "AuditEvent/") {
				t.Fatalf("entry %d: location %q", i, e.Response.Location)
			}
		}
	})

	t.Run("sink cannot", func(t *testing.T) {
		sink := &fakeSink{}
		c := newTestCollector(t, Config{HTTP: "127.0.0.1:0"}, appendOnly{sink}, &fakeReporter{})
		startCollector(t, c)
		resp, br := postBundleTo(t, c, tx)
		mustStatus(t, resp, http.StatusNotImplemented)
		if br.ResourceType != "OperationOutcome" || len(br.Issue) != 1 || br.Issue[0].Code != "not-supported" {
			t.Fatalf("answer=%+v", br)
		}
		if n := len(sink.raw()); n != 0 {
			t.Fatalf("%d events stored, want 0", n)
		}
	})
}

// TestBatchPerEntry: a batch is answered 200 with a batch-response whose every entry has
// its own status, in order: 201 for each stored one, 400/405 for invalid entries, 503 for
// the ones the sink refused (with Retry-After on the answer), even when none was stored.
func TestBatchPerEntry(t *testing.T) {
	other := `{"resourceType":"Patient","id":"p1"}`
	refused := strings.Replace(loginJSON, `"u1"`, `"refuse-me"`, 1)
	refuse := func(e *audit.Event) bool { return e.Actor.User == "refuse-me" }
	for _, tt := range []struct {
		name    string
		sink    *fakeSink
		entries [][2]string
		want    string
		stored  int
	}{
		{"mixed", &fakeSink{refuse: refuse},
			[][2]string{{loginJSON}, {other}, {loginJSON}, {loginJSON, "PUT"}, {refused}},
			"201 Created,400 Bad Request,201 Created,405 Method Not Allowed,503 Service Unavailable", 2},
		{"none stored", &fakeSink{refuseAll: true},
			[][2]string{{loginJSON}, {other}, {loginJSON}},
			"503 Service Unavailable,400 Bad Request,503 Service Unavailable", 0},
	} {
		t.Run(tt.name, func(t *testing.T) {
			c := newTestCollector(t, Config{HTTP: "127.0.0.1:0"}, tt.sink, &fakeReporter{})
			startCollector(t, c)
			resp, br := postBundleTo(t, c, bundleOf("batch", tt.entries...))
			mustStatus(t, resp, http.StatusOK)
			if br.Type != "batch-response" || statuses(br) != tt.want {
				t.Fatalf("type=%q statuses=%q, want batch-response %q", br.Type, statuses(br), tt.want)
			}
			for i, e := range br.Entry {
				created := e.Response.Status == "201 Created"
				if created != strings.HasPrefix(e.Response.Location, "AuditEvent/") || created == (len(e.Response.Outcome) > 0) {
					t.Fatalf("entry %d: status %q location %q outcome %s", i, e.Response.Status, e.Response.Location, e.Response.Outcome)
				}
			}
			if got := resp.Header.Get("Retry-After") != ""; got != strings.Contains(tt.want, "503") {
				t.Fatalf("Retry-After=%q with statuses %s", resp.Header.Get("Retry-After"), tt.want)
			}
			if n := len(tt.sink.raw()); n != tt.stored {
				t.Fatalf("%d events stored, want %d", n, tt.stored)
			}
		})
	}
}
