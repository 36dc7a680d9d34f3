package daemon

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/edgeaudit/edgeaudit/attest"
	"github.com/edgeaudit/edgeaudit/audit"
	"github.com/edgeaudit/edgeaudit/internal/atomicfile"
	"github.com/edgeaudit/edgeaudit/ledger"
	"github.com/edgeaudit/edgeaudit/spool"
	"github.com/edgeaudit/edgeaudit/uplink"
)

// Self-audit actions of the uplink: what central's receipts revealed about this chain.
const (
	ActionUplinkOversize    = "audit.uplink_oversize"
	ActionChainBehind       = "audit.chain_behind_central"
	ActionChainFork         = "audit.chain_fork"
	ActionReceiptsImported  = "audit.receipts_imported"
	receiptsDir             = "receipts"
	centralKeyRecheck       = 10 * time.Second
	defaultUnsentWarningAge = 15 * time.Minute
	maxIncidents            = 32 // kept for health
)

// uplinkEnabled says whether the config starts an uplink.
func (c *Config) uplinkEnabled() bool { return c.Uplink.Broker != "" }

// UplinkConfig returns the uplink package's config, with site and device from the top
// level.
func (c *Config) UplinkConfig() uplink.Config {
	u := c.Uplink.Config
	u.Site, u.Device = c.Site, c.Device
	return u
}

// CentralKeyPath is where central's receipt key is read from: uplink.central_key, or
// keys/central.pub in the data folder, where an enrolment may drop it later.
func (c *Config) CentralKeyPath() string {
	if c.Uplink.CentralKey != "" {
		return c.Uplink.CentralKey
	}
	return filepath.Join(c.DataDir, "keys", "central.pub")
}

// ReceiptsDir holds central's newest receipt for each chain, beside the spool.
func (c *Config) ReceiptsDir() string { return filepath.Join(c.DataDir, receiptsDir) }

// UplinkSection is the `uplink:` section: the uplink package's config plus what only
// the daemon uses.
type UplinkSection struct {
	uplink.Config `yaml:",inline"`
	// UnsentWarningAge: health warns when the oldest batch central has not receipted is
	// older than this (default 15m).
	UnsentWarningAge time.Duration `yaml:"unsent_warning_age"`
	// DrainTimeout is how long a stop waits for central to receipt what is sealed
	// (default 2s; 0 in the file means the default, a negative value skips the wait).
	// It comes out of shutdown_timeout.
	DrainTimeout time.Duration `yaml:"drain_timeout"`
}

func (u *UplinkSection) setDefaults() {
	if u.UnsentWarningAge == 0 {
		u.UnsentWarningAge = defaultUnsentWarningAge
	}
	if u.DrainTimeout == 0 {
		u.DrainTimeout = 2 * time.Second
	}
}

// ReadCentralKey reads central's receipt key (central.pub): exactly one ECDSA P-256
// public key in PEM.
func ReadCentralKey(path string) (*ecdsa.PublicKey, error) {
	keys, err := attest.ReadPublicPEM(path)
	if err != nil {
		return nil, fmt.Errorf("read central key: %w", err)
	}
	if len(keys) != 1 || keys[0].Curve != elliptic.P256() {
		return nil, fmt.Errorf("read central key %s: want one ECDSA P-256 key, found %d keys", path, len(keys))
	}
	return keys[0], nil
}

// lateSource lets the uplink be built (which loads and checks its TLS material) before
// the spool is opened, like lateSink for the collectors.
type lateSource struct{ sp atomic.Pointer[spool.Spool] }

var _ uplink.Source = (*lateSource)(nil)

func (l *lateSource) get() (*spool.Spool, error) {
	sp := l.sp.Load()
	if sp == nil {
		return nil, errNoSpool
	}
	return sp, nil
}

func (l *lateSource) Position() (uplink.Position, error) {
	sp, err := l.get()
	if err != nil {
		return uplink.Position{}, err
	}
	p, err := sp.Position()
	return uplink.Position{HeadSeq: p.HeadSeq, HeadHash: p.HeadHash, AckedSeq: p.AckedSeq}, err
}

