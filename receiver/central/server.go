package central

import (
	"context"
	"crypto/ecdsa"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/edgeaudit/edgeaudit/attest"
	"github.com/edgeaudit/edgeaudit/audit"
	"github.com/edgeaudit/edgeaudit/internal/backoff"
	"github.com/edgeaudit/edgeaudit/internal/ratelog"
	"github.com/edgeaudit/edgeaudit/ledger"
	"github.com/edgeaudit/edgeaudit/receiver"
)

// stopTimeout bounds what Run still writes after ctx is done: the queued alerts, their
// summaries and the stop event.
const stopTimeout = 5 * time.Second

// connectTimeout bounds one connection attempt of the key subscriber.
const connectTimeout = 10 * time.Second

// keysClientSuffix makes the key subscriber's client id from the receiver's.
const keysClientSuffix = "-keys"

// Server is the central receiver: New loads and checks everything, Run opens the store,
// starts the embedded broker when configured, and receives until ctx is done.
type Server struct {
	cfg        Config
	base       *slog.Logger // the caller's, for the components that add their own name
	log        *slog.Logger
	signer     *attest.SoftwareSigner
	keyCreated bool
	clientTLS  *tls.Config
	broker     *EmbeddedBroker
	keys       *TOFUKeys
	alerts     *alerter

	started  atomic.Bool
	mu       sync.Mutex
	receiver *receiver.Receiver
	ready    chan struct{} // closed once Run is receiving
}

// New applies defaults, validates cfg, loads the TLS and password files and central's
// key (creating it and central.pub when missing). It starts nothing.
func New(cfg Config, logger *slog.Logger) (*Server, error) {
	cfg.SetDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	s := &Server{cfg: cfg, base: logger, log: logger.With(attrComponent, "central"), alerts: newAlerter(cfg.AlertsPerMinute),
		keys: &TOFUKeys{Folder: receiver.FolderKeys{Dir: cfg.Devices}}, ready: make(chan struct{})}
	if cfg.EmbeddedBroker != "" {
		b, err := newEmbeddedBroker(cfg, logger)
		if err != nil {
			return nil, err
		}
		s.broker = b
	} else if u, _ := url.Parse(cfg.Broker); u.Scheme != "tcp" && u.Scheme != "mqtt" {
		tc, err := clientTLS(cfg, u.Hostname())
		if err != nil {
			return nil, err
		}
		s.clientTLS = tc
	}
	signer, created, err := LoadOrCreateKey(cfg)
	if err != nil {
		return nil, err
	}
	s.signer, s.keyCreated = signer, created
	return s, nil
}

// clientTLS is the receiver's TLS for an external broker: the broker's name always
// verified, a client certificate when configured.
func clientTLS(cfg Config, host string) (*tls.Config, error) {
	tc := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: host}
	if cfg.TLSCA != "" {
		pem, err := os.ReadFile(cfg.TLSCA)
		if err != nil {
			return nil, fmt.Errorf("load receive.tls_ca: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("load receive.tls_ca %s: no PEM certificate found", cfg.TLSCA)
		}
		tc.RootCAs = pool
	}
	if cfg.TLSCert != "" {
		cert, err := tls.LoadX509KeyPair(cfg.TLSCert, cfg.TLSKey)
		if err != nil {
			return nil, fmt.Errorf("load receive.tls_cert %s and receive.tls_key %s: %w", cfg.TLSCert, cfg.TLSKey, err)
		}
		tc.Certificates = []tls.Certificate{cert}
	}
	return tc, nil
}

// Config returns the config after defaults.
func (s *Server) Config() Config { return s.cfg }

// KeyCreated reports whether New created central's key (tell the operator to hand
// central.pub to the sites).
func (s *Server) KeyCreated() bool { return s.keyCreated }

// Broker is the embedded broker, nil when none is configured.
func (s *Server) Broker() *EmbeddedBroker { return s.broker }

// Ready is closed once Run has opened everything and started receiving: with the
// embedded broker, once the receiver has subscribed and devices may connect; with an
// external broker, once the receiver has been started (its first subscription of a
// new persistent session may come a moment later).
func (s *Server) Ready() <-chan struct{} { return s.ready }

