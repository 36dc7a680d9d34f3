package daemon

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/edgeaudit/edgeaudit/attest"
	"github.com/edgeaudit/edgeaudit/audit"
	"github.com/edgeaudit/edgeaudit/collectors"
	"github.com/edgeaudit/edgeaudit/ledger"
	"github.com/edgeaudit/edgeaudit/spool"
)

const testAdminToken = "secret-admin-token-0123456789abcdef"

// openExportSpool opens a spool that seals every 5 events (or 20ms), with a software
// key, and closes it at the end of the test.
func openExportSpool(t testing.TB) (*spool.Spool, func() *ledger.Verifier) {
	t.Helper()
	dir := t.TempDir()
	sig, _, err := attest.LoadOrCreateSoftware(filepath.Join(dir, "signing.key"))
	if err != nil {
		t.Fatal(err)
	}
	sp, err := spool.Open(filepath.Join(dir, "spool.db"), spool.Config{MaxEvents: 5, MaxAge: 20 * time.Millisecond, MinFreeBytes: 1},
		spool.Options{Site: "s1", Device: "d1", Signer: sig, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sp.Close() })
	return sp, func() *ledger.Verifier {
		v, err := ledger.NewVerifier(sig.Public())
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
}

// exportTestEvent is a syslog event from host with action and patient.
func exportTestEvent(host, action, patient string, when time.Time) audit.Event {
	return audit.Event{Time: when, Received: when, Source: audit.Source{Kind: audit.KindSyslog, Host: host, App: "viewer", Transport: "tcp"},
		Action: action, Outcome: audit.OutcomeSuccess, Patient: patient, RawSHA256: strings.Repeat("0", 64)}
}

// getExport runs GET /v1/export?q against srv with the admin token.
func getExport(t testing.TB, srv *httptest.Server, q url.Values) *http.Response {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), "GET", srv.URL+"/v1/export?"+q.Encode(), nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+testAdminToken)
	req.Header.Set(UserHeader, "auditor1")
	resp, err := srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { resp.Body.Close() })
	return resp
}

func exportServer(t testing.TB, sp *spool.Spool, sink collectors.Sink) *httptest.Server {
	t.Helper()
	mux := http.NewServeMux()
	mux.Handle("GET /v1/export", exportHandler(t.Context(), sp, sink, testAdminToken, slog.New(slog.DiscardHandler)))
	mux.Handle("POST /v1/verify/failed", verifyFailedHandler(sink, testAdminToken))
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	return srv
}

func TestExportRefusedWithoutAdminToken(t *testing.T) {
	sp, _ := openExportSpool(t)
	sink := &recordingSink{}
	h := exportHandler(t.Context(), sp, sink, testAdminToken, slog.New(slog.DiscardHandler))
	tests := []struct {
		name, auth, query string
		want              int
	}{
		{"no admin token", "", "", http.StatusUnauthorized},
		{"wrong admin token", "Bearer nope", "", http.StatusUnauthorized},
		{"open without events", "Bearer " + testAdminToken, "open=1", http.StatusBadRequest},
		{"bad since", "Bearer " + testAdminToken, "since=yesterday", http.StatusBadRequest},
		{"verify with filters", "Bearer " + testAdminToken, "purpose=verify&action=phi.view", http.StatusBadRequest},
		{"to before from", "Bearer " + testAdminToken, "from=5&to=2", http.StatusBadRequest},
		{"authorized", "Bearer " + testAdminToken, "", http.StatusOK},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req := httptest.NewRequest("GET", "/v1/export?"+tt.query, nil)
			if tt.auth != "" {
				req.Header.Set("Authorization", tt.auth)
			}
			rec := httptest.NewRecorder()
			h(rec, req)
			if got, want := rec.Code, tt.want; got != want {
				t.Fatalf("status=%d, want %d (%s)", got, want, rec.Body)
			}
			if got, want := len(sink.events) > 0, tt.want == http.StatusOK; got != want {
				t.Fatalf("recorded=%v, want %v: %v", got, want, sink.events)
			}
		})
	}
	fh := verifyFailedHandler(sink, testAdminToken)
	rec := httptest.NewRecorder()
	fh(rec, httptest.NewRequest("POST", "/v1/verify/failed", strings.NewReader(`{"seq":3,"reason":"root"}`)))
	if got, want := rec.Code, http.StatusUnauthorized; got != want {
		t.Fatalf("verify/failed without token: status=%d, want %d", got, want)
	}
}

