package daemon

import (
	"crypto/fips140"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"runtime"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/edgeaudit/edgeaudit/internal/diskspace"
	"github.com/edgeaudit/edgeaudit/spool"
)

// Health check statuses. A notice is shown on the checklist but does not change the
// overall status: it is how this appliance is set up (a software key, no uplink), not
// something that went wrong.
const (
	CheckOK      = "ok"
	CheckNotice  = "notice"
	CheckWarning = "warning"
	CheckFailure = "failure"
)

// Thresholds of the health checks.
const (
	// certWarning: a certificate that expires within this is a warning.
	certWarning = 30 * 24 * time.Hour
	// diskNearlyFull: less than this share of the data folder's file system free, or
	// of max_size_bytes left, is a warning.
	diskNearlyFull = 0.10
)

// uplinkGrace is how long after start an uplink that is not connected is only a notice:
// two connection attempts.
func uplinkGrace(connectTimeout time.Duration) time.Duration {
	return max(2*connectTimeout, 2*time.Second)
}

// Check is one line of the health checklist. Name is stable (monitoring keys on it):
// listener.<yaml key>, keys, fips, spool, disk, chain, scrub, uplink, clock,
// cert.<yaml key>, input.
type Check struct {
	Name   string `json:"name"`
	Status string `json:"status"`
	Detail string `json:"detail"`
}

// Health is what /healthz answers.
type Health struct {
	Status     string   `json:"status"` // ok|warning|failure
	Version    string   `json:"version"`
	Site       string   `json:"site"`
	Device     string   `json:"device"`
	Chain      string   `json:"chain"`
	HeadSeq    uint64   `json:"head_seq"`
	AckedSeq   uint64   `json:"acked_seq"`
	OpenEvents int      `json:"open_events"`
	SpoolFull  bool     `json:"spool_full"`
	Signer     string   `json:"signer"`
	KeyID      string   `json:"key_id"`
	Committed  uint64   `json:"events_committed"`
	Lost       uint64   `json:"events_lost,omitempty"`
	FIPS       bool     `json:"fips140"`
	Checks     []Check  `json:"checks"`
	Warnings   []string `json:"warnings,omitempty"` // the details of notice and warning checks
	Failures   []string `json:"failures,omitempty"` // the details of failure checks
	// Spool is the spool's size and room.
	Spool SpoolHealth `json:"spool"`
	// Recent is the last hour's lost and rejected inputs.
	Recent Recent `json:"last_hour"`
	// Incidents are what the spool found at start and since (quarantine, rollback,
	// damaged batches); a failure incident stays until the daemon restarts, and the chain
	// holds the event for each.
	Incidents []spool.Incident `json:"incidents,omitempty"`
	// Uplink is absent when no uplink is configured.
	Uplink *UplinkHealth `json:"uplink,omitempty"`
	// TimeSync is absent when the clock is not checked (no ntp: section).
	TimeSync *TimeSyncHealth `json:"time_sync,omitempty"`
}

// SpoolHealth is the spool's size and what is left.
type SpoolHealth struct {
	UsedBytes  int64  `json:"used_bytes"`
	FileBytes  int64  `json:"file_bytes"`
	RoomBytes  int64  `json:"room_bytes"`
	DiskBytes  int64  `json:"disk_bytes,omitempty"`
	FreeBytes  int64  `json:"disk_free_bytes,omitempty"`
	LastScrub  string `json:"last_scrub,omitempty"`
	Scrubbed   uint64 `json:"last_scrub_batches,omitempty"`
	ScrubFound int    `json:"last_scrub_damaged,omitempty"`
}

// add appends a check; warnings and failures also go into their lists.
func (h *Health) add(name, status, format string, args ...any) {
	detail := fmt.Sprintf(format, args...)
	h.Checks = append(h.Checks, Check{Name: name, Status: status, Detail: detail})
	switch status {
	case CheckNotice, CheckWarning:
		h.Warnings = append(h.Warnings, detail)
	case CheckFailure:
		h.Failures = append(h.Failures, detail)
	}
}

// status is the worst of the checks.
func (h *Health) status() string {
	s := CheckOK
	for _, c := range h.Checks {
		switch c.Status {
		case CheckFailure:
			return CheckFailure
		case CheckWarning:
			s = CheckWarning
		}
	}
	return s
}

// healthDeps are the parts health reads that Run creates.
type healthDeps struct {
	sp       *spool.Spool
	signer   Signer
	fallback string
	self     *selfAudit
	certs    []certInfo
	started  time.Time
}

