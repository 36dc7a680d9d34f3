// Package uplink ships sealed batches to central over MQTT (paho.mqtt.golang) and marks
// them acked only on central's verified receipt, never on a broker's PUBACK.
package uplink

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/edgeaudit/edgeaudit/internal/backoff"
	"github.com/edgeaudit/edgeaudit/internal/ratelog"
	"github.com/edgeaudit/edgeaudit/ledger"
)

var (
	// ErrNoBroker: uplink.broker is empty, so there is no uplink.
	ErrNoBroker = errors.New("no broker configured")
	// ErrNotConnected is returned by a publish while the session is down.
	ErrNotConnected = errors.New("not connected")
)

// Position is what the uplink reads of the spool's chain position; spool.Position has
// these fields (the daemon converts, see README.md).
type Position struct {
	HeadSeq  uint64 // last sealed batch
	HeadHash string // hex SHA-256 of its header bytes
	AckedSeq uint64 // central acknowledged up to here
}

// Source is what the uplink consumes from the spool. It is only read, never waited on by
// collection: a slow or absent broker never blocks an append.
type Source interface {
	// Position returns the head and the acked seq. Safe for concurrent use.
	Position() (Position, error)
	// Batches calls fn for each sealed batch with seq >= from, in order, until fn returns
	// an error (which Batches returns) or no batch is left (nil). Batches already pruned
	// are skipped. A batch passed to fn stays valid after fn returns and belongs to the
	// caller.
	Batches(from uint64, fn func(*ledger.Batch) error) error
	// Ack records that central holds every batch up to seq. Idempotent: it never moves
	// backwards and never past the head. An error means nothing was recorded.
	Ack(seq uint64) error
}

// ReceiptVerifier checks central's signed receipts.
type ReceiptVerifier interface {
	// Verify returns the highest seq the receipt covers and the hex SHA-256 header hash
	// it names for that seq, or an error for a receipt that does not verify (wrong key,
	// another site or device, malformed). It must be safe to call from one goroutine at a
	// time and must not keep b.
	Verify(b []byte) (seq uint64, headerHash string, err error)
}

// ReceiptKeeper may also be implemented by the ReceiptVerifier. Keep stores a verified
// receipt that matches the local chain; the uplink calls it before it acks up to seq
// (DESIGN: central's receipt is verified, kept, and only then marks batches acked), so
// a site can later prove what central held. An error means nothing was kept: the
// uplink does not ack and tries again.
type ReceiptKeeper interface {
	Keep(seq uint64, receipt []byte) error
}

// Incident kinds.
const (
	// IncidentOversize: a batch is larger than max_message_bytes. It stays unreceipted and
	// holds back the batches after it (receipts are cumulative).
	IncidentOversize = "oversize"
	// IncidentRollback: central receipted a seq beyond the local head (the spool is
	// behind central: a restored backup, a clone, a rollback).
	IncidentRollback = "rollback"
	// IncidentFork: central receipted a seq whose header hash differs from the local
	// batch at that seq (two chains under one device name).
	IncidentFork = "fork"
)

// Incident is something the daemon records in the chain and shows in health.
type Incident struct {
	Kind        string
	Seq         uint64
	Size, Limit int    // oversize: payload bytes and the limit
	LocalHead   uint64 // rollback, fork: local head seq
	LocalHash   string // fork: local header hash at Seq
	CentralHash string // rollback, fork: the hash central named
}

// Reporter receives incidents. Each (kind, seq) is reported once per process.
type Reporter interface {
	// Report must not block; the daemon turns it into a self-audit event.
	Report(Incident)
}

// Connection states in Stats.
const (
	StateDisconnected = "disconnected"
	StateConnecting   = "connecting"
	StateConnected    = "connected"
)

