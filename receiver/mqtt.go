package receiver

import (
	"context"
	"errors"
	"strings"
	"sync"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/edgeaudit/edgeaudit/internal/backoff"
	"github.com/edgeaudit/edgeaudit/internal/ratelog"
)

// Topics (DESIGN "MQTT"): appliances publish to <prefix>/<site>/<device>/batch, the
// receiver answers on <prefix>/<site>/<device>/ack.
const (
	batchLevel = "batch"
	ackLevel   = "ack"
)

// retryMin is the first delay before handling a batch again after a store error.
const retryMin = 100 * time.Millisecond

// connectTimeout bounds one connection attempt.
const connectTimeout = 10 * time.Second

// settleDelay is how long after a device's activity, and after the PUBACK of each
// receipt it published, a receiver in a shared group rechecks the device (settle) for a
// newer receipt to publish. While batches of the device are held, the first recheck
// comes after heldRetry, and the delay doubles up to settleMax: the broker hands
// consecutive batches to different receivers, so the gap is usually filled by the other
// one within milliseconds, while the appliance resends an unreceipted batch only after
// its ack timeout (30 s by default).
const (
	settleDelay = 200 * time.Millisecond
	heldRetry   = 5 * time.Millisecond
	settleMax   = 5 * time.Second
)

// BatchFilter is the subscription of a receiver with the given prefix.
func BatchFilter(prefix string) string { return prefix + "/+/+/" + batchLevel }

// SharedBatchFilter is the shared subscription of a receiver in group: the broker
// delivers each batch to one subscriber of the group.
func SharedBatchFilter(group, prefix string) string {
	return "$share/" + group + "/" + BatchFilter(prefix)
}

// AckTopic is where the receipts of site/device go.
func AckTopic(prefix, site, device string) string {
	return prefix + "/" + site + "/" + device + "/" + ackLevel
}

// splitBatchTopic returns the site and device of a batch topic under prefix.
func splitBatchTopic(prefix, topic string) (site, device string, ok bool) {
	rest, ok := strings.CutPrefix(topic, prefix+"/")
	if !ok {
		return "", "", false
	}
	parts := strings.Split(rest, "/")
	if len(parts) != 3 || parts[2] != batchLevel {
		return "", "", false
	}
	return parts[0], parts[1], true
}