// Stats are the receiver's counters (zero before Run).
func (s *Server) Stats() receiver.Stats {
	s.mu.Lock()
	r := s.receiver
	s.mu.Unlock()
	if r == nil {
		return receiver.Stats{}
	}
	return r.Stats()
}

// Run opens the store and central's trail, starts the embedded broker when configured,
// records the start, and receives (and, with trust_on_first_use, takes device keys)
// until ctx is done. Then it stops in reverse order and records the stop. It returns
// nil when ctx is cancelled, after every goroutine it started has exited.
func (s *Server) Run(ctx context.Context) (err error) {
	if !s.started.CompareAndSwap(false, true) {
		return errors.New("central: Run called twice")
	}
	cfg := s.cfg
	store, trail, closeStore, err := s.open(ctx, true)
	if err != nil {
		return err
	}
	defer closeStore()
	rc := cfg.ReceiverConfig()
	rc.TLS = s.clientTLS
	if s.broker != nil {
		filters := []string{receiver.BatchFilter(cfg.Prefix)}
		if cfg.TrustOnFirstUse {
			filters = append(filters, cfg.Prefix+"/+/+/"+leafKey)
		}
		s.broker.expectSubscriptions(filters...)
		u, err := s.broker.start()
		if err != nil {
			return err
		}
		defer s.broker.close()
		rc.Broker, rc.Username, rc.Password, rc.TLS = u, internalUser, s.broker.password, nil
		s.retainReceipts(ctx, store)
	}
	setReceiverHooks(&rc, cfg, s.alerts.refused)
	r, err := receiver.New(rc, store, s.keys, s.signer, s.base)
	if err != nil {
		return err
	}
	s.mu.Lock()
	s.receiver = r
	s.mu.Unlock()

	start := s.alerts.event(audit.ActionAppStart, audit.OutcomeSuccess, "", s.startDetail())
	if err := trail.Record(ctx, start); err != nil {
		return fmt.Errorf("central trail: record start: %w", err)
	}
	s.log.Info("central receiver started", "broker", s.brokerName(), "store", storeName(cfg.Store),
		"devices", cfg.Devices, "tofu", cfg.TrustOnFirstUse, "trail", cfg.AuditSite+"/"+cfg.AuditDevice)

	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	// One goroutine writes central's trail while receiving: refusal alerts, their
	// summaries and enrolments. It ends after the receiver and the key watcher.
	alertCtx, alertCancel := context.WithCancel(context.WithoutCancel(ctx))
	defer alertCancel()
	alertsDone := make(chan struct{})
	go func() { defer close(alertsDone); s.alerts.run(alertCtx, stopTimeout, trail, s.log) }()
	var wg sync.WaitGroup
	errs := make(chan error, 1)
	wg.Add(1)
	go func() {
		defer wg.Done()
		if err := r.Run(runCtx); err != nil {
			errs <- fmt.Errorf("receiver: %w", err)
			cancel()
		}
	}()
	if cfg.TrustOnFirstUse {
		kc := keyClient{broker: rc.Broker, clientID: cfg.ClientID + keysClientSuffix, user: rc.Username, password: rc.Password,
			tls: rc.TLS, prefix: cfg.Prefix, retryMax: rc.RetryMax}
		wg.Add(1)
		go func() {
			defer wg.Done()
			s.watchKeys(runCtx, kc)
		}()
	}
	if s.broker != nil {
		// Devices connect once the receiver (and the key watcher) have subscribed.
		select {
		case <-s.broker.subscribed():
			s.broker.serveDevices()
		case <-runCtx.Done():
		}
	}
	close(s.ready)
	<-runCtx.Done()
	wg.Wait()
	// Nothing can raise an alert any more: the loop writes what is queued and the last
	// summaries, then the stop is recorded.
	alertCancel()
	<-alertsDone
	stopCtx, stopCancel := context.WithTimeout(context.WithoutCancel(ctx), stopTimeout)
	defer stopCancel()
	st := r.Stats()
	stop := s.alerts.event(audit.ActionAppStop, audit.OutcomeSuccess, "", map[string]string{
		"batches": fmt.Sprint(st.Batches), "events": fmt.Sprint(st.Events), "duplicates": fmt.Sprint(st.Duplicates),
		"refused": fmt.Sprint(sum(st.Refused))})
	if err := trail.Record(stopCtx, stop); err != nil {
		s.log.Error("record stop in central's trail", attrError, err)
	}
	s.log.Info("central receiver stopped", "batches", st.Batches, "refused", sum(st.Refused))
	select {
	case err := <-errs:
		return err
	default:
		return nil
	}
}

