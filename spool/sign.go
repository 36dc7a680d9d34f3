package spool

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/edgeaudit/edgeaudit/audit"
	"github.com/edgeaudit/edgeaudit/ledger"
)

// Signing runs off the commit path. When a batch closes, the writer prepares its header
// (root, count, prev: everything but the signature) inside the commit's transaction and
// stores it in the unsigned bucket; the next batch starts at once and links to that
// header's hash. One signer goroutine signs the unsigned headers in seq order, and the
// writer puts each signature into its next transaction, which moves the head. So a
// signer that takes 200 ms (a busy TPM), or one that fails for a while, costs collection
// nothing: events keep being committed, headers keep being prepared, and only the head
// (what readers, the uplink and the head file see) waits. The unsigned headers are in
// bbolt, so a crash loses none of them: Open signs them.

// Actions of signing faults recorded in the chain.
const (
	ActionSigningFailed    = "audit.signing_failed"
	ActionSigningRecovered = "audit.signing_recovered"
)

// signTimeout bounds one signature; a TPM that does not answer is retried.
const signTimeout = 30 * time.Second

type signJob struct {
	seq    uint64
	header []byte
}

type signResult struct {
	seq uint64
	sig []byte
}

// pendingHeader is a prepared header waiting for its signature.
type pendingHeader struct {
	seq    uint64
	header []byte
}

// sealWait is a Seal call waiting until the head reaches target.
type sealWait struct {
	target uint64
	ch     chan error
}

// signPipeline is how many headers may be handed to the signer ahead of the writer:
// the signer works through them back to back while the writer commits, and the writer
// takes every finished signature each round.
const signPipeline = 64

// signing is the writer's view of the signer.
type signing struct {
	nextJob  uint64       // the next seq to hand to the signer (0: not started)
	inflight int          // handed over, signature not yet taken
	sigs     []signResult // signed, not yet committed: seqs headSeq+1, headSeq+2, …
	waiters  []sealWait
}

// dispatch hands prepared headers to the signer, in order, up to signPipeline ahead.
func (s *Spool) dispatch() {
	g, st := &s.sign, &s.st
	if g.nextJob == 0 {
		g.nextJob = st.headSeq + 1
	}
	for g.inflight < signPipeline && g.nextJob <= st.sealedSeq {
		i := g.nextJob - (st.headSeq + 1)
		s.signJobs <- signJob{seq: g.nextJob, header: st.unsigned[i].header} // cap signPipeline: never blocks
		g.nextJob++
		g.inflight++
	}
}

// takeSignature takes a signature from the signer and hands it more work.
func (s *Spool) takeSignature(r signResult) {
	g := &s.sign
	g.inflight--
	if want := s.st.headSeq + 1 + uint64(len(g.sigs)); r.seq != want {
		// Cannot happen: jobs go and come back in order. Dropping it only delays the batch.
		s.log.Error("signature for an unexpected seq dropped", "seq", r.seq, "expected", want)
		return
	}
	g.sigs = append(g.sigs, r)
	s.dispatch()
}

// takeSignatures takes every signature that is ready, without waiting.
func (s *Spool) takeSignatures() {
	for {
		select {
		case r := <-s.signed:
			s.takeSignature(r)
		default:
			return
		}
	}
}

// wakeWaiters answers the Seal calls whose batch is signed and committed.
func (s *Spool) wakeWaiters() {
	g := &s.sign
	kept := g.waiters[:0]
	for _, w := range g.waiters {
		if w.target <= s.st.headSeq {
			w.ch <- nil
			continue
		}
		kept = append(kept, w)
	}
	g.waiters = kept
}

