package audit

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"hash"
	"strings"
	"sync"
)

// Identifier kinds: each is its own token namespace, so the same string as a patient id
// and as an accession number gives unrelated tokens.
const (
	IDPatient   = "pat"  // patient identifiers (PID-3, ParticipantObjectID of a patient, FHIR Patient id)
	IDName      = "name" // person names of patients
	IDBirthDate = "dob"  // birth dates, when a site keeps them as tokens rather than age bands
	IDAccession = "acc"  // accession numbers
	IDStudy     = "stu"  // Study Instance UIDs
	IDOrder     = "ord"  // placer/filler order numbers
	IDText      = "txt"  // identifiers found by redaction rules inside free text
)

// TokenLen is the number of hex digits of a token's MAC: 128 bits, far beyond any site's
// number of identifiers, short enough to read.
const TokenLen = 32

// Tokenizer replaces identifiers by keyed tokens: HMAC-SHA-256 under the site's data key
// over kind, a zero byte and the normalized value. It is deterministic (one patient has
// one token per site, so events still correlate) and one-way without the key. Safe for
// concurrent use.
type Tokenizer struct {
	pool sync.Pool
	// observe, when set, sees every (token, value) pair: the vault keeps them so that a
	// privacy officer can reveal a token. It must not block.
	observe func(token, value string)
}

// Observe registers fn to see every token made, before the tokenizer is shared.
func (t *Tokenizer) Observe(fn func(token, value string)) { t.observe = fn }

// NewTokenizer uses key (at least 32 bytes) as the data key.
func NewTokenizer(key []byte) (*Tokenizer, error) {
	if len(key) < 32 {
		return nil, errors.New("tokenizer: data key shorter than 32 bytes")
	}
	k := append([]byte(nil), key...)
	return &Tokenizer{pool: sync.Pool{New: func() any { return hmac.New(sha256.New, k) }}}, nil
}

// Token returns "<kind>_<32 hex digits>" for value, or "" for an empty value. Values are
// trimmed of surrounding space; case is kept (identifiers are case-sensitive in HL7 and
// DICOM), except for names, which are upper-cased so "Doe^John" and "DOE^JOHN" match.
func (t *Tokenizer) Token(kind, value string) string {
	value = strings.TrimSpace(value)
	if value == "" {
		return ""
	}
	if kind == IDName {
		value = strings.ToUpper(value)
	}
	m := t.pool.Get().(hash.Hash)
	m.Reset()
	m.Write([]byte(kind))
	m.Write([]byte{0})
	m.Write([]byte(value))
	var sum [sha256.Size]byte
	m.Sum(sum[:0])
	t.pool.Put(m)
	tok := kind + "_" + hex.EncodeToString(sum[:TokenLen/2])
	if t.observe != nil {
		t.observe(tok, value)
	}
	return tok
}

// PatientToken is the token of a patient identifier from any source: value is the ID
// itself (HL7 CX.1, DICOM ParticipantObjectID without its ^^^ suffix, a FHIR
// identifier's value or a Patient resource id, syslog PatientID=), authority is the
// assigning authority or identifier system as the source names it, "" if none. The same
// patient gets the same token from every source: only the value is tokenized while the
// site has one identifier domain.
func (t *Tokenizer) PatientToken(value, authority string) string {
	return t.Token(IDPatient, value)
}

// IsToken reports whether s has the shape of a token of kind.
func IsToken(kind, s string) bool {
	rest, ok := strings.CutPrefix(s, kind+"_")
	if !ok || len(rest) != TokenLen {
		return false
	}
	_, err := hex.DecodeString(rest)
	return err == nil
}

// AgeBand turns an age in years into the band stored instead of a birth date (minimum
// necessary): "0-1", "2-11", "12-17", "18-39", "40-64", "65-89", "90+" (HIPAA Safe
// Harbor groups every age over 89).
func AgeBand(years int) string {
	switch {
	case years < 0:
		return ""
	case years < 2:
		return "0-1"
	case years < 12:
		return "2-11"
	case years < 18:
		return "12-17"
	case years < 40:
		return "18-39"
	case years < 65:
		return "40-64"
	case years < 90:
		return "65-89"
	default:
		return "90+"
	}
}
