package ledger

import (
	"bufio"
	"crypto/ecdsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
)

// FormatVersion is the header's "v". A verifier rejects versions it does not know.
const FormatVersion = 1

// AlgECDSAP256SHA256 names the only signature algorithm of format version 1: ECDSA over
// P-256, ASN.1 DER signature over SHA-256 of the exact header bytes.
const AlgECDSAP256SHA256 = "ecdsa-p256-sha256"

// ZeroHash is the `prev` of a chain's first batch.
var ZeroHash = strings.Repeat("0", 64)

// Wire-format limits. They bound what a decoder allocates for hostile input.
const (
	Magic          = "EAB1"
	MaxHeaderSize  = 64 << 10
	MaxSigSize     = 1 << 10
	MaxEventSize   = 16 << 20
	MaxBatchEvents = 1 << 20
)

// Header is a batch header. Its JSON encoding, produced once by the sealer, is the exact
// byte string that is signed, stored, sent and hashed into the next header's prev; a
// verifier parses those bytes but never re-encodes them.
type Header struct {
	Version  int      `json:"v"`
	Site     string   `json:"site"`
	Device   string   `json:"device"`
	Chain    string   `json:"chain"` // 32 hex digits, chosen at the chain's genesis
	Seq      uint64   `json:"seq"`
	Prev     string   `json:"prev"` // hex SHA-256 of the previous header's bytes
	Count    int      `json:"count"`
	Root     string   `json:"root"`            // hex RFC 6962 tree hash over the event bytes
	First    string   `json:"first,omitempty"` // earliest event `received`, RFC 3339 UTC
	Last     string   `json:"last,omitempty"`  // latest event `received`
	Sealed   string   `json:"sealed"`
	TimeSync TimeSync `json:"time_sync"`
	KeyID    string   `json:"key_id"` // hex SHA-256 of the signer's SubjectPublicKeyInfo DER
	Alg      string   `json:"alg"`
}

// TimeSync is the clock evidence at sealing time (package timesync fills it).
type TimeSync struct {
	State     string `json:"state"` // synced|offset|unsynced|unknown (docs/format.md)
	Server    string `json:"server,omitempty"`
	OffsetNS  int64  `json:"offset_ns"` // server time minus local time, of the answer in Checked
	MaxOffset int64  `json:"max_offset_ns,omitempty"`
	Checked   string `json:"checked,omitempty"` // RFC 3339 UTC of the last NTP answer
	Error     string `json:"error,omitempty"`

	// Optional members, omitted when zero so that a header without them encodes as
	// before: the round trip, the root distance ((root delay + round trip)/2 + root
	// dispersion), stratum, leap indicator (0 none, 1 insert, 2 delete) and reference
	// id (beevik/ntp's ReferenceString) of the answer in Checked.
	RTTNS          int64  `json:"rtt_ns,omitempty"`
	RootDistanceNS int64  `json:"root_distance_ns,omitempty"`
	Stratum        int    `json:"stratum,omitempty"`
	Leap           int    `json:"leap,omitempty"`
	RefID          string `json:"ref_id,omitempty"`
}

// Encode returns the header bytes. Call it once per batch: the result is the contract.
func (h *Header) Encode() ([]byte, error) {
	b, err := json.Marshal(h)
	if err != nil {
		return nil, fmt.Errorf("encode header: %w", err)
	}
	return b, nil
}