func (l *lateSource) Batches(from uint64, fn func(*ledger.Batch) error) error {
	sp, err := l.get()
	if err != nil {
		return err
	}
	return sp.Batches(from, fn)
}

func (l *lateSource) Ack(seq uint64) error {
	sp, err := l.get()
	if err != nil {
		return err
	}
	return sp.Ack(seq)
}

// newReceiptBook returns the book of cfg's appliance; load gives it the spool's chain.
func newReceiptBook(cfg *Config) *receiptBook {
	return &receiptBook{site: cfg.Site, device: cfg.Device, dir: cfg.ReceiptsDir(), keyPath: cfg.CentralKeyPath(),
		required: cfg.Uplink.CentralKey != ""}
}

// receiptBook verifies central's receipts for this appliance's current chain and keeps
// the newest one per chain in receipts/<chain>.receipt (uplink.ReceiptKeeper).
type receiptBook struct {
	site, device string
	dir          string
	keyPath      string
	required     bool // the key was configured: it was read at start and never changes

	mu sync.Mutex
	// chain is the open spool's chain id, set by load; it does not change while the
	// spool is open (a quarantine starts a new chain only at Open).
	chain     string
	pub       *ecdsa.PublicKey
	lastRead  time.Time
	keyErr    error
	newest    ledger.Receipt
	newestSet bool
}

var (
	_ uplink.ReceiptVerifier = (*receiptBook)(nil)
	_ uplink.ReceiptKeeper   = (*receiptBook)(nil)
)

// errNoCentralKey: receipts cannot be checked until central's key is installed.
var errNoCentralKey = errors.New("central's receipt key is not installed")

// key returns central's key. A configured key was read at start; the default path is
// re-read at most every centralKeyRecheck while absent, so a key installed later takes
// effect without a restart.
func (r *receiptBook) key() (*ecdsa.PublicKey, error) {
	if r.pub != nil || r.required {
		return r.pub, r.keyErr
	}
	if time.Since(r.lastRead) < centralKeyRecheck && !r.lastRead.IsZero() {
		return nil, r.keyErr
	}
	r.lastRead = time.Now()
	k, err := ReadCentralKey(r.keyPath)
	if errors.Is(err, os.ErrNotExist) {
		r.keyErr = fmt.Errorf("%w (%s)", errNoCentralKey, r.keyPath)
		return nil, r.keyErr
	}
	r.pub, r.keyErr = k, err
	return k, err
}

// Verify implements uplink.ReceiptVerifier: central's signature, this appliance's names,
// and the spool's current chain (a retained receipt of a chain quarantined earlier is
// not this chain's and must not look like a rollback).
func (r *receiptBook) Verify(b []byte) (uint64, string, error) {
	r.mu.Lock()
	pub, err := r.key()
	chain := r.chain
	r.mu.Unlock()
	if err != nil {
		return 0, "", err
	}
	rc, err := r.check(b, pub, chain)
	if err != nil {
		return 0, "", err
	}
	return rc.Seq, rc.HeaderHash, nil
}

func (r *receiptBook) check(b []byte, pub *ecdsa.PublicKey, chain string) (ledger.Receipt, error) {
	rc, err := ledger.VerifyReceipt(b, pub)
	if err != nil {
		return rc, err
	}
	if rc.Site != r.site || rc.Device != r.device {
		return rc, fmt.Errorf("receipt names %s/%s, this appliance is %s/%s", rc.Site, rc.Device, r.site, r.device)
	}
	if rc.Chain != chain {
		return rc, fmt.Errorf("receipt is for chain %s, the spool's chain is %s", rc.Chain, chain)
	}
	return rc, nil
}