func (d *Daemon) serveHealth(w http.ResponseWriter, deps *healthDeps) {
	select {
	case <-d.ready:
	default:
		// Listeners are not bound yet: a health check must not pass before the
		// appliance can take messages.
		http.Error(w, `{"status":"starting"}`, http.StatusServiceUnavailable)
		return
	}
	h, err := d.health(deps, time.Now())
	if err != nil {
		http.Error(w, "spool unreadable", http.StatusServiceUnavailable)
		return
	}
	code := http.StatusOK
	if h.Status == CheckFailure {
		code = http.StatusServiceUnavailable
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	json.NewEncoder(w).Encode(h)
}

// health runs every check.
func (d *Daemon) health(deps *healthDeps, now time.Time) (*Health, error) {
	sp, signer := deps.sp, deps.signer
	pos, err := sp.Position()
	if err != nil {
		return nil, err
	}
	st := sp.Stats()
	h := &Health{Version: d.version, Site: d.cfg.Site, Device: d.cfg.Device, Chain: pos.Chain,
		HeadSeq: pos.HeadSeq, AckedSeq: pos.AckedSeq, OpenEvents: pos.OpenEvents, SpoolFull: st.Full,
		Signer: signer.Kind(), KeyID: signer.KeyID(), Committed: st.Committed, FIPS: fips140.Enabled()}

	d.listenerChecks(h)
	keyChecks(h, st, signer, deps.fallback)
	d.spoolChecks(h, st)
	interval := d.cfg.Spool.ScrubInterval
	if interval == 0 {
		interval = spool.DefaultScrubInterval
	}
	chainChecks(h, sp, st, interval, now)
	d.uplinkHealth(h, now.Sub(deps.started))
	d.mu.Lock()
	ntpc := d.ntp
	d.mu.Unlock()
	ntpHealth(h, ntpc)
	certChecks(h, deps.certs, now)
	inputChecks(h, deps.self, now)
	h.Status = h.status()
	return h, nil
}

// listenerChecks: each listener bound, and whether its connection table is full.
func (d *Daemon) listenerChecks(h *Health) {
	if !d.cfg.Syslog.Enabled() && !d.cfg.HL7.Enabled() && !d.cfg.FHIR.Enabled() {
		h.add("listener", CheckNotice, "every listener is off (syslog, hl7 and fhir sections empty): nothing can send audit messages to this appliance")
		return
	}
	d.mu.Lock()
	sl, hc, fc := d.syslog, d.hl7, d.fhir
	d.mu.Unlock()
	bound := func(key string, a net.Addr) {
		if a == nil {
			h.add("listener."+key, CheckFailure, "%s: not bound", key)
			return
		}
		h.add("listener."+key, CheckOK, "%s: bound to %s", key, a)
	}
	limit := func(key string, open int64, max int) {
		if max > 0 && open >= int64(max) {
			h.add("listener."+key+".connections", CheckWarning, "%s: all %d connections in use (max_connections): new senders are refused or evict idle ones", key, max)
		}
	}
	if sl != nil {
		c := d.cfg.Syslog
		if c.UDP != "" {
			bound("syslog.udp", sl.UDPAddr())
		}
		if c.TCP != "" {
			bound("syslog.tcp", sl.TCPAddr())
		}
		if c.TLS != "" {
			bound("syslog.tls", sl.TLSAddr())
		}
		if r := sl.RELP(); r != nil {
			if c.RELP != "" {
				bound("syslog.relp", r.Addr())
			}
			if c.RELPTLS != "" {
				bound("syslog.relp_tls", r.TLSAddr())
			}
		}
		limit("syslog", sl.Stats().ConnsOpen, c.MaxConnections)
	}
	if hc != nil {
		bound("hl7.mllp", hc.Addr())
		limit("hl7", hc.Stats().ConnsOpen, d.cfg.HL7.MaxConnections)
	}
	if fc != nil {
		bound("fhir.http", fc.Addr())
		limit("fhir", fc.Stats().Connections, d.cfg.FHIR.MaxConnections)
	}
}

func keyChecks(h *Health, st spool.Stats, signer Signer, fallback string) {
	switch {
	case st.SignFailing:
		h.add("keys", CheckFailure, "the signer fails: %d closed batches wait for their signature (events are still committed; the chain records the fault)", st.Unsigned)
	case st.Unsigned > unsignedWarning:
		h.add("keys", CheckWarning, "%d closed batches wait for their signature (a slow signer)", st.Unsigned)
	case signer.Kind() == "software":
		msg := "signing key is a software key, not sealed by a TPM"
		if fallback != "" {
			msg += ": " + fallback
		}
		h.add("keys", CheckNotice, "%s", msg)
	default:
		h.add("keys", CheckOK, "signing key %s in the TPM, loaded and signing", short(signer.KeyID()))
	}
	if fips140.Enabled() {
		h.add("fips", CheckOK, "FIPS 140-3 mode on (Go Cryptographic Module %s)", fips140.Version())
	} else {
		h.add("fips", CheckNotice, "FIPS 140-3 mode off: cryptography is not the validated module (run with GODEBUG=fips140=on, the packaged default)")
	}
}

func (d *Daemon) spoolChecks(h *Health, st spool.Stats) {
	h.Spool = SpoolHealth{UsedBytes: st.UsedBytes, FileBytes: st.FileBytes, RoomBytes: max(st.Room, 0)}
	switch {
	case st.Holding:
		h.add("spool", CheckFailure, "spool commits are failing (disk full or I/O errors): events are held in memory and senders get backpressure")
	case st.Full:
		h.add("spool", CheckWarning, "spool full: senders get backpressure")
	default:
		h.add("spool", CheckOK, "spool %s used, %s of room before it refuses events; %d events committed since start",
			bytesHuman(st.UsedBytes), bytesHuman(max(st.Room, 0)), st.Committed)
	}
	if st.Lost > 0 {
		h.Lost = st.Lost
		h.add("spool.lost", CheckFailure, "%d accepted events could not be committed and were lost (recorded)", st.Lost)
	}
	if st.HeadFileErrors > 0 {
		h.add("spool.head_file", CheckWarning, "the head file could not be written (rollback detection is degraded)")
	}
	u, err := diskspace.Of(d.cfg.DataDir)
	if err != nil {
		h.add("disk", CheckWarning, "free space of data_dir %s unknown: %v", d.cfg.DataDir, err)
		return
	}
	h.Spool.DiskBytes, h.Spool.FreeBytes = u.Total, u.Free
	max := d.cfg.Spool.MaxSizeBytes
	switch {
	case u.Total > 0 && float64(u.Free) < diskNearlyFull*float64(u.Total):
		h.add("disk", CheckWarning, "the file system of data_dir %s is nearly full: %s free of %s (the spool refuses events below spool.min_free_bytes %s)",
			d.cfg.DataDir, bytesHuman(u.Free), bytesHuman(u.Total), bytesHuman(d.cfg.Spool.MinFreeBytes))
	case max > 0 && float64(max-st.UsedBytes) < diskNearlyFull*float64(max):
		h.add("disk", CheckWarning, "the spool is nearly at spool.max_size_bytes: %s of %s used", bytesHuman(st.UsedBytes), bytesHuman(max))
	default:
		h.add("disk", CheckOK, "data_dir %s: %s free of %s", d.cfg.DataDir, bytesHuman(u.Free), bytesHuman(u.Total))
	}
}

// chainChecks: the tail, incidents found at start and by the scrub, and the last scrub.
func chainChecks(h *Health, sp *spool.Spool, st spool.Stats, interval time.Duration, now time.Time) {
	h.Incidents = sp.Incidents()
	bad := false
	for _, in := range h.Incidents {
		status := CheckWarning
		if in.Failure {
			status, bad = CheckFailure, true
		}
		h.add("chain", status, "%s: %s", in.Action, in.Reason)
	}
	if !bad {
		h.add("chain", CheckOK, "chain %s: head seq %d, acked seq %d, %d events not yet in a signed batch",
			short(h.Chain), h.HeadSeq, h.AckedSeq, h.OpenEvents)
	}
	p := st.LastScrub
	switch {
	case p == nil:
		h.add("scrub", CheckOK, "the first full check of the chain is running")
	case p.Damaged > 0:
		h.Spool.LastScrub, h.Spool.Scrubbed, h.Spool.ScrubFound = p.Ended.UTC().Format(time.RFC3339), p.Checked, p.Damaged
		h.add("scrub", CheckFailure, "the last full check of the chain (%s) found %d damaged of %d batches", p.Ended.UTC().Format(time.RFC3339), p.Damaged, p.Checked)
	default:
		h.Spool.LastScrub, h.Spool.Scrubbed = p.Ended.UTC().Format(time.RFC3339), p.Checked
		status := CheckOK
		if interval > 0 && now.Sub(p.Ended) > 3*interval {
			status = CheckWarning
		}
		h.add("scrub", status, "the last full check of the chain ended %s ago: %d batches verified",
			now.Sub(p.Ended).Round(time.Second), p.Checked)
	}
}

// inputChecks: losses are a warning (each is recorded); rejections are shown.
func inputChecks(h *Health, self *selfAudit, now time.Time) {
	if self == nil {
		return
	}
	r := self.recent.last(now)
	h.Recent = r
	switch {
	case r.Lost > 0:
		h.add("input", CheckWarning, "%d inputs lost in the last hour (%s); each loss is recorded in the chain",
			r.Lost, strings.Join(top(r.ByLost, 3), ", "))
	case r.Rejected > 0:
		h.add("input", CheckNotice, "%d inputs rejected in the last hour (%s); each is recorded in the chain",
			r.Rejected, strings.Join(top(r.ByReject, 3), ", "))
	default:
		h.add("input", CheckOK, "no input lost or rejected in the last hour")
	}
}

// certInfo is a certificate file of the config, read at start: what the daemon serves.
type certInfo struct {
	Key      string // YAML key
	Path     string
	Subject  string
	NotAfter time.Time
	Err      string
}

// loadCerts reads every certificate file of the config; for a bundle (a CA file) the
// earliest expiry counts.
func loadCerts(c *Config) []certInfo {
	var out []certInfo
	for _, f := range []struct{ key, path string }{
		{"syslog.tls_cert", c.Syslog.TLSCert}, {"syslog.tls_client_ca", c.Syslog.TLSClientCA},
		{"hl7.tls_cert", c.HL7.TLSCert}, {"hl7.tls_client_ca", c.HL7.TLSClientCA},
		{"fhir.tls_cert", c.FHIR.TLSCert}, {"fhir.tls_client_ca", c.FHIR.TLSClientCA},
		{"uplink.cert", c.Uplink.Cert}, {"uplink.ca", c.Uplink.CA},
	} {
		if f.path == "" || (strings.HasPrefix(f.key, "uplink.") && !c.uplinkEnabled()) {
			continue
		}
		ci := certInfo{Key: f.key, Path: f.path}
		cert, err := earliestCert(f.path)
		if err != nil {
			ci.Err = err.Error()
		} else {
			ci.Subject, ci.NotAfter = cert.Subject.String(), cert.NotAfter
		}
		out = append(out, ci)
	}
	return out
}

func earliestCert(path string) (*x509.Certificate, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var first *x509.Certificate
	for {
		var blk *pem.Block
		blk, b = pem.Decode(b)
		if blk == nil {
			break
		}
		if blk.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			return nil, err
		}
		if first == nil || c.NotAfter.Before(first.NotAfter) {
			first = c
		}
	}
	if first == nil {
		return nil, errors.New("no certificate in the file")
	}
	return first, nil
}