// ParseHeader decodes header bytes, refusing unknown fields so that a verifier never
// silently ignores something that was signed.
func ParseHeader(b []byte) (Header, error) {
	var h Header
	dec := json.NewDecoder(strings.NewReader(string(b)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&h); err != nil {
		return Header{}, fmt.Errorf("parse header: %w", err)
	}
	if dec.More() {
		return Header{}, errors.New("parse header: trailing data")
	}
	return h, nil
}

// HeaderHash is SHA-256 of exact header bytes, the next batch's prev.
func HeaderHash(headerBytes []byte) Hash { return sha256.Sum256(headerBytes) }

// Batch is one sealed batch as stored and sent.
type Batch struct {
	Header    []byte   // exact header bytes
	Signature []byte   // ASN.1 DER ECDSA signature over SHA-256(Header)
	Events    [][]byte // exact event bytes, in leaf order
}

// AppendWire appends the wire encoding of b:
//
//	"EAB1" | u32 len | header | u16 len | signature | u32 n | n × (u32 len | event)
//
// All integers are big-endian. A file of batches is their concatenation.
func (b *Batch) AppendWire(dst []byte) []byte {
	dst = append(dst, Magic...)
	dst = binary.BigEndian.AppendUint32(dst, uint32(len(b.Header)))
	dst = append(dst, b.Header...)
	dst = binary.BigEndian.AppendUint16(dst, uint16(len(b.Signature)))
	dst = append(dst, b.Signature...)
	dst = binary.BigEndian.AppendUint32(dst, uint32(len(b.Events)))
	for _, e := range b.Events {
		dst = binary.BigEndian.AppendUint32(dst, uint32(len(e)))
		dst = append(dst, e...)
	}
	return dst
}

// ErrFormat is wrapped by every wire decoding error.
var ErrFormat = errors.New("bad batch encoding")

// Reader decodes a stream of wire batches.
type Reader struct {
	r   *bufio.Reader
	max int64 // bytes a single batch may take
}

// NewReader reads batches from r.
func NewReader(r io.Reader) *Reader { return &Reader{r: bufio.NewReaderSize(r, 64<<10), max: 1 << 30} }

// Next returns the next batch, or io.EOF at a clean end of the stream.
func (r *Reader) Next() (*Batch, error) {
	var magic [4]byte
	if _, err := io.ReadFull(r.r, magic[:]); err != nil {
		if err == io.EOF {
			return nil, io.EOF
		}
		return nil, fmt.Errorf("%w: magic: %v", ErrFormat, err)
	}
	if string(magic[:]) != Magic {
		return nil, fmt.Errorf("%w: magic %q", ErrFormat, magic[:])
	}
	budget := r.max
	read := func(n int, what string) ([]byte, error) {
		if int64(n) > budget {
			return nil, fmt.Errorf("%w: %s of %d bytes exceeds the batch limit", ErrFormat, what, n)
		}
		budget -= int64(n)
		buf := make([]byte, n)
		if _, err := io.ReadFull(r.r, buf); err != nil {
			return nil, fmt.Errorf("%w: %s: %v", ErrFormat, what, noEOF(err))
		}
		return buf, nil
	}
	u32 := func(what string) (uint32, error) {
		var b [4]byte
		if _, err := io.ReadFull(r.r, b[:]); err != nil {
			return 0, fmt.Errorf("%w: %s: %v", ErrFormat, what, noEOF(err))
		}
		return binary.BigEndian.Uint32(b[:]), nil
	}
	var b Batch
	n, err := u32("header length")
	if err != nil {
		return nil, err
	}
	if n == 0 || n > MaxHeaderSize {
		return nil, fmt.Errorf("%w: header length %d", ErrFormat, n)
	}
	if b.Header, err = read(int(n), "header"); err != nil {
		return nil, err
	}
	var sl [2]byte
	if _, err := io.ReadFull(r.r, sl[:]); err != nil {
		return nil, fmt.Errorf("%w: signature length: %v", ErrFormat, noEOF(err))
	}
	if n := binary.BigEndian.Uint16(sl[:]); n > MaxSigSize {
		return nil, fmt.Errorf("%w: signature length %d", ErrFormat, n)
	} else if b.Signature, err = read(int(n), "signature"); err != nil {
		return nil, err
	}
	count, err := u32("event count")
	if err != nil {
		return nil, err
	}
	if count > MaxBatchEvents {
		return nil, fmt.Errorf("%w: event count %d", ErrFormat, count)
	}
	b.Events = make([][]byte, 0, min(count, 4096))
	for i := range count {
		n, err := u32("event length")
		if err != nil {
			return nil, err
		}
		if n > MaxEventSize {
			return nil, fmt.Errorf("%w: event %d length %d", ErrFormat, i, n)
		}
		e, err := read(int(n), "event")
		if err != nil {
			return nil, err
		}
		b.Events = append(b.Events, e)
	}
	return &b, nil
}

func noEOF(err error) error {
	if err == io.EOF {
		return io.ErrUnexpectedEOF
	}
	return err
}

// KeyID is hex SHA-256 of the public key's SubjectPublicKeyInfo DER.
func KeyID(pub *ecdsa.PublicKey) (string, error) {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return "", fmt.Errorf("key id: %w", err)
	}
	sum := sha256.Sum256(der)
	return hex.EncodeToString(sum[:]), nil
}

// EventsRoot is the Merkle root over the batch's event bytes.
func EventsRoot(events [][]byte) Hash {
	switch len(events) {
	case 0:
		return EmptyRoot
	case 1:
		return LeafHash(events[0])
	}
	// One digest for every leaf (LeafHash allocates one each), and the tree reduced in
	// place: leaves is ours.
	leaves := make([]Hash, len(events))
	h := sha256.New()
	for i, e := range events {
		h.Reset()
		h.Write(leafPrefix[:])
		h.Write(e)
		h.Sum(leaves[i][:0])
	}
	return rootInPlace(leaves)
}

var leafPrefix = [1]byte{0}

// Prepare fills in count, root, version and algorithm and encodes the header once: the
// exact bytes that are signed and hashed. The spool prepares a batch's header when the
// batch closes and signs it later, outside its write transaction.
func (h *Header) Prepare(root Hash, count int) ([]byte, error) {
	h.Version, h.Alg, h.Count = FormatVersion, AlgECDSAP256SHA256, count
	h.Root = hex.EncodeToString(root[:])
	return h.Encode()
}

// Seal prepares the header (Prepare) and signs SHA-256 of its exact bytes with sign.
func (h *Header) Seal(root Hash, count int, sign func(digest []byte) ([]byte, error)) (header, sig []byte, err error) {
	if header, err = h.Prepare(root, count); err != nil {
		return nil, nil, err
	}
	d := sha256.Sum256(header)
	if sig, err = sign(d[:]); err != nil {
		return nil, nil, fmt.Errorf("sign header seq %d: %w", h.Seq, err)
	}
	return header, sig, nil
}