// Keep implements uplink.ReceiptKeeper: the receipt is written (temp, fsync, rename)
// before the uplink acks, so an ack never exists without the receipt that proves it.
func (r *receiptBook) Keep(seq uint64, b []byte) error {
	rc, err := ledger.ParseReceipt(b)
	if err != nil {
		return fmt.Errorf("keep receipt: %w", err)
	}
	if rc.Seq != seq {
		return fmt.Errorf("keep receipt: it names seq %d, not %d", rc.Seq, seq)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.newestSet && r.newest.Chain == rc.Chain && r.newest.Seq >= rc.Seq {
		return nil // an older or equal receipt adds nothing
	}
	if err := os.MkdirAll(r.dir, 0o700); err != nil {
		return fmt.Errorf("keep receipt: %w", err)
	}
	if err := atomicfile.WriteFile(filepath.Join(r.dir, rc.Chain+".receipt"), b, 0o600); err != nil {
		return fmt.Errorf("keep receipt: %w", err)
	}
	r.newest, r.newestSet = rc, true
	return nil
}

// load takes the open spool's chain and reads its kept receipt, so that health shows it
// after a restart and Keep does not replace it with an older one.
func (r *receiptBook) load(chain string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.chain = chain
	b, err := os.ReadFile(filepath.Join(r.dir, chain+".receipt"))
	if err != nil {
		return
	}
	if rc, err := ledger.ParseReceipt(b); err == nil {
		r.newest, r.newestSet = rc, true
	}
}

// Newest returns the newest kept receipt of the current chain.
func (r *receiptBook) Newest() (ledger.Receipt, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.newest, r.newestSet && r.newest.Chain == r.chain
}

// keyStatus says whether central's key is usable (for health).
func (r *receiptBook) keyStatus() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	_, err := r.key()
	return err
}

// uplinkReporter turns the uplink's incidents into self-audit events and keeps them for
// health. Report never blocks: the event goes through the self-audit queue.
type uplinkReporter struct {
	self *selfAudit
	log  *slog.Logger

	mu        sync.Mutex
	incidents []uplink.Incident
}

var _ uplink.Reporter = (*uplinkReporter)(nil)

func (u *uplinkReporter) Report(in uplink.Incident) {
	u.mu.Lock()
	if len(u.incidents) < maxIncidents { // each (kind, seq) comes once; the chain has them all
		u.incidents = append(u.incidents, in)
	}
	u.mu.Unlock()
	e := incidentEvent(in, u.self.now())
	u.log.Error("uplink incident", "kind", in.Kind, "seq", in.Seq, "local_head", in.LocalHead)
	u.self.enqueue(e, [3]string{"uplink", "mqtt", in.Kind})
}

// incidentEvent is the self-audit event of an uplink incident.
func incidentEvent(in uplink.Incident, now time.Time) audit.Event {
	var e audit.Event
	switch in.Kind {
	case uplink.IncidentOversize:
		e = selfEvent(now, ActionUplinkOversize, audit.OutcomeSeriousFailure,
			fmt.Sprintf("batch %d is %d bytes, over uplink.max_message_bytes %d: it and every batch after it wait", in.Seq, in.Size, in.Limit))
		e.Detail = map[string]string{"seq": fmt.Sprint(in.Seq), "size": fmt.Sprint(in.Size), "limit": fmt.Sprint(in.Limit)}
	case uplink.IncidentRollback:
		e = selfEvent(now, ActionChainBehind, audit.OutcomeSeriousFailure,
			fmt.Sprintf("central holds seq %d, beyond the local head %d: this spool was restored, cloned or rolled back", in.Seq, in.LocalHead))
		e.Detail = map[string]string{"central_seq": fmt.Sprint(in.Seq), "local_head": fmt.Sprint(in.LocalHead), "central_hash": in.CentralHash}
	case uplink.IncidentFork:
		e = selfEvent(now, ActionChainFork, audit.OutcomeSeriousFailure,
			fmt.Sprintf("central's batch %d differs from the local one: two appliances share this chain", in.Seq))
		e.Detail = map[string]string{"seq": fmt.Sprint(in.Seq), "local_head": fmt.Sprint(in.LocalHead),
			"local_hash": in.LocalHash, "central_hash": in.CentralHash}
	default:
		e = selfEvent(now, "audit.uplink_incident", audit.OutcomeSeriousFailure, in.Kind)
	}
	return e
}

func (u *uplinkReporter) list() []uplink.Incident {
	u.mu.Lock()
	defer u.mu.Unlock()
	return append([]uplink.Incident(nil), u.incidents...)
}

