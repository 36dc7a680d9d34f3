package spool

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"fmt"

	bolt "go.etcd.io/bbolt"
)

// Events at rest. With Options.Encrypt each event's bytes are stored as
//
//	0x01 | nonce (12 bytes, crypto/rand) | AES-256-GCM ciphertext and tag (16 bytes)
//
// under a key derived from the data key with HKDF-SHA-256 (info eventKeyInfo), never the
// data key itself, and with chain id | event key (seq | index) as additional data: an
// event moved to another place, or into another spool, does not decrypt. A stored event
// in clear is the event's JSON, which always starts with '{'; the first byte tells the
// two apart, so a spool written in clear stays readable after encryption is turned on.
// Leaf hashes, roots and signatures cover the plaintext, so batches, exports and
// `edgeaudit verify` do not change.
//
// Random nonces rather than ones derived from (chain, seq, index): the key is the
// appliance's for its life, and a quarantined spool and the new one after it may hold
// the same (seq, index) under the same key. 2^32 random nonces per key keep the
// collision chance below 2^-32; at a sustained 10,000 events/s that is over 13 years.
const (
	eventFormatV1 = 0x01
	eventClear    = '{'
	nonceSize     = 12
	tagSize       = 16
	// encOverhead is what encryption adds to each stored event.
	encOverhead = 1 + nonceSize + tagSize

	eventKeyInfo = "edgeaudit spool events v1"
	keyCheckInfo = "edgeaudit spool key check v1"
)

// keyKeyCheck in the meta bucket holds a value derived from the data key (HKDF, info
// keyCheckInfo; it reveals nothing of the key), written when encryption is first turned
// on. It tells a wrong data key (refused, the file untouched) from a damaged event (an
// event that does not decrypt under the right key: quarantine or a scrub finding).
var keyKeyCheck = []byte("event_key_check")

// Key errors. Neither is damage: Open returns them in an *OpenError and leaves the file.
var (
	// ErrKeyRequired means the spool holds encrypted events and no data key was given.
	ErrKeyRequired = errors.New("spool events are encrypted and no data key was given")
	// ErrWrongKey means the spool's events are encrypted under another data key.
	ErrWrongKey = errors.New("spool events are encrypted under another data key")
)

// eventCipher encrypts and decrypts stored events; a nil *eventCipher has no key.
type eventCipher struct {
	aead  cipher.AEAD
	check []byte
}

func newEventCipher(dataKey []byte) (*eventCipher, error) {
	if dataKey == nil {
		return nil, nil
	}
	if len(dataKey) != 32 {
		return nil, fmt.Errorf("data key is %d bytes, want 32", len(dataKey))
	}
	key, err := hkdf.Key(sha256.New, dataKey, nil, eventKeyInfo, 32)
	if err != nil {
		return nil, fmt.Errorf("derive event key: %w", err)
	}
	check, err := hkdf.Key(sha256.New, dataKey, nil, keyCheckInfo, 16)
	if err != nil {
		return nil, fmt.Errorf("derive key check: %w", err)
	}
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, err
	}
	return &eventCipher{aead: aead, check: check}, nil
}

// eventAAD is chain id | event key (seq | index).
func eventAAD(dst []byte, chain string, key []byte) []byte {
	return append(append(dst, chain...), key...)
}

// seal appends the stored form of plain to dst. nonce is 12 fresh random bytes.
func (c *eventCipher) seal(dst, aad, nonce, plain []byte) []byte {
	dst = append(dst, eventFormatV1)
	dst = append(dst, nonce...)
	return c.aead.Seal(dst, nonce, plain, aad)
}

// openEvent returns the event bytes stored as v under key (seq | index) of chain, in a
// new slice. An event that does not decrypt with the right key is damage.
func openEvent(c *eventCipher, chain string, key, v []byte) ([]byte, error) {
	switch {
	case len(v) > 0 && v[0] == eventClear:
		return append([]byte(nil), v...), nil
	case len(v) > 0 && v[0] == eventFormatV1:
		if c == nil {
			return nil, ErrKeyRequired
		}
		if len(v) < encOverhead {
			return nil, fmt.Errorf("%w: encrypted event %x too short", ErrDamaged, key)
		}
		nonce := v[1 : 1+nonceSize]
		plain, err := c.aead.Open(make([]byte, 0, len(v)-encOverhead), nonce, v[1+nonceSize:], eventAAD(nil, chain, key))
		if err != nil {
			return nil, fmt.Errorf("%w: event %x does not decrypt (altered, or moved from another place)", ErrDamaged, key)
		}
		return plain, nil
	case len(v) == 0:
		return nil, fmt.Errorf("%w: event %x is empty", ErrDamaged, key)
	default:
		return nil, fmt.Errorf("%w: event %x has unknown format 0x%02x", ErrDamaged, key, v[0])
	}
}

// checkKey compares the spool's key check with c's: ErrKeyRequired when the spool has
// one and c is nil, ErrWrongKey when they differ. A spool without one never held an
// encrypted event.
func checkKey(tx *bolt.Tx, c *eventCipher) error {
	meta := tx.Bucket(bucketMeta)
	if meta == nil {
		return nil
	}
	stored := meta.Get(keyKeyCheck)
	switch {
	case stored == nil:
		return nil
	case c == nil:
		return ErrKeyRequired
	case subtle.ConstantTimeCompare(stored, c.check) != 1:
		return ErrWrongKey
	}
	return nil
}

func isKeyError(err error) bool {
	return errors.Is(err, ErrKeyRequired) || errors.Is(err, ErrWrongKey)
}