// Run subscribes to BatchFilter(Prefix) at QoS 1 on Broker (SharedBatchFilter when
// SharedGroup is set) and handles the batches in the order the broker delivers them,
// until ctx is done. What has queued up is handled as one group (at most maxGroup
// batches or maxGroupBytes, see handleMessages): each batch is verified, and those to
// store are stored by one commit, after which their receipts go out. It returns nil when ctx is cancelled, and only after
// every goroutine it started has exited.
//
// Delivery: auto-ack is off, so the broker gets the PUBACK of a batch only after its
// group is committed (or it was refused and quarantined); a batch whose storing keeps
// failing is retried with backoff and never acknowledged, and the session is persistent (clean
// session off), so the broker redelivers what was not acknowledged after a reconnect or
// a restart of the receiver. Receipts are published to AckTopic at QoS 1, retained: a
// device that connects learns central's position for it at once (docs/format.md,
// "Receipts").
//
// In a shared group, two receivers may publish receipts of one device out of order (the
// retained one could be the older). So each receiver rechecks a device after its
// activity and after the broker's PUBACK of every receipt it published for it, and
// publishes the stored head's receipt when it is newer than the last one it published;
// it also stores held batches whose gap another receiver filled. That makes the
// retained receipt end at the stored head: whichever receipt the broker took last, its
// publisher rereads the store after the PUBACK, when every batch whose receipt reached
// the broker before is committed (receipts go out only after their commit).
func (r *Receiver) Run(ctx context.Context) error {
	if r.cfg.Broker == "" {
		return errors.New("receiver run: no broker configured")
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	log := r.log.With(attrBroker, r.cfg.Broker)
	msgs := make(chan mqtt.Message, r.cfg.Queue)
	// deliver runs in paho's router; it blocks while the queue is full, which stops
	// reading from the broker: backpressure, the broker keeps the rest.
	deliver := func(_ mqtt.Client, m mqtt.Message) {
		select {
		case msgs <- m:
		case <-ctx.Done():
		}
	}
	filter := BatchFilter(r.cfg.Prefix)
	if r.cfg.SharedGroup != "" {
		filter = SharedBatchFilter(r.cfg.SharedGroup, r.cfg.Prefix)
	}
	// The subscription is renewed on every connect. OnConnect runs in a goroutine of
	// paho's that nothing waits for, so it only hands its token to the loop below.
	subs := make(chan mqtt.Token, 4)
	// A member of a shared group has a clean session: mosquitto (2.0.11, tested) keeps
	// handing a disconnected member with a persistent session its share of the batches,
	// queued where no receiver reads them, until the session expires. What a stopped
	// member had not stored, the appliances resend, as they never got its receipt.
	persistent := r.cfg.SharedGroup == ""
	opts := mqtt.NewClientOptions().AddBroker(r.cfg.Broker).SetClientID(r.cfg.ClientID).
		SetUsername(r.cfg.Username).SetPassword(r.cfg.Password).
		SetCleanSession(!persistent).SetAutoAckDisabled(true).SetOrderMatters(true).
		SetAutoReconnect(true).SetMaxReconnectInterval(r.cfg.RetryMax).SetConnectTimeout(connectTimeout).
		// Messages of the persistent session can arrive before the subscription is
		// renewed: the default handler takes them.
		SetDefaultPublishHandler(deliver).
		SetConnectionLostHandler(func(_ mqtt.Client, err error) { log.Warn("broker connection lost", attrError, err) }).
		SetOnConnectHandler(func(c mqtt.Client) {
			select {
			case subs <- c.Subscribe(filter, 1, deliver):
			default:
			}
		})
	if r.cfg.TLS != nil {
		opts.SetTLSConfig(r.cfg.TLS)
	}
	client := mqtt.NewClient(opts)
	pub := &publisher{client: client}
	if r.cfg.SharedGroup != "" {
		pub.acked = make(chan pubAck, 64)
	}
	pubs := &pub.wg
	defer func() {
		cancel()
		client.Disconnect(250)
		pubs.Wait()
	}()
	// The first connection is retried here, not by paho (whose connect-retry goroutine
	// outlives Disconnect); after it, paho reconnects by itself.
	bo := backoff.New(time.Second, r.cfg.RetryMax)
	for {
		tok := client.Connect()
		select {
		case <-tok.Done():
		case <-ctx.Done():
			// Let the attempt end (ConnectTimeout bounds it) before disconnecting.
			tok.WaitTimeout(connectTimeout + time.Second)
			return nil
		}
		err := tok.Error()
		if err == nil {
			if bo.Failures() > 0 {
				log.Info("broker reachable", attrFailures, bo.Failures())
			}
			break
		}
		if bo.Failures() == 0 {
			log.Warn("connect to broker, will retry", attrError, err)
		}
		if bo.BackOff(ctx, err) != nil {
			return nil
		}
	}
	st := newSettler()
	defer st.timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case m := <-msgs:
			// Whatever else is queued goes in the same group, up to its bounds.
			ms, size := []mqtt.Message{m}, len(m.Payload())
		more:
			for len(ms) < maxGroup && size < maxGroupBytes {
				select {
				case m := <-msgs:
					ms = append(ms, m)
					size += len(m.Payload())
				default:
					break more
				}
			}
			r.handleMessages(ctx, pub, ms, func(site, dev string, o outcome) {
				if r.cfg.SharedGroup != "" {
					st.touch(site, dev, o)
				}
			})
		case a := <-pub.acked:
			st.acked(a)
		case <-st.timer.C:
			r.settleDue(ctx, pub, st)
		case tok := <-subs:
			pubs.Add(1)
			go func() {
				defer pubs.Done()
				select {
				case <-tok.Done():
				case <-ctx.Done():
					return
				}
				err := tok.Error()
				if st, ok := tok.(*mqtt.SubscribeToken); ok && err == nil && st.Result()[filter] == 0x80 {
					err = errors.New("the broker refused the subscription (SUBACK 0x80): check its ACL")
				}
				if err != nil {
					log.Error("subscribe", attrTopic, filter, attrError, err)
					return
				}
				log.Info("connected and subscribed", attrTopic, filter)
			}()
		}
	}
}