// open makes central's folders, takes the store's process lock (folder stores) when
// exclusive, and opens the store and central's trail.
func (s *Server) open(ctx context.Context, exclusive bool) (receiver.Store, Trail, func(), error) {
	cfg := s.cfg
	for _, d := range []string{cfg.DataDir, cfg.Devices, cfg.Quarantine} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return nil, nil, nil, fmt.Errorf("central: %w", err)
		}
	}
	unlock := func() {}
	if exclusive && !IsPostgres(cfg.Store) {
		u, err := lockStore(cfg.Store)
		if err != nil {
			return nil, nil, nil, err
		}
		unlock = u
	}
	store, closeStore, err := openStore(ctx, cfg, s.base)
	if err != nil {
		unlock()
		return nil, nil, nil, err
	}
	trail, err := newTrail(store, s.signer, cfg.AuditSite, cfg.AuditDevice, s.base)
	if err != nil {
		closeStore()
		unlock()
		return nil, nil, nil, fmt.Errorf("central trail: %w", err)
	}
	return store, trail, func() { closeStore(); unlock() }, nil
}

// Import handles an exported file (`edgeaudit export`, carried from an air-gapped
// site) as receiver.Import does, in a receiver without MQTT. name is the file's name
// for central's trail, which records the import and, as alerts, each refusal. Run and
// Import exclude each other on a folder store (a process lock in the store folder).
func (s *Server) Import(ctx context.Context, rd io.Reader, name string) (receiver.ImportResult, error) {
	store, trail, closeStore, err := s.open(ctx, true)
	if err != nil {
		return receiver.ImportResult{}, err
	}
	defer closeStore()
	rc := s.cfg.ReceiverConfig()
	rc.Broker = ""
	setReceiverHooks(&rc, s.cfg, s.alerts.refused)
	r, err := receiver.New(rc, store, s.keys, s.signer, s.base)
	if err != nil {
		return receiver.ImportResult{}, err
	}
	s.mu.Lock()
	s.receiver = r
	s.mu.Unlock()
	alertCtx, alertCancel := context.WithCancel(context.WithoutCancel(ctx))
	alertsDone := make(chan struct{})
	go func() { defer close(alertsDone); s.alerts.run(alertCtx, stopTimeout, trail, s.log) }()
	res, ierr := r.Import(ctx, rd)
	alertCancel()
	<-alertsDone
	st := r.Stats()
	ev := s.alerts.event(audit.ActionPHIImport, audit.OutcomeSuccess, "batches imported from a file", map[string]string{
		"file": name, "batches": fmt.Sprint(res.Batches), "stored": fmt.Sprint(st.Batches),
		"duplicates": fmt.Sprint(st.Duplicates), "refused": fmt.Sprint(len(res.Refused))})
	if ierr != nil {
		ev.Outcome = audit.OutcomeSeriousFailure
		ev.Detail["error"] = truncate(ierr.Error())
	}
	recCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), stopTimeout)
	defer cancel()
	if err := trail.Record(recCtx, ev); err != nil {
		return res, errors.Join(ierr, fmt.Errorf("central trail: record import: %w", err))
	}
	return res, ierr
}

func sum(m map[string]uint64) uint64 {
	var n uint64
	for _, v := range m {
		n += v
	}
	return n
}

func (s *Server) brokerName() string {
	if s.broker != nil {
		return "embedded " + s.broker.Addr()
	}
	return s.cfg.Broker
}

