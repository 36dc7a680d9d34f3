package spool

import (
	"context"
	"crypto/ecdsa"
	"encoding/hex"
	"fmt"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/edgeaudit/edgeaudit/audit"
	"github.com/edgeaudit/edgeaudit/ledger"
)

// scrubChunk is how many batches one read transaction of the scrub covers: a read
// transaction held for long keeps bbolt from reusing freed pages, so the scrub takes
// short ones and sleeps between them.
const scrubChunk = 32

// RunScrub verifies the whole chain (links, counts, roots, and signatures by the current
// key) once right away and then every scrub_interval, reading at most scrub_rate bytes a
// second. Each bad batch is written into the chain as an audit.chain_damaged event (once
// per seq) and raises an incident for health. Nothing is deleted or rewritten: unacked
// good batches stay to be sent, whatever an older one looks like. It returns when ctx is
// done.
func (s *Spool) RunScrub(ctx context.Context) error {
	reported := map[uint64]bool{}
	for {
		if _, err := s.scrubOnce(ctx, reported); err != nil && ctx.Err() == nil {
			if ok, n := s.logs.Allow("scrub", time.Now()); ok {
				s.log.Error("scrub", "err", err, "suppressed", n)
			}
		}
		t := time.NewTimer(s.cfg.ScrubInterval)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-t.C:
		}
	}
}

// ScrubResult is what one pass found.
type ScrubResult struct {
	Checked uint64
	Damaged []uint64
}

// Scrub makes one full pass now (tests, `edgeaudit health --deep` style checks) and
// records what it finds like RunScrub does.
func (s *Spool) Scrub(ctx context.Context) (ScrubResult, error) {
	return s.scrubOnce(ctx, map[uint64]bool{})
}

func (s *Spool) scrubOnce(ctx context.Context, reported map[uint64]bool) (ScrubResult, error) {
	var res ScrubResult
	pos, err := s.Position()
	if err != nil {
		return res, err
	}
	from := pos.PrunedSeq + 1
	prev := ledger.ZeroHash
	if pos.PrunedSeq > 0 {
		prev = pos.PrunedHash
	}
	pub, ours := s.opts.Signer.Public(), s.opts.Signer.KeyID()
	for seq := from; seq <= pos.HeadSeq; {
		if ctx.Err() != nil {
			return res, nil
		}
		end := min(seq+scrubChunk-1, pos.HeadSeq)
		var bytesRead int64
		var bad []badBatch
		err := safeView(s.db, func(tx *bolt.Tx) error {
			for ; seq <= end; seq++ {
				b, err := readBatch(tx, seq, s.enc)
				if err != nil {
					// Pruned meanwhile (retention runs beside the scrub): nothing left to check.
					if getU64(tx.Bucket(bucketMeta), keyPrunedSeq) >= seq {
						prev = ""
						continue
					}
					bad = append(bad, badBatch{seq, err.Error()})
					prev = ""
					continue
				}
				for _, e := range b.Events {
					bytesRead += int64(len(e))
				}
				bytesRead += int64(len(b.Header))
				reason := checkBatch(b, seq, prev, pub, ours)
				if reason != "" {
					bad = append(bad, badBatch{seq, reason})
				}
				hh := ledger.HeaderHash(b.Header)
				prev = hex.EncodeToString(hh[:])
				res.Checked++
				s.stats.scrubbed.Add(1)
			}
			return nil
		})
		if err != nil {
			bad = append(bad, badBatch{seq, err.Error()})
			seq = end + 1
			prev = ""
		}
		for _, b := range bad {
			res.Damaged = append(res.Damaged, b.seq)
			if !reported[b.seq] {
				reported[b.seq] = true
				s.reportDamage(b.seq, b.reason)
			}
		}
		// Pace: this chunk's bytes at scrub_rate.
		if d := time.Duration(float64(bytesRead) / float64(s.cfg.ScrubRate) * float64(time.Second)); d > 0 {
			t := time.NewTimer(d)
			select {
			case <-ctx.Done():
				t.Stop()
				return res, nil
			case <-t.C:
			}
		}
	}
	s.lastScrub.Store(&ScrubPass{Ended: time.Now(), Checked: res.Checked, Damaged: len(res.Damaged)})
	return res, nil
}

type badBatch struct {
	seq    uint64
	reason string
}

// checkBatch returns why batch b (stored under seq) does not verify, or "". prev is the
// hex hash its header must link to, "" when unknown.
func checkBatch(b *ledger.Batch, seq uint64, prev string, pub *ecdsa.PublicKey, ours string) string {
	h, err := ledger.ParseHeader(b.Header)
	switch {
	case err != nil:
		return "header: " + err.Error()
	case h.Seq != seq:
		return fmt.Sprintf("seq %d stored under key %d", h.Seq, seq)
	case prev != "" && h.Prev != prev:
		return "prev does not match the previous header"
	case h.Count != len(b.Events):
		return fmt.Sprintf("count %d, %d events stored", h.Count, len(b.Events))
	case ledger.EventsRoot(b.Events) != mustHex32(h.Root):
		return "events do not match the Merkle root"
	case h.KeyID == ours && !ecdsa.VerifyASN1(pub, sha256Of(b.Header), b.Signature):
		return "signature does not verify"
	}
	return ""
}

// reportDamage writes a bad batch into the chain and raises a failure incident.
func (s *Spool) reportDamage(seq uint64, reason string) {
	s.stats.scrubDamaged.Add(1)
	now := s.opts.Now()
	e := s.incident(now, ActionChainDamaged, audit.OutcomeMajorFailure, reason, seq, true,
		map[string]string{"seq": fmt.Sprint(seq)})
	s.log.Error("scrub found a damaged batch", "seq", seq, "reason", reason)
	if err := s.Append(context.Background(), &e, nil); err != nil {
		s.log.Error("record damaged batch", "seq", seq, "err", err)
	}
}
