package ledger

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"
)

// A receipt is central's signed statement that it has verified and stored a device's
// chain up to and including one batch. It is a C2SP signed note (c2sp.org/signed-note)
// whose text is ReceiptOrigin and six "name value" lines in a fixed order:
//
//	edgeaudit.receipt/v1
//	site s1
//	device d1
//	chain 00112233445566778899aabbccddeeff
//	seq 42
//	header 5f0c…(64 hex digits: SHA-256 of batch 42's header bytes)
//	time 2026-11-27T08:00:03Z
//
//	— central.example/edgeaudit base64(key ID || DER ECDSA signature)
//
// The signature type is the note type 0x02 (ECDSA as implemented by
// github.com/transparency-dev/witness): an ASN.1 DER ECDSA P-256 signature over
// SHA-256 of the exact note text (the seven lines, each ending in a newline), and a key
// ID of the first four bytes of SHA-256 of the key's DER SubjectPublicKeyInfo (the
// first 8 hex digits of KeyID). docs/format.md, "Receipts", is the contract.

// ReceiptOrigin is the first line of a receipt's text; it names the format and version.
const ReceiptOrigin = "edgeaudit.receipt/v1"

// NoteTypeECDSA is the C2SP signed-note signature type of receipts.
const NoteTypeECDSA = 0x02

// Receipt limits: a receipt is a few hundred bytes, but a note may carry several
// signatures (a key rotation), so a parser accepts up to MaxReceiptSignatures of them.
const (
	MaxReceiptSize       = 16 << 10
	MaxReceiptSignatures = 16
)

var (
	// ErrReceipt is wrapped by every receipt that does not parse.
	ErrReceipt = errors.New("bad receipt")
	// ErrReceiptSignature means no signature by the given key verifies, or one fails.
	ErrReceiptSignature = errors.New("receipt signature does not verify")
)

// Receipt is what a receipt states: central has verified and stored the chain Chain of
// Site/Device from seq 1 (or from where the device's pruning anchored it) up to Seq,
// whose header bytes hash to HeaderHash (lowercase hex, as HeaderHash), at Time.
type Receipt struct {
	Site, Device, Chain string
	Seq                 uint64
	HeaderHash          string
	Time                time.Time
}

// receiptText returns the note text for r, or an error naming the field that cannot
// be written. It is the only encoder: ParseReceipt accepts exactly what it writes.
func receiptText(r Receipt) ([]byte, error) {
	switch {
	case !ValidName(r.Site):
		return nil, fmt.Errorf("%w: site %q", ErrReceipt, r.Site)
	case !ValidName(r.Device):
		return nil, fmt.Errorf("%w: device %q", ErrReceipt, r.Device)
	case !isLowerHex(r.Chain, 32):
		return nil, fmt.Errorf("%w: chain %q is not 32 lowercase hex digits", ErrReceipt, r.Chain)
	case r.Seq == 0:
		return nil, fmt.Errorf("%w: seq 0", ErrReceipt)
	case !isLowerHex(r.HeaderHash, 64):
		return nil, fmt.Errorf("%w: header hash %q is not 64 lowercase hex digits", ErrReceipt, r.HeaderHash)
	case r.Time.IsZero():
		return nil, fmt.Errorf("%w: no time", ErrReceipt)
	}
	b := make([]byte, 0, 256)
	b = append(b, ReceiptOrigin+"\n"...)
	b = append(b, "site "+r.Site+"\n"...)
	b = append(b, "device "+r.Device+"\n"...)
	b = append(b, "chain "+r.Chain+"\n"...)
	b = append(b, "seq "...)
	b = strconv.AppendUint(b, r.Seq, 10)
	b = append(b, "\nheader "+r.HeaderHash+"\n"...)
	b = append(b, "time "...)
	b = r.Time.UTC().AppendFormat(b, time.RFC3339Nano)
	return append(b, '\n'), nil
}

