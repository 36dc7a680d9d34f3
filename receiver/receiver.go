// Package receiver is the central side: it takes batches from appliances (over MQTT or
// from a file), verifies each against the device's enrolled key and stored chain,
// stores it once, and answers with a signed receipt.
package receiver

import (
	"context"
	"crypto/ecdsa"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/edgeaudit/edgeaudit/internal/configerr"
	"github.com/edgeaudit/edgeaudit/ledger"
)

// Defaults for zero Config fields.
const (
	DefaultPrefix             = "edgeaudit"
	DefaultKeyName            = "edgeaudit/central"
	DefaultMaxHeld            = 64
	DefaultMaxHeldBytes       = 16 << 20
	DefaultMaxBatchBytes      = 16 << 20
	DefaultMaxQuarantineBytes = 1 << 30
	DefaultClientID           = "edgeaudit-receiver"
	DefaultQueue              = 64
	DefaultRetryMax           = 30 * time.Second
)

// Config configures a Receiver.
type Config struct {
	// Quarantine is the folder for refused batches (required):
	// <Quarantine>/<site>/<device>/<UTC ns>-<seq>-<reason>.eab and a .json beside it.
	Quarantine string
	// KeyName is the receipts' signed-note key name (default DefaultKeyName).
	KeyName string
	// MaxHeld bounds the batches held per device while a gap before them is open
	// (default DefaultMaxHeld); MaxHeldBytes bounds their size (default
	// DefaultMaxHeldBytes). A batch beyond either is not held: it is counted and
	// dropped, and the appliance resends it because it was not receipted.
	MaxHeld      int
	MaxHeldBytes int
	// MaxBatchBytes is the largest payload accepted (default DefaultMaxBatchBytes).
	MaxBatchBytes int
	// MaxQuarantineBytes bounds what one process writes to the quarantine folder, so
	// that a hostile publisher cannot fill the disk (default
	// DefaultMaxQuarantineBytes). Refusals beyond it are counted and logged only.
	MaxQuarantineBytes int64

	// MQTT, used by Run only.
	// Broker is the broker URL, e.g. tcp://127.0.0.1:1883 or tls://central:8883.
	Broker string
	// Prefix is the first topic level(s) (default DefaultPrefix).
	Prefix string
	// ClientID is the receiver's MQTT client id (default DefaultClientID). The session
	// is persistent (clean session off), so the broker keeps batches published while the
	// receiver is away; in a SharedGroup it is clean (see Run). Two receivers must not
	// share one id.
	ClientID           string
	Username, Password string
	// TLS configures the broker connection for tls:// and ssl:// URLs.
	TLS *tls.Config
	// Queue is how many received batches wait for Handle (default DefaultQueue).
	Queue int
	// RetryMax caps the backoff between attempts of a batch whose storing failed
	// (default DefaultRetryMax).
	RetryMax time.Duration
	// SharedGroup, when set, makes Run subscribe to $share/<SharedGroup>/<Prefix>/+/+/batch
	// (an MQTT shared subscription): the broker hands each batch to one of the receivers
	// in the group, which must share one store (PostgreSQL) and have distinct ClientIDs.
	// Run then also rechecks a device shortly after its activity: held batches are
	// stored as soon as another receiver has filled the gap before them, and a receipt
	// published out of order by two receivers is followed by the newest one. Empty
	// (the default): a plain subscription, one receiver owns the store.
	SharedGroup string
	// OnRefuse, when set, is called after each refusal (counted, logged and quarantined
	// by then), from the goroutine that handled the batch and with no lock of the
	// receiver held. It must be quick and must not keep ref beyond the call; rate
	// limiting is the caller's.
	OnRefuse func(ref *RefusedError)
}

// Validate checks the fields that have no default.
func (c *Config) Validate() error {
	if c.Quarantine == "" {
		return &configerr.Error{Field: "receive.quarantine", Value: c.Quarantine, Err: errors.New("required")}
	}
	if c.SharedGroup != "" && strings.ContainsAny(c.SharedGroup, "/+#\x00") {
		return &configerr.Error{Field: "receive.shared_group", Value: c.SharedGroup, Err: errors.New("must be one MQTT topic level: no '/', '+', '#' or NUL")}
	}
	if strings.ContainsAny(c.KeyName, " +\t\n\r") {
		return &configerr.Error{Field: "receive.key_name", Value: c.KeyName, Err: errors.New("must not contain spaces or '+'")}
	}
	for _, f := range []struct {
		name string
		v    int64
	}{{"max_held", int64(c.MaxHeld)}, {"max_held_bytes", int64(c.MaxHeldBytes)}, {"max_batch_bytes", int64(c.MaxBatchBytes)},
		{"max_quarantine_bytes", c.MaxQuarantineBytes}, {"queue", int64(c.Queue)}, {"retry_max", int64(c.RetryMax)}} {
		if f.v < 0 {
			return &configerr.Error{Field: "receive." + f.name, Value: fmt.Sprint(f.v), Err: errors.New("must not be negative")}
		}
	}
	return nil
}