func (s *Server) startDetail() map[string]string {
	kind := "folder"
	if IsPostgres(s.cfg.Store) {
		kind = "postgres"
	}
	return map[string]string{"broker": s.brokerName(), "store": kind, "tofu": fmt.Sprint(s.cfg.TrustOnFirstUse),
		"key_id": s.signer.KeyID()}
}

// keyClient is how the key subscriber reaches the broker.
type keyClient struct {
	broker, clientID, user, password, prefix string
	tls                                      *tls.Config
	retryMax                                 time.Duration
}

// watchKeys subscribes to <prefix>/+/+/key and offers each key to trust on first use
// until ctx is done.
func (s *Server) watchKeys(ctx context.Context, kc keyClient) {
	log := s.base.With(attrComponent, "central.tofu")
	msgs := make(chan mqtt.Message, 64)
	filter := kc.prefix + "/+/+/" + leafKey
	deliver := func(_ mqtt.Client, m mqtt.Message) {
		select {
		case msgs <- m:
		case <-ctx.Done():
		}
	}
	subs := make(chan mqtt.Token, 4)
	opts := mqtt.NewClientOptions().AddBroker(kc.broker).SetClientID(kc.clientID).
		SetUsername(kc.user).SetPassword(kc.password).SetCleanSession(true).SetOrderMatters(false).
		SetAutoReconnect(true).SetMaxReconnectInterval(max(kc.retryMax, time.Second)).SetConnectTimeout(connectTimeout).
		SetConnectionLostHandler(func(_ mqtt.Client, err error) { log.Warn("broker connection lost", attrError, err) }).
		SetOnConnectHandler(func(c mqtt.Client) {
			select {
			case subs <- c.Subscribe(filter, 1, deliver):
			default:
			}
		})
	if kc.tls != nil {
		opts.SetTLSConfig(kc.tls)
	}
	client := mqtt.NewClient(opts)
	defer client.Disconnect(250)
	bo := backoff.New(time.Second, max(kc.retryMax, time.Second))
	for {
		tok := client.Connect()
		select {
		case <-tok.Done():
		case <-ctx.Done():
			tok.WaitTimeout(connectTimeout + time.Second)
			return
		}
		if err := tok.Error(); err == nil {
			break
		} else if bo.Failures() == 0 {
			log.Warn("connect to broker for device keys, will retry", attrError, err)
		}
		if bo.BackOff(ctx, tok.Error()) != nil {
			return
		}
	}
	var limit ratelog.Limiter
	for {
		select {
		case <-ctx.Done():
			return
		case tok := <-subs:
			select {
			case <-tok.Done():
			case <-ctx.Done():
				return
			}
			if err := tok.Error(); err != nil {
				log.Error("subscribe", attrTopic, filter, attrError, err)
			} else if st, ok := tok.(*mqtt.SubscribeToken); ok && st.Result()[filter] == 0x80 {
				log.Error("subscribe", attrTopic, filter, attrError, "the broker refused the subscription (SUBACK 0x80): check its ACL")
			} else {
				log.Info("subscribed to device keys", attrTopic, filter)
			}
		case m := <-msgs:
			s.offerKey(ctx, log, &limit, m.Topic(), m.Payload())
		}
	}
}

