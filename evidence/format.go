// Package evidence writes and verifies evidence packages: the events an investigation
// selected, with the signed batch headers, inclusion proofs, device keys and central
// receipts that prove them, in one folder that verifies offline.
package evidence

import (
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"path"
	"runtime/debug"
	"strings"
	"time"

	"github.com/edgeaudit/edgeaudit/ledger"
	"github.com/edgeaudit/edgeaudit/receiver"
)

// Format is the manifest's "format": the layout below, version 1.
const Format = "edgeaudit.evidence/v1"

// The files of a package (docs/format.md, "Evidence packages"):
//
//	manifest.json                                  Manifest: query, counts, every other file's size and SHA-256
//	README.txt                                     how to verify, for whoever receives the folder
//	events.jsonl                                   one Event line per selected event
//	proofs.jsonl                                   one Proof line per event, in the same order
//	batches/<site>/<device>/<chain>/<seq>.header   exact header bytes of each batch used
//	batches/<site>/<device>/<chain>/<seq>.sig      its DER ECDSA signature
//	keys/<site>/<device>.pub                       the device's public key (PEM)
//	receipts.jsonl                                 the newest receipt of each device, and each batch's own when the store keeps them (ledger receipts file)
//	central.pub                                    central's receipt key (PEM)
const (
	ManifestFile = "manifest.json"
	ReadmeFile   = "README.txt"
	EventsFile   = "events.jsonl"
	ProofsFile   = "proofs.jsonl"
	ReceiptsFile = "receipts.jsonl"
	CentralFile  = "central.pub"
	batchesDir   = "batches"
	keysDir      = "keys"
)

// Why a package does not verify. Each *Error wraps one of these.
var (
	// ErrManifest: the manifest does not parse, a file differs from its size or
	// SHA-256, is missing, or is in the folder without being listed, or a count is off.
	ErrManifest = errors.New("manifest mismatch")
	// ErrFormat: a file or line does not parse, or its names disagree with another's.
	ErrFormat = errors.New("bad evidence format")
	// ErrSignature: a header's key_id is not its device's key, or its signature does not
	// verify.
	ErrSignature = errors.New("header signature does not verify")
	// ErrProof: an event's inclusion proof does not lead to its batch's signed root.
	ErrProof = errors.New("inclusion proof does not match the signed root")
	// ErrReceipt: a receipt does not verify with central's key, or no receipt covers a
	// batch.
	ErrReceipt = errors.New("receipt does not verify or does not cover the batch")
	// ErrQuery: an event does not satisfy the query the manifest states.
	ErrQuery = errors.New("event does not match the stated query")
)

// Error names the file and item of a failed check.
type Error struct {
	File   string // package-relative name
	Item   string // "line 3 (s1/d1 seq 2 index 1)", "" for the whole file
	Err    error  // one of the sentinels
	Detail string
}

func (e *Error) Error() string {
	s := "evidence: " + e.File
	if e.Item != "" {
		s += " " + e.Item
	}
	s += ": " + e.Err.Error()
	if e.Detail != "" {
		s += ": " + e.Detail
	}
	return s
}

func (e *Error) Unwrap() error { return e.Err }

func fail(file, item string, err error, format string, args ...any) *Error {
	return &Error{File: file, Item: item, Err: err, Detail: fmt.Sprintf(format, args...)}
}

// Manifest is manifest.json.
type Manifest struct {
	Format  string    `json:"format"`
	Created time.Time `json:"created"`
	Tool    string    `json:"tool"`
	Query   Query     `json:"query"`
	Events  int       `json:"events"`
	Batches int       `json:"batches"`
	Devices int       `json:"devices"`
	Files   []File    `json:"files"`
}

// File is one manifest entry.
type File struct {
	Name   string `json:"name"` // slash-separated, relative to the package
	Size   int64  `json:"size"`
	SHA256 string `json:"sha256"`
}

// Query is receiver.Query as the manifest states it.
type Query struct {
	Site    string     `json:"site,omitempty"`
	Device  string     `json:"device,omitempty"`
	Patient string     `json:"patient,omitempty"`
	User    string     `json:"user,omitempty"`
	Action  string     `json:"action,omitempty"`
	Outcome string     `json:"outcome,omitempty"`
	Study   string     `json:"study,omitempty"`
	From    *time.Time `json:"from,omitempty"`
	To      *time.Time `json:"to,omitempty"`
	Limit   int        `json:"limit,omitempty"`
}

func queryOf(q receiver.Query) Query {
	out := Query{Site: q.Site, Device: q.Device, Patient: q.Patient, User: q.User, Action: q.Action,
		Outcome: q.Outcome, Study: q.Study, Limit: q.Limit}
	if !q.From.IsZero() {
		t := q.From.UTC()
		out.From = &t
	}
	if !q.To.IsZero() {
		t := q.To.UTC()
		out.To = &t
	}
	return out
}

// Receiver is the query in the receiver's terms.
func (q Query) Receiver() receiver.Query {
	out := receiver.Query{Site: q.Site, Device: q.Device, Patient: q.Patient, User: q.User, Action: q.Action,
		Outcome: q.Outcome, Study: q.Study, Limit: q.Limit}
	if q.From != nil {
		out.From = *q.From
	}
	if q.To != nil {
		out.To = *q.To
	}
	return out
}

