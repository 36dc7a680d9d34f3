package receiver

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/edgeaudit/edgeaudit/audit"
	"github.com/edgeaudit/edgeaudit/ledger"
)

// Audit trail defaults.
const (
	// DefaultTrailSite is the site name of central's own trail.
	DefaultTrailSite = "central"
	// TrailRetries bounds how often Record re-reads the head and re-seals when a
	// Store without a lock reports ErrHeadMoved.
	TrailRetries = 8
)

// CodeAuditLogUsed is the DICOM code of a query of the trail (DCM 110101), kept in the
// event beside audit.ActionAuditLogUsed.
var CodeAuditLogUsed = audit.Code{System: "DCM", Code: "110101", Text: "Audit Log Used"}

// AuditTrail is central's own audit trail: what happened to the trail central keeps
// (refused batches, queries, enrolments, starts and stops). It is a chain like any
// appliance's, stored in the same Store under its own site/device names and sealed and
// receipted with central's receipt key, so `edgeaudit verify -key central.pub` checks
// it and queries find it. Several AuditTrails, in one process or several, may write
// one trail: a Store that is a Locker is locked around each append, any other must
// return ErrHeadMoved when its head moved (the PostgreSQL store), and Record then
// seals again on the new head.
type AuditTrail struct {
	store        Store
	signer       Signer
	site, device string
	keyID        string
	log          *slog.Logger
	now          func() time.Time

	mu sync.Mutex // one Record at a time per AuditTrail; other writers are the lock's
}

// NewAuditTrail returns a trail written to store as site/device, signed by signer
// (central's receipt signer). It starts and writes nothing.
func NewAuditTrail(store Store, signer Signer, site, device string, logger *slog.Logger) (*AuditTrail, error) {
	if store == nil || signer == nil {
		return nil, errors.New("new audit trail: store and signer are required")
	}
	if !ledger.ValidName(site) || !ledger.ValidName(device) {
		return nil, fmt.Errorf("new audit trail: bad site or device name %q/%q", site, device)
	}
	kid, err := ledger.KeyID(signer.Public())
	if err != nil {
		return nil, fmt.Errorf("new audit trail: %w", err)
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	return &AuditTrail{store: store, signer: signer, site: site, device: device, keyID: kid,
		log: logger.With(attrComponent, "receiver.audittrail", attrSite, site, attrDevice, device), now: time.Now}, nil
}

// Record seals events into one batch after the trail's stored head and appends it,
// durably, before it returns nil. Empty fields are filled: id, time and received (now),
// source (kind self, transport internal, app edgeaudit, host the trail's device) and
// outcome (unknown). Record with no events does nothing. On error the batch is normally
// not stored and the events may be recorded again; the exception is a store whose
// commit succeeded but whose answer was lost, where a second Record stores them twice
// (under new ids when the ids were filled here), which a trail tolerates better than a
// lost record.
func (t *AuditTrail) Record(ctx context.Context, events ...audit.Event) error {
	if len(events) == 0 {
		return nil
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	now := t.now().UTC()
	raw := make([][]byte, len(events))
	first, last := time.Time{}, time.Time{}
	for i := range events {
		e := events[i] // a copy: the caller's events stay as they were
		t.fill(&e, now)
		raw[i] = e.AppendJSON(make([]byte, 0, e.SizeHint()))
		if first.IsZero() || e.Received.Before(first) {
			first = e.Received
		}
		if e.Received.After(last) {
			last = e.Received
		}
	}
	b := &ledger.Batch{Events: raw}
	root := ledger.EventsRoot(raw)
	locker, _ := t.store.(Locker)
	for attempt := 1; ; attempt++ {
		err := t.appendOnce(ctx, locker, b, root, first, last)
		if err == nil {
			if attempt > 1 {
				t.log.Info("audit trail recorded after the head moved", attrFailures, attempt-1)
			}
			return nil
		}
		if !errors.Is(err, ErrHeadMoved) || attempt >= TrailRetries {
			return fmt.Errorf("record audit trail %s/%s: %w", t.site, t.device, err)
		}
		// Another writer appended first: wait a little, with jitter so that two
		// writers do not collide again, then seal on the new head.
		tm := time.NewTimer(time.Duration(attempt) * time.Duration(1+randByte()%8) * time.Millisecond)
		select {
		case <-ctx.Done():
			tm.Stop()
			return fmt.Errorf("record audit trail %s/%s: %w", t.site, t.device, ctx.Err())
		case <-tm.C:
		}
	}
}

func (t *AuditTrail) fill(e *audit.Event, now time.Time) {
	if e.ID == "" {
		e.ID = audit.NewID(now)
	}
	if e.Time.IsZero() {
		e.Time = now
	}
	if e.Received.IsZero() {
		e.Received = now
	}
	if e.Source.Kind == "" {
		e.Source = audit.Source{Kind: audit.KindSelf, Transport: "internal", App: "edgeaudit", Host: t.device}
	}
	if e.Outcome == "" {
		e.Outcome = audit.OutcomeUnknown
	}
}

// appendOnce seals b on the stored head (under the store's lock when it has one), signs
// the head's receipt and appends.
func (t *AuditTrail) appendOnce(ctx context.Context, locker Locker, b *ledger.Batch, root ledger.Hash, first, last time.Time) error {
	if locker != nil {
		unlock, err := locker.Lock(ctx, t.site, t.device)
		if err != nil {
			return err
		}
		defer unlock()
	}
	head, err := t.store.Head(ctx, t.site, t.device)
	if err != nil {
		return err
	}
	chain := head.Chain
	if chain == "" {
		var id [16]byte
		if _, err := rand.Read(id[:]); err != nil {
			return fmt.Errorf("new chain id: %w", err)
		}
		chain = hex.EncodeToString(id[:])
	}
	now := t.now().UTC()
	h := ledger.Header{Site: t.site, Device: t.device, Chain: chain, Seq: head.Seq + 1, Prev: prevOf(head),
		First: first.UTC().Format(audit.TimeFormat), Last: last.UTC().Format(audit.TimeFormat),
		Sealed: now.Format(audit.TimeFormat), TimeSync: ledger.TimeSync{State: "unknown"}, KeyID: t.keyID}
	sign := func(d []byte) ([]byte, error) { return t.signer.Sign(ctx, d) }
	hb, sig, err := h.Seal(root, len(b.Events), sign)
	if err != nil {
		return err
	}
	sum := ledger.HeaderHash(hb)
	hash := hex.EncodeToString(sum[:])
	// The head carries a receipt like any device's, so that evidence packages and
	// tools treat the trail as one more chain.
	rc, err := ledger.SignReceipt(ledger.Receipt{Site: t.site, Device: t.device, Chain: chain, Seq: h.Seq, HeaderHash: hash, Time: now},
		sign, DefaultKeyName, t.signer.Public())
	if err != nil {
		return err
	}
	batch := &ledger.Batch{Header: hb, Signature: sig, Events: b.Events}
	if err := t.store.Append(ctx, Entry{Site: t.site, Device: t.device, Header: h, Hash: hash, Batch: batch, Receipt: rc}); err != nil {
		return err
	}
	t.log.Debug("audit trail batch stored", attrSeq, h.Seq, "events", len(b.Events))
	return nil
}

func randByte() byte {
	var b [1]byte
	rand.Read(b[:]) // never fails (Go 1.24+)
	return b[0]
}