// offerKey is the key loop's body: one message on a key topic.
func (s *Server) offerKey(ctx context.Context, log *slog.Logger, limit *ratelog.Limiter, topic string, payload []byte) {
	site, device, ok := splitTopic(s.cfg.Prefix, topic, leafKey)
	if !ok {
		return
	}
	if len(payload) == 0 {
		return // a cleared retained key: nothing offered
	}
	var outcome, kid, enrolled string
	var err error
	if site == s.cfg.AuditSite {
		err = fmt.Errorf("offered key of %s/%s: %w", site, device, ErrReservedSite)
	} else {
		outcome, kid, enrolled, err = s.keys.Offer(site, device, payload)
	}
	det := map[string]string{"site": site, "device": device, "key_id": kid, "tofu": "true"}
	switch {
	case err != nil:
		if ok, n := limit.Allow("bad "+site+"/"+device, time.Now()); ok {
			log.Warn("device key not taken", attrSite, site, attrDevice, device, attrError, err, "suppressed", n)
		}
		det["detail"], det["reason"] = truncate(err.Error()), ReasonBadKey
		s.alerts.alert(ReasonBadKey, s.alerts.event(audit.ActionSecurityAlert, audit.OutcomeMinorFailure, "device key not taken: "+ReasonBadKey, det))
	case outcome == OfferEnrolled:
		log.Info("device enrolled on first use", attrSite, site, attrDevice, device, attrKeyID, kid)
		s.alerts.record(ctx, s.alerts.event(audit.ActionKeyChange, audit.OutcomeSuccess, "device enrolled on first use", det))
	case outcome == OfferConflict:
		if ok, n := limit.Allow("conflict "+site+"/"+device, time.Now()); ok {
			log.Warn("device published a key other than its enrolled one; not taken", attrSite, site, attrDevice, device,
				attrKeyID, kid, "enrolled_key_id", enrolled, "suppressed", n)
		}
		det["enrolled_key_id"], det["reason"] = enrolled, ReasonKeyConflict
		s.alerts.alert(ReasonKeyConflict, s.alerts.event(audit.ActionSecurityAlert, audit.OutcomeMajorFailure, "device key not taken: "+ReasonKeyConflict, det))
	}
}

func truncate(s string) string {
	if len(s) > maxDetail {
		return s[:maxDetail]
	}
	return s
}

// splitTopic returns the site and device of <prefix>/<site>/<device>/<leaf>.
func splitTopic(prefix, topic, leaf string) (site, device string, ok bool) {
	rest, ok := strings.CutPrefix(topic, prefix+"/")
	if !ok {
		return "", "", false
	}
	l := strings.Split(rest, "/")
	if len(l) != 3 || l[2] != leaf {
		return "", "", false
	}
	return l[0], l[1], true
}

// Record writes events to central's trail, opening the store for the time of the call.
// It may run beside a running Run: the trail locks itself against other writers.
func (s *Server) Record(ctx context.Context, events ...audit.Event) error {
	_, trail, closeStore, err := s.open(ctx, false)
	if err != nil {
		return err
	}
	defer closeStore()
	return trail.Record(ctx, events...)
}

// AddDevice enrols the PEM public key pemBytes for site/device (see Enrol) and records
// the enrolment in central's trail (admin.key_change). The same key again changes and
// records nothing.
func (s *Server) AddDevice(ctx context.Context, site, device string, pemBytes []byte, replace bool) (Enrolment, error) {
	if site == s.cfg.AuditSite {
		return Enrolment{}, fmt.Errorf("add device %s/%s: %w", site, device, ErrReservedSite)
	}
	pub, _, err := ParseDeviceKey(pemBytes)
	if err != nil {
		return Enrolment{}, fmt.Errorf("add device %s/%s: %w", site, device, err)
	}
	// A device pinned to a TPM takes a new key only with a bundle from that TPM: a
	// plain key would undo the pin.
	if a, err := ReadAttestation(s.cfg.Devices, site, device); err != nil {
		return Enrolment{}, fmt.Errorf("add device %s/%s: %w", site, device, err)
	} else if a != nil && replace {
		return Enrolment{}, fmt.Errorf("add device %s/%s: %w (ak %s): enrol its new key with -bundle from that TPM, or remove the device first",
			site, device, ErrPinned, a.AKKeyID)
	}
	res, err := Enrol(s.cfg.Devices, site, device, pub, replace)
	if err != nil || !res.Changed {
		return res, err
	}
	return res, s.recordEnrolment(ctx, site, device, res, nil)
}