// An export of a spool that keeps committing ends at the head it started from, a sealed
// seq, and verifies from seq 1; the export is then in the chain.
func TestExportWhileAppending(t *testing.T) {
	sp, newVerifier := openExportSpool(t)
	srv := exportServer(t, sp, sp)

	ctx := t.Context()
	stop := make(chan struct{})
	var appended atomic.Int64
	var wg sync.WaitGroup
	var appendErr error
	wg.Go(func() {
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			e := exportTestEvent("pacs1", audit.ActionPHIView, "", time.Now())
			if err := collectors.AppendSync(ctx, sp, &e); err != nil {
				appendErr = err
				return
			}
			appended.Add(1)
		}
	})
	defer func() {
		close(stop)
		wg.Wait()
	}()
	// Some sealed (and signed) batches first, so that each export has something to cut.
	// An acknowledged event is durable in the journal; its bbolt commit, and the seal,
	// follow moments later.
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		if pos, _ := sp.Position(); appended.Load() >= 50 && pos.HeadSeq > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("no signed batch 30 s into the appends")
		}
	}
	for round := range 3 {
		resp := getExport(t, srv, nil)
		if got, want := resp.StatusCode, http.StatusOK; got != want {
			t.Fatalf("status=%d, want %d", got, want)
		}
		head, _ := strconv.ParseUint(resp.Header.Get(HeaderHeadSeq), 10, 64)
		v := newVerifier()
		r := ledger.NewReader(resp.Body)
		var last uint64
		n := 0
		for {
			b, err := r.Next()
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				t.Fatalf("round %d: batch %d: %v", round, n+1, err)
			}
			h, err := v.Verify(b)
			if err != nil {
				t.Fatalf("round %d: %v", round, err)
			}
			last = h.Seq
			n++
		}
		if got, want := resp.Trailer.Get(TrailerStatus), "ok"; got != want {
			t.Fatalf("round %d: status trailer %q, want %q", round, got, want)
		}
		if head == 0 || last != head {
			t.Fatalf("round %d: export ends at seq %d, want the head it announced, %d", round, last, head)
		}
		if got, want := uint64(n), head; got != want {
			t.Fatalf("round %d: %d batches, want %d (seq 1..head)", round, got, want)
		}
		if resp.Trailer.Get(TrailerEventID) == "" {
			t.Fatalf("round %d: no export event id in the trailers", round)
		}
		// The appender kept committing meanwhile.
		if pos, _ := sp.Position(); pos.HeadSeq < head {
			t.Fatalf("round %d: head went back from %d to %d", round, head, pos.HeadSeq)
		}
	}
	if appendErr != nil {
		t.Fatal(appendErr)
	}
	// The exports are events of the chain.
	if err := sp.Seal(ctx); err != nil {
		t.Fatal(err)
	}
	var exports int
	sp.Batches(1, func(b *ledger.Batch) error {
		for _, raw := range b.Events {
			if bytes.Contains(raw, []byte(`"action":"audit.export"`)) && bytes.Contains(raw, []byte(`"user":"auditor1"`)) {
				exports++
			}
		}
		return nil
	})
	if got, want := exports, 3; got != want {
		t.Fatalf("%d audit.export events in the chain, want %d", got, want)
	}
}

