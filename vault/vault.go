// Package vault keeps the token → identifier mapping that lets a privacy officer reveal
// a patient token on the appliance. It is off by default; when on, values are encrypted
// with AES-256-GCM under a key derived from the data key, bound to their token, in a
// bbolt file of its own (vault.db), so the spool never holds a clear identifier.
package vault

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/fips140"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"time"

	bolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"
)

var bucket = []byte("tokens")

// Errors.
var (
	ErrNotFound = errors.New("token not in the vault")
	ErrLocked   = errors.New("vault is locked by another process")
)

// Vault is an open vault file.
type Vault struct {
	db          *bolt.DB
	aead        cipher.AEAD
	randomNonce bool // aead draws its nonces (FIPS mode)
}

// gcmNonce is the size of the nonce in front of each stored value.
const gcmNonce = 12

// Open opens or creates the vault at path with the site's data key.
func Open(path string, dataKey []byte, readOnly bool) (*Vault, error) {
	mac := hmac.New(sha256.New, dataKey)
	mac.Write([]byte("edgeaudit vault v1"))
	block, err := aes.NewCipher(mac.Sum(nil))
	if err != nil {
		return nil, fmt.Errorf("open vault: %w", err)
	}
	// In FIPS 140-3 mode the module's own random-nonce GCM (the approved form); the
	// stored layout, nonce | ciphertext | tag, is the same either way.
	randomNonce := fips140.Enabled()
	var aead cipher.AEAD
	if randomNonce {
		aead, err = cipher.NewGCMWithRandomNonce(block)
	} else {
		aead, err = cipher.NewGCM(block)
	}
	if err != nil {
		return nil, fmt.Errorf("open vault: %w", err)
	}
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: time.Second, ReadOnly: readOnly})
	if err != nil {
		if errors.Is(err, berrors.ErrTimeout) {
			return nil, fmt.Errorf("open vault %s: %w", path, ErrLocked)
		}
		return nil, fmt.Errorf("open vault %s: %w", path, err)
	}
	if !readOnly {
		if err := db.Update(func(tx *bolt.Tx) error { _, err := tx.CreateBucketIfNotExists(bucket); return err }); err != nil {
			db.Close()
			return nil, fmt.Errorf("open vault: %w", err)
		}
	}
	return &Vault{db: db, aead: aead, randomNonce: randomNonce}, nil
}

// Entry is one identifier to keep.
type Entry struct{ Token, Value string }

// Put stores entries in one transaction; a token already present is left as it is (a
// token always maps to the same value).
func (v *Vault) Put(entries []Entry) error {
	return v.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucket)
		for _, e := range entries {
			if b.Get([]byte(e.Token)) != nil {
				continue
			}
			var sealed []byte
			if v.randomNonce {
				sealed = v.aead.Seal(nil, nil, []byte(e.Value), []byte(e.Token))
			} else {
				nonce := make([]byte, gcmNonce, gcmNonce+len(e.Value)+v.aead.Overhead())
				if _, err := rand.Read(nonce); err != nil {
					return err
				}
				sealed = v.aead.Seal(nonce, nonce, []byte(e.Value), []byte(e.Token))
			}
			if err := b.Put([]byte(e.Token), sealed); err != nil {
				return err
			}
		}
		return nil
	})
}

// Get returns the identifier behind token.
func (v *Vault) Get(token string) (string, error) {
	var out string
	err := v.db.View(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucket)
		if b == nil {
			return ErrNotFound
		}
		sealed := b.Get([]byte(token))
		if sealed == nil {
			return ErrNotFound
		}
		if len(sealed) < gcmNonce {
			return errors.New("vault entry too short")
		}
		var plain []byte
		var err error
		if v.randomNonce {
			plain, err = v.aead.Open(nil, nil, sealed, []byte(token))
		} else {
			plain, err = v.aead.Open(nil, sealed[:gcmNonce], sealed[gcmNonce:], []byte(token))
		}
		if err != nil {
			return fmt.Errorf("vault entry does not decrypt (wrong data key or tampered): %w", err)
		}
		out = string(plain)
		return nil
	})
	return out, err
}

// Close closes the file.
func (v *Vault) Close() error { return v.db.Close() }
