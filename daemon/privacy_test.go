package daemon

import (
	"context"
	"encoding/json"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/edgeaudit/edgeaudit/audit"
)

// recordingSink commits instantly and remembers the encoded events.
type recordingSink struct {
	mu     sync.Mutex
	events []string
}

func (s *recordingSink) Append(_ context.Context, e *audit.Event, done func(error)) error {
	if e.ID == "" {
		e.ID = audit.NewID(time.Now())
	}
	s.mu.Lock()
	s.events = append(s.events, string(e.AppendJSON(nil)))
	s.mu.Unlock()
	if done != nil {
		done(nil)
	}
	return nil
}

func TestRevealIsAuditedBeforeTheValue(t *testing.T) {
	cfg := testConfig(t)
	cfg.Privacy.Vault = true
	p, err := openPrivacy(&cfg, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer p.close()
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan struct{})
	go func() { p.runVault(ctx); close(done) }()
	defer func() { cancel(); <-done }()

	const mrn = "MRN-0042^^^HOSP"
	token := p.tok.Token(audit.IDPatient, mrn)
	deadline := time.Now().Add(5 * time.Second)
	for {
		if v, err := p.vault.Get(token); err == nil && v == mrn {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("token not in the vault within 5s")
		}
		time.Sleep(10 * time.Millisecond)
	}

	sink := &recordingSink{}
	h := revealHandler(p, sink, "secret-admin-token-0123456789abcdef")
	tests := []struct {
		name, auth, token string
		want              int
		recorded          bool
	}{
		{"no admin token", "", token, http.StatusUnauthorized, false},
		{"wrong admin token", "Bearer nope", token, http.StatusUnauthorized, false},
		{"unknown token", "Bearer secret-admin-token-0123456789abcdef", "pat_00000000000000000000000000000000", http.StatusNotFound, true},
		{"reveal", "Bearer secret-admin-token-0123456789abcdef", token, http.StatusOK, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := len(sink.events)
			body := `{"token":"` + tt.token + `","by":"privacy.officer","reason":"patient request #7"}`
			req := httptest.NewRequest("POST", "/v1/token/reveal", strings.NewReader(body))
			if tt.auth != "" {
				req.Header.Set("Authorization", tt.auth)
			}
			rec := httptest.NewRecorder()
			h(rec, req)
			if rec.Code != tt.want {
				t.Fatalf("status=%d, want %d (%s)", rec.Code, tt.want, rec.Body)
			}
			if got := len(sink.events) > before; got != tt.recorded {
				t.Fatalf("recorded=%v, want %v", got, tt.recorded)
			}
			if !tt.recorded {
				return
			}
			ev := sink.events[len(sink.events)-1]
			if !strings.Contains(ev, `"action":"audit.token_reveal"`) || !strings.Contains(ev, tt.token) || !strings.Contains(ev, "privacy.officer") {
				t.Fatalf("reveal event %s lacks action, token or requester", ev)
			}
			if strings.Contains(ev, "MRN-0042") {
				t.Fatalf("reveal event holds the identifier: %s", ev)
			}
			if tt.want == http.StatusOK {
				var out map[string]string
				json.Unmarshal(rec.Body.Bytes(), &out)
				if out["value"] != mrn {
					t.Fatalf("value=%q, want %q", out["value"], mrn)
				}
			}
		})
	}
}