func certChecks(h *Health, certs []certInfo, now time.Time) {
	for _, c := range certs {
		name := "cert." + c.Key
		left := c.NotAfter.Sub(now)
		switch {
		case c.Err != "":
			h.add(name, CheckWarning, "%s %s: %s", c.Key, c.Path, c.Err)
		case left <= 0:
			h.add(name, CheckFailure, "%s %s (%s) expired %s ago: senders and brokers refuse it", c.Key, c.Path, c.Subject, (-left).Round(time.Hour))
		case left < certWarning:
			h.add(name, CheckWarning, "%s %s (%s) expires in %d days (%s): renew it", c.Key, c.Path, c.Subject, int(left.Hours()/24), c.NotAfter.UTC().Format(time.DateOnly))
		default:
			h.add(name, CheckOK, "%s expires in %d days (%s)", c.Key, int(left.Hours()/24), c.NotAfter.UTC().Format(time.DateOnly))
		}
	}
}

func short(s string) string {
	if len(s) > 16 {
		return s[:16]
	}
	return s
}

// bytesHuman is n in binary units, for a field tech.
func bytesHuman(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit && exp < 4; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTP"[exp])
}

// healthMetrics exports every health check, so that monitoring sees what a field tech
// sees: one scrape runs the checks once.
type healthMetrics struct {
	d    *Daemon
	deps *healthDeps
}