// SignReceipt encodes r as a signed note and signs it once with sign, which gets
// SHA-256 of the note text and returns an ASN.1 DER ECDSA P-256 signature (a
// spool.Signer's Sign fits). keyName is the note key name (a schema-less URL such as
// "central.example/edgeaudit"; no spaces or '+'), and pub is the signing key's public
// half: the note's key ID is derived from it, and the signature is checked against it
// before the receipt is returned, so a receipt that would not verify never leaves.
// The time is written in UTC, to the nanosecond.
func SignReceipt(r Receipt, sign func(digest []byte) ([]byte, error), keyName string, pub *ecdsa.PublicKey) ([]byte, error) {
	if !validKeyName(keyName) {
		return nil, fmt.Errorf("sign receipt: %w: key name %q", ErrReceipt, keyName)
	}
	id, err := receiptKeyID(pub)
	if err != nil {
		return nil, fmt.Errorf("sign receipt: %w", err)
	}
	text, err := receiptText(r)
	if err != nil {
		return nil, fmt.Errorf("sign receipt: %w", err)
	}
	d := sha256.Sum256(text)
	sig, err := sign(d[:])
	if err != nil {
		return nil, fmt.Errorf("sign receipt seq %d: %w", r.Seq, err)
	}
	if !ecdsa.VerifyASN1(pub, d[:], sig) {
		return nil, fmt.Errorf("sign receipt seq %d: %w with the given public key", r.Seq, ErrReceiptSignature)
	}
	blob := binary.BigEndian.AppendUint32(make([]byte, 0, 4+len(sig)), id)
	blob = append(blob, sig...)
	out := make([]byte, 0, len(text)+len(keyName)+base64.StdEncoding.EncodedLen(len(blob))+8)
	out = append(out, text...)
	out = append(out, "\n— "+keyName+" "...)
	out = base64.StdEncoding.AppendEncode(out, blob)
	return append(out, '\n'), nil
}

// noteSig is one signature line of a note.
type noteSig struct {
	name string
	id   uint32
	sig  []byte // the signature after the key ID
}

// splitNote checks the signed-note syntax and returns the text (with its final newline)
// and the signature lines.
func splitNote(b []byte) (text []byte, sigs []noteSig, err error) {
	if len(b) > MaxReceiptSize {
		return nil, nil, fmt.Errorf("%w: %d bytes, more than %d", ErrReceipt, len(b), MaxReceiptSize)
	}
	if !utf8.Valid(b) {
		return nil, nil, fmt.Errorf("%w: not UTF-8", ErrReceipt)
	}
	for i, c := range b {
		if c < 0x20 && c != '\n' {
			return nil, nil, fmt.Errorf("%w: control character 0x%02x at byte %d", ErrReceipt, c, i)
		}
	}
	// The text ends at the last blank line; the text keeps its final newline.
	split := bytes.LastIndex(b, []byte("\n\n"))
	if split < 0 {
		return nil, nil, fmt.Errorf("%w: no blank line before the signatures", ErrReceipt)
	}
	text, rest := b[:split+1], b[split+2:]
	if len(rest) == 0 || rest[len(rest)-1] != '\n' {
		return nil, nil, fmt.Errorf("%w: no signature lines, or the last does not end in a newline", ErrReceipt)
	}
	for _, line := range strings.Split(string(rest[:len(rest)-1]), "\n") {
		if len(sigs) == MaxReceiptSignatures {
			return nil, nil, fmt.Errorf("%w: more than %d signatures", ErrReceipt, MaxReceiptSignatures)
		}
		s, err := parseSigLine(line)
		if err != nil {
			return nil, nil, err
		}
		sigs = append(sigs, s)
	}
	return text, sigs, nil
}

func parseSigLine(line string) (noteSig, error) {
	rest, ok := strings.CutPrefix(line, "— ")
	if !ok {
		return noteSig{}, fmt.Errorf("%w: signature line does not start with an em dash and a space", ErrReceipt)
	}
	name, b64, ok := strings.Cut(rest, " ")
	if !ok || !validKeyName(name) {
		return noteSig{}, fmt.Errorf("%w: signature line key name %q", ErrReceipt, name)
	}
	blob, err := base64.StdEncoding.Strict().DecodeString(b64)
	if err != nil || len(blob) < 5 {
		return noteSig{}, fmt.Errorf("%w: signature of key %q is not base64 of a key ID and a signature", ErrReceipt, name)
	}
	return noteSig{name: name, id: binary.BigEndian.Uint32(blob), sig: blob[4:]}, nil
}

// ParseReceipt checks that b is a receipt in the exact form SignReceipt writes and
// returns what it states. It checks the format only, not any signature: use
// VerifyReceipt for anything that trusts the receipt.
func ParseReceipt(b []byte) (Receipt, error) {
	text, _, err := splitNote(b)
	if err != nil {
		return Receipt{}, err
	}
	return parseReceiptText(text)
}