// signLoop is the signer goroutine: one header at a time, retried with backoff while the
// signer fails, until stopped.
func (s *Spool) signLoop() {
	defer close(s.signDone)
	for job := range s.signJobs {
		delay := retryMin
		for {
			sig, err := s.signOnce(job)
			if err == nil {
				if s.signFailing.Swap(false) {
					s.log.Info("signing works again", "seq", job.seq)
					s.resolveIncident(ActionSigningFailed, "recovered at "+time.Now().UTC().Format(time.RFC3339))
					s.signEvent(ActionSigningRecovered, audit.OutcomeSuccess, "the signer works again", job.seq)
				}
				select {
				case s.signed <- signResult{seq: job.seq, sig: sig}:
				case <-s.signStop:
					return
				}
				break
			}
			s.stats.signErrors.Add(1)
			if !s.signFailing.Swap(true) {
				s.addIncident(Incident{Action: ActionSigningFailed, Reason: err.Error(), Seq: job.seq, Time: time.Now().UTC(), Failure: true})
				s.signEvent(ActionSigningFailed, audit.OutcomeSeriousFailure,
					"the signer fails; events are still committed and batches wait for their signatures: "+err.Error(), job.seq)
			}
			if ok, n := s.logs.Allow("sign", time.Now()); ok {
				s.log.Error("sign batch header; retrying (events are still committed)", "seq", job.seq, "err", err, "suppressed", n)
			}
			select {
			case <-time.After(delay):
			case <-s.signStop:
				return
			}
			delay = min(2*delay, retryMax)
		}
	}
}

func (s *Spool) signOnce(job signJob) ([]byte, error) {
	ctx, cancel := context.WithTimeout(s.signCtx, signTimeout)
	defer cancel()
	d := sha256.Sum256(job.header)
	sig, err := s.opts.Signer.Sign(ctx, d[:])
	if err != nil {
		return nil, fmt.Errorf("sign header seq %d: %w", job.seq, err)
	}
	return sig, nil
}

// signEvent records a signing fault in the chain. It goes into the open batch like any
// event (its own batch is signed once the signer works), and may use the evidence
// reserve; it waits a bounded time for the queue.
func (s *Spool) signEvent(action, outcome, reason string, seq uint64) {
	e := selfEvent(s.opts.Now(), action, outcome, reason)
	e.Detail = map[string]string{"seq": fmt.Sprint(seq)}
	ctx, cancel := context.WithTimeout(s.signCtx, 5*time.Second)
	defer cancel()
	if err := s.Append(ctx, &e, nil); err != nil {
		s.log.Error("record signing fault", "action", action, "err", err)
	}
}

// rekeyUnsigned re-prepares the unsigned headers when they name another key than the
// signer's (a key recovered or rotated while batches waited): a header's key_id must be
// the key that signs it. Their hashes change, and so does each one's prev link after
// the first; nothing of them was published, since only signed batches are read.
func (s *Spool) rekeyUnsigned() error {
	st := &s.st
	kid := s.opts.Signer.KeyID()
	if len(st.unsigned) == 0 {
		return nil
	}
	if h, err := ledger.ParseHeader(st.unsigned[0].header); err == nil && h.KeyID == kid {
		return nil
	}
	prev := st.headHash
	redone := make([]pendingHeader, 0, len(st.unsigned))
	err := s.db.Update(func(tx *bolt.Tx) error {
		ub := tx.Bucket(bucketUnsigned)
		for _, p := range st.unsigned {
			h, err := ledger.ParseHeader(p.header)
			if err != nil {
				return err
			}
			root, err := hex.DecodeString(h.Root)
			if err != nil || len(root) != len(ledger.Hash{}) {
				return fmt.Errorf("unsigned header %d: bad root", p.seq)
			}
			h.KeyID = kid
			h.Prev = ledger.ZeroHash
			if p.seq > 1 {
				h.Prev = hex.EncodeToString(prev[:])
			}
			hb, err := h.Prepare(ledger.Hash(root), h.Count)
			if err != nil {
				return err
			}
			if err := ub.Put(seqKey(p.seq), hb); err != nil {
				return err
			}
			redone = append(redone, pendingHeader{seq: p.seq, header: hb})
			prev = ledger.HeaderHash(hb)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("re-key unsigned headers: %w", err)
	}
	st.unsigned, st.sealedHash = redone, prev
	s.log.Info("unsigned batches re-prepared for the current key", "batches", len(redone), "key_id", kid)
	return nil
}
