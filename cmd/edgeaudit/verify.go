package main

import (
	"context"
	"crypto/ecdsa"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/edgeaudit/edgeaudit/attest"
	"github.com/edgeaudit/edgeaudit/daemon"
	"github.com/edgeaudit/edgeaudit/evidence"
	"github.com/edgeaudit/edgeaudit/ledger"
	"github.com/edgeaudit/edgeaudit/spool"
)

// VerifyCommand checks a chain: signatures, Merkle roots, prev links, contiguous seqs.
type VerifyCommand struct{}

// keyList is a repeatable -key flag.
type keyList []string

func (k *keyList) String() string     { return fmt.Sprint(*k) }
func (k *keyList) Set(v string) error { *k = append(*k, v); return nil }

// verifyResult is the -json output.
type verifyResult struct {
	OK       bool   `json:"ok"`
	Batches  int    `json:"batches"`
	Events   int    `json:"events"`
	FirstSeq uint64 `json:"first_seq,omitempty"`
	LastSeq  uint64 `json:"last_seq,omitempty"`
	Chain    string `json:"chain,omitempty"`
	BadSeq   uint64 `json:"bad_seq,omitempty"`
	Reason   string `json:"reason,omitempty"`
	Error    string `json:"error,omitempty"`
	// Receipt is what central's newest receipt for the chain proves, when one was
	// checked: central held the chain up to its seq.
	Receipt *receiptResult `json:"receipt,omitempty"`
}

// receiptResult is the receipt part of the -json output.
type receiptResult struct {
	Seq    uint64 `json:"seq"`
	Time   string `json:"time"`
	Header string `json:"header"`
	// Matched says how the receipt was tied to the chain: "batch" (the header hash of
	// the verified batch at its seq), "anchor" (the pruned anchor) or "pruned" (before
	// what is left; only its signature and names were checked).
	Matched string `json:"matched"`
}