func TestExportFilters(t *testing.T) {
	sp, newVerifier := openExportSpool(t)
	srv := exportServer(t, sp, &recordingSink{})
	ctx := t.Context()
	base := time.Date(2026, 11, 27, 8, 0, 0, 0, time.UTC)
	// 20 events, 5 a batch: batch 1 hosts pacs1 only, batch 2 holds pat_a, ...
	var evs []audit.Event
	for i := range 20 {
		host, action, patient := "pacs1", audit.ActionPHIView, ""
		switch {
		case i == 7:
			patient = "pat_a"
		case i == 12:
			host, action = "ris1", audit.ActionOrderCreate
		case i >= 15:
			action = audit.ActionLogin
		}
		evs = append(evs, exportTestEvent(host, action, patient, base.Add(time.Duration(i)*time.Minute)))
	}
	for i := range evs {
		if err := collectors.AppendSync(ctx, sp, &evs[i]); err != nil {
			t.Fatal(err)
		}
		if i%5 == 4 {
			if err := sp.Seal(ctx); err != nil {
				t.Fatal(err)
			}
		}
	}
	pos, _ := sp.Position()
	if pos.HeadSeq < 4 {
		t.Fatalf("head %d, want at least 4 batches", pos.HeadSeq)
	}
	tests := []struct {
		name       string
		q          url.Values
		wantEvents int // with events=1
	}{
		{"none", url.Values{}, 20},
		{"patient", url.Values{"patient": {"pat_a"}}, 1},
		{"action", url.Values{"action": {"order.create"}}, 1},
		{"action list", url.Values{"action": {"order.create,auth.login"}}, 6},
		{"action prefix", url.Values{"action": {"phi.*"}}, 14},
		{"source host", url.Values{"source": {"ris1"}}, 1},
		{"source kind", url.Values{"source": {"syslog"}}, 20},
		{"since", url.Values{"since": {base.Add(10 * time.Minute).Format(time.RFC3339)}}, 10},
		{"since until", url.Values{"since": {base.Add(5 * time.Minute).Format(time.RFC3339)}, "until": {base.Add(8 * time.Minute).Format(time.RFC3339)}}, 3},
		{"no match", url.Values{"patient": {"pat_none"}}, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			q := url.Values{}
			for k, v := range tt.q {
				q[k] = v
			}
			q.Set("events", "1")
			resp := getExport(t, srv, q)
			var lines int
			sc := bufio.NewScanner(resp.Body)
			for sc.Scan() {
				var e audit.Event
				if err := json.Unmarshal(sc.Bytes(), &e); err != nil {
					t.Fatal(err)
				}
				if e.Source.Kind != audit.KindSelf {
					lines++
				}
			}
			if got, want := lines, tt.wantEvents; got != want {
				t.Fatalf("events=%d, want %d", got, want)
			}
			if got, want := resp.Trailer.Get(TrailerStatus), "ok"; got != want {
				t.Fatalf("status %q, want %q", got, want)
			}

			// Batches: whole batches with at least one match, each verifying.
			resp = getExport(t, srv, tt.q)
			v := newVerifier()
			v.AllowGaps = true
			r := ledger.NewReader(resp.Body)
			matched := 0
			for {
				b, err := r.Next()
				if errors.Is(err, io.EOF) {
					break
				}
				if err != nil {
					t.Fatal(err)
				}
				if _, err := v.Verify(b); err != nil {
					t.Fatal(err)
				}
				f, _ := audit.ParseFilter(tt.q)
				if !matchAny(&f, b.Events) {
					t.Fatalf("batch without a match exported")
				}
				for _, e := range b.Events {
					if f.MatchJSON(e) && !bytes.Contains(e, []byte(`"kind":"self"`)) {
						matched++
					}
				}
			}
			if got, want := matched, tt.wantEvents; got != want {
				t.Fatalf("matching events in the exported batches=%d, want %d", got, want)
			}
		})
	}
}