var (
	mHealth      = prometheus.NewDesc("edgeaudit_health_status", "Overall health: 0 ok, 1 warning, 2 failure (edgeaudit health's exit status).", nil, nil)
	mHealthCheck = prometheus.NewDesc("edgeaudit_health_check", "Each health check: 0 ok or notice, 1 warning, 2 failure.", []string{"check"}, nil)
	mListenerUp  = prometheus.NewDesc("edgeaudit_listener_up", "1 while the listener of this config key is bound.", []string{"listener"}, nil)
	mSpoolUsed   = prometheus.NewDesc("edgeaudit_spool_used_bytes", "Live size of the spool (its file less free pages).", nil, nil)
	mSpoolFile   = prometheus.NewDesc("edgeaudit_spool_file_bytes", "Size of the spool file.", nil, nil)
	mSpoolRoom   = prometheus.NewDesc("edgeaudit_spool_room_bytes", "What may still be committed before the spool refuses events.", nil, nil)
	mDiskFree    = prometheus.NewDesc("edgeaudit_disk_free_bytes", "Free space of the data folder's file system.", nil, nil)
	mDiskSize    = prometheus.NewDesc("edgeaudit_disk_size_bytes", "Size of the data folder's file system.", nil, nil)
	mScrubLast   = prometheus.NewDesc("edgeaudit_scrub_last_pass_timestamp_seconds", "When the last full check of the chain ended (absent before the first).", nil, nil)
	mScrubFound  = prometheus.NewDesc("edgeaudit_scrub_last_pass_damaged_batches", "Damaged batches the last full check of the chain found.", nil, nil)
	mCertExpiry  = prometheus.NewDesc("edgeaudit_cert_expiry_timestamp_seconds", "NotAfter of the earliest certificate in the file of this config key.", []string{"key"}, nil)
	mFIPS        = prometheus.NewDesc("edgeaudit_fips140_enabled", "1 when the Go Cryptographic Module runs in FIPS 140-3 mode.", nil, nil)
	mLostHour    = prometheus.NewDesc("edgeaudit_input_lost_last_hour", "Inputs lost in the last hour.", nil, nil)
	mRejectHour  = prometheus.NewDesc("edgeaudit_input_rejected_last_hour", "Inputs rejected in the last hour.", nil, nil)
	mBuild       = prometheus.NewDesc("edgeaudit_build_info", "Always 1; the labels say which build runs.", []string{"version", "goversion", "fips140"}, nil)
)