// Stats is the uplink's view for health and metrics.
type Stats struct {
	State        string
	HeadSeq      uint64
	AckedSeq     uint64        // as the spool records it
	Unsent       uint64        // sealed batches central has not receipted
	OldestUnsent time.Duration // age (since sealing) of the oldest of them; 0 if none
	InFlight     int           // published, waiting for a receipt
	Published    uint64        // publishes, resends included
	Resends      uint64        // publishes of a seq published before
	PubAcks      uint64        // broker PUBACKs seen: the broker has it, nothing more (never an ack)
	Receipts     uint64        // verified receipts
	BadReceipts  uint64        // receipts that did not verify
	Reconnects   uint64        // connections after the first
	OversizeSeq  uint64        // a batch too large to send (held back, see IncidentOversize); 0 if none
	Incidents    uint64        // rollback and fork receipts
	LastError    string
}

// Uplink publishes batches from a Source and applies verified receipts to it.
type Uplink struct {
	cfg Config
	tls *tls.Config
	src Source
	rv  ReceiptVerifier
	rep Reporter
	log *slog.Logger
	rl  ratelog.Limiter

	// Only the Run goroutine writes these.
	maxSent   uint64 // highest seq ever published: below it, a publish is a resend
	receipted uint64 // highest seq central receipted (>= what src has, if an Ack failed)
	receipt   []byte // the receipt for receipted
	kept      uint64 // highest seq whose receipt the ReceiptKeeper stored
	ackedSrc  uint64 // highest seq the source recorded through Ack

	state                                             atomic.Value // string
	published, resends, receipts, badReceipts, reconn atomic.Uint64
	incidents, oversizeSeq, pubacks                   atomic.Uint64
	inflight                                          atomic.Int64

	wake chan struct{} // Notify

	mu         sync.Mutex
	lastErr    string
	reported   map[string]uint64 // kind -> last seq reported
	oldestSeq  uint64            // cache for Stats: sealed time of batch oldestSeq
	oldestTime time.Time
}