// recordEnrolment writes a changed enrolment to central's trail as admin.key_change,
// with extra detail.
func (s *Server) recordEnrolment(ctx context.Context, site, device string, res Enrolment, extra map[string]string) error {
	det := map[string]string{"site": site, "device": device, "key_id": res.KeyID, "tofu": "false"}
	reason := "device enrolled"
	if res.Previous != "" {
		det["previous_key_id"], reason = res.Previous, "device key replaced"
	}
	if !res.Changed {
		reason = "device attested"
	}
	maps.Copy(det, extra)
	if err := s.Record(ctx, s.alerts.event(audit.ActionKeyChange, audit.OutcomeSuccess, reason, det)); err != nil {
		return fmt.Errorf("add device %s/%s: enrolled, but not recorded in central's trail: %w", site, device, err)
	}
	return nil
}

// AddAttestedDevice verifies the attestation bundle b against the nonce central issued
// and enrols the key it certifies, pinned to its TPM (see EnrolAttested), and records it
// in central's trail (admin.key_change, attested=true, the AK and EK key ids). A bundle
// that verifies is recorded even when the key was enrolled already: the device was
// attested again.
func (s *Server) AddAttestedDevice(ctx context.Context, site, device string, b *attest.Bundle, nonce []byte,
	expected *ecdsa.PublicKey, replace bool) (AttestedEnrolment, error) {
	if site == s.cfg.AuditSite {
		return AttestedEnrolment{}, fmt.Errorf("add device %s/%s: %w", site, device, ErrReservedSite)
	}
	res, err := EnrolAttested(s.cfg.Devices, site, device, b, nonce, expected, replace)
	if err != nil {
		return res, err
	}
	a := res.Attestation
	return res, s.recordEnrolment(ctx, site, device, res.Enrolment, map[string]string{"attested": "true",
		"ak_key_id": a.AKKeyID, "ek_key_id": a.EKKeyID, "pcr_digest": a.PCRDigest, "tpm_reset_count": fmt.Sprint(a.ResetCount)})
}

// RemoveDevice removes the enrolled key of site/device and records it in central's
// trail. The stored chain stays; the device's next batch is refused as unknown.
func (s *Server) RemoveDevice(ctx context.Context, site, device string) (keyID string, err error) {
	kid, err := Unenrol(s.cfg.Devices, site, device)
	if err != nil {
		return "", err
	}
	ev := s.alerts.event(audit.ActionKeyChange, audit.OutcomeSuccess, "device removed",
		map[string]string{"site": site, "device": device, "key_id": kid, "removed": "true"})
	if err := s.Record(ctx, ev); err != nil {
		return kid, fmt.Errorf("remove device %s/%s: removed, but not recorded in central's trail: %w", site, device, err)
	}
	return kid, nil
}

// retainReceipts publishes, retained, the receipt of every device's stored head on its
// ack topic of the embedded broker, whose retained messages do not outlive a restart:
// a device that connects learns at once where central stands for it, even when it
// has nothing to send (a restored appliance finds out it is behind, invariant 9).
// Folder stores only: they list their devices.
func (s *Server) retainReceipts(ctx context.Context, store receiver.Store) {
	if IsPostgres(s.cfg.Store) {
		return
	}
	n := 0
	sites, _ := os.ReadDir(s.cfg.Store)
	for _, se := range sites {
		if !se.IsDir() || !ledger.ValidName(se.Name()) || se.Name() == s.cfg.AuditSite {
			continue
		}
		devs, _ := os.ReadDir(filepath.Join(s.cfg.Store, se.Name()))
		for _, de := range devs {
			if !de.IsDir() || !ledger.ValidName(de.Name()) {
				continue
			}
			h, err := store.Head(ctx, se.Name(), de.Name())
			if err != nil {
				s.log.Warn("stored head", attrSite, se.Name(), attrDevice, de.Name(), attrError, err)
				continue
			}
			if len(h.Receipt) == 0 {
				continue
			}
			if err := s.broker.retain(receiver.AckTopic(s.cfg.Prefix, se.Name(), de.Name()), h.Receipt); err != nil {
				s.log.Warn("retain receipt", attrSite, se.Name(), attrDevice, de.Name(), attrError, err)
				continue
			}
			n++
		}
	}
	if n > 0 {
		s.log.Info("stored heads' receipts retained on the embedded broker", "devices", n)
	}
}