// handleMessages is the loop body of Run: handle the queued batch messages ms in order
// as one group (group commit), acknowledge each to the broker once it is stored or
// refused, and publish the receipts. A refused batch is acknowledged at once. The
// batches to store are staged and stored together by one commit (the group is
// committed early when it is full, or when a batch needs the store as it is); only
// after that commit are their messages acknowledged and their receipts published,
// then done is called for each (in order). If the commit fails, none of the group's
// messages is acknowledged or receipted: they are handled again, with backoff, as
// are the batches that failed with an error that is not a refusal. ms are all
// handled when it returns, unless ctx is done (then the rest stay unacknowledged and
// the broker redelivers them).
func (r *Receiver) handleMessages(ctx context.Context, pub *publisher, ms []mqtt.Message, done func(site, dev string, o outcome)) {
	bo := backoff.New(retryMin, r.cfg.RetryMax)
	var limit ratelog.Limiter
	start := time.Now()
	moved := 0
	type waiting struct {
		m         mqtt.Message
		site, dev string
		o         outcome
	}
	for len(ms) > 0 {
		var retry []mqtt.Message
		var lastErr error
		g := &group{}
		var wait []waiting
		flush := func() {
			err := r.commit(ctx, g)
			if err != nil {
				lastErr = err
				for _, w := range wait {
					retry = append(retry, w.m)
				}
			} else {
				// A device's receipts are cumulative: its last one covers the others.
				last := map[string]int{}
				for i, w := range wait {
					last[w.site+"/"+w.dev] = i
				}
				for i, w := range wait {
					w.m.Ack()
					if last[w.site+"/"+w.dev] == i {
						r.publishReceipt(ctx, pub, w.site, w.dev, w.o)
					}
					done(w.site, w.dev, w.o)
				}
			}
			g, wait = &group{}, nil
		}
		for _, m := range ms {
			site, dev, ok := splitBatchTopic(r.cfg.Prefix, m.Topic())
			if !ok {
				r.log.Warn("message on an unexpected topic", attrTopic, m.Topic(), attrBytes, len(m.Payload()))
				m.Ack()
				continue
			}
			o, err := r.handle(ctx, g, site, dev, m.Payload())
			if errors.Is(err, errFlush) {
				flush()
				o, err = r.handle(ctx, g, site, dev, m.Payload())
			}
			var ref *RefusedError
			switch {
			case errors.As(err, &ref):
				m.Ack() // refused (and quarantined): no receipt
			case err != nil:
				lastErr = err
				retry = append(retry, m)
			default:
				wait = append(wait, waiting{m: m, site: site, dev: dev, o: o})
			}
			if g.full() {
				flush()
			}
		}
		flush()
		if len(retry) == 0 {
			if bo.Failures() > 0 {
				r.log.Info("batches handled after failures", attrFailures, bo.Failures(), attrDuration, time.Since(start))
			}
			return
		}
		if ok, suppressed := limit.Allow("handle", time.Now()); ok {
			r.log.Error("handle batches, will retry", "batches", len(retry), attrError, lastErr, "suppressed", suppressed)
		}
		ms = retry
		if errors.Is(lastErr, ErrHeadMoved) && moved < maxAttempts {
			// Another receiver stored a batch of a device first: decide again at once,
			// on the heads reread.
			r.stats.headMoved.Add(1)
			moved++
			continue
		}
		if bo.BackOff(ctx, lastErr) != nil {
			return // shutting down: not acknowledged, the broker redelivers them
		}
	}
}

// publisher is how Run publishes receipts: paho's client, the goroutines that wait for
// PUBACKs, and (in a shared group) where they report a PUBACK, for the recheck that
// follows it.
type publisher struct {
	client mqtt.Client
	wg     sync.WaitGroup
	acked  chan pubAck // nil: not in a shared group
}

// pubAck is the broker's PUBACK of a receipt of site/device up to seq.
type pubAck struct {
	site, dev string
	seq       uint64
}

