package integration

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/edgeaudit/edgeaudit/internal/testntp"
	"github.com/edgeaudit/edgeaudit/ledger"
)

// ntpYAML is the daemon's ntp section for servers, checking every second.
func ntpYAML(servers ...string) string {
	q := make([]string, len(servers))
	for i, s := range servers {
		q[i] = strconv.Quote(s)
	}
	return fmt.Sprintf("ntp:\n  servers: [%s]\n  interval: 1s\n  timeout: 500ms\n", strings.Join(q, ", "))
}

// timeHealth is the clock part of /healthz.
type timeHealth struct {
	TimeSync *struct {
		State    string `json:"state"`
		Server   string `json:"server"`
		OffsetNS int64  `json:"offset_ns"`
		Error    string `json:"error"`
	} `json:"time_sync"`
	Warnings []string `json:"warnings"`
}

func (d *daemon) timeHealth(t testing.TB) timeHealth {
	t.Helper()
	b, err := d.get(t.Context(), "/healthz")
	if err != nil {
		var he *httpStatusError
		if !errors.As(err, &he) {
			t.Fatalf("/healthz: %v", err)
		}
		b = he.body
	}
	var h timeHealth
	if err := json.Unmarshal(b, &h); err != nil {
		t.Fatal(err)
	}
	return h
}

// headers returns the parsed headers of the daemon's sealed batches (stopped daemon).
func headers(t testing.TB, dataDir string) []ledger.Header {
	t.Helper()
	f, err := os.Open(exportWire(t, dataDir))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []ledger.Header
	for rd := ledger.NewReader(f); ; {
		b, err := rd.Next()
		if err != nil {
			break
		}
		h, err := ledger.ParseHeader(b.Header)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, h)
	}
	return out
}

// A real chronyd on 127.0.0.1: the batch headers carry the synced state with the
// server and a plausible offset, health says synced, and the chain records it.
func TestTimeSyncChronyd(t *testing.T) {
	srv := testntp.Start(t, testntp.Options{})
	d := startDaemon(t, daemonConfig{MaxAge: 200 * time.Millisecond, Extra: ntpYAML(srv.Addr)})
	eventually(t, waitTimeout, func() (bool, string) {
		h := d.timeHealth(t)
		return h.TimeSync != nil && h.TimeSync.State == "synced", fmt.Sprintf("%+v", h.TimeSync)
	})
	sendSyslog(t, d.tcp, "ntp", 0, 50, 0)
	eventually(t, waitTimeout, func() (bool, string) {
		h := d.mustHealth(t)
		return h.Committed >= 50 && h.OpenEvents == 0, fmt.Sprintf("committed %d open %d", h.Committed, h.OpenEvents)
	})
	d.stop(t)
	var synced int
	for _, h := range headers(t, d.dataDir) {
		if h.TimeSync.State != "synced" {
			continue
		}
		synced++
		if h.TimeSync.Server != srv.Addr || h.TimeSync.Stratum != 8 {
			t.Errorf("seq %d time_sync %+v, want server %s stratum 8", h.Seq, h.TimeSync, srv.Addr)
		}
		// Same machine, same clock: the offset is within a few milliseconds.
		if off := time.Duration(h.TimeSync.OffsetNS); off > 50*time.Millisecond || off < -50*time.Millisecond {
			t.Errorf("seq %d offset %s against a server on this machine", h.Seq, off)
		}
	}
	if synced == 0 {
		t.Fatal("no batch header says synced")
	}
	var sawSynced, flagged bool
	for _, e := range exportEvents(t, d.dataDir, true) {
		sawSynced = sawSynced || e.Action == "audit.time_synced"
		if strings.HasPrefix(e.Message, "ntp-") && e.ClockUnsynced {
			flagged = true
		}
	}
	if !sawSynced {
		t.Error("no audit.time_synced in the chain")
	}
	if flagged {
		t.Error("messages received while synced are flagged clock_unsynced")
	}
}

// A server 5 s ahead (chronyd under libfaketime) and one that does not answer: the
// state is "offset", health warns, the chain records audit.time_offset, the headers carry
// the measured offset, and events received meanwhile are flagged.
func TestTimeSyncOffsetAndUnreachable(t *testing.T) {
	srv := testntp.Start(t, testntp.Options{Offset: 5 * time.Second})
	d := startDaemon(t, daemonConfig{MaxAge: 200 * time.Millisecond, Extra: ntpYAML(srv.Addr, testntp.ClosedPort(t))})
	eventually(t, waitTimeout, func() (bool, string) {
		h := d.timeHealth(t)
		return h.TimeSync != nil && h.TimeSync.State == "offset", fmt.Sprintf("%+v", h.TimeSync)
	})
	h := d.timeHealth(t)
	var warned bool
	for _, w := range h.Warnings {
		warned = warned || strings.HasPrefix(w, "clock offset")
	}
	if !warned {
		t.Fatalf("health warnings %q, want the clock offset", h.Warnings)
	}
	sendSyslog(t, d.tcp, "skew", 0, 20, 0)
	eventually(t, waitTimeout, func() (bool, string) {
		h := d.mustHealth(t)
		return h.Committed >= 20 && h.OpenEvents == 0, fmt.Sprintf("committed %d open %d", h.Committed, h.OpenEvents)
	})
	d.stop(t)
	var offsetHeaders int
	for _, h := range headers(t, d.dataDir) {
		if h.TimeSync.State == "offset" {
			offsetHeaders++
			if off := time.Duration(h.TimeSync.OffsetNS); off < 4*time.Second || off > 6*time.Second {
				t.Errorf("seq %d offset %s, want about +5s", h.Seq, off)
			}
		}
	}
	if offsetHeaders == 0 {
		t.Fatal("no batch header says offset")
	}
	var recorded bool
	var flagged int
	for _, e := range exportEvents(t, d.dataDir, true) {
		recorded = recorded || e.Action == "audit.time_offset"
		if strings.HasPrefix(e.Message, "skew-") && e.ClockUnsynced {
			flagged++
		}
	}
	if !recorded {
		t.Error("no audit.time_offset in the chain")
	}
	if flagged != 20 {
		t.Errorf("%d of 20 messages received while the clock was off are flagged clock_unsynced", flagged)
	}
}
