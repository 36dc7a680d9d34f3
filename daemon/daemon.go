package daemon

import (
	"context"
	"crypto/fips140"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/edgeaudit/edgeaudit/attest"
	"github.com/edgeaudit/edgeaudit/audit"
	eacollectors "github.com/edgeaudit/edgeaudit/collectors"
	"github.com/edgeaudit/edgeaudit/collectors/fhir"
	"github.com/edgeaudit/edgeaudit/collectors/hl7"
	"github.com/edgeaudit/edgeaudit/collectors/syslog"
	"github.com/edgeaudit/edgeaudit/spool"
	"github.com/edgeaudit/edgeaudit/timesync"
	"github.com/edgeaudit/edgeaudit/uplink"
)

// Compile-time checks of the wiring: only this package joins concrete types.
var (
	_ eacollectors.Sink = (*spool.Spool)(nil)
	_ Signer            = (*attest.SoftwareSigner)(nil)
	_ Signer            = (*attest.TPMSigner)(nil)
)

// component is an active part the daemon runs: the collectors.
type component interface {
	Run(ctx context.Context) error
	Ready() <-chan struct{}
}

// finalSealWait bounds the wait for the last batch's signature at stop.
const finalSealWait = 2 * time.Second

// unsignedWarning: more closed batches than this waiting for a signature is a warning
// (the signer does not keep up); a failing signer is a failure.
const unsignedWarning = 100

// pruneEvery is how often acknowledged batches past retention are deleted: a minute,
// or half the retention when that is shorter (at least a second).
func pruneEvery(retention time.Duration) time.Duration {
	return min(time.Minute, max(time.Second, retention/2))
}

// Daemon is the appliance. New starts nothing; Run does everything.
type Daemon struct {
	cfg     Config
	version string
	log     *slog.Logger

	ready  chan struct{}
	mu     sync.Mutex
	syslog *syslog.Collector
	hl7    *hl7.Collector
	fhir   *fhir.Collector
	admin  net.Addr

	uplink   *uplink.Uplink
	receipts *receiptBook
	reporter *uplinkReporter
	ntp      *timesync.Checker
	self     *selfAudit
	probes   probeWatch // edgeaudit health -probe's messages in flight
}

// New validates cfg (after applying defaults) and returns a daemon that has not started.
func New(cfg Config, version string, logger *slog.Logger) (*Daemon, error) {
	cfg.SetDefaults()
	// The files too (certificates, keys of central, regexes): a daemon built directly,
	// as the demo and the service do, refuses what `edgeaudit config -check` reports.
	if err := errors.Join(cfg.Validate(), cfg.Check()); err != nil {
		return nil, fmt.Errorf("invalid config: %w", err)
	}
	return &Daemon{cfg: cfg, version: version, log: logger, ready: make(chan struct{})}, nil
}

// Ready is closed once every listener is bound.
func (d *Daemon) Ready() <-chan struct{} { return d.ready }