func TestVerifyFailedIsRecorded(t *testing.T) {
	sink := &recordingSink{}
	h := verifyFailedHandler(sink, testAdminToken)
	req := httptest.NewRequest("POST", "/v1/verify/failed", strings.NewReader(`{"by":"auditor1","seq":7,"reason":"root","detail":"root abc, events hash to def","via":"daemon"}`))
	req.Header.Set("Authorization", "Bearer "+testAdminToken)
	rec := httptest.NewRecorder()
	h(rec, req)
	if got, want := rec.Code, http.StatusOK; got != want {
		t.Fatalf("status=%d, want %d (%s)", got, want, rec.Body)
	}
	if got, want := len(sink.events), 1; got != want {
		t.Fatalf("%d events recorded, want %d", got, want)
	}
	var e audit.Event
	if err := json.Unmarshal([]byte(sink.events[0]), &e); err != nil {
		t.Fatal(err)
	}
	if e.Action != ActionVerifyFailed || e.Detail["seq"] != "7" || e.Actor.User != "auditor1" || e.Outcome != audit.OutcomeSeriousFailure {
		t.Fatalf("event %+v, want %s of seq 7 by auditor1", e, ActionVerifyFailed)
	}
}

func TestExportRequestRoundTrip(t *testing.T) {
	since := time.Date(2026, 12, 1, 8, 0, 0, 0, time.UTC)
	tests := []ExportRequest{
		{},
		{From: 3, To: 9},
		{Events: true, Open: true, Filter: audit.Filter{Since: since, Actions: []string{"phi.view", "auth.*"}, Patient: "pat_x", Sources: []string{"pacs1"}}},
		{Purpose: PurposeVerify},
	}
	for i, want := range tests {
		t.Run(fmt.Sprint(i), func(t *testing.T) {
			got, err := ParseExportRequest(want.Values())
			if err != nil {
				t.Fatal(err)
			}
			if want.Purpose == "" {
				want.Purpose = PurposeExport
			}
			if fmt.Sprint(got) != fmt.Sprint(want) {
				t.Fatalf("got %+v, want %+v", got, want)
			}
		})
	}
}

func TestExportEventNamesTheExport(t *testing.T) {
	req := ExportRequest{Events: true, Filter: audit.Filter{Patient: "pat_a", Actions: []string{"phi.view"}}}
	res := ExportResult{Batches: 2, Events: 3, FirstSeq: 4, LastSeq: 5, Bytes: 900}
	tests := []struct {
		name        string
		err         error
		wantOutcome string
		wantResult  string
	}{
		{"complete", nil, audit.OutcomeSuccess, "complete"},
		{"cut", errors.New("client went away"), audit.OutcomeMinorFailure, "incomplete"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := ExportEvent("auditor1", "spool", req, res, tt.err, time.Now())
			if e.Action != ActionExport || e.Outcome != tt.wantOutcome || e.Detail["result"] != tt.wantResult {
				t.Fatalf("event %+v, want %s %s %s", e, ActionExport, tt.wantOutcome, tt.wantResult)
			}
			if e.Patient != "pat_a" || e.QueryScope != audit.QueryScopePatient || e.Count != 3 || e.Detail["filter.action"] != "phi.view" || e.Detail["via"] != "spool" {
				t.Fatalf("event %+v does not name the filters and counts", e)
			}
			if len(e.Codes) != 1 || e.Codes[0].Code != "110106" {
				t.Fatalf("codes %v, want DCM 110106", e.Codes)
			}
		})
	}
}

func TestPublishAdminAddr(t *testing.T) {
	dir := t.TempDir()
	addr := &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 9781}
	remove := publishAdminAddr(dir, addr, slog.New(slog.DiscardHandler))
	if got, want := ReadAdminAddr(dir), "127.0.0.1:9781"; got != want {
		t.Fatalf("admin addr %q, want %q", got, want)
	}
	fi, err := os.Stat(filepath.Join(dir, AdminAddrFile))
	if err != nil {
		t.Fatal(err)
	}
	if got, want := fi.Mode().Perm(), os.FileMode(0o600); got != want {
		t.Fatalf("mode %v, want %v", got, want)
	}
	remove()
	if got := ReadAdminAddr(dir); got != "" {
		t.Fatalf("admin addr %q after stop, want none", got)
	}
}