func parseReceiptText(text []byte) (Receipt, error) {
	lines := strings.Split(strings.TrimSuffix(string(text), "\n"), "\n")
	names := [...]string{"", "site", "device", "chain", "seq", "header", "time"}
	if len(lines) != len(names) || lines[0] != ReceiptOrigin {
		return Receipt{}, fmt.Errorf("%w: text is not %d lines starting %q", ErrReceipt, len(names), ReceiptOrigin)
	}
	var vals [len(names)]string
	for i := 1; i < len(names); i++ {
		v, ok := strings.CutPrefix(lines[i], names[i]+" ")
		if !ok {
			return Receipt{}, fmt.Errorf("%w: line %d is not %q", ErrReceipt, i+1, names[i]+" ...")
		}
		vals[i] = v
	}
	seq, err := strconv.ParseUint(vals[4], 10, 64)
	if err != nil {
		return Receipt{}, fmt.Errorf("%w: seq %q", ErrReceipt, vals[4])
	}
	t, err := time.Parse(time.RFC3339Nano, vals[6])
	if err != nil {
		return Receipt{}, fmt.Errorf("%w: time %q", ErrReceipt, vals[6])
	}
	r := Receipt{Site: vals[1], Device: vals[2], Chain: vals[3], Seq: seq, HeaderHash: vals[5], Time: t.UTC()}
	// One receipt has one encoding: anything the encoder would write differently (a
	// leading zero, a time zone other than Z, trailing zeros, an upper-case digit) is
	// refused, so two receipts that say the same thing are the same bytes.
	again, err := receiptText(r)
	if err != nil {
		return Receipt{}, err
	}
	if !bytes.Equal(again, text) {
		return Receipt{}, fmt.Errorf("%w: text is not in canonical form", ErrReceipt)
	}
	return r, nil
}

// VerifyReceipt parses b and checks its signature by pub. Signature lines of other keys
// (another key ID) are ignored; at least one line must be by pub's key ID, and every
// such line must verify, or the receipt is refused with ErrReceiptSignature. The key is
// known by its key ID; the key name on the line is the signer's label, not checked.
func VerifyReceipt(b []byte, pub *ecdsa.PublicKey) (Receipt, error) {
	text, sigs, err := splitNote(b)
	if err != nil {
		return Receipt{}, err
	}
	r, err := parseReceiptText(text)
	if err != nil {
		return Receipt{}, err
	}
	id, err := receiptKeyID(pub)
	if err != nil {
		return Receipt{}, fmt.Errorf("verify receipt: %w", err)
	}
	d := sha256.Sum256(text)
	verified := false
	for _, s := range sigs {
		if s.id != id {
			continue
		}
		if !ecdsa.VerifyASN1(pub, d[:], s.sig) {
			return Receipt{}, fmt.Errorf("%w: key %s %08x, receipt seq %d", ErrReceiptSignature, s.name, s.id, r.Seq)
		}
		verified = true
	}
	if !verified {
		return Receipt{}, fmt.Errorf("%w: no signature by key ID %08x", ErrReceiptSignature, id)
	}
	return r, nil
}

// ReceiptVerifierKey returns the note verifier key "<name>+<hex key ID>+<base64(0x02 ||
// SubjectPublicKeyInfo DER)>", the form other signed-note tools (transparency-dev's
// note.NewECDSAVerifier) take to check receipts.
func ReceiptVerifierKey(name string, pub *ecdsa.PublicKey) (string, error) {
	if !validKeyName(name) {
		return "", fmt.Errorf("verifier key: %w: key name %q", ErrReceipt, name)
	}
	der, err := p256SPKI(pub)
	if err != nil {
		return "", fmt.Errorf("verifier key: %w", err)
	}
	sum := sha256.Sum256(der)
	return fmt.Sprintf("%s+%08x+%s", name, binary.BigEndian.Uint32(sum[:]),
		base64.StdEncoding.EncodeToString(append([]byte{NoteTypeECDSA}, der...))), nil
}

func receiptKeyID(pub *ecdsa.PublicKey) (uint32, error) {
	der, err := p256SPKI(pub)
	if err != nil {
		return 0, err
	}
	sum := sha256.Sum256(der)
	return binary.BigEndian.Uint32(sum[:]), nil
}

func p256SPKI(pub *ecdsa.PublicKey) ([]byte, error) {
	if pub == nil || pub.Curve != elliptic.P256() {
		return nil, errors.New("receipt key is not an ECDSA P-256 public key")
	}
	return x509.MarshalPKIXPublicKey(pub)
}

// ValidName reports whether s is a valid site or device name: 1-64 letters, digits,
// '.', '_' or '-', starting with a letter or digit (the daemon's config applies the same
// rule). Names become MQTT topic levels and file names.
func ValidName(s string) bool {
	if len(s) == 0 || len(s) > 64 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		alnum := 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9'
		if !alnum && (i == 0 || c != '.' && c != '_' && c != '-') {
			return false
		}
	}
	return true
}

// validKeyName is the signed-note rule: non-empty, no Unicode spaces, no '+', and (for
// the whole note) no control characters.
func validKeyName(s string) bool {
	if s == "" || !utf8.ValidString(s) {
		return false
	}
	for _, r := range s {
		if r == '+' || r < 0x20 || unicode.IsSpace(r) {
			return false
		}
	}
	return true
}

func isLowerHex(s string, n int) bool {
	if len(s) != n {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return false
		}
	}
	return true
}