// Run opens keys and spool, starts the collectors last, and on ctx's end stops in the
// opposite order within the shutdown budget: collectors, self-audit flush, stop event,
// seal of the open batch, admin endpoint, spool close. It returns after all of its
// goroutines have exited.
func (d *Daemon) Run(ctx context.Context) (err error) {
	cfg := &d.cfg
	// Everything that can fail is checked before the spool is opened, so that a daemon
	// that cannot start leaves no chain with a start and no stop: keys, privacy, TLS
	// material (the collectors' New), the ports.
	keys, err := OpenKeys(cfg, d.log.With("component", "keys"))
	if err != nil {
		return err
	}
	defer func() {
		if cerr := keys.Close(); cerr != nil {
			err = errors.Join(err, cerr)
		}
	}()
	signer := keys.Signer
	if keys.Fallback != "" {
		d.log.Warn("signing with a software key", "why", keys.Fallback)
	}
	if err := writePublicKey(cfg, signer); err != nil {
		return err
	}
	priv, err := openPrivacy(cfg, keys.DataKey, d.log.With("component", "privacy"))
	if err != nil {
		return err
	}
	defer func() {
		if cerr := priv.close(); cerr != nil {
			err = errors.Join(err, cerr)
		}
	}()
	adminToken, err := ensureAdminToken(cfg.AdminTokenPath())
	if err != nil {
		return err
	}

	// The collectors are built (which loads their TLS material) before the spool exists;
	// they reach it through sink once it is open.
	sink := &lateSink{watch: &d.probes}
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	reg.MustRegister(priv.metrics()...)
	self := newSelfAudit(sink, reg, d.log.With("component", "selfaudit"))
	d.self = self
	sl, err := syslog.New(cfg.Syslog, sink, self, d.log.With("component", "collector.syslog"))
	if err != nil {
		return err
	}
	sl.SetTokenizer(priv.tok)
	if priv.redact != nil {
		sl.SetRedactor(priv.redact)
	}
	comps := []component{sl}
	var h *hl7.Collector
	if cfg.HL7.Enabled() {
		if h, err = hl7.New(cfg.HL7, sink, self, priv.tok, d.log.With("component", "collector.hl7")); err != nil {
			return err
		}
		comps = append(comps, h)
	}
	var f *fhir.Collector
	if cfg.FHIR.Enabled() {
		if f, err = fhir.New(cfg.FHIR, sink, self, priv.tok, d.log.With("component", "collector.fhir")); err != nil {
			return err
		}
		if priv.redact != nil {
			f.SetRedactor(priv.redact)
		}
		comps = append(comps, f)
	}
	d.mu.Lock()
	d.syslog, d.hl7, d.fhir = sl, h, f
	d.mu.Unlock()
	// The uplink is built (its TLS material and central's key checked) before the spool
	// opens too; it reads the spool through src once that is open.
	var (
		up   *uplink.Uplink
		src  = &lateSource{}
		book *receiptBook
		rep  = &uplinkReporter{self: self, log: d.log.With("component", "uplink")}
	)
	if cfg.uplinkEnabled() {
		if up, book, err = d.newUplink(src, rep, signer); err != nil {
			return err
		}
	}
	var ntpc *timesync.Checker
	if !cfg.NTP.Off {
		if ntpc, err = timesync.New(cfg.NTP.Config, &ntpReporter{self: self, log: d.log}, d.log.With("component", "timesync")); err != nil {
			return err
		}
	}
	if err := probePorts(cfg); err != nil {
		return err
	}
	var adminLn net.Listener
	if cfg.Admin != "" {
		if adminLn, err = listenAdmin(cfg.Admin); err != nil {
			return fmt.Errorf("listen admin %s: %w", cfg.Admin, err)
		}
		defer adminLn.Close()
	}
	unclean, err := markRunning(cfg.DataDir)
	if err != nil {
		return err
	}

	opts := cfg.SpoolOptions(keys)
	opts.Logger = d.log.With("component", "spool")
	if up != nil {
		opts.OnSeal = up.Notify
	}
	if ntpc != nil {
		opts.TimeSync, opts.ClockSynced = ntpc.State, ntpc.Synced
	}
	sp, err := spool.Open(cfg.SpoolPath(), cfg.SpoolConfig(), opts)
	if err != nil {
		// Nothing ran: the next start must not read this as an unclean stop (unless the
		// run before this one ended uncleanly, which it still has to say).
		if !unclean {
			if cerr := clearRunning(cfg.DataDir); cerr != nil {
				err = errors.Join(err, cerr)
			}
		}
		return err
	}
	sink.set(sp)
	defer func() {
		if cerr := sp.Close(); cerr != nil {
			err = errors.Join(err, cerr)
		}
	}()
	src.sp.Store(sp)
	registerMetrics(reg, d, sp, sl, up)

	var wg sync.WaitGroup
	defer wg.Wait()
	selfCtx, stopSelf := context.WithCancel(context.Background())
	defer stopSelf()
	selfDone := make(chan struct{})
	wg.Go(func() { self.run(selfCtx); close(selfDone) })

	vaultCtx, stopVault := context.WithCancel(context.Background())
	defer stopVault()
	wg.Go(func() { priv.runVault(vaultCtx) })

	pruneCtx, stopPrune := context.WithCancel(context.Background())
	defer stopPrune()
	wg.Go(func() { d.pruneLoop(pruneCtx, sp) })
	wg.Go(func() { sp.RunScrub(pruneCtx) })

	// The clock checks start before the collectors, so that the first batches rarely say
	// "unknown"; they stop after the final seal.
	ntpCtx, stopNTP := context.WithCancel(context.Background())
	defer stopNTP()
	if ntpc != nil {
		d.mu.Lock()
		d.ntp = ntpc
		d.mu.Unlock()
		reg.MustRegister(&ntpMetrics{c: ntpc})
		wg.Go(func() {
			if err := ntpc.Run(ntpCtx); err != nil {
				d.log.Error("time sync", "err", err)
			}
		})
	}

	// The uplink starts after the spool and before the collectors (against the data
	// flow), and stops after the final seal, before the spool closes.
	upCtx, stopUplink := context.WithCancel(context.Background())
	defer stopUplink()
	upDone := make(chan struct{})
	if up != nil {
		pos, err := sp.Position()
		if err != nil {
			return fmt.Errorf("read the spool's chain: %w", err)
		}
		book.load(pos.Chain)
		d.mu.Lock()
		d.uplink, d.receipts, d.reporter = up, book, rep
		d.mu.Unlock()
		wg.Go(func() {
			defer close(upDone)
			if err := up.Run(upCtx); err != nil {
				d.log.Error("uplink", "err", err)
			}
		})
	} else {
		close(upDone)
	}

	var adminSrv *http.Server
	if adminLn != nil {
		d.mu.Lock()
		d.admin = adminLn.Addr()
		d.mu.Unlock()
		mux := d.adminHandler(reg, sp, signer, keys.Fallback)
		mux.Handle("POST /v1/token/reveal", revealHandler(priv, sp, adminToken))
		mux.Handle("POST /v1/receipts", d.receiptsHandler(src, sp, adminToken))
		mux.Handle("POST /v1/keys/attest", attestHandler(keys, adminToken))
		mux.Handle("POST /v1/probe", d.probeHandler(adminToken))
		mux.Handle("GET /v1/export", exportHandler(ctx, sp, sp, adminToken, d.log.With("component", "export")))
		mux.Handle("POST /v1/verify/failed", verifyFailedHandler(sp, adminToken))
		adminSrv = &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
		// On an early return the deferred wg.Wait must not wait for a server nobody
		// stops; after the orderly Shutdown this is a no-op.
		defer adminSrv.Close()
		wg.Go(func() {
			if err := adminSrv.Serve(adminLn); err != nil && !errors.Is(err, http.ErrServerClosed) {
				d.log.Error("admin endpoint", "err", err)
			}
		})
		defer publishAdminAddr(cfg.DataDir, adminLn.Addr(), d.log)()
	}

	start := self.event(ActionStart, audit.OutcomeSuccess, "")
	start.Detail = map[string]string{"version": d.version, "key_id": signer.KeyID(), "signer": signer.Kind(), "events_at_rest": eventsAtRest(cfg),
		"config_sha256": configHash(cfg), "fips140": strconv.FormatBool(fips140.Enabled())}
	if keys.Fallback != "" {
		// keys.tpm: auto found no usable TPM: the chain says so, not only the log.
		start.Detail["software_key_why"] = keys.Fallback
	}
	if unclean {
		// The previous run ended without its stop event: killed, crashed, or power lost.
		start.Outcome = audit.OutcomeMinorFailure
		start.Reason = "previous run did not stop cleanly"
		start.Detail["previous_stop"] = "unclean"
	}
	// A full spool does not keep the appliance from starting: senders get backpressure,
	// health says so, and the start event comes out of the evidence reserve.
	if err := self.record(ctx, start); err != nil {
		d.log.Error("record start", "err", err)
	}
	d.recordStartFacts(ctx, self, keys, signer)

	// Collectors start last, each in its goroutine; the first one to fail stops them all.
	collCtx, stopColl := context.WithCancel(context.Background())
	defer stopColl()
	collErr := make(chan error, len(comps))
	for _, c := range comps {
		wg.Go(func() { collErr <- c.Run(collCtx) })
	}
	go func() {
		for _, c := range comps {
			select {
			case <-c.Ready():
			case <-collCtx.Done():
				return
			}
		}
		close(d.ready)
	}()
	if !cfg.Syslog.Enabled() && !cfg.HL7.Enabled() && !cfg.FHIR.Enabled() {
		d.log.Warn("every listener is off: nothing can send audit messages to this appliance (syslog, hl7 and fhir sections are empty)")
	}
	d.log.Info("edgeaudit running", "site", cfg.Site, "device", cfg.Device, "data_dir", cfg.DataDir,
		"syslog_udp", cfg.Syslog.UDP, "syslog_tcp", cfg.Syslog.TCP, "syslog_tls", cfg.Syslog.TLS,
		"hl7_mllp", cfg.HL7.MLLP, "fhir_http", cfg.FHIR.HTTP, "admin", cfg.Admin)

	var runErr error
	pending := len(comps)
	select {
	case <-ctx.Done():
	case runErr = <-collErr:
		pending--
	}

	// Orderly stop, with the data flow, inside the budget.
	begin := time.Now()
	sctx, cancel := context.WithTimeout(context.Background(), cfg.ShutdownTimeout)
	defer cancel()
	stopColl()
wait:
	for ; pending > 0; pending-- {
		select {
		case err := <-collErr:
			if runErr == nil && err != nil {
				runErr = err
			}
		case <-sctx.Done():
			d.log.Error("collectors did not stop within the shutdown budget")
			break wait
		}
	}
	stopSelf()
	<-selfDone // its flush must land before the stop event and the final seal
	stop := self.event(ActionStop, audit.OutcomeSuccess, "")
	if runErr != nil {
		stop.Outcome, stop.Reason = audit.OutcomeSeriousFailure, runErr.Error()
	}
	if err := self.record(sctx, stop); err != nil {
		d.log.Error("record stop", "err", err)
	}
	// Bounded: with a failing signer the batch stays unsigned in the spool (signed at the
	// next start) rather than eating the whole budget.
	sealCtx, cancelSeal := context.WithTimeout(sctx, finalSealWait)
	if err := sp.Seal(sealCtx); err != nil {
		d.log.Error("seal open batch at shutdown", "err", err)
	}
	cancelSeal()
	if up != nil {
		d.drainUplink(sctx, up)
	}
	stopUplink()
	stopNTP()
	<-upDone
	if adminSrv != nil {
		adminSrv.Shutdown(sctx)
	}
	stopPrune()
	stopVault()
	pos, _ := sp.Position()
	d.log.Info("edgeaudit stopped", "head_seq", pos.HeadSeq, "took", time.Since(begin).Round(time.Millisecond))
	if err := clearRunning(cfg.DataDir); err != nil {
		d.log.Error("clear run marker", "err", err)
	}
	return runErr
}