func (c *Config) applyDefaults() {
	def := func(p *int, v int) {
		if *p == 0 {
			*p = v
		}
	}
	def(&c.MaxHeld, DefaultMaxHeld)
	def(&c.MaxHeldBytes, DefaultMaxHeldBytes)
	def(&c.MaxBatchBytes, DefaultMaxBatchBytes)
	def(&c.Queue, DefaultQueue)
	if c.MaxQuarantineBytes == 0 {
		c.MaxQuarantineBytes = DefaultMaxQuarantineBytes
	}
	if c.KeyName == "" {
		c.KeyName = DefaultKeyName
	}
	if c.Prefix == "" {
		c.Prefix = DefaultPrefix
	}
	if c.ClientID == "" {
		c.ClientID = DefaultClientID
	}
	if c.RetryMax == 0 {
		c.RetryMax = DefaultRetryMax
	}
}

// Signer signs receipts with central's key (attest.SoftwareSigner fits).
type Signer interface {
	// Sign returns an ASN.1 DER ECDSA P-256 signature over digest. It may be called
	// concurrently; an error fails the batch at hand, which is retried.
	Sign(ctx context.Context, digest []byte) ([]byte, error)
	// Public is the key receipts verify with.
	Public() *ecdsa.PublicKey
}

// Stats are counters since New; Handle updates them, Stats reads them.
type Stats struct {
	Batches     uint64 // batches stored (each once)
	Events      uint64 // events in them
	Duplicates  uint64 // batches already stored, answered with the head's receipt
	Held        uint64 // batches held ahead of a gap (each time one was taken in)
	HeldDropped uint64 // batches not held because the device's hold was full
	// HeadMoved counts appends the store turned down because another receiver had
	// moved the device's head first; each batch was decided again on the new head.
	HeadMoved   uint64
	Refused     map[string]uint64
	Quarantined uint64 // refused batches written to the quarantine folder
	// QuarantineSkipped counts refused batches not written: the budget was used up or
	// the write failed.
	QuarantineSkipped uint64
}

// Receiver verifies and stores batches and signs receipts. Handle is safe for
// concurrent use; batches of one device are handled one at a time.
type Receiver struct {
	cfg    Config
	store  Store
	keys   DeviceKeys
	signer Signer
	log    *slog.Logger

	mu      sync.Mutex
	devices map[string]*device // "site/device"

	stats struct {
		batches, events, duplicates, held, heldDropped, headMoved, quarantined, quarantineSkipped atomic.Uint64
		quarantineBytes                                                                           atomic.Int64
		refusedMu                                                                                 sync.Mutex
		refused                                                                                   map[string]uint64
	}
	now func() time.Time
}

// device is the state of one site/device. Its mutex serializes Handle for it.
type device struct {
	mu        sync.Mutex
	loaded    bool
	head      Head // the store's head as last seen; other receivers may have moved it since
	held      map[uint64]heldBatch
	heldBytes int
	// refused collects the refusals made under mu, for OnRefuse once mu is released.
	refused []*RefusedError
	// group is the uncommitted group that staged batches of the device (head is then
	// ahead of the store), nil when none.
	group *group
}

// maxAttempts bounds how often one batch is decided again after the store's head moved
// under it (each time another receiver stored a batch of the device first).
const maxAttempts = 8

// heldBatch has passed every check but the link to its predecessor.
type heldBatch struct {
	raw    []byte
	batch  *ledger.Batch
	header ledger.Header
	hash   string
}