// Run implements the command.
func (c *VerifyCommand) Run(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("edgeaudit verify", flag.ContinueOnError)
	dataDir := fs.String("data", "", "data folder (through the running daemon, else its spool)")
	configPath := fs.String("config", "", "with -data: config file, for the keys of an encrypted spool (default: the defaults)")
	var keys keyList
	fs.Var(&keys, "key", "trusted public key PEM file (repeatable)")
	partial := fs.Bool("partial", false, "accept a chain that starts after seq 1")
	gaps := fs.Bool("gaps", false, "accept missing seqs anywhere (a filtered export); implies -partial")
	receiptsPath := fs.String("receipts", "", "central's receipts: a receipts file or a .receipt (default with -data: DIR/receipts)")
	centralKey := fs.String("central-key", "", "central's public key PEM, to check receipts (default with -data: DIR/keys/central.pub or uplink's)")
	asJSON := fs.Bool("json", false, "print the result as JSON")
	fs.Usage = c.Usage
	if err := fs.Parse(args); err != nil {
		return err
	}
	files := fs.Args()
	if *dataDir == "" && len(files) == 1 && len(keys) == 0 && evidence.IsPackage(files[0]) {
		return verifyEvidence(files[0], *asJSON) // an evidence package carries its keys
	}
	if *dataDir == "" && *configPath != "" && len(files) == 0 {
		// -config alone: the chain of the appliance it configures.
		cfg, err := applianceConfig(*configPath, "")
		if err != nil {
			return err
		}
		*dataDir = cfg.DataDir
	}
	if (*dataDir == "") == (len(files) == 0) {
		return &usageError{"verify: give either -data DIR (or -config FILE) or one or more FILEs"}
	}
	if *dataDir != "" {
		// Name the folder, not a key file inside it, when the folder is the problem.
		if fi, err := os.Stat(*dataDir); err != nil || !fi.IsDir() {
			return fmt.Errorf("verify: -data %s: not a data folder (%v)", *dataDir, errOrNotDir(err))
		}
		if _, err := os.Stat(filepath.Join(*dataDir, "spool.db")); err != nil {
			return fmt.Errorf("verify: -data %s: no spool.db there: is it the daemon's data_dir?", *dataDir)
		}
	}
	if len(keys) == 0 {
		if *dataDir == "" {
			return &usageError{"verify: FILEs need -key PEM (the appliance's keys/signing.pub)"}
		}
		// The current key and any it replaced (keys recover, a rotation): the older
		// batches verify only with those.
		keys = append(keys, filepath.Join(*dataDir, "keys", "signing.pub"))
		old, _ := filepath.Glob(filepath.Join(*dataDir, "keys", "signing-*.pub"))
		keys = append(keys, old...)
	}
	var pubs []*ecdsa.PublicKey
	for _, k := range keys {
		p, err := attest.ReadPublicPEM(k)
		if err != nil {
			return err
		}
		pubs = append(pubs, p...)
	}
	v, err := ledger.NewVerifier(pubs...)
	if err != nil {
		return err
	}
	v.AllowPartial, v.AllowGaps = *partial, *gaps
	// A receipt that does not verify is a finding like a bad batch (reported after the
	// chain's own check, in the same output); anything else here stops at once.
	rcpts, receiptErr := loadReceipts(*dataDir, *receiptsPath, *centralKey)
	var rve *ledger.VerifyError
	if receiptErr != nil && !errors.As(receiptErr, &rve) {
		return receiptErr
	}
	res := verifyResult{}
	check := func(b *ledger.Batch) error {
		h, err := v.Verify(b)
		if err != nil {
			return err
		}
		rcpts.see(h, b)
		if res.Batches == 0 {
			res.FirstSeq, res.Chain = h.Seq, h.Chain
		}
		res.Batches++
		res.Events += len(b.Events)
		res.LastSeq = h.Seq
		return nil
	}
	var (
		pos spool.Position
		cfg daemon.Config
		via string
	)
	if *dataDir != "" {
		if cfg, err = applianceConfig(*configPath, *dataDir); err != nil {
			return err
		}
		var from string
		pos, from, err = verifyOnline(ctx, &cfg, v, check)
		via = viaDaemon
		if errors.Is(err, errDaemonDown) {
			pos, err = verifySpool(*configPath, *dataDir, v, check)
			via, from = viaSpool, "the stopped spool "+cfg.SpoolPath()
		}
		fmt.Fprintf(os.Stderr, "verify: read %s\n", from)
	} else {
		err = verifyFiles(files, check)
	}
	var gve *ledger.VerifyError
	if errors.As(err, &gve) && gve.Reason == ledger.ReasonGap && res.Batches == 0 && !*partial && !*gaps {
		// The first batch is not seq 1: an export -from N, or of a pruned spool.
		gve.Detail += "; a file that starts later (export -from N) verifies with -partial, a filtered export with -gaps"
	}
	if gve != nil && via != "" {
		recordVerifyFailure(ctx, &cfg, via, gve)
	}
	switch {
	case err == nil && receiptErr != nil:
		err = receiptErr
	case err == nil && rcpts != nil:
		chain := res.Chain
		if chain == "" {
			chain = pos.Chain
		}
		res.Receipt, err = rcpts.check(chain, res.FirstSeq, res.LastSeq, pos)
	}
	res.OK = err == nil
	var ve *ledger.VerifyError
	if errors.As(err, &ve) {
		res.BadSeq, res.Reason = ve.Seq, ve.Reason
	}
	if err != nil {
		res.Error = err.Error()
	}
	if *asJSON {
		json.NewEncoder(os.Stdout).Encode(res)
	} else if err == nil {
		fmt.Printf("ok: %d batches (seq %d..%d), %d events, chain %s\n", res.Batches, res.FirstSeq, res.LastSeq, res.Events, res.Chain)
		if r := res.Receipt; r != nil {
			fmt.Printf("central holds this chain up to seq %d (receipt of %s, matched by %s)\n", r.Seq, r.Time, r.Matched)
		}
	}
	if err != nil {
		return fmt.Errorf("verify: %w", err)
	}
	return nil
}

func verifySpool(configPath, dir string, v *ledger.Verifier, check func(*ledger.Batch) error) (spool.Position, error) {
	r, err := openSpoolReader(configPath, dir)
	if err != nil {
		return spool.Position{}, err
	}
	defer r.Close()
	pos, err := r.Position()
	if err != nil {
		return pos, err
	}
	if pos.PrunedSeq > 0 {
		v.Anchor(pos.PrunedSeq, pos.PrunedHash)
	}
	if err := r.Batches(1, check); err != nil {
		if ee := (*spool.EventError)(nil); errors.As(err, &ee) {
			return pos, &ledger.VerifyError{Seq: ee.Seq, Reason: ledger.ReasonRoot,
				Detail: fmt.Sprintf("stored event %d cannot be read back (%v): the events are not those the root covers", ee.Index, ee.Err)}
		}
		return pos, err
	}
	// Batches missing at the end show only against the head the spool recorded.
	if last := v.Next(); pos.HeadSeq > 0 && last != pos.HeadSeq+1 {
		return pos, &ledger.VerifyError{Seq: max(last, 1), Reason: ledger.ReasonGap,
			Detail: fmt.Sprintf("spool head is seq %d but the stored chain ends before seq %d", pos.HeadSeq, max(last, 1))}
	}
	return pos, nil
}