func (d *Daemon) pruneLoop(ctx context.Context, sp *spool.Spool) {
	sc := d.cfg.SpoolConfig()
	sc.SetDefaults()
	t := time.NewTicker(pruneEvery(sc.Retention))
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			if n, err := sp.Prune(now); err != nil {
				d.log.Error("prune", "err", err)
			} else if n > 0 {
				d.log.Info("pruned acknowledged batches", "batches", n)
			}
		}
	}
}

// SyslogAddrs returns the bound syslog addresses (nil when disabled) after Ready.
func (d *Daemon) SyslogAddrs() (udp, tcp, tls net.Addr) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.syslog == nil {
		return nil, nil, nil
	}
	return d.syslog.UDPAddr(), d.syslog.TCPAddr(), d.syslog.TLSAddr()
}

// ClinicalAddrs returns the bound MLLP and FHIR addresses (nil when disabled) after Ready.
func (d *Daemon) ClinicalAddrs() (mllp, fhirHTTP net.Addr) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.hl7 != nil {
		mllp = d.hl7.Addr()
	}
	if d.fhir != nil {
		fhirHTTP = d.fhir.Addr()
	}
	return mllp, fhirHTTP
}

// AdminAddr returns the bound admin address after Ready.
func (d *Daemon) AdminAddr() net.Addr {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.admin
}