// New returns a receiver over store, keys and signer. It starts nothing.
func New(cfg Config, store Store, keys DeviceKeys, signer Signer, logger *slog.Logger) (*Receiver, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg.applyDefaults()
	if store == nil || keys == nil || signer == nil {
		return nil, errors.New("new receiver: store, keys and signer are required")
	}
	if _, err := ledger.ReceiptVerifierKey(cfg.KeyName, signer.Public()); err != nil {
		return nil, fmt.Errorf("new receiver: %w", err)
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	r := &Receiver{cfg: cfg, store: store, keys: keys, signer: signer,
		log: logger.With(attrComponent, "receiver"), devices: map[string]*device{}, now: time.Now}
	r.stats.refused = map[string]uint64{}
	return r, nil
}

// Stats returns a snapshot of the counters.
func (r *Receiver) Stats() Stats {
	s := Stats{Batches: r.stats.batches.Load(), Events: r.stats.events.Load(), Duplicates: r.stats.duplicates.Load(),
		Held: r.stats.held.Load(), HeldDropped: r.stats.heldDropped.Load(), HeadMoved: r.stats.headMoved.Load(), Quarantined: r.stats.quarantined.Load(),
		QuarantineSkipped: r.stats.quarantineSkipped.Load(), Refused: map[string]uint64{}}
	r.stats.refusedMu.Lock()
	for k, v := range r.stats.refused {
		s.Refused[k] = v
	}
	r.stats.refusedMu.Unlock()
	return s
}

func (r *Receiver) device(site, dev string) *device {
	r.mu.Lock()
	defer r.mu.Unlock()
	k := site + "/" + dev
	d := r.devices[k]
	if d == nil {
		d = &device{held: map[uint64]heldBatch{}}
		r.devices[k] = d
	}
	return d
}

// Handle takes one batch as received for site/device (the topic's levels) and returns
// the receipt to send back: the receipt of the device's stored head after this batch.
//
//   - The next batch of the chain is verified, stored, and receipted; batches held
//     behind it are then applied too, and the receipt names the last of them.
//   - A batch already stored (same seq, same header) is not stored again; the receipt
//     of the current head is returned, the same bytes until the head moves.
//   - A batch ahead of a gap is verified as far as it can be and held in memory
//     (bounded); Handle returns the current head's receipt (nil when nothing is
//     stored yet) so that the appliance learns where central is.
//   - A refused batch returns a *RefusedError and no receipt (see the Err* sentinels).
//
// Any other error (the store, the key folder or the signer failing) leaves the device's
// stored state as it was; the same batch may be handled again.
//
// The store may be shared with other receivers: "the current head" is the head this
// receiver last read, and the store's may be ahead of it. A batch that seems ahead of
// a gap is decided again on a freshly read head before it is held, and an Append that
// finds the head moved (ErrHeadMoved) is decided again on the new head, at most
// maxAttempts times; a duplicate is answered from the head last read.
func (r *Receiver) Handle(ctx context.Context, site, dev string, payload []byte) ([]byte, error) {
	o, err := r.handle(ctx, nil, site, dev, payload)
	return o.receipt, err
}

// outcome is what handle and settle leave behind for Run.
type outcome struct {
	receipt []byte // the device's head's receipt (nil while nothing is stored)
	seq     uint64 // the head's seq, which receipt names
	held    bool   // batches of the device are held ahead of a gap
}

// handle decides one batch. With g nil, a batch to store is stored before handle
// returns; with g, it is staged in g (the device's head moves on in memory) and stored
// by g.commit, which the caller calls before it passes on any receipt of the group.
func (r *Receiver) handle(ctx context.Context, g *group, site, dev string, payload []byte) (outcome, error) {
	if !ledger.ValidName(site) || !ledger.ValidName(dev) {
		// Not a path we can quarantine under: count and refuse only.
		ref := &RefusedError{Site: site, Device: dev, Err: ErrMalformed, Detail: "site or device is not a valid name"}
		err := r.refuse(ctx, ref, nil)
		r.notify(ref)
		return outcome{}, err
	}
	// The checks that need no stored state run first, outside the device's lock, and
	// before any state exists for it: publishers of unknown names cost no memory.
	b, h, hash, ref := r.check(ctx, site, dev, payload)
	if ref != nil {
		if ref.Err == nil { // not a refusal: an I/O error looking up the key
			return outcome{}, fmt.Errorf("handle %s/%s: %s", site, dev, ref.Detail)
		}
		err := r.refuse(ctx, ref, payload)
		r.notify(ref)
		return outcome{}, err
	}
	d := r.device(site, dev)
	d.mu.Lock()
	if d.group != nil && d.group != g {
		// Staged by a group not yet committed: its head is not durable yet.
		d.mu.Unlock()
		return outcome{}, fmt.Errorf("handle %s/%s seq %d: %w", site, dev, h.Seq, errStaged)
	}
	if d.group != nil && !(h.Chain == d.head.Chain && h.Seq == d.head.Seq+1) {
		// Anything but the next batch may need the store (a duplicate's stored header,
		// a reload): the group is committed first.
		d.mu.Unlock()
		return outcome{}, errFlush
	}
	err := r.handleLocked(ctx, g, site, dev, d, b, h, hash, payload)
	o := outcome{seq: d.head.Seq, held: len(d.held) > 0}
	if err == nil {
		o.receipt = d.head.Receipt
	}
	refused := d.refused
	d.refused = nil
	d.mu.Unlock()
	r.notify(refused...)
	return o, err
}

// notify passes refusals to OnRefuse; the caller holds no lock.
func (r *Receiver) notify(refs ...*RefusedError) {
	if r.cfg.OnRefuse == nil {
		return
	}
	for _, ref := range refs {
		r.cfg.OnRefuse(ref)
	}
}

// refuseLocked is refuse for a refusal made under d.mu: OnRefuse is called later, once
// d.mu is released.
func (r *Receiver) refuseLocked(ctx context.Context, d *device, ref *RefusedError, payload []byte) error {
	err := r.refuse(ctx, ref, payload)
	d.refused = append(d.refused, ref)
	return err
}

// handleLocked decides what to do with one checked batch, against the device's head as
// this receiver last saw it. The store may be shared: a head that another receiver has
// moved shows as ErrHeadMoved from Append (reload and decide again), and a batch that
// seems ahead of a gap is decided again on a fresh head before it is held (the gap may
// be stored already).
func (r *Receiver) handleLocked(ctx context.Context, g *group, site, dev string, d *device, b *ledger.Batch, h ledger.Header, hash string, payload []byte) error {
	if !d.loaded {
		if err := r.reload(ctx, site, dev, d); err != nil {
			return err
		}
	}
	refuse := func(err error, format string, args ...any) error {
		return r.refuseLocked(ctx, d, &RefusedError{Site: site, Device: dev, Seq: h.Seq, Err: err, Detail: fmt.Sprintf(format, args...)}, payload)
	}
	reloaded := false
	for attempt := 0; ; attempt++ {
		if attempt == maxAttempts {
			return fmt.Errorf("handle %s/%s seq %d: %d attempts: %w", site, dev, h.Seq, attempt, ErrHeadMoved)
		}
		head := d.head
		if head.Chain != "" && h.Chain != head.Chain {
			ref := &RefusedError{Site: site, Device: dev, Seq: h.Seq, Err: ErrOtherChain,
				Detail: fmt.Sprintf("chain %s, the stored chain is %s (head seq %d)", h.Chain, head.Chain, head.Seq),
				Hint:   "the appliance started a new chain (a quarantined or replaced spool?); check it before accepting the new chain"}
			return r.refuseLocked(ctx, d, ref, payload)
		}
		switch next := head.Seq + 1; {
		case h.Seq < next:
			stored := head.Hash
			if h.Seq != head.Seq {
				hb, err := r.store.Header(ctx, site, dev, head.Chain, h.Seq)
				if errors.Is(err, os.ErrNotExist) {
					// Below the head but not stored: only a chain whose first batches
					// were never received (not possible today: the first must be seq 1).
					return refuse(ErrFork, "seq %d is below the head %d but not stored", h.Seq, head.Seq)
				}
				if err != nil {
					return fmt.Errorf("handle %s/%s seq %d: %w", site, dev, h.Seq, err)
				}
				sum := ledger.HeaderHash(hb)
				stored = hex.EncodeToString(sum[:])
			}
			if hash != stored {
				return refuse(ErrFork, "seq %d has header %s, the stored one is %s", h.Seq, short(hash), short(stored))
			}
			r.stats.duplicates.Add(1)
			r.drainHeld(ctx, g, site, dev, d)
			return nil
		case h.Seq > next:
			if !reloaded {
				// Another receiver may have stored the gap: look before holding.
				reloaded = true
				if err := r.reload(ctx, site, dev, d); err != nil {
					return err
				}
				// Held batches that follow the new head go first: this one may
				// follow them.
				r.drainHeld(ctx, g, site, dev, d)
				continue
			}
			if old, ok := d.held[h.Seq]; ok {
				if old.hash != hash {
					return refuse(ErrFork, "seq %d has header %s, a held one has %s", h.Seq, short(hash), short(old.hash))
				}
				r.drainHeld(ctx, g, site, dev, d)
				return nil
			}
			if len(d.held) >= r.cfg.MaxHeld || d.heldBytes+len(payload) > r.cfg.MaxHeldBytes {
				r.stats.heldDropped.Add(1)
				r.log.Warn("hold full, batch dropped until resent", attrSite, site, attrDevice, dev, attrSeq, h.Seq,
					attrHeadSeq, head.Seq, "held", len(d.held))
				r.drainHeld(ctx, g, site, dev, d)
				return nil
			}
			d.held[h.Seq] = heldBatch{raw: payload, batch: b, header: h, hash: hash}
			d.heldBytes += len(payload)
			r.stats.held.Add(1)
			r.drainHeld(ctx, g, site, dev, d)
			return nil
		}
		// The next batch: it must link to the head. The head's hash never changes once
		// stored, so a stale head cannot make this a false fork.
		if want := prevOf(head); h.Prev != want {
			return refuse(ErrFork, "seq %d has prev %s, the stored seq %d is %s", h.Seq, short(h.Prev), head.Seq, short(want))
		}
		err := r.apply(ctx, g, site, dev, d, b, h, hash)
		if errors.Is(err, ErrHeadMoved) {
			r.stats.headMoved.Add(1)
			reloaded = true
			if err := r.reload(ctx, site, dev, d); err != nil {
				return err
			}
			continue
		}
		if err != nil {
			return err
		}
		r.drainHeld(ctx, g, site, dev, d)
		return nil
	}
}

func prevOf(h Head) string {
	if h.Seq == 0 {
		return ledger.ZeroHash
	}
	return h.Hash
}

// reload reads the device's head from the store, and lets go of held batches that it
// covers: another receiver stored them (or, if the stored header differs, they are a
// fork, refused as such).
func (r *Receiver) reload(ctx context.Context, site, dev string, d *device) error {
	h, err := r.store.Head(ctx, site, dev)
	if err != nil {
		return fmt.Errorf("handle %s/%s: %w", site, dev, err)
	}
	d.head, d.loaded = h, true
	for seq, hb := range d.held {
		if seq > h.Seq {
			continue
		}
		delete(d.held, seq)
		d.heldBytes -= len(hb.raw)
		stored := h.Hash
		if seq != h.Seq {
			b, err := r.store.Header(ctx, site, dev, h.Chain, seq)
			if err != nil {
				// Not known: let it go unreceipted, the appliance resends it.
				r.log.Warn("check held batch against the store", attrSite, site, attrDevice, dev, attrSeq, seq, attrError, err)
				continue
			}
			sum := ledger.HeaderHash(b)
			stored = hex.EncodeToString(sum[:])
		}
		if stored != hb.hash {
			r.refuseLocked(ctx, d, &RefusedError{Site: site, Device: dev, Seq: seq, Err: ErrFork,
				Detail: fmt.Sprintf("held seq %d has header %s, the stored one is %s", seq, short(hb.hash), short(stored))}, hb.raw)
		}
	}
	return nil
}

// settle reloads the device's head and stores the held batches that now follow it: the
// gap before them may have been filled by another receiver. Run calls it shortly after
// a device's activity when the store is shared.
func (r *Receiver) settle(ctx context.Context, site, dev string) (outcome, error) {
	d := r.device(site, dev)
	d.mu.Lock()
	err := r.reload(ctx, site, dev, d)
	if err == nil {
		r.drainHeld(ctx, nil, site, dev, d)
	}
	o := outcome{receipt: d.head.Receipt, seq: d.head.Seq, held: len(d.held) > 0}
	refused := d.refused
	d.refused = nil
	d.mu.Unlock()
	r.notify(refused...)
	return o, err
}

// drainHeld applies held batches that now follow the head. One whose link is broken is
// refused as a fork; a store error leaves it held for the next Handle; a head moved by
// another receiver is reloaded (bounded).
func (r *Receiver) drainHeld(ctx context.Context, g *group, site, dev string, d *device) {
	for attempt := 0; attempt < maxAttempts; {
		hb, ok := d.held[d.head.Seq+1]
		if !ok {
			return
		}
		if want := prevOf(d.head); hb.header.Prev != want {
			delete(d.held, hb.header.Seq)
			d.heldBytes -= len(hb.raw)
			r.refuseLocked(ctx, d, &RefusedError{Site: site, Device: dev, Seq: hb.header.Seq, Err: ErrFork,
				Detail: fmt.Sprintf("held seq %d has prev %s, the stored seq %d is %s", hb.header.Seq, short(hb.header.Prev), d.head.Seq, short(want))}, hb.raw)
			return
		}
		// apply takes it out of the hold once stored.
		err := r.apply(ctx, g, site, dev, d, hb.batch, hb.header, hb.hash)
		if errors.Is(err, ErrHeadMoved) {
			r.stats.headMoved.Add(1)
			attempt++
			if err := r.reload(ctx, site, dev, d); err != nil {
				r.log.Warn("reload head", attrSite, site, attrDevice, dev, attrError, err)
				return
			}
			continue
		}
		if err != nil {
			r.log.Warn("store held batch", attrSite, site, attrDevice, dev, attrSeq, hb.header.Seq, attrError, err)
			return
		}
	}
}

// apply signs the receipt for b, stores b with it (or stages it in g) and moves the head.
func (r *Receiver) apply(ctx context.Context, g *group, site, dev string, d *device, b *ledger.Batch, h ledger.Header, hash string) error {
	rc, err := ledger.SignReceipt(ledger.Receipt{Site: site, Device: dev, Chain: h.Chain, Seq: h.Seq, HeaderHash: hash, Time: r.now()},
		func(digest []byte) ([]byte, error) { return r.signer.Sign(ctx, digest) }, r.cfg.KeyName, r.signer.Public())
	if err != nil {
		return fmt.Errorf("handle %s/%s seq %d: %w", site, dev, h.Seq, err)
	}
	e := Entry{Site: site, Device: dev, Header: h, Hash: hash, Batch: b, Receipt: rc}
	if g != nil {
		g.stage(d, e)
		d.head = Head{Chain: h.Chain, Seq: h.Seq, Hash: hash, Receipt: rc}
		if old, ok := d.held[h.Seq]; ok {
			delete(d.held, h.Seq)
			d.heldBytes -= len(old.raw)
			if old.hash == hash {
				g.unheld = append(g.unheld, unheld{d: d, hb: old}) // back in the hold if the commit fails
			} else {
				r.refuseLocked(ctx, d, &RefusedError{Site: site, Device: dev, Seq: h.Seq, Err: ErrFork,
					Detail: fmt.Sprintf("held seq %d has header %s, the stored one is %s", h.Seq, short(old.hash), short(hash))}, old.raw)
			}
		}
		if next, err := ledger.FindRotation(b.Events); next != nil || err != nil {
			g.closed = true // the device's next batch may be signed by the new key
		}
		return nil
	}
	if err := r.store.Append(ctx, e); err != nil {
		return fmt.Errorf("handle %s/%s seq %d: %w", site, dev, h.Seq, err)
	}
	d.head = Head{Chain: h.Chain, Seq: h.Seq, Hash: hash, Receipt: rc}
	// A batch held for this seq (sent twice across a gap) is no longer needed; one that
	// differs from what was just stored is a fork.
	if old, ok := d.held[h.Seq]; ok {
		delete(d.held, h.Seq)
		d.heldBytes -= len(old.raw)
		if old.hash != hash {
			r.refuseLocked(ctx, d, &RefusedError{Site: site, Device: dev, Seq: h.Seq, Err: ErrFork,
				Detail: fmt.Sprintf("held seq %d has header %s, the stored one is %s", h.Seq, short(old.hash), short(hash))}, old.raw)
		}
	}
	r.stats.batches.Add(1)
	r.stats.events.Add(uint64(len(b.Events)))
	r.followRotation(ctx, site, dev, b, h)
	return nil
}

// KeyRotator may also be implemented by DeviceKeys: Rotate enrols next as the device's
// key, replacing the one that signed a stored batch announcing it (ledger.ActionKeyRotated).
type KeyRotator interface {
	Rotate(ctx context.Context, site, device string, next *ecdsa.PublicKey) error
}

// followRotation enrols the key a just-stored batch rotates to, so that the device's
// next batch, signed by it, is accepted. The stored batch was signed by the enrolled key,
// which vouches for the new one.
func (r *Receiver) followRotation(ctx context.Context, site, dev string, b *ledger.Batch, h ledger.Header) {
	next, err := ledger.FindRotation(b.Events)
	if err != nil {
		r.log.Warn("batch announces a key rotation that names no usable key", attrSite, site, attrDevice, dev, attrSeq, h.Seq, attrError, err)
		return
	}
	if next == nil {
		return
	}
	kr, ok := r.keys.(KeyRotator)
	if !ok {
		r.log.Warn("device rotated its key, but the key store cannot follow; enrol the new key by hand", attrSite, site, attrDevice, dev, attrSeq, h.Seq)
		return
	}
	if err := kr.Rotate(ctx, site, dev, next); err != nil {
		r.log.Error("follow key rotation", attrSite, site, attrDevice, dev, attrSeq, h.Seq, attrError, err)
		return
	}
	kid, _ := ledger.KeyID(next)
	r.log.Info("device key rotated", attrSite, site, attrDevice, dev, attrSeq, h.Seq, "new_key_id", kid)
}

// check decodes payload and runs every check that needs no stored state: one batch,
// header, topic names, enrolled key, signature, count and Merkle root. A returned
// RefusedError with a nil Err is an I/O error, not a refusal.
func (r *Receiver) check(ctx context.Context, site, dev string, payload []byte) (*ledger.Batch, ledger.Header, string, *RefusedError) {
	ref := func(seq uint64, err error, format string, args ...any) (*ledger.Batch, ledger.Header, string, *RefusedError) {
		return nil, ledger.Header{}, "", &RefusedError{Site: site, Device: dev, Seq: seq, Err: err, Detail: fmt.Sprintf(format, args...)}
	}
	if len(payload) > r.cfg.MaxBatchBytes {
		return ref(0, ErrMalformed, "%d bytes, more than %d", len(payload), r.cfg.MaxBatchBytes)
	}
	// Without copying: the events are slices of payload, which nobody changes (the
	// stores copy what they keep).
	b, rest, err := ledger.ParseBatch(payload)
	if err != nil {
		return ref(0, ErrMalformed, "%v", err)
	}
	if len(rest) > 0 {
		return ref(0, ErrMalformed, "more than one batch in one message")
	}
	h, err := ledger.ParseHeader(b.Header)
	if err != nil {
		return ref(0, ErrMalformed, "%v", err)
	}
	if h.Version != ledger.FormatVersion || h.Alg != ledger.AlgECDSAP256SHA256 {
		return ref(h.Seq, ErrMalformed, "version %d alg %q", h.Version, h.Alg)
	}
	if h.Site != site || h.Device != dev {
		return ref(h.Seq, ErrMalformed, "header names %q/%q", h.Site, h.Device)
	}
	if h.Seq == 0 || !isHex(h.Chain, 32) || !isHex(h.Prev, 64) {
		return ref(h.Seq, ErrMalformed, "seq %d chain %q prev %q", h.Seq, h.Chain, h.Prev)
	}
	pub, err := r.keys.Key(ctx, site, dev)
	if errors.Is(err, ErrUnknownDevice) {
		return ref(h.Seq, ErrUnknownDevice, "%v", err)
	}
	if err != nil {
		return ref(h.Seq, nil, "%v", err)
	}
	kid, err := ledger.KeyID(pub)
	if err != nil {
		return ref(h.Seq, nil, "%v", err)
	}
	if h.KeyID != kid {
		return ref(h.Seq, ErrBadSignature, "key_id %s is not the enrolled key %s", short(h.KeyID), short(kid))
	}
	digest := sha256.Sum256(b.Header)
	if !ecdsa.VerifyASN1(pub, digest[:], b.Signature) {
		return ref(h.Seq, ErrBadSignature, "signature does not verify with the enrolled key %s", short(kid))
	}
	if h.Count != len(b.Events) {
		return ref(h.Seq, ErrTampered, "header count %d, batch has %d events", h.Count, len(b.Events))
	}
	if root := ledger.EventsRoot(b.Events); hex.EncodeToString(root[:]) != h.Root {
		return ref(h.Seq, ErrTampered, "root %s, events hash to %s", short(h.Root), short(hex.EncodeToString(root[:])))
	}
	sum := ledger.HeaderHash(b.Header)
	return b, h, hex.EncodeToString(sum[:]), nil
}

func isHex(s string, n int) bool {
	if len(s) != n {
		return false
	}
	_, err := hex.DecodeString(s)
	return err == nil
}

func short(s string) string {
	if len(s) > 16 {
		return s[:16]
	}
	return s
}