func verifyFiles(files []string, check func(*ledger.Batch) error) error {
	for _, name := range files {
		f, err := os.Open(name)
		if err != nil {
			return err
		}
		err = verifyStream(f, check)
		f.Close()
		if err != nil {
			var ce *cutError
			if errors.As(err, &ce) {
				return fmt.Errorf("%s: %w", name, err)
			}
			return err
		}
	}
	return nil
}

// verifyStream checks each batch of a wire-format stream with check. A stream that
// breaks off or holds bytes that are not a batch is a *cutError naming the byte offset
// and the last whole batch.
func verifyStream(r io.Reader, check func(*ledger.Batch) error) error {
	lr := ledger.NewReader(r)
	var offset int64
	var lastSeq uint64
	for {
		b, err := lr.Next()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return &cutError{Offset: offset, LastSeq: lastSeq, Err: err}
		}
		if err := check(b); err != nil {
			return err
		}
		offset += wireSize(b)
		if h, err := ledger.ParseHeader(b.Header); err == nil {
			lastSeq = h.Seq
		}
	}
}

// cutError is a wire stream that ends inside a batch, or holds bytes that are not one.
type cutError struct {
	Offset  int64  // where the broken batch starts
	LastSeq uint64 // the last whole batch before it; 0: none
	Err     error
}

func (e *cutError) Error() string {
	where := "the first batch"
	if e.LastSeq > 0 {
		where = fmt.Sprintf("the batch after seq %d", e.LastSeq)
	}
	what := "is broken"
	if errors.Is(e.Err, io.ErrUnexpectedEOF) || strings.Contains(e.Err.Error(), io.ErrUnexpectedEOF.Error()) {
		what = "is cut short (the file is truncated)"
	}
	return fmt.Sprintf("%s, at byte offset %d, %s: %v", where, e.Offset, what, e.Err)
}

func (e *cutError) Unwrap() error { return e.Err }

// wireSize is the length of b in the wire format (ledger.Batch.AppendWire).
func wireSize(b *ledger.Batch) int64 {
	n := int64(4 + 4 + len(b.Header) + 2 + len(b.Signature) + 4)
	for _, e := range b.Events {
		n += 4 + int64(len(e))
	}
	return n
}

// verifyOnline reads the chain through the running daemon (GET /v1/export, purpose
// verify: the whole chain up to the head when the read starts) and checks each batch
// here, against the public keys: better evidence than the daemon vouching for its own
// spool. It returns errDaemonDown when no daemon answers for cfg.DataDir.
func verifyOnline(ctx context.Context, cfg *daemon.Config, v *ledger.Verifier, check func(*ledger.Batch) error) (spool.Position, string, error) {
	var pos spool.Position
	resp, addr, err := adminStream(ctx, cfg, daemon.ExportRequest{Purpose: daemon.PurposeVerify})
	if err != nil {
		return pos, "", err
	}
	defer resp.Body.Close()
	h := resp.Header
	u := func(k string) uint64 { n, _ := strconv.ParseUint(h.Get(k), 10, 64); return n }
	pos = spool.Position{Chain: h.Get(daemon.HeaderChain), HeadSeq: u(daemon.HeaderHeadSeq), HeadHash: h.Get(daemon.HeaderHeadHash),
		AckedSeq: u(daemon.HeaderAckedSeq), PrunedSeq: u(daemon.HeaderPrunedSeq), PrunedHash: h.Get(daemon.HeaderPrunedHash)}
	from := fmt.Sprintf("through the running daemon at %s (chain as of seq %d)", addr, pos.HeadSeq)
	if pos.PrunedSeq > 0 {
		v.Anchor(pos.PrunedSeq, pos.PrunedHash)
	}
	if err := verifyStream(resp.Body, check); err != nil {
		var ce *cutError
		if errors.As(err, &ce) {
			if serr := streamStatus(resp); serr != nil {
				return pos, from, serr
			}
			return pos, from, fmt.Errorf("the daemon's stream: %w", err)
		}
		return pos, from, err
	}
	if err := streamStatus(resp); err != nil {
		return pos, from, err
	}
	if last := v.Next(); pos.HeadSeq > 0 && last != pos.HeadSeq+1 {
		return pos, from, &ledger.VerifyError{Seq: max(last, 1), Reason: ledger.ReasonGap,
			Detail: fmt.Sprintf("the daemon's head was seq %d but the chain it sent ends before seq %d", pos.HeadSeq, max(last, 1))}
	}
	return pos, from, nil
}