// New validates cfg (after applying defaults) and builds an uplink; it starts nothing.
// rep may be nil.
func New(cfg Config, src Source, receipts ReceiptVerifier, rep Reporter, logger *slog.Logger) (*Uplink, error) {
	cfg.ApplyDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if src == nil || receipts == nil {
		return nil, errors.New("uplink: nil source or receipt verifier")
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	u := &Uplink{cfg: cfg, src: src, rv: receipts, rep: rep,
		log: logger.With(keyComponent, "uplink"), reported: map[string]uint64{}, wake: make(chan struct{}, 1)}
	if cfg.usesTLS() {
		tc, err := cfg.tlsConfig()
		if err != nil {
			return nil, err
		}
		if tc.ServerName == "" { // verify the broker's name even when the daemon built tc
			if bu, err := url.Parse(cfg.Broker); err == nil {
				tc.ServerName = bu.Hostname()
			}
		}
		u.tls = tc
	}
	u.state.Store(StateDisconnected)
	return u, nil
}

// Notify tells the uplink that a batch was sealed, so it looks now rather than at the
// next poll. It never blocks; calling it from the spool's sealing path is safe.
func (u *Uplink) Notify() {
	select {
	case u.wake <- struct{}{}:
	default:
	}
}

// Run connects, publishes and applies receipts until ctx is done, reconnecting with
// jittered backoff. It returns nil when ctx is cancelled, after every goroutine it
// started (paho's included) has exited.
func (u *Uplink) Run(ctx context.Context) error {
	bo := &backoff.Backoff{Min: u.cfg.BackoffMin, Max: u.cfg.BackoffMax}
	var failures int
	var downSince time.Time
	connects := 0
	for ctx.Err() == nil {
		u.state.Store(StateConnecting)
		connected, err := u.session(ctx, func() {
			connects++
			if connects > 1 {
				u.reconn.Add(1)
			}
			if failures > 0 {
				u.log.Info("uplink connected", keyBroker, u.cfg.Broker, keyFailures, failures,
					keyDownFor, time.Since(downSince).Round(time.Millisecond))
			} else {
				u.log.Info("uplink connected", keyBroker, u.cfg.Broker)
			}
			failures = 0
			bo.Reset()
		})
		u.state.Store(StateDisconnected)
		if ctx.Err() != nil {
			break
		}
		if err == nil {
			err = errors.New("session ended")
		}
		u.setErr(err)
		if failures == 0 {
			downSince = time.Now()
		}
		failures++
		if ok, n := u.rl.Allow("session", time.Now()); ok || failures == 1 {
			u.log.Warn("uplink down, retrying", keyBroker, u.cfg.Broker, keyErr, err,
				keyFailures, failures, keySuppressed, n, "was_connected", connected)
		}
		if bo.BackOff(ctx, err) != nil {
			break
		}
	}
	return nil
}

// session runs one MQTT connection: connect, subscribe to the ack topic, announce
// online, then pump until the connection is lost or ctx is done. onConnected runs once
// the session is up.
func (u *Uplink) session(ctx context.Context, onConnected func()) (connected bool, err error) {
	lost := make(chan error, 1)
	recv := make(chan []byte, 64)
	done := make(chan struct{})
	o := mqtt.NewClientOptions().AddBroker(u.cfg.Broker).SetClientID(u.cfg.ClientID).
		SetCleanSession(true).SetAutoReconnect(false).SetConnectRetry(false).
		SetConnectTimeout(u.cfg.ConnectTimeout).SetKeepAlive(u.cfg.KeepAlive).
		SetPingTimeout(u.cfg.ConnectTimeout).SetWriteTimeout(u.cfg.ConnectTimeout).
		SetOrderMatters(false).SetWill(u.cfg.StatusTopic(), "offline", 1, true).
		SetConnectionLostHandler(func(_ mqtt.Client, err error) {
			select {
			case lost <- err:
			default:
			}
		})
	o.SetCustomOpenConnectionFn(u.dialer(ctx))
	if u.cfg.Username != "" {
		o.SetUsername(u.cfg.Username).SetPassword(u.cfg.Password)
	}
	c := mqtt.NewClient(o)
	tok := c.Connect()
	<-tok.Done() // bounded by ConnectTimeout; waiting keeps paho's goroutines ours
	if err := tok.Error(); err != nil {
		c.Disconnect(0)
		return false, fmt.Errorf("connect %s: %w", u.cfg.Broker, err)
	}
	defer func() {
		if ctx.Err() != nil { // a clean stop: the will is not sent, so say it ourselves
			t := c.Publish(u.cfg.StatusTopic(), 1, true, "offline")
			t.WaitTimeout(time.Second)
		}
		close(done) // handlers blocked on recv return
		c.Disconnect(250)
	}()
	st := c.Subscribe(u.cfg.AckTopic(), 1, func(_ mqtt.Client, m mqtt.Message) {
		select {
		case recv <- m.Payload():
		case <-done:
		}
	})
	if err := waitToken(ctx, st, u.cfg.ConnectTimeout); err != nil {
		return false, fmt.Errorf("subscribe %s: %w", u.cfg.AckTopic(), err)
	}
	if len(u.cfg.PublicKey) > 0 {
		c.Publish(u.cfg.KeyTopic(), 1, true, u.cfg.PublicKey)
	}
	c.Publish(u.cfg.StatusTopic(), 1, true, "online")
	u.state.Store(StateConnected)
	onConnected()
	s, err := u.newSender(c)
	if err != nil {
		return true, err
	}
	return true, s.pump(ctx, recv, lost)
}

func waitToken(ctx context.Context, t mqtt.Token, d time.Duration) error {
	timer := time.NewTimer(d)
	defer timer.Stop()
	select {
	case <-t.Done():
		return t.Error()
	case <-timer.C:
		return errors.New("timed out")
	case <-ctx.Done():
		return ctx.Err()
	}
}

// publisher is the part of an MQTT client a sender uses.
type publisher interface {
	Publish(topic string, qos byte, retained bool, payload any) mqtt.Token
}

type flight struct {
	seq  uint64
	hash string
	tok  mqtt.Token // until its PUBACK (or error) is seen
}

// sender is one session's delivery state. Its methods are the loop bodies; tests call
// them directly.
type sender struct {
	u        *Uplink
	c        publisher
	pos      Position
	next     uint64   // next seq to publish
	inflight []flight // published, not receipted, in seq order
	stuck    uint64   // an oversize seq: nothing at or after it is published
	timer    *time.Timer
}

func (u *Uplink) newSender(c publisher) (*sender, error) {
	pos, err := u.src.Position()
	if err != nil {
		return nil, fmt.Errorf("read spool position: %w", err)
	}
	u.receipted = max(u.receipted, pos.AckedSeq)
	u.ackedSrc = max(u.ackedSrc, pos.AckedSeq)
	s := &sender{u: u, c: c, pos: pos, next: u.receipted + 1, timer: time.NewTimer(time.Hour)}
	s.timer.Stop()
	return s, nil
}

func (s *sender) pump(ctx context.Context, recv <-chan []byte, lost <-chan error) error {
	u := s.u
	poll := time.NewTicker(u.cfg.PollInterval)
	defer poll.Stop()
	defer s.timer.Stop()
	defer u.inflight.Store(0)
	for {
		if err := s.fill(); err != nil {
			return err
		}
		select {
		case <-ctx.Done():
			return nil
		case err := <-lost:
			return fmt.Errorf("connection lost: %w", err)
		case p := <-recv:
			s.receipt(p)
		case <-poll.C:
			if err := s.refresh(); err != nil {
				u.setErr(err)
			}
		case <-u.wake:
			if err := s.refresh(); err != nil {
				u.setErr(err)
			}
		case <-s.timer.C:
			s.timeout()
		}
	}
}

func (s *sender) refresh() error {
	pos, err := s.u.src.Position()
	if err != nil {
		return fmt.Errorf("read spool position: %w", err)
	}
	s.pos = pos
	s.u.retryAck()
	return nil
}

var errEnough = errors.New("enough")

// fill publishes batches from next while the window has room. A batch too large is
// reported and stops the fill at that seq. It returns an error only when the
// connection is gone.
func (s *sender) fill() error {
	u := s.u
	for i := range s.inflight {
		if err := s.reap(&s.inflight[i]); err != nil {
			return err
		}
	}
	room := u.cfg.Window - len(s.inflight)
	if room <= 0 || s.next > s.pos.HeadSeq || (s.stuck != 0 && s.next >= s.stuck) {
		return nil
	}
	var got []*ledger.Batch
	err := u.src.Batches(s.next, func(b *ledger.Batch) error {
		got = append(got, b)
		if len(got) >= room {
			return errEnough
		}
		return nil
	})
	if err != nil && !errors.Is(err, errEnough) {
		u.setErr(fmt.Errorf("read batches from %d: %w", s.next, err))
		return nil
	}
	for _, b := range got {
		h, err := ledger.ParseHeader(b.Header)
		if err != nil {
			u.setErr(fmt.Errorf("batch after %d: %w", s.next-1, err))
			return nil
		}
		if h.Seq < s.next {
			continue
		}
		// h.Seq > s.next: the batches between were pruned, so they were acked.
		wire := b.AppendWire(make([]byte, 0, wireSize(b)))
		if len(wire) > u.cfg.MaxMessageBytes {
			s.stuck = h.Seq
			u.oversizeSeq.Store(h.Seq)
			if u.once(IncidentOversize, h.Seq) {
				u.log.Error("batch too large to publish; it stays unreceipted and holds back later batches",
					keySeq, h.Seq, keySize, len(wire), keyLimit, u.cfg.MaxMessageBytes)
				u.report(Incident{Kind: IncidentOversize, Seq: h.Seq, Size: len(wire), Limit: u.cfg.MaxMessageBytes})
			}
			return nil
		}
		hh := ledger.HeaderHash(b.Header)
		tok := s.c.Publish(u.cfg.BatchTopic(), 1, false, wire)
		u.log.Debug("published", keySeq, h.Seq, keySize, len(wire))
		u.published.Add(1)
		if h.Seq <= u.maxSent {
			u.resends.Add(1)
		}
		u.maxSent = max(u.maxSent, h.Seq)
		if len(s.inflight) == 0 {
			s.timer.Reset(u.cfg.AckTimeout)
		}
		s.inflight = append(s.inflight, flight{seq: h.Seq, hash: hexHash(hh), tok: tok})
		s.next = h.Seq + 1
	}
	u.inflight.Store(int64(len(s.inflight)))
	return nil
}

// reap looks at f's publish token without waiting: a PUBACK is counted, an error
// returned (the connection is gone).
func (s *sender) reap(f *flight) error {
	if f.tok == nil {
		return nil
	}
	select {
	case <-f.tok.Done():
		err := f.tok.Error()
		f.tok = nil
		if err != nil {
			return fmt.Errorf("publish seq %d: %w", f.seq, err)
		}
		s.u.pubacks.Add(1)
	default:
	}
	return nil
}

func wireSize(b *ledger.Batch) int {
	n := 4 + 4 + len(b.Header) + 2 + len(b.Signature) + 4
	for _, e := range b.Events {
		n += 4 + len(e)
	}
	return n
}

// timeout: no receipt within ack_timeout, so everything in flight goes again, from the
// first unreceipted seq.
func (s *sender) timeout() {
	if len(s.inflight) == 0 {
		return
	}
	u := s.u
	if ok, n := u.rl.Allow("ack_timeout", time.Now()); ok {
		u.log.Warn("no receipt within ack_timeout; resending", keySeq, u.receipted+1,
			"in_flight", len(s.inflight), keySuppressed, n)
	}
	s.inflight = s.inflight[:0]
	s.next = u.receipted + 1
	u.inflight.Store(0)
}

// receipt verifies one receipt and, if it matches the local chain, acks up to it.
func (s *sender) receipt(p []byte) {
	u := s.u
	seq, hash, err := u.rv.Verify(p)
	if err != nil {
		u.badReceipts.Add(1)
		if ok, n := u.rl.Allow("bad_receipt", time.Now()); ok {
			u.log.Warn("receipt does not verify", keyErr, err, keySize, len(p), keySuppressed, n)
		}
		return
	}
	u.receipts.Add(1)
	if seq > s.pos.HeadSeq {
		if err := s.refresh(); err != nil {
			u.setErr(err)
			return
		}
	}
	in, ok := match(seq, hash, s.pos, s.localHash)
	if in != nil {
		u.incidents.Add(1)
		if u.once(in.Kind, seq) {
			if in.Kind == IncidentRollback {
				u.log.Error("central holds batches beyond the local head: this spool is behind central (restored, cloned or rolled back)",
					keySeq, seq, "head", s.pos.HeadSeq)
			} else {
				u.log.Error("receipt names another header at this seq: a fork", keySeq, seq, "local", in.LocalHash, "central", hash)
			}
			u.report(*in)
		}
		return
	}
	if !ok { // pruned long ago: acked already, nothing to compare or do
		return
	}
	if seq <= u.receipted {
		return
	}
	u.receipted, u.receipt = seq, bytes.Clone(p)
	u.log.Debug("receipt", keySeq, seq)
	i := 0
	for i < len(s.inflight) && s.inflight[i].seq <= seq {
		s.reap(&s.inflight[i]) // an error shows as a lost connection
		i++
	}
	s.inflight = append(s.inflight[:0], s.inflight[i:]...)
	s.next = max(s.next, seq+1)
	u.inflight.Store(int64(len(s.inflight)))
	if len(s.inflight) > 0 {
		s.timer.Reset(u.cfg.AckTimeout)
	} else {
		s.timer.Stop()
	}
	u.retryAck()
}

// match compares a verified receipt for (seq, hash) with the local chain at pos. It
// returns a rollback or fork incident, or ok when the receipt covers a local batch; with
// neither, the batch was pruned long ago (acked already: nothing to compare or do).
func match(seq uint64, hash string, pos Position, localHash func(uint64) (string, bool)) (in *Incident, ok bool) {
	if seq > pos.HeadSeq {
		return &Incident{Kind: IncidentRollback, Seq: seq, LocalHead: pos.HeadSeq, CentralHash: hash}, false
	}
	local, found := localHash(seq)
	if !found {
		return nil, false
	}
	if !strings.EqualFold(local, hash) {
		return &Incident{Kind: IncidentFork, Seq: seq, LocalHead: pos.HeadSeq, LocalHash: local, CentralHash: hash}, false
	}
	return nil, true
}

// localHash is the header hash of the local batch seq, if the spool still has it.
func (s *sender) localHash(seq uint64) (string, bool) {
	for _, f := range s.inflight {
		if f.seq == seq {
			return f.hash, true
		}
	}
	if seq == s.pos.HeadSeq && s.pos.HeadHash != "" {
		return s.pos.HeadHash, true
	}
	hash, err := sourceHash(s.u.src, seq)
	if err != nil {
		s.u.setErr(err)
	}
	return hash, hash != ""
}

// sourceHash reads the header hash of batch seq from src; "" when it is not there.
func sourceHash(src Source, seq uint64) (string, error) {
	var hash string
	err := src.Batches(seq, func(b *ledger.Batch) error {
		if h, err := ledger.ParseHeader(b.Header); err == nil && h.Seq == seq {
			hash = hexHash(ledger.HeaderHash(b.Header))
		}
		return errEnough
	})
	if err != nil && !errors.Is(err, errEnough) {
		return "", fmt.Errorf("read batch %d: %w", seq, err)
	}
	return hash, nil
}

// ApplyResult is what ApplyReceipts did.
type ApplyResult struct {
	Receipts  int        // receipts read
	Verified  int        // of them, verified by the ReceiptVerifier
	Bad       []error    // one per receipt that did not verify
	Incidents []Incident // rollback or fork receipts (also reported)
	AckedSeq  uint64     // the source's acked seq afterwards
	Moved     bool       // the acked seq moved
}

// ApplyReceipts applies receipts carried by hand from central (an air-gapped site:
// `edgeaudit receipts import`) with the rules of the MQTT path: each is verified, compared
// with the local chain (a rollback or fork is reported to rep, never acked), and the
// highest matching one is kept (when rv is a ReceiptKeeper) before the source is acked up
// to it. An error is a source or keeper failure; nothing after it was recorded.
func ApplyReceipts(src Source, rv ReceiptVerifier, rep Reporter, receipts [][]byte) (ApplyResult, error) {
	res := ApplyResult{Receipts: len(receipts)}
	pos, err := src.Position()
	if err != nil {
		return res, fmt.Errorf("apply receipts: %w", err)
	}
	var best uint64
	var bestReceipt []byte
	var readErr error
	localHash := func(seq uint64) (string, bool) {
		if seq == pos.HeadSeq && pos.HeadHash != "" {
			return pos.HeadHash, true
		}
		h, err := sourceHash(src, seq)
		if err != nil && readErr == nil {
			readErr = err
		}
		return h, h != ""
	}
	for i, b := range receipts {
		seq, hash, err := rv.Verify(b)
		if err != nil {
			res.Bad = append(res.Bad, fmt.Errorf("receipt %d: %w", i+1, err))
			continue
		}
		res.Verified++
		in, ok := match(seq, hash, pos, localHash)
		if readErr != nil {
			return res, fmt.Errorf("apply receipts: %w", readErr)
		}
		if in != nil {
			res.Incidents = append(res.Incidents, *in)
			if rep != nil {
				rep.Report(*in)
			}
			continue
		}
		if ok && seq > best {
			best, bestReceipt = seq, b
		}
	}
	res.AckedSeq = pos.AckedSeq
	if best <= pos.AckedSeq {
		return res, nil
	}
	if k, ok := rv.(ReceiptKeeper); ok {
		if err := k.Keep(best, bestReceipt); err != nil {
			return res, fmt.Errorf("apply receipts: keep receipt %d: %w", best, err)
		}
	}
	if err := src.Ack(best); err != nil {
		return res, fmt.Errorf("apply receipts: ack %d: %w", best, err)
	}
	res.AckedSeq, res.Moved = best, true
	return res, nil
}

// retryAck keeps the receipt for u.receipted and records it in the source (again, if an
// earlier Keep or Ack failed).
func (u *Uplink) retryAck() {
	if k, ok := u.rv.(ReceiptKeeper); ok && u.kept < u.receipted && u.receipt != nil {
		if err := k.Keep(u.receipted, u.receipt); err != nil {
			u.setErr(fmt.Errorf("keep receipt %d: %w", u.receipted, err))
			if ok, n := u.rl.Allow("keep", time.Now()); ok {
				u.log.Error("keep receipt", keySeq, u.receipted, keyErr, err, keySuppressed, n)
			}
			return
		}
		u.kept = u.receipted
	}
	if u.ackedSrc >= u.receipted { // each Ack is a commit: none without news
		return
	}
	if err := u.src.Ack(u.receipted); err != nil {
		u.setErr(fmt.Errorf("ack %d: %w", u.receipted, err))
		if ok, n := u.rl.Allow("ack", time.Now()); ok {
			u.log.Error("record receipt in spool", keySeq, u.receipted, keyErr, err, keySuppressed, n)
		}
		return
	}
	u.ackedSrc = u.receipted
}

// once reports whether (kind, seq) is new, and remembers it.
func (u *Uplink) once(kind string, seq uint64) bool {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.reported[kind] == seq {
		return false
	}
	u.reported[kind] = seq
	return true
}

func (u *Uplink) report(in Incident) {
	if u.rep != nil {
		u.rep.Report(in)
	}
}

func (u *Uplink) setErr(err error) {
	u.mu.Lock()
	u.lastErr = err.Error()
	u.mu.Unlock()
}

// Stats reads the spool's position and the counters. Safe for concurrent use.
func (u *Uplink) Stats() Stats {
	st := Stats{
		State: u.state.Load().(string), InFlight: int(u.inflight.Load()),
		Published: u.published.Load(), Resends: u.resends.Load(), Receipts: u.receipts.Load(),
		BadReceipts: u.badReceipts.Load(), Reconnects: u.reconn.Load(), PubAcks: u.pubacks.Load(),
		OversizeSeq: u.oversizeSeq.Load(), Incidents: u.incidents.Load(),
	}
	pos, err := u.src.Position()
	u.mu.Lock()
	defer u.mu.Unlock()
	st.LastError = u.lastErr
	if err != nil {
		st.LastError = err.Error()
		return st
	}
	st.HeadSeq, st.AckedSeq = pos.HeadSeq, pos.AckedSeq
	if pos.HeadSeq <= pos.AckedSeq {
		return st
	}
	st.Unsent = pos.HeadSeq - pos.AckedSeq
	if first := pos.AckedSeq + 1; u.oldestSeq != first {
		_ = u.src.Batches(first, func(b *ledger.Batch) error {
			if h, err := ledger.ParseHeader(b.Header); err == nil {
				if t, err := time.Parse(time.RFC3339Nano, h.Sealed); err == nil {
					u.oldestSeq, u.oldestTime = first, t
				}
			}
			return errEnough
		})
	}
	if u.oldestSeq == pos.AckedSeq+1 {
		st.OldestUnsent = max(time.Since(u.oldestTime), 0)
	}
	return st
}