func (m *healthMetrics) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{mHealth, mHealthCheck, mListenerUp, mSpoolUsed, mSpoolFile, mSpoolRoom, mDiskFree, mDiskSize,
		mScrubLast, mScrubFound, mCertExpiry, mFIPS, mLostHour, mRejectHour, mBuild} {
		ch <- d
	}
}

func (m *healthMetrics) Collect(ch chan<- prometheus.Metric) {
	g := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	b2f := func(b bool) float64 {
		if b {
			return 1
		}
		return 0
	}
	g(mFIPS, b2f(fips140.Enabled()))
	g(mBuild, 1, m.d.version, runtime.Version(), strconv.FormatBool(fips140.Enabled()))
	for _, c := range m.deps.certs {
		if c.Err == "" {
			g(mCertExpiry, float64(c.NotAfter.Unix()), c.Key)
		}
	}
	h, err := m.d.health(m.deps, time.Now())
	if err != nil {
		return
	}
	level := map[string]float64{CheckOK: 0, CheckNotice: 0, CheckWarning: 1, CheckFailure: 2}
	g(mHealth, level[h.Status])
	worst := map[string]float64{}
	for _, c := range h.Checks {
		worst[c.Name] = max(worst[c.Name], level[c.Status])
		if l, ok := strings.CutPrefix(c.Name, "listener."); ok && !strings.HasSuffix(l, ".connections") {
			g(mListenerUp, b2f(c.Status == CheckOK), l)
		}
	}
	for name, v := range worst {
		g(mHealthCheck, v, name)
	}
	g(mSpoolUsed, float64(h.Spool.UsedBytes))
	g(mSpoolFile, float64(h.Spool.FileBytes))
	g(mSpoolRoom, float64(h.Spool.RoomBytes))
	if h.Spool.DiskBytes > 0 {
		g(mDiskFree, float64(h.Spool.FreeBytes))
		g(mDiskSize, float64(h.Spool.DiskBytes))
	}
	if h.Spool.LastScrub != "" {
		if t, err := time.Parse(time.RFC3339, h.Spool.LastScrub); err == nil {
			g(mScrubLast, float64(t.Unix()))
		}
		g(mScrubFound, float64(h.Spool.ScrubFound))
	}
	g(mLostHour, float64(h.Recent.Lost))
	g(mRejectHour, float64(h.Recent.Rejected))
}
