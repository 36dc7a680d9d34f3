package spool

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/fips140"
	"crypto/hkdf"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/binary"
	"errors"
	"fmt"
	"sync"

	bolt "go.etcd.io/bbolt"
)

// Events at rest. With Options.Encrypt each event's bytes are stored as
//
//	0x02 | nonce (12 bytes, random) | AES-256-GCM ciphertext and tag (16 bytes)
//
// under a key of its own batch: HKDF-SHA-256 of the data key with info
// eventKeyInfoV2 | chain id | seq, never the data key itself, and with chain id | event
// key (seq | index) as additional data: an event moved to another place, or into another
// spool, does not decrypt. A stored event in clear is the event's JSON, which always
// starts with '{'; the first byte tells the formats apart, so a spool written in clear
// stays readable after encryption is turned on. Leaf hashes, roots and signatures cover
// the plaintext, so batches, exports and `edgeaudit verify` do not change.
//
// Random nonces rather than ones derived from (chain, seq, index): the data key is the
// appliance's for its life, and a quarantined spool and the new one after it may hold
// the same (seq, index). A key per batch bounds what one GCM key encrypts to a batch
// (batch.max_events), far below the 2^32 random nonces NIST SP 800-38D allows a key;
// one key for every event (format 0x01, still read) reached that bound in five days at
// a sustained 10,000 events/s.
//
// In FIPS 140-3 mode (GODEBUG=fips140=on, the packaged default) the batch keys are
// wrapped with cipher.NewGCMWithRandomNonce, the module's approved GCM, whose nonce
// comes from the module's DRBG; the stored layout is the same. Outside it the writer
// draws a commit's nonces with one read of crypto/rand, cheaper than one per event.
const (
	eventFormatV1 = 0x01 // one key for all events (written before per-batch keys)
	eventFormatV2 = 0x02 // a key per batch
	eventClear    = '{'
	nonceSize     = 12
	tagSize       = 16
	// encOverhead is what encryption adds to each stored event.
	encOverhead = 1 + nonceSize + tagSize

	eventKeyInfo   = "edgeaudit spool events v1"
	eventKeyInfoV2 = "edgeaudit spool batch events v2|"
	keyCheckInfo   = "edgeaudit spool key check v1"

	// batchKeyCache is how many batch keys a cipher keeps: readers go batch by batch,
	// the writer uses one at a time, and the scrub and the uplink read on their own.
	batchKeyCache = 8
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

// eventCipher encrypts and decrypts stored events; a nil *eventCipher has no key. It is
// safe for concurrent use.
type eventCipher struct {
	prk   []byte      // HKDF-Extract of the data key, for the batch keys
	v1    cipher.AEAD // format 0x01
	check []byte
	// randomNonce: the AEADs draw their own nonces (FIPS mode); Seal takes none.
	randomNonce bool

	mu   sync.Mutex
	keys [batchKeyCache]batchKey
	next int
}

type batchKey struct {
	chain string
	seq   uint64
	aead  cipher.AEAD
}

func newEventCipher(dataKey []byte) (*eventCipher, error) {
	if dataKey == nil {
		return nil, nil
	}
	if len(dataKey) != 32 {
		return nil, fmt.Errorf("data key is %d bytes, want 32", len(dataKey))
	}
	c := &eventCipher{randomNonce: fips140.Enabled()}
	key, err := hkdf.Key(sha256.New, dataKey, nil, eventKeyInfo, 32)
	if err != nil {
		return nil, fmt.Errorf("derive event key: %w", err)
	}
	if c.v1, err = c.newAEAD(key); err != nil {
		return nil, err
	}
	if c.check, err = hkdf.Key(sha256.New, dataKey, nil, keyCheckInfo, 16); err != nil {
		return nil, fmt.Errorf("derive key check: %w", err)
	}
	if c.prk, err = hkdf.Extract(sha256.New, dataKey, nil); err != nil {
		return nil, fmt.Errorf("derive batch keys: %w", err)
	}
	return c, nil
}

func (c *eventCipher) newAEAD(key []byte) (cipher.AEAD, error) {
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	if c.randomNonce {
		return cipher.NewGCMWithRandomNonce(block)
	}
	return cipher.NewGCM(block)
}

// batch returns the AEAD of batch seq of chain.
func (c *eventCipher) batch(chain string, seq uint64) (cipher.AEAD, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, k := range c.keys {
		if k.aead != nil && k.seq == seq && k.chain == chain {
			return k.aead, nil
		}
	}
	info := make([]byte, 0, len(eventKeyInfoV2)+len(chain)+8)
	info = binary.BigEndian.AppendUint64(append(append(info, eventKeyInfoV2...), chain...), seq)
	key, err := hkdf.Expand(sha256.New, c.prk, string(info), 32)
	if err != nil {
		return nil, fmt.Errorf("derive batch key: %w", err)
	}
	aead, err := c.newAEAD(key)
	if err != nil {
		return nil, err
	}
	c.keys[c.next] = batchKey{chain: chain, seq: seq, aead: aead}
	c.next = (c.next + 1) % batchKeyCache
	return aead, nil
}

// eventAAD is chain id | event key (seq | index).
func eventAAD(dst []byte, chain string, key []byte) []byte {
	return append(append(dst, chain...), key...)
}

// seal appends the stored form of plain, under aead (a batch's), to dst. nonce is 12
// fresh random bytes, or nil when the cipher draws its own (randomNonce).
func (c *eventCipher) seal(dst []byte, aead cipher.AEAD, aad, nonce, plain []byte) []byte {
	dst = append(dst, eventFormatV2)
	if c.randomNonce {
		return aead.Seal(dst, nil, plain, aad)
	}
	dst = append(dst, nonce...)
	return aead.Seal(dst, nonce, plain, aad)
}

// open decrypts the stored form v (format byte removed) with aead.
func (c *eventCipher) open(aead cipher.AEAD, v, aad []byte) ([]byte, error) {
	dst := make([]byte, 0, len(v)+1-encOverhead)
	if c.randomNonce {
		return aead.Open(dst, nil, v, aad)
	}
	return aead.Open(dst, v[:nonceSize], v[nonceSize:], aad)
}

// openEvent returns the event bytes stored as v under key (seq | index) of chain, in a
// new slice. An event that does not decrypt with the right key is damage.
func openEvent(c *eventCipher, chain string, key, v []byte) ([]byte, error) {
	switch {
	case len(v) > 0 && v[0] == eventClear:
		return append([]byte(nil), v...), nil
	case len(v) > 0 && (v[0] == eventFormatV1 || v[0] == eventFormatV2):
		if c == nil {
			return nil, ErrKeyRequired
		}
		if len(v) < encOverhead || len(key) < 8 {
			return nil, fmt.Errorf("%w: encrypted event %x too short", ErrDamaged, key)
		}
		aead := c.v1
		if v[0] == eventFormatV2 {
			var err error
			if aead, err = c.batch(chain, binary.BigEndian.Uint64(key[:8])); err != nil {
				return nil, err
			}
		}
		plain, err := c.open(aead, v[1:], eventAAD(nil, chain, key))
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