// newUplink builds the uplink and its receipt book. A configured central key must read
// now; the default one (keys/central.pub) may come later.
func (d *Daemon) newUplink(src *lateSource, rep *uplinkReporter, signer interface{ Public() *ecdsa.PublicKey }) (*uplink.Uplink, *receiptBook, error) {
	cfg := &d.cfg
	book := newReceiptBook(cfg)
	if book.required {
		k, err := ReadCentralKey(book.keyPath)
		if err != nil {
			return nil, nil, fmt.Errorf("uplink.central_key: %w", err)
		}
		book.pub = k
	}
	uc := cfg.UplinkConfig()
	pub, err := x509.MarshalPKIXPublicKey(signer.Public())
	if err != nil {
		return nil, nil, fmt.Errorf("uplink: %w", err)
	}
	uc.PublicKey = pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pub})
	up, err := uplink.New(uc, src, book, rep, d.log.With("component", "uplink"))
	if err != nil {
		return nil, nil, err
	}
	return up, book, nil
}

// drainUplink gives central a bounded time to receipt what was sealed before the stop,
// so that a clean stop with a reachable central leaves nothing unsent. A second SIGTERM
// ends the process at once (main releases the signal handler on the first).
func (d *Daemon) drainUplink(ctx context.Context, up *uplink.Uplink) {
	budget := d.cfg.Uplink.DrainTimeout
	if budget <= 0 {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, budget)
	defer cancel()
	up.Notify()
	t := time.NewTicker(20 * time.Millisecond)
	defer t.Stop()
	for {
		st := up.Stats()
		if st.Unsent == 0 || st.State != uplink.StateConnected {
			return
		}
		select {
		case <-ctx.Done():
			d.log.Info("stopping with batches central has not receipted; they go at the next start", "unsent", st.Unsent)
			return
		case <-t.C:
		}
	}
}

// uplinkHealth adds the uplink's state to h.
// uplinkHealth: the uplink's state (a warning once it has been away longer than the
// first connection takes), what central has not receipted, the last receipt, and the
// rollback, fork and oversize incidents (failures).
func (d *Daemon) uplinkHealth(h *Health, running time.Duration) {
	d.mu.Lock()
	up, book, rep := d.uplink, d.receipts, d.reporter
	d.mu.Unlock()
	if up == nil {
		h.add("uplink", CheckNotice, "no uplink configured: batches never leave this appliance and are never pruned")
		return
	}
	st := up.Stats()
	uh := &UplinkHealth{State: st.State, Broker: d.cfg.Uplink.Broker, Unsent: st.Unsent,
		OldestUnsentSeconds: st.OldestUnsent.Seconds(), InFlight: st.InFlight, Receipts: st.Receipts,
		BadReceipts: st.BadReceipts, OversizeSeq: st.OversizeSeq, LastError: st.LastError}
	last := "no receipt yet"
	if rc, ok := book.Newest(); ok {
		uh.ReceiptSeq, uh.ReceiptTime = rc.Seq, rc.Time.UTC().Format(time.RFC3339)
		last = fmt.Sprintf("last receipt seq %d at %s", rc.Seq, uh.ReceiptTime)
	}
	h.Uplink = uh
	problem := false
	if st.State != uplink.StateConnected {
		msg := "uplink " + st.State + " (" + d.cfg.Uplink.Broker + ")"
		if st.LastError != "" {
			msg += ": " + st.LastError
		}
		status := CheckWarning
		if running < uplinkGrace(d.cfg.Uplink.ConnectTimeout) {
			status = CheckNotice
		}
		h.add("uplink", status, "%s; %s", msg, last)
		problem = true
	}
	if err := book.keyStatus(); err != nil {
		h.add("uplink.receipts", CheckWarning, "receipts cannot be verified: %v; nothing is acknowledged or pruned", err)
		problem = true
	}
	if st.Unsent > 0 && st.OldestUnsent > d.cfg.Uplink.UnsentWarningAge {
		h.add("uplink.unsent", CheckWarning, "%d batches central has not receipted, the oldest sealed %s ago (uplink %s)",
			st.Unsent, st.OldestUnsent.Round(time.Second), st.State)
		problem = true
	}
	if st.OversizeSeq != 0 {
		h.add("uplink.oversize", CheckFailure, "batch %d is larger than uplink.max_message_bytes: it and every later batch wait", st.OversizeSeq)
		problem = true
	}
	for _, in := range rep.list() {
		switch in.Kind {
		case uplink.IncidentRollback:
			h.add("uplink.rollback", CheckFailure, "central holds seq %d beyond the local head %d: this spool is behind central (restored, cloned or rolled back)", in.Seq, in.LocalHead)
		case uplink.IncidentFork:
			h.add("uplink.fork", CheckFailure, "central's batch %d differs from the local one: a fork (two appliances with one data folder?)", in.Seq)
		}
		problem = true
	}
	if !problem {
		h.add("uplink", CheckOK, "uplink connected to %s: %d batches unsent, the oldest %s old; %s",
			d.cfg.Uplink.Broker, st.Unsent, st.OldestUnsent.Round(time.Second), last)
	}
}