// publishReceipt publishes o's receipt (if any) to the device's ack topic, retained,
// and waits for the broker's PUBACK in a goroutine that pub.wg tracks.
func (r *Receiver) publishReceipt(ctx context.Context, pub *publisher, site, dev string, o outcome) {
	if o.receipt == nil {
		return
	}
	topic := AckTopic(r.cfg.Prefix, site, dev)
	tok := pub.client.Publish(topic, 1, true, o.receipt)
	// Waiting here would stall Run's loop behind paho's router, which may be blocked
	// delivering the next batch to it; the wait happens aside.
	pub.wg.Add(1)
	go func() {
		defer pub.wg.Done()
		select {
		case <-tok.Done():
		case <-ctx.Done():
			return
		}
		if err := tok.Error(); err != nil {
			r.log.Warn("publish receipt", attrTopic, topic, attrError, err)
			return
		}
		if pub.acked == nil {
			return
		}
		select {
		case pub.acked <- pubAck{site: site, dev: dev, seq: o.seq}:
		case <-ctx.Done():
		}
	}()
}

// settler is Run's schedule of device rechecks in a shared group. Only Run's goroutine
// uses it; one timer serves every device, so rechecks start no goroutines.
type settler struct {
	timer *time.Timer
	devs  map[string]*settleState // "site/device"
}

// settleState is one device's recheck.
type settleState struct {
	site, dev string
	published uint64    // seq of the newest receipt this receiver published
	due       time.Time // zero: no recheck scheduled
	delay     time.Duration
}

func newSettler() *settler {
	t := time.NewTimer(time.Hour)
	t.Stop()
	return &settler{timer: t, devs: map[string]*settleState{}}
}

// state returns the recheck state of site/device, made if there is none.
func (s *settler) state(site, dev string) *settleState {
	k := site + "/" + dev
	d := s.devs[k]
	if d == nil {
		d = &settleState{site: site, dev: dev}
		s.devs[k] = d
	}
	return d
}

// touch records a handled batch of site/device and schedules a recheck, unless one is
// due already (sooner while batches are held).
func (s *settler) touch(site, dev string, o outcome) {
	d := s.state(site, dev)
	if o.receipt != nil {
		d.published = max(d.published, o.seq)
	}
	now := time.Now()
	switch {
	case o.held && (d.due.IsZero() || d.due.Sub(now) > heldRetry):
		d.delay = heldRetry
		s.schedule(d, now)
	case d.due.IsZero():
		d.delay = settleDelay
		s.schedule(d, now)
	}
}

// acked schedules a recheck after the broker's PUBACK of a receipt published here,
// unless one is due already: a recheck due now comes after the PUBACK too.
func (s *settler) acked(a pubAck) {
	d := s.state(a.site, a.dev)
	d.published = max(d.published, a.seq)
	if d.due.IsZero() {
		d.delay = settleDelay
		s.schedule(d, time.Now())
	}
}

func (s *settler) schedule(d *settleState, now time.Time) {
	d.due = now.Add(d.delay)
	s.reset(now)
}

// reset sets the timer for the earliest due recheck.
func (s *settler) reset(now time.Time) {
	var first time.Time
	for _, d := range s.devs {
		if !d.due.IsZero() && (first.IsZero() || d.due.Before(first)) {
			first = d.due
		}
	}
	s.timer.Stop()
	if !first.IsZero() {
		s.timer.Reset(max(first.Sub(now), 0))
	}
}

// settleDue rechecks the devices whose time has come: the stored head's receipt is
// published when it is newer than the last one published here (its PUBACK brings
// another recheck), and a device with batches still held (or whose store read failed)
// is rechecked again later, less often. A device with nothing left to do is forgotten,
// so the schedule holds only active devices.
func (r *Receiver) settleDue(ctx context.Context, pub *publisher, s *settler) {
	now := time.Now()
	for k, d := range s.devs {
		if d.due.IsZero() || d.due.After(now) {
			continue
		}
		d.due = time.Time{}
		o, err := r.settle(ctx, d.site, d.dev)
		if err != nil {
			r.log.Warn("recheck device", attrSite, d.site, attrDevice, d.dev, attrError, err)
		}
		if err == nil && o.receipt != nil && o.seq > d.published {
			r.publishReceipt(ctx, pub, d.site, d.dev, o)
			d.published = o.seq
		}
		if err != nil || o.held {
			d.delay = min(2*d.delay, settleMax)
			d.due = now.Add(d.delay)
			continue
		}
		delete(s.devs, k)
	}
	s.reset(now)
}
