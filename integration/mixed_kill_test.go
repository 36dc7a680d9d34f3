package integration

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

const (
	mixedKills      = 20
	mixedKillsShort = 5
	mixedMaxEach    = 20000 // messages per sender, at most
)

// TestKill9MixedLoad kills the real daemon with SIGKILL at random points while four
// senders run at once: syslog TCP (octet counting, no acknowledgement), RELP through a
// real rsyslogd with omrelp, MLLP (one connection waiting for each ACK) and FHIR (one
// client waiting for each 201). After every kill the chain verifies; at the end every
// MLLP message that got AA, every FHIR event that got 201 and every message fed to
// rsyslogd is in `export -events -open`, and each restart's audit.start says that the
// run before it did not stop cleanly.
func TestKill9MixedLoad(t *testing.T) {
	rsyslogd := peer(t, "rsyslogd", "")
	requireOmrelp(t)
	kills := mixedKills
	if testing.Short() {
		kills = mixedKillsShort
	}
	rng := crashRNG(t, 0x6d697864)

	dir := t.TempDir()
	data, cfg := filepath.Join(dir, "data"), filepath.Join(dir, "edgeaudit.yaml")
	ports := distinctAddrs(t, 5)
	tcp, relp, mllp, fhirAddr, admin := ports[0], ports[1], ports[2], ports[3], ports[4]
	q := strconv.Quote
	conf := fmt.Sprintf("site: %s\ndevice: %s\ndata_dir: %s\nsyslog:\n  tcp: %s\n  relp: %s\nhl7:\n  mllp: %s\nfhir:\n  http: %s\n"+
		"batch:\n  max_events: 50\n  max_age: 100ms\nadmin: %s\nlog_level: info\n",
		testSite, testDevice, q(data), q(tcp), q(relp), q(mllp), q(fhirAddr), q(admin))
	if err := os.WriteFile(cfg, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	rs := startRsyslogRELP(t, rsyslogd, relp, "")
	feed := dial(t, "tcp", rs.input)

	ctx, cancel := context.WithCancel(t.Context())
	var wg sync.WaitGroup
	var mu sync.Mutex
	var ackedHL7, acked201 []string
	fedRELP := 0
	wg.Go(func() { // RELP, through rsyslogd: everything fed must arrive
		for n := 0; n < mixedMaxEach && ctx.Err() == nil; n += 10 {
			var b []byte
			for i := range 10 {
				b = append(b, relpLine(fmt.Sprintf("mixed-relp-%d", n+i))...)
			}
			_ = feed.SetWriteDeadline(time.Now().Add(30 * time.Second))
			if _, err := feed.Write(b); err != nil {
				t.Errorf("feed rsyslogd: %v", err)
				return
			}
			mu.Lock()
			fedRELP = n + 10
			mu.Unlock()
			time.Sleep(5 * time.Millisecond)
		}
	})
	wg.Go(func() { // MLLP: a message counts once it got AA
		var c *mllpClient
		for n := 0; n < mixedMaxEach && ctx.Err() == nil; n++ {
			if c == nil {
				var err error
				if c, err = dialMLLP(mllp); err != nil {
					time.Sleep(50 * time.Millisecond)
					n--
					continue
				}
			}
			ctrl := fmt.Sprintf("MIX%06d", n)
			ack, err := c.exchange(hl7Block(ctrl), 10*time.Second)
			if err != nil {
				c.Close()
				c = nil
				continue
			}
			if code, _, _, _ := ackMSA(ack); code == "AA" {
				mu.Lock()
				ackedHL7 = append(ackedHL7, ctrl)
				mu.Unlock()
			}
		}
		if c != nil {
			c.Close()
		}
	})
	wg.Go(func() { // FHIR: an event counts once it got 201
		client := &http.Client{Timeout: 10 * time.Second}
		for n := 0; n < mixedMaxEach && ctx.Err() == nil; n++ {
			marker := fmt.Sprintf("mixed-fhir-%06d", n)
			if postMixed(ctx, client, "http://"+fhirAddr+"/AuditEvent", marker) {
				mu.Lock()
				acked201 = append(acked201, marker)
				mu.Unlock()
			} else {
				time.Sleep(20 * time.Millisecond)
			}
		}
	})
	wg.Go(func() { // syslog TCP: no acknowledgement, so only "the chain verifies"
		for n := 0; n < mixedMaxEach && ctx.Err() == nil; n += 50 {
			if err := writeOctet(tcp, markers(fmt.Sprintf("mixed-tcp-%d-", n), 50)); err != nil {
				time.Sleep(50 * time.Millisecond)
			}
		}
	})

	for k := range kills {
		d := startRELPDaemon(t, dir, cfg, data, "relp")
		time.Sleep(300*time.Millisecond + time.Duration(rng.Int64N(int64(900*time.Millisecond))))
		d.kill(t)
		mustVerifyData(t, data)
		mu.Lock()
		t.Logf("kill %d: %d AA, %d 201, %d fed to rsyslogd", k+1, len(ackedHL7), len(acked201), fedRELP)
		mu.Unlock()
	}
	cancel()
	wg.Wait()
	if _, err := feed.Write([]byte(relpLine("mixed-relp-end"))); err != nil {
		t.Fatalf("feed rsyslogd the end marker: %v", err)
	}
	d := startRELPDaemon(t, dir, cfg, data, "relp")
	evs := relpUntil(t, &d, dir, "mixed-relp-end", "relp")
	mustVerifyData(t, data)

	lines := exportClinical(t, data, true)
	var all strings.Builder
	unclean := 0
	for _, e := range lines {
		all.WriteString(e.line)
		all.WriteByte('\n')
		if e.Action == "audit.start" && e.Detail["previous_stop"] == "unclean" {
			unclean++
		}
	}
	text := all.String()
	missing := func(what string, markers []string, quote bool) {
		n := 0
		for _, m := range markers {
			if quote {
				m = `"` + m + `"`
			}
			if !strings.Contains(text, m) {
				if n++; n <= 5 {
					t.Errorf("%s %s was acknowledged but is not in the chain", what, m)
				}
			}
		}
		if n > 0 {
			t.Errorf("%d of %d acknowledged %s messages missing", n, len(markers), what)
		}
	}
	missing("MLLP", ackedHL7, true)
	missing("FHIR", acked201, true)
	count, _ := relpCount(evs, "mixed-relp-", "relp")
	lost := 0
	for i := range fedRELP {
		if count[fmt.Sprintf("mixed-relp-%d", i)] == 0 {
			lost++
		}
	}
	if lost > 0 {
		t.Errorf("%d of %d messages fed to rsyslogd (RELP) are not in the chain", lost, fedRELP)
	}
	if unclean < kills {
		t.Errorf("%d audit.start events note an unclean previous stop, want at least %d (one per kill)", unclean, kills)
	}
	if len(ackedHL7) == 0 || len(acked201) == 0 || fedRELP == 0 {
		t.Errorf("a sender made no progress: %d AA, %d 201, %d RELP", len(ackedHL7), len(acked201), fedRELP)
	}
	t.Logf("%d kills: %d MLLP AA, %d FHIR 201, %d RELP fed, all in the chain; %d starts after an unclean stop",
		kills, len(ackedHL7), len(acked201), fedRELP, unclean)
	rs.terminate(t, stopTimeout)
}

// distinctAddrs returns n free loopback TCP addresses, all different: freeAddr releases
// the port it found, so two calls in a row may return the same one.
func distinctAddrs(t *testing.T, n int) []string {
	t.Helper()
	seen := map[string]bool{}
	var out []string
	for tries := 0; len(out) < n; tries++ {
		if tries > 100*n {
			t.Fatalf("no %d distinct free ports", n)
		}
		if a := freeAddr(t, "tcp"); !seen[a] {
			seen[a] = true
			out = append(out, a)
		}
	}
	return out
}

// postMixed posts one AuditEvent whose requestor is marker and reports whether it got 201.
func postMixed(ctx context.Context, c *http.Client, url, marker string) bool {
	body := `{"resourceType":"AuditEvent","type":{"system":"http://dicom.nema.org/resources/ontology/DCM","code":"110110"},` +
		`"recorded":"2026-12-01T12:00:00Z","outcome":"0","agent":[{"requestor":true,"who":{"display":"` + marker + `"}}],` +
		`"source":{"observer":{"display":"pacs"}}}`
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, strings.NewReader(body))
	if err != nil {
		return false
	}
	req.Header.Set("Content-Type", "application/fhir+json")
	resp, err := c.Do(req)
	if err != nil {
		return false
	}
	resp.Body.Close()
	return resp.StatusCode == http.StatusCreated
}