func (d *Daemon) adminHandler(reg *prometheus.Registry, sp *spool.Spool, signer Signer, fallback string) *http.ServeMux {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	deps := &healthDeps{sp: sp, signer: signer, fallback: fallback, self: d.self, certs: loadCerts(&d.cfg), started: time.Now()}
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) { d.serveHealth(w, deps) })
	reg.MustRegister(&healthMetrics{d: d, deps: deps})
	return mux
}

// metrics exports the spool's and the syslog collector's counters. It is one
// prometheus.Collector so that a scrape takes one snapshot of each (Stats of the spool
// opens a bbolt read transaction) instead of one per metric.
type metrics struct {
	sp *spool.Spool
	sl *syslog.Collector
	d  *Daemon // for the clinical collectors, which exist only when enabled
}

var (
	mCommitted   = prometheus.NewDesc("edgeaudit_spool_events_committed_total", "Events committed (fsync'd) to the spool.", nil, nil)
	mCommits     = prometheus.NewDesc("edgeaudit_spool_commits_total", "Spool transactions committed.", nil, nil)
	mSealed      = prometheus.NewDesc("edgeaudit_spool_batches_sealed_total", "Batches sealed.", nil, nil)
	mRefused     = prometheus.NewDesc("edgeaudit_spool_refused_full_total", "Appends refused because the spool was full (backpressure).", nil, nil)
	mCommitErrs  = prometheus.NewDesc("edgeaudit_spool_commit_errors_total", "Spool transactions that failed.", nil, nil)
	mPruned      = prometheus.NewDesc("edgeaudit_spool_batches_pruned_total", "Acknowledged batches deleted after retention.", nil, nil)
	mHead        = prometheus.NewDesc("edgeaudit_spool_head_seq", "Seq of the last sealed batch.", nil, nil)
	mAcked       = prometheus.NewDesc("edgeaudit_spool_acked_seq", "Seq up to which central acknowledged.", nil, nil)
	mFull        = prometheus.NewDesc("edgeaudit_spool_full", "1 while the spool refuses events.", nil, nil)
	mHolding     = prometheus.NewDesc("edgeaudit_spool_holding", "1 while commits fail or wait for room and their events are held in memory.", nil, nil)
	mLost        = prometheus.NewDesc("edgeaudit_spool_events_lost_total", "Accepted events that could not be committed before close (each loss is recorded in the chain).", nil, nil)
	mHeadErrs    = prometheus.NewDesc("edgeaudit_spool_head_file_errors_total", "Failed writes of the head file kept outside bbolt.", nil, nil)
	mJournalW    = prometheus.NewDesc("edgeaudit_spool_journal_written_total", "Acknowledged events (HL7, FHIR, RELP) made durable in the spool's journal before their bbolt commit.", nil, nil)
	mJournalR    = prometheus.NewDesc("edgeaudit_spool_journal_replayed_total", "Journaled events a start committed after an unclean stop.", nil, nil)
	mJournalE    = prometheus.NewDesc("edgeaudit_spool_journal_write_errors_total", "Failed journal writes; their senders were answered after the bbolt commit instead.", nil, nil)
	mScrubbed    = prometheus.NewDesc("edgeaudit_spool_scrubbed_batches_total", "Batches verified by the background scrub.", nil, nil)
	mScrubBad    = prometheus.NewDesc("edgeaudit_spool_scrub_damaged_total", "Damaged batches found by the background scrub.", nil, nil)
	mUnsigned    = prometheus.NewDesc("edgeaudit_spool_unsigned_batches", "Closed batches waiting for their signature.", nil, nil)
	mSignErrs    = prometheus.NewDesc("edgeaudit_spool_sign_errors_total", "Failed signatures of batch headers (each is retried).", nil, nil)
	mReceived    = prometheus.NewDesc("edgeaudit_syslog_received_total", "Syslog messages handed to the spool.", []string{"transport"}, nil)
	mMalformed   = prometheus.NewDesc("edgeaudit_syslog_malformed_total", "Syslog messages kept although they did not parse.", nil, nil)
	mConnsOpen   = prometheus.NewDesc("edgeaudit_syslog_connections_open", "Open syslog TCP and TLS connections.", nil, nil)
	mConnsRefuse = prometheus.NewDesc("edgeaudit_syslog_connections_refused_total", "Syslog connections closed at once because of the connection limit.", nil, nil)
	mWaits       = prometheus.NewDesc("edgeaudit_syslog_backpressure_waits_total", "Times a syslog connection paused because the spool refused an event.", nil, nil)
	mHL7Received = prometheus.NewDesc("edgeaudit_hl7_received_total", "HL7 v2 messages committed and acknowledged (AA/CA).", nil, nil)
	mHL7StoreErr = prometheus.NewDesc("edgeaudit_hl7_store_errors_total", "HL7 v2 messages answered AE/CE because the spool could not take them.", nil, nil)
	mHL7NoAck    = prometheus.NewDesc("edgeaudit_hl7_not_acknowledged_total", "HL7 v2 messages answered with nothing because MSH-15/16 asked for no acknowledgement.", nil, nil)
	mHL7Conns    = prometheus.NewDesc("edgeaudit_hl7_connections_open", "Open MLLP connections.", nil, nil)
	mFHIREvents  = prometheus.NewDesc("edgeaudit_fhir_events_total", "FHIR AuditEvents committed (201).", nil, nil)
	mFHIRUnavail = prometheus.NewDesc("edgeaudit_fhir_unavailable_total", "FHIR AuditEvents answered 503 because the spool could not take them.", nil, nil)
	mFHIRConns   = prometheus.NewDesc("edgeaudit_fhir_connections_open", "Open FHIR connections.", nil, nil)
	mFHIRInfl    = prometheus.NewDesc("edgeaudit_fhir_inflight_bytes", "Bytes of request bodies and decoded resources held now (fhir.max_inflight_bytes bounds it).", nil, nil)
	mFHIROver    = prometheus.NewDesc("edgeaudit_fhir_overloaded_total", "FHIR requests answered 503 because the in-flight byte budget was spent.", nil, nil)
	mRELPRefused = prometheus.NewDesc("edgeaudit_relp_refused_total", "RELP commands answered rsp 500.", nil, nil)
	mRELPUnacked = prometheus.NewDesc("edgeaudit_relp_unacked_total", "RELP frames appended but left unanswered (the sender resends them).", nil, nil)
	mEvicted     = prometheus.NewDesc("edgeaudit_connections_evicted_total", "Idle connections closed to make room for a new one.", []string{"collector"}, nil)
	mDrained     = prometheus.NewDesc("edgeaudit_syslog_drained_total", "Syslog events stored during the drain at stop.", nil, nil)
	mUnreadFr    = prometheus.NewDesc("edgeaudit_syslog_shutdown_unread_frames_total", "Syslog frames still queued when the drain budget ran out (counted, recorded, not kept).", nil, nil)
	mUnreadBy    = prometheus.NewDesc("edgeaudit_syslog_shutdown_unread_bytes_total", "Syslog bytes still queued when the drain budget ran out.", nil, nil)
)