// UplinkHealth is the uplink part of /healthz.
type UplinkHealth struct {
	State               string  `json:"state"`
	Broker              string  `json:"broker"`
	Unsent              uint64  `json:"unsent_batches"`
	OldestUnsentSeconds float64 `json:"oldest_unsent_seconds"`
	InFlight            int     `json:"in_flight"`
	Receipts            uint64  `json:"receipts"`
	BadReceipts         uint64  `json:"bad_receipts,omitempty"`
	ReceiptSeq          uint64  `json:"receipt_seq,omitempty"`
	ReceiptTime         string  `json:"receipt_time,omitempty"`
	OversizeSeq         uint64  `json:"oversize_seq,omitempty"`
	LastError           string  `json:"last_error,omitempty"`
}

type uplinkMetrics struct{ up *uplink.Uplink }

var (
	mUpConnected = prometheus.NewDesc("edgeaudit_uplink_connected", "1 while the uplink has an MQTT session.", nil, nil)
	mUpUnsent    = prometheus.NewDesc("edgeaudit_uplink_unsent_batches", "Sealed batches central has not receipted.", nil, nil)
	mUpOldest    = prometheus.NewDesc("edgeaudit_uplink_oldest_unsent_seconds", "Age of the oldest sealed batch central has not receipted.", nil, nil)
	mUpInFlight  = prometheus.NewDesc("edgeaudit_uplink_in_flight_batches", "Batches published and waiting for a receipt.", nil, nil)
	mUpPublished = prometheus.NewDesc("edgeaudit_uplink_published_total", "Batch publishes, resends included.", nil, nil)
	mUpResends   = prometheus.NewDesc("edgeaudit_uplink_resends_total", "Publishes of a seq published before.", nil, nil)
	mUpReceipts  = prometheus.NewDesc("edgeaudit_uplink_receipts_total", "Verified receipts from central.", nil, nil)
	mUpBad       = prometheus.NewDesc("edgeaudit_uplink_bad_receipts_total", "Receipts that did not verify.", nil, nil)
	mUpReconn    = prometheus.NewDesc("edgeaudit_uplink_reconnects_total", "MQTT connections after the first.", nil, nil)
	mUpIncidents = prometheus.NewDesc("edgeaudit_uplink_incidents_total", "Rollback and fork receipts seen.", nil, nil)
)

func (m *uplinkMetrics) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{mUpConnected, mUpUnsent, mUpOldest, mUpInFlight, mUpPublished, mUpResends,
		mUpReceipts, mUpBad, mUpReconn, mUpIncidents} {
		ch <- d
	}
}

func (m *uplinkMetrics) Collect(ch chan<- prometheus.Metric) {
	st := m.up.Stats()
	g := func(d *prometheus.Desc, v float64) { ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v) }
	c := func(d *prometheus.Desc, v uint64) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v))
	}
	conn := 0.0
	if st.State == uplink.StateConnected {
		conn = 1
	}
	g(mUpConnected, conn)
	g(mUpUnsent, float64(st.Unsent))
	g(mUpOldest, st.OldestUnsent.Seconds())
	g(mUpInFlight, float64(st.InFlight))
	c(mUpPublished, st.Published)
	c(mUpResends, st.Resends)
	c(mUpReceipts, st.Receipts)
	c(mUpBad, st.BadReceipts)
	c(mUpReconn, st.Reconnects)
	c(mUpIncidents, st.Incidents)
}