// Event is one line of events.jsonl: where the event is stored, and its exact bytes,
// as JSON when they are JSON that survives a round trip unchanged (the normal case:
// audit's encoding is compact), else base64.
type Event struct {
	Site     string          `json:"site"`
	Device   string          `json:"device"`
	Chain    string          `json:"chain"`
	Seq      uint64          `json:"seq"`
	Index    int             `json:"index"`
	Event    json.RawMessage `json:"event,omitempty"`
	EventB64 []byte          `json:"event_b64,omitempty"`
}

// Bytes returns the event's exact bytes.
func (e *Event) Bytes() []byte {
	if e.Event != nil {
		return e.Event
	}
	return e.EventB64
}

// Proof is one line of proofs.jsonl: the RFC 6962 audit path of the event on the same
// line of events.jsonl, leaf upwards, in a batch of Size events.
type Proof struct {
	Site   string   `json:"site"`
	Device string   `json:"device"`
	Chain  string   `json:"chain"`
	Seq    uint64   `json:"seq"`
	Index  int      `json:"index"`
	Size   int      `json:"size"`
	Path   []string `json:"path"` // hex SHA-256
}

// Report is what Verify found.
type Report struct {
	Manifest Manifest
	Events   int
	Batches  int
	Devices  []Device
}

// Device is one device's part of a package.
type Device struct {
	Site, Device, Chain string
	Batches, Events     int
	Receipt             ledger.Receipt // the newest receipt, covering every batch above
	// Bound counts the batches with a receipt at their own seq, which names their
	// header hash: bound to central's key, not only to the device's.
	Bound int
}

// Summary is what Write wrote.
type Summary struct {
	Dir     string
	Events  int
	Batches int
	Devices int
	Files   int
	Bytes   int64
}

func seqName(seq uint64) string { return receiver.SeqName(seq) }

func headerName(site, device, chain string, seq uint64) string {
	return path.Join(batchesDir, site, device, chain, seqName(seq)+".header")
}

func sigName(site, device, chain string, seq uint64) string {
	return path.Join(batchesDir, site, device, chain, seqName(seq)+".sig")
}

func keyName(site, device string) string { return path.Join(keysDir, site, device+".pub") }

// validWhere checks names that become paths: a hostile package must not make Verify
// read outside its folder.
func validWhere(site, device, chain string) bool {
	if !ledger.ValidName(site) || !ledger.ValidName(device) || len(chain) != 32 {
		return false
	}
	_, err := hex.DecodeString(chain)
	return err == nil && strings.ToLower(chain) == chain
}

// toolVersion names the program that wrote a package, from its build info.
func toolVersion() string {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return "edgeaudit (unknown build)"
	}
	v := bi.Main.Version
	if v == "" {
		v = "(devel)"
	}
	s := "edgeaudit " + v
	for _, kv := range bi.Settings {
		if kv.Key == "vcs.revision" {
			s += " " + kv.Value
		}
	}
	return s + " " + bi.GoVersion
}

const readme = `EDGEAUDIT EVIDENCE PACKAGE (%s)

This folder holds audit events selected by a query on the central edgeaudit store,
with everything needed to prove, offline, that each event is exactly as an enrolled
appliance sealed it and that central stored it:

  manifest.json   the query, when and by what tool the package was made, and the size
                  and SHA-256 of every other file
  events.jsonl    the events, one JSON object per line: site, device, chain, seq (the
                  batch), index (the event's place in the batch), and the event's exact
                  bytes ("event", or "event_b64" when they are not plain JSON)
  proofs.jsonl    for each line of events.jsonl, the RFC 6962 inclusion proof of the
                  event in its batch's Merkle tree
  batches/        for each batch used, the exact signed header (.header) and its DER
                  ECDSA P-256 signature (.sig); the batch's other events are not included
  keys/           the public key enrolled for each device (PEM)
  receipts.jsonl  central's newest signed receipt for each device (a C2SP signed note),
                  which covers every batch up to the seq it names, and each batch's own
                  receipt (naming its header hash) when central's store keeps them
  central.pub     central's receipt key (PEM)

Verify it with the edgeaudit binary, which needs nothing else:

  edgeaudit verify <this folder>

It checks, and names the file and line of the first failure:
  1. every file against manifest.json (size, SHA-256, nothing missing or added);
  2. each header's signature with its device's key, and that key_id is that key;
  3. each event's inclusion proof against the root in its signed header
     (leaf = SHA-256(0x00 || event bytes), node = SHA-256(0x01 || left || right));
  4. each receipt's signature with central.pub, and that the newest covers each batch:
     same site, device and chain, and a seq at or above the batch's; a receipt at a
     batch's own seq must name its header hash;
  5. that each event satisfies the query in manifest.json.

By hand, with standard tools:
  sha256sum FILE                                  compare with manifest.json
  openssl dgst -sha256 -verify keys/SITE/DEVICE.pub -signature batches/.../SEQ.sig batches/.../SEQ.header

The keys should also be compared with the ones enrolled at central (or the appliance's
keys/signing.pub) by a channel other than this folder: a batch below the receipt's seq
without a receipt of its own is tied to central only through its device's key. The formats are in edgeaudit's
docs/format.md ("Batch", "Receipts", "Evidence packages").

A package shows that the events it holds are authentic; it cannot show that the query
found every matching event. The manifest is not signed: its query and time are what the
person who made the package states.
`
