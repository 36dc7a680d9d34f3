package integration

import (
	"bytes"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// fhirLoginJSON is one small, valid AuditEvent: the ordinary sender's request.
const fhirLoginJSON = `{"resourceType":"AuditEvent","type":{"system":"http://dicom.nema.org/resources/ontology/DCM","code":"110114"},"subtype":[{"system":"http://dicom.nema.org/resources/ontology/DCM","code":"110122"}],"action":"E","recorded":"2026-03-15T09:00:00Z","outcome":"0","agent":[{"who":{"identifier":{"value":"u1"}},"requestor":true}],"source":{"observer":{"display":"app"}}}`

// Shape of the stalled-body flood (issue 6 item 5).
const (
	floodConns     = 300
	floodSources   = 10        // source addresses 127.0.0.2 … 127.0.0.11
	floodAnnounced = 4_000_000 // Content-Length of each request, under the 4 MiB default limit
	floodSent      = 3_900_000 // bytes each connection sends before it stalls
	// floodMaxRSS is the bound on the daemon's peak resident set during the flood.
	floodMaxRSS = 256 << 20
)

// TestFHIRStalledBodiesFlood opens 300 connections from 10 loopback addresses that each
// announce a 4 MB body, send most of it and stall, as a hostile or broken sender would.
// The daemon's peak RSS (VmHWM) must stay under 256 MiB: bodies are read under
// fhir.max_inflight_bytes, and a request past it gets 503 + Retry-After at once. While
// the flood stalls, an ordinary sender from 127.0.0.1 gets 201 or a clean 503 with
// Retry-After; once the flood's connections close, the budget is released and it gets
// 201. Every 201's event must be in the export.
//
// With connection limits above the flood, every flood request reaches the budget. With
// the default limits (256 connections) the table fills up too: the ordinary sender may
// be refused at connect until a stalled connection has been idle long enough to be
// evicted for it, and the refusals and evictions are counted. With bearer tokens
// required, the flood (without a token) is answered 401 before any body byte is read,
// and only the ordinary sender has the token.
func TestFHIRStalledBodiesFlood(t *testing.T) {
	if testing.Short() {
		t.Skip("sends 1.2 GB over loopback per case")
	}
	for _, tt := range []struct {
		name     string
		keys     []string
		tableCap int  // connections the table holds; 0: more than the flood
		tokens   bool // fhir.bearer_tokens_file is set; the flood has no token
	}{
		{"limits above the flood", []string{"max_connections: 1024", "max_connections_per_ip: 512"}, 0, false},
		{"default limits", nil, 256, false},
		{"unauthenticated flood", []string{"max_connections: 1024", "max_connections_per_ip: 512"}, 0, true},
	} {
		t.Run(tt.name, func(t *testing.T) { fhirStalledFlood(t, tt.keys, tt.tableCap, tt.tokens) })
	}
}

func fhirStalledFlood(t *testing.T, keys []string, tableCap int, tokens bool) {
	token := ""
	if tokens {
		token = "it-feeder-token"
		path := filepath.Join(t.TempDir(), "tokens")
		if err := os.WriteFile(path, []byte(token+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		keys = append(keys, "bearer_tokens_file: "+strconv.Quote(path))
	}
	d := startFHIRDaemon(t, keys...)
	pid := d.cmd.Process.Pid
	base := "http://" + d.fhir + "/"
	baseline := procStatusKiB(t, pid, "VmHWM")

	body := bytes.Repeat([]byte("x"), floodSent)
	copy(body, `{"resourceType":"AuditEvent","id":"`)
	head := fmt.Sprintf("POST /AuditEvent HTTP/1.1\r\nHost: %s\r\nContent-Type: application/fhir+json\r\nContent-Length: %d\r\n\r\n", d.fhir, floodAnnounced)

	var (
		mu       sync.Mutex
		conns    []net.Conn
		wg       sync.WaitGroup
		sentAll  atomic.Int64 // connections that wrote their whole part and now stall
		cutShort atomic.Int64 // connections the daemon closed while they were writing
		dialErrs atomic.Int64
	)
	for i := range floodConns {
		wg.Go(func() {
			src := fmt.Sprintf("127.0.0.%d", 2+i%floodSources)
			c, err := stallDialer(src).DialContext(t.Context(), "tcp", d.fhir)
			if err != nil {
				dialErrs.Add(1)
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			// A bound on the whole write, not an expectation: it keeps a stuck test short.
			_ = c.SetWriteDeadline(time.Now().Add(2 * time.Minute))
			if _, err := c.Write([]byte(head)); err != nil {
				cutShort.Add(1)
				return
			}
			for off := 0; off < len(body); off += 64 << 10 {
				if _, err := c.Write(body[off:min(off+64<<10, len(body))]); err != nil {
					cutShort.Add(1)
					return
				}
			}
			sentAll.Add(1)
		})
	}

	wg.Wait()

	// An ordinary sender while the flood stalls: 201, or a clean 503 with Retry-After.
	// With a full table it may be refused at connect (no answer) until it can evict.
	var created []string
	during := map[string]int{}
	answered := 0
	for attempt := 0; answered < 5; attempt++ {
		if attempt == 200 {
			t.Fatalf("ordinary sender answered %d times in %d attempts during the flood: %v", answered, attempt, during)
		}
		r, err := postAuditEvent(t.Context(), base, token, fhirLoginJSON)
		if err != nil {
			if tableCap == 0 {
				t.Fatalf("ordinary POST during the flood: %v", err)
			}
			during["refused at connect"]++
			time.Sleep(100 * time.Millisecond)
			continue
		}
		answered++
		during[fmt.Sprint(r.status)]++
		switch {
		case r.status == 201:
			created = append(created, strings.TrimPrefix(r.location, "/AuditEvent/"))
		case r.status == 503 && r.retryAfter != "" && strings.Contains(r.body, "OperationOutcome"):
		default:
			t.Errorf("ordinary POST during the flood: status %d Retry-After %q: %s, want 201 or 503 with Retry-After and an OperationOutcome",
				r.status, r.retryAfter, r.body)
		}
	}
	peak := procStatusKiB(t, pid, "VmHWM") << 10
	// The refused requests were answered 503 before their bodies were read: the writes
	// above mostly "succeed" only because loopback socket buffers hold 4 MB.
	m := d.metrics(t)
	rejected := func(reason string) float64 {
		return m.sum("edgeaudit_input_rejected_total", "collector", "fhir", "reason", reason)
	}
	overloaded, unauthorized := rejected("overloaded"), rejected("unauthorized")
	connRefusals := rejected("too_many_connections") + rejected("too_many_connections_per_ip") + rejected("evicted_idle")
	t.Logf("flood: %d connections, %d wrote %d of %d bytes (into socket buffers) and stalled, %d cut short by the daemon, %d dial errors; "+
		"%.0f refused at once as overloaded, %.0f as unauthorized, %.0f connections refused or evicted; ordinary sender while the flood stalled %v; "+
		"daemon VmHWM %.1f MiB (baseline %.1f MiB)",
		floodConns, sentAll.Load(), floodSent, floodAnnounced, cutShort.Load(), dialErrs.Load(), overloaded, unauthorized, connRefusals, during,
		float64(peak)/(1<<20), float64(baseline)/1024)
	if dialErrs.Load() != 0 {
		t.Errorf("%d flood connections could not connect", dialErrs.Load())
	}
	// 64 MiB holds at most 16 bodies of 4 MB: every other flood request that reached a
	// handler must have been refused; with a smaller table, the rest were refused or
	// evicted as connections. Without a token, every one is unauthorized and none
	// reaches the budget.
	if tokens {
		if unauthorized != floodConns || overloaded != 0 {
			t.Errorf("%.0f flood requests unauthorized and %.0f overloaded, want %d and 0", unauthorized, overloaded, floodConns)
		}
	} else if min := float64(floodConns - 64<<20/floodAnnounced); overloaded+connRefusals < min {
		t.Errorf("%.0f flood requests refused as overloaded and %.0f connections refused or evicted, want at least %.0f together", overloaded, connRefusals, min)
	}
	if tableCap > 0 && connRefusals < float64(floodConns-tableCap) {
		t.Errorf("%.0f connections refused or evicted, want at least %d (%d connections, table of %d)", connRefusals, floodConns-tableCap, floodConns, tableCap)
	}
	if raceEnabled {
		t.Logf("-race build: the RSS bound of %d MiB is not checked (the race detector multiplies memory)", floodMaxRSS>>20)
	} else if peak >= floodMaxRSS {
		t.Errorf("daemon peak RSS %.1f MiB during the flood, want < %d MiB", float64(peak)/(1<<20), floodMaxRSS>>20)
	}
	if d.done() {
		t.Fatalf("daemon exited during the flood: %v\n%s", d.waitErr, d.log())
	}

	// The flood goes away: the budget it held comes back.
	mu.Lock()
	for _, c := range conns {
		c.Close()
	}
	mu.Unlock()
	var after fhirPost
	eventually(t, 30*time.Second, func() (bool, string) {
		r, err := postAuditEvent(t.Context(), base, token, fhirLoginJSON)
		if err != nil {
			return false, err.Error()
		}
		after = r
		return r.status == 201, fmt.Sprintf("status %d: %s", r.status, r.body)
	})
	created = append(created, strings.TrimPrefix(after.location, "/AuditEvent/"))

	d.stop(t)
	ids := map[string]bool{}
	for _, e := range eventsOfKind(exportClinical(t, d.dataDir, false), "fhir") {
		ids[e.ID] = true
	}
	for _, id := range created {
		if !ids[id] {
			t.Errorf("event %s was answered 201 but is not in the export", id)
		}
	}
}

// TestFHIRTreeBombFlood sends 32 complete 4 MB bodies at once that each decode into a
// tree of two million nodes (a JSON array of one-digit numbers: about 70 MB of Go heap
// each, were it decoded whole). The decoded nodes are charged to fhir.max_inflight_bytes,
// so each is refused (413 too_complex, or 503 while others hold the budget) and the
// daemon's peak RSS stays under 256 MiB. An ordinary sender gets 201 afterwards.
func TestFHIRTreeBombFlood(t *testing.T) {
	if testing.Short() {
		t.Skip("sends 128 MB of JSON to be decoded")
	}
	const bombs = 32
	d := startFHIRDaemon(t)
	pid := d.cmd.Process.Pid
	base := "http://" + d.fhir + "/"
	prefix := `{"resourceType":"AuditEvent","a":[`
	n := (floodAnnounced - len(prefix) - 2) / 2
	bomb := prefix + strings.Repeat("1,", n-1) + "1]}"

	var wg sync.WaitGroup
	statuses := make([]int, bombs)
	errs := make([]error, bombs)
	for i := range bombs {
		wg.Go(func() {
			r, err := postAuditEvent(t.Context(), base, "", bomb)
			statuses[i], errs[i] = r.status, err
		})
	}
	wg.Wait()
	peak := procStatusKiB(t, pid, "VmHWM") << 10
	got := map[int]int{}
	for i := range bombs {
		if errs[i] != nil {
			t.Errorf("bomb %d: %v", i, errs[i])
			continue
		}
		got[statuses[i]]++
		if statuses[i] != 413 && statuses[i] != 503 {
			t.Errorf("bomb %d: status %d, want 413 or 503", i, statuses[i])
		}
	}
	t.Logf("%d bombs of %d bytes (%d numbers each): statuses %v; daemon VmHWM %.1f MiB", bombs, len(bomb), n, got, float64(peak)/(1<<20))
	if raceEnabled {
		t.Logf("-race build: the RSS bound of %d MiB is not checked", floodMaxRSS>>20)
	} else if peak >= floodMaxRSS {
		t.Errorf("daemon peak RSS %.1f MiB, want < %d MiB", float64(peak)/(1<<20), floodMaxRSS>>20)
	}
	r, err := postAuditEvent(t.Context(), base, "", fhirLoginJSON)
	if err != nil || r.status != 201 {
		t.Fatalf("ordinary POST after the bombs: %d %v", r.status, err)
	}
	d.stop(t)
}
