package main

import (
	"bytes"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/edgeaudit/edgeaudit/attest"
	"github.com/edgeaudit/edgeaudit/ledger"
	"github.com/edgeaudit/edgeaudit/spool"
)

// receiptCheck ties central's receipts to the chain being verified: a site proves
// with it that central held its chain up to a point.
type receiptCheck struct {
	receipts     []ledger.Receipt // verified with central's key
	site, device string           // of the verified chain's first batch
	want         map[uint64]bool  // seqs the receipts name
	seen         map[uint64]string
}

// loadReceipts reads and verifies the receipts for verify. It returns nil (nothing to
// check) when -data has no receipts folder or no central key and none was asked for.
func loadReceipts(dataDir, path, centralKey string) (*receiptCheck, error) {
	explicit := path != ""
	if path == "" && dataDir != "" {
		path = filepath.Join(dataDir, "receipts")
		if _, err := os.Stat(path); err != nil {
			return nil, nil
		}
	}
	if path == "" {
		if centralKey != "" {
			return nil, &usageError{"verify: -central-key needs receipts (-receipts, or -data with a receipts folder)"}
		}
		return nil, nil
	}
	if centralKey == "" && dataDir != "" {
		if p := filepath.Join(dataDir, "keys", "central.pub"); fileExists(p) {
			centralKey = p
		}
	}
	if centralKey == "" {
		if explicit {
			return nil, &usageError{"verify: -receipts needs -central-key PEM (central.pub)"}
		}
		fmt.Fprintln(os.Stderr, "verify: receipts not checked: no central key (give -central-key central.pub)")
		return nil, nil
	}
	pubs, err := attest.ReadPublicPEM(centralKey)
	if err != nil {
		return nil, err
	}
	if len(pubs) != 1 {
		return nil, fmt.Errorf("verify: %s: want exactly one central key, found %d", centralKey, len(pubs))
	}
	raw, err := readReceipts(path)
	if err != nil {
		return nil, err
	}
	rc := &receiptCheck{want: map[uint64]bool{}, seen: map[uint64]string{}}
	for i, b := range raw {
		r, err := ledger.VerifyReceipt(b, pubs[0])
		if err != nil {
			return nil, &ledger.VerifyError{Reason: ledger.ReasonReceipt, Detail: fmt.Sprintf("%s: receipt %d: %v", path, i+1, err)}
		}
		rc.receipts = append(rc.receipts, r)
		rc.want[r.Seq] = true
	}
	return rc, nil
}

// readReceipts reads a folder of .receipt files, one .receipt, or a receipts file.
func readReceipts(path string) ([][]byte, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("verify: receipts: %w", err)
	}
	var files []string
	if fi.IsDir() {
		if files, err = filepath.Glob(filepath.Join(path, "*.receipt")); err != nil {
			return nil, err
		}
	} else {
		files = []string{path}
	}
	var out [][]byte
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			return nil, fmt.Errorf("verify: receipts: %w", err)
		}
		if bytes.HasPrefix(b, []byte(ledger.ReceiptOrigin+"\n")) {
			out = append(out, b)
			continue
		}
		rs, err := ledger.ReadReceipts(bytes.NewReader(b))
		if err != nil {
			return nil, fmt.Errorf("verify: %s: %w", f, err)
		}
		out = append(out, rs...)
	}
	return out, nil
}

func fileExists(p string) bool { _, err := os.Stat(p); return err == nil }

// see notes a verified batch: the chain's names, and the hash of a seq a receipt names.
func (rc *receiptCheck) see(h ledger.Header, b *ledger.Batch) {
	if rc == nil {
		return
	}
	if rc.site == "" {
		rc.site, rc.device = h.Site, h.Device
	}
	if rc.want[h.Seq] {
		sum := ledger.HeaderHash(b.Header)
		rc.seen[h.Seq] = hex.EncodeToString(sum[:])
	}
}

// check takes the newest receipt of the verified chain and ties it to the chain.
func (rc *receiptCheck) check(chain string, first, last uint64, pos spool.Position) (*receiptResult, error) {
	var best *ledger.Receipt
	for i, r := range rc.receipts {
		// Nothing read (a spool pruned up to its head): the chain id alone names it.
		names := rc.site == "" || r.Site == rc.site && r.Device == rc.device
		if names && r.Chain == chain && (best == nil || r.Seq > best.Seq) {
			best = &rc.receipts[i]
		}
	}
	if best == nil {
		return nil, &ledger.VerifyError{Reason: ledger.ReasonReceipt,
			Detail: fmt.Sprintf("no receipt names %s/%s chain %s", rc.site, rc.device, chain)}
	}
	res := &receiptResult{Seq: best.Seq, Time: best.Time.UTC().Format(time.RFC3339), Header: best.HeaderHash}
	bad := func(format string, args ...any) error {
		return &ledger.VerifyError{Seq: best.Seq, Reason: ledger.ReasonReceipt, Detail: fmt.Sprintf(format, args...)}
	}
	// With -data the chain ends at the spool's head, also when retention pruned every
	// batch up to it (then nothing was read and the head is the pruned anchor).
	if pos.HeadSeq > last {
		last = pos.HeadSeq
	}
	switch {
	case best.Seq > last:
		return nil, bad("central holds seq %d, beyond this chain's end at %d: this copy is behind central (restored, cloned or rolled back)", best.Seq, last)
	case best.Seq >= first && rc.seen[best.Seq] != "":
		if got := rc.seen[best.Seq]; !strings.EqualFold(got, best.HeaderHash) {
			return nil, bad("central's receipt names header %s, this chain's batch has %s: a fork", short(best.HeaderHash), short(got))
		}
		res.Matched = "batch"
	case best.Seq == pos.PrunedSeq && pos.PrunedHash != "":
		if !strings.EqualFold(pos.PrunedHash, best.HeaderHash) {
			return nil, bad("central's receipt names header %s, the pruned anchor is %s: a fork", short(best.HeaderHash), short(pos.PrunedHash))
		}
		res.Matched = "anchor"
	default:
		res.Matched = "pruned"
	}
	return res, nil
}

func short(s string) string {
	if len(s) > 16 {
		return s[:16]
	}
	return s
}
