package daemon

import (
	"context"
	"encoding/json"
	"log/slog"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/edgeaudit/edgeaudit/collectors/fhir"
	"github.com/edgeaudit/edgeaudit/collectors/hl7"
	"github.com/edgeaudit/edgeaudit/collectors/syslog"
)

// A daemon with every listener off starts (an admin may be mid-change), but health says
// that nothing can reach it.
func TestNoListenersWarns(t *testing.T) {
	cfg := testConfig(t)
	cfg.Syslog, cfg.HL7, cfg.FHIR = syslog.Config{}, hl7.Config{}, fhir.Config{}
	d, err := New(cfg, "test", slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("run: %v", err)
		}
	}()
	select {
	case <-d.Ready():
	case err := <-done:
		t.Fatalf("run: %v", err)
	case <-time.After(10 * time.Second):
		t.Fatal("daemon not ready after 10s")
	}
	resp, err := http.Get("http://" + d.AdminAddr().String() + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var h Health
	if err := json.NewDecoder(resp.Body).Decode(&h); err != nil {
		t.Fatal(err)
	}
	var warned bool
	for _, w := range h.Warnings {
		warned = warned || strings.Contains(w, "every listener is off")
	}
	if !warned {
		t.Fatalf("health warnings %q, want the listeners named", h.Warnings)
	}
}