func registerMetrics(reg *prometheus.Registry, d *Daemon, sp *spool.Spool, sl *syslog.Collector, up *uplink.Uplink) {
	reg.MustRegister(&metrics{sp: sp, sl: sl, d: d})
	if up != nil {
		reg.MustRegister(&uplinkMetrics{up: up})
	}
}

func (m *metrics) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{mJournalW, mJournalR, mJournalE, mCommitted, mCommits, mSealed, mRefused, mCommitErrs, mPruned, mHead, mAcked, mFull,
		mHolding, mLost, mHeadErrs, mScrubbed, mScrubBad, mUnsigned, mSignErrs,
		mReceived, mMalformed, mConnsOpen, mConnsRefuse, mWaits, mHL7Received, mHL7StoreErr, mHL7Conns, mHL7NoAck, mFHIREvents, mFHIRUnavail,
		mFHIRConns, mFHIRInfl, mFHIROver, mEvicted, mDrained, mUnreadFr, mUnreadBy, mRELPRefused, mRELPUnacked} {
		ch <- d
	}
}

func (m *metrics) Collect(ch chan<- prometheus.Metric) {
	st := m.sp.Stats()
	c := func(d *prometheus.Desc, v uint64) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v))
	}
	g := func(d *prometheus.Desc, v float64) { ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v) }
	c(mCommitted, st.Committed)
	c(mCommits, st.Commits)
	c(mSealed, st.Sealed)
	c(mRefused, st.RefusedFull)
	c(mCommitErrs, st.CommitErrors)
	c(mPruned, st.Pruned)
	g(mHead, float64(st.HeadSeq))
	g(mAcked, float64(st.AckedSeq))
	full := 0.0
	if st.Full {
		full = 1
	}
	g(mFull, full)
	holding := 0.0
	if st.Holding {
		holding = 1
	}
	g(mHolding, holding)
	c(mLost, st.Lost)
	c(mHeadErrs, st.HeadFileErrors)
	c(mJournalW, st.JournalWritten)
	c(mJournalR, st.JournalReplayed)
	c(mJournalE, st.JournalWriteErrors)
	c(mScrubbed, st.Scrubbed)
	c(mScrubBad, st.ScrubDamaged)
	g(mUnsigned, float64(st.Unsigned))
	c(mSignErrs, st.SignErrors)
	ss := m.sl.Stats()
	for _, t := range []string{"udp", "tcp", "tls"} {
		ch <- prometheus.MustNewConstMetric(mReceived, prometheus.CounterValue, float64(ss.Received[t]), t)
	}
	if r := m.sl.RELP(); r != nil {
		rs := r.Stats()
		ch <- prometheus.MustNewConstMetric(mReceived, prometheus.CounterValue, float64(rs.Received), "relp")
		ch <- prometheus.MustNewConstMetric(mReceived, prometheus.CounterValue, float64(rs.ReceivedTLS), "relp+tls")
		c(mRELPRefused, rs.Refused)
		c(mRELPUnacked, rs.Unacked)
	}
	c(mMalformed, ss.Malformed)
	g(mConnsOpen, float64(ss.ConnsOpen))
	c(mConnsRefuse, ss.ConnsRefused)
	c(mWaits, ss.BackpressureWaits)
	ch <- prometheus.MustNewConstMetric(mEvicted, prometheus.CounterValue, float64(ss.ConnsEvicted), "syslog")
	c(mDrained, ss.Drained)
	c(mUnreadFr, ss.UnreadFrames)
	c(mUnreadBy, ss.UnreadBytes)
	m.d.mu.Lock()
	h, f := m.d.hl7, m.d.fhir
	m.d.mu.Unlock()
	if h != nil {
		hs := h.Stats()
		c(mHL7Received, hs.Received)
		c(mHL7StoreErr, hs.StoreErrors)
		g(mHL7Conns, float64(hs.ConnsOpen))
		c(mHL7NoAck, hs.NotAcknowledged)
		ch <- prometheus.MustNewConstMetric(mEvicted, prometheus.CounterValue, float64(hs.ConnsEvicted), "hl7")
	}
	if f != nil {
		fs := f.Stats()
		c(mFHIREvents, fs.Events)
		c(mFHIRUnavail, fs.Unavailable)
		g(mFHIRConns, float64(fs.Connections))
		g(mFHIRInfl, float64(fs.InflightBytes))
		c(mFHIROver, fs.Overloaded)
	}
}