// recordVerifyFailure records a failed verify of this appliance's chain: through the
// daemon when it runs, else in the stopped spool (never quarantining it). A failure to
// record is said on stderr; the verify's own result stands.
func recordVerifyFailure(ctx context.Context, cfg *daemon.Config, via string, ve *ledger.VerifyError) {
	f := daemon.VerifyFailure{By: whoami(), Seq: ve.Seq, Reason: ve.Reason, Detail: ve.Detail, Via: via}
	var err error
	if via == viaDaemon {
		body, _ := json.Marshal(f)
		_, err = adminPost(ctx, cfg, "/v1/verify/failed", "application/json", body)
	} else {
		ev := daemon.VerifyFailedEvent(f, time.Now())
		err = recordOffline(ctx, cfg, &ev)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "verify: the failure is not recorded in the chain (the daemon records damage it finds when it next starts): %v\n", err)
		return
	}
	fmt.Fprintf(os.Stderr, "verify: the failure is recorded in the chain (%s)\n", daemon.ActionVerifyFailed)
}

// Usage prints the man page.
func (c *VerifyCommand) Usage() {
	fmt.Fprint(os.Stderr, `The verify command checks a chain of batches: each header's ECDSA signature by a
trusted key, each Merkle root over the events, each prev link, and that seqs are
contiguous from 1. It exits 0 when the chain is intact, and 1 naming the first bad seq
and why (signature, root, prev, gap, order, count, key, chain) otherwise.

Usage:

	edgeaudit verify -data DIR [arguments]
	edgeaudit verify -config FILE [arguments]
	edgeaudit verify -key PEM [arguments] FILE...
	edgeaudit verify [-json] EVIDENCE-DIR

Arguments:

	-data DIR
	    The appliance's data folder. While the daemon runs, the chain is read through
	    its admin endpoint (found at the address in DIR/admin.addr, else the config's
	    admin:; the secret in DIR/keys/admin.token), up to the head when the read
	    starts, and checked here against the public keys; with the daemon stopped,
	    spool.db is read directly. Standard error says which. Trusts
	    DIR/keys/signing.pub, and the keys it replaced (DIR/keys/signing-*.pub, kept
	    by a key recovery), unless -key is given. A failure is recorded in the chain
	    (audit.verify_failed): by the daemon, or in the stopped spool when it opens
	    (a damaged spool is never moved aside by verify).

	-config FILE
	    The daemon's config file: its admin: address, data_dir (without -data) and
	    keys: section. Events in spool.db are encrypted under the data key
	    (spool.encrypt); the roots cover them in clear, so with the daemon stopped the
	    data key is opened as the daemon opens it. Defaults to the built-in defaults.

	-key PEM
	    A trusted public key (PEM); repeatable. Required for FILEs.

	-partial
	    Accept a chain whose first batch is not seq 1 (an export of a pruned spool,
	    or export -from N).

	-gaps
	    Accept missing seqs anywhere (an export with filters keeps only the batches
	    that hold a match): each batch's signature, count and root are checked, prev
	    only where seqs are adjacent. Implies -partial.

	-receipts FILE|DIR
	    Central's receipts: a receipts file (edgeaudit receive import), one .receipt,
	    or a folder of them. With -data, DIR/receipts (what the uplink kept) is used
	    when it exists. The newest receipt of the verified chain must verify with
	    central's key, name the chain's site, device and chain id, and name the header
	    hash of the batch at its seq (or the pruned anchor); then central provably
	    held the chain up to that seq. A receipt beyond the chain's end means this copy
	    is behind central (restored or rolled back): exit 1, reason "receipt".

	-central-key PEM
	    Central's receipt key (central.pub). With -data, DIR/keys/central.pub when it
	    exists; required with -receipts otherwise.

	-json
	    Print the result as one JSON object.

	EVIDENCE-DIR
	    An evidence package ("edgeaudit query -evidence"): checks its manifest, header
	    signatures, inclusion proofs and receipts with the keys it carries.
`)
}

func errOrNotDir(err error) error {
	if err != nil {
		return err
	}
	return errors.New("not a folder")
}