// An export running when the daemon stops ends there, incomplete, and says so in its
// status trailer; it is still recorded.
func TestExportEndsWhenTheDaemonStops(t *testing.T) {
	sp, _ := openExportSpool(t)
	ctx := t.Context()
	for i := range 12 {
		e := exportTestEvent("pacs1", audit.ActionPHIView, "", time.Now())
		if err := collectors.AppendSync(ctx, sp, &e); err != nil {
			t.Fatal(err)
		}
		if i%5 == 4 {
			if err := sp.Seal(ctx); err != nil {
				t.Fatal(err)
			}
		}
	}
	runCtx, stop := context.WithCancel(ctx)
	stop()
	sink := &recordingSink{}
	mux := http.NewServeMux()
	mux.Handle("GET /v1/export", exportHandler(runCtx, sp, sink, testAdminToken, slog.New(slog.DiscardHandler)))
	srv := httptest.NewServer(mux)
	defer srv.Close()
	resp := getExport(t, srv, nil)
	io.Copy(io.Discard, resp.Body)
	if got, want := resp.Trailer.Get(TrailerStatus), "error: "+errDaemonStopping.Error(); got != want {
		t.Fatalf("status %q, want %q", got, want)
	}
	if got, want := len(sink.events), 1; got != want || !strings.Contains(sink.events[0], `"result":"incomplete"`) {
		t.Fatalf("records %v, want one incomplete export", sink.events)
	}
}

// A client that reads slowly holds no read transaction while it waits: commits go on,
// and the export still ends at the head it announced.
func TestSlowExportDoesNotBlockCommits(t *testing.T) {
	sp, newVerifier := openExportSpool(t)
	ctx := t.Context()
	// 16 MiB of batches: more than the socket and the handler's buffers hold, so that the
	// handler waits on this client in the middle of the export.
	big := strings.Repeat("x", 16<<10)
	for range 1000 {
		e := exportTestEvent("pacs1", audit.ActionPHIView, "", time.Now())
		e.Message = big
		if err := sp.Append(ctx, &e, nil); err != nil {
			t.Fatal(err)
		}
	}
	if err := sp.Seal(ctx); err != nil {
		t.Fatal(err)
	}
	if pos, _ := sp.Position(); pos.HeadSeq < 200 {
		t.Fatalf("head %d after 1000 events, want 200 batches", pos.HeadSeq)
	}
	srv := exportServer(t, sp, sp)
	resp := getExport(t, srv, nil)
	head, _ := strconv.ParseUint(resp.Header.Get(HeaderHeadSeq), 10, 64)
	r := ledger.NewReader(resp.Body)
	v := newVerifier()
	b, err := r.Next()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := v.Verify(b); err != nil {
		t.Fatal(err)
	}
	// The export is stalled on this client; the spool keeps committing, and sealing.
	begin := time.Now()
	for i := range 100 {
		e := exportTestEvent("pacs2", audit.ActionPHIView, "", time.Now())
		if err := collectors.AppendSync(ctx, sp, &e); err != nil {
			t.Fatal(err)
		}
		if i%5 == 4 {
			if err := sp.Seal(ctx); err != nil {
				t.Fatal(err)
			}
		}
	}
	if took := time.Since(begin); took > 5*time.Second {
		t.Fatalf("100 commits and 20 seals took %v while an export waited on its client", took)
	}
	last := uint64(1)
	for {
		b, err := r.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		h, err := v.Verify(b)
		if err != nil {
			t.Fatal(err)
		}
		last = h.Seq
	}
	if pos, _ := sp.Position(); pos.HeadSeq < head+20 {
		t.Fatalf("head %d, want at least %d sealed during the export", pos.HeadSeq, head+20)
	}
	if got, want := last, head; got != want {
		t.Fatalf("export ended at seq %d, want its announced head %d", got, want)
	}
	if got, want := resp.Trailer.Get(TrailerStatus), "ok"; got != want {
		t.Fatalf("status %q, want %q", got, want)
	}
}
