package central

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/edgeaudit/edgeaudit/attest"
	"github.com/edgeaudit/edgeaudit/internal/atomicfile"
	"github.com/edgeaudit/edgeaudit/ledger"
	"github.com/edgeaudit/edgeaudit/receiver"
)

var (
	// ErrKeyExists: another key is enrolled for the device (Enrol without replace, or
	// trust on first use offered a different key).
	ErrKeyExists = errors.New("a different key is enrolled")
	// ErrNotEnrolled: no key is enrolled for the device.
	ErrNotEnrolled = errors.New("no key enrolled")
	// ErrReservedSite: the site name is central's own audit trail's (receive.audit_site);
	// no device key is enrolled under it, so no batch from the network can extend
	// central's trail.
	ErrReservedSite = errors.New("the site is central's own audit trail (receive.audit_site)")
	// ErrNonceReused: the bundle answers the nonce of the device's last attested
	// enrolment. A nonce is used once; a bundle made for an old one may be a replay.
	ErrNonceReused = errors.New("nonce already used for this device")
	// ErrPinned: the device was enrolled from a TPM attestation; a plain public key
	// does not replace its key (a bundle from the same TPM does).
	ErrPinned = errors.New("the device is pinned to its TPM by an attested enrolment")
)

// LoadOrCreateKey loads central's receipt signing key at cfg.Key, creating it (0600, its
// folder 0700) when missing, and writes its public half to cfg.PublicKeyPath() when
// that file is missing or holds another key. created reports a new key.
func LoadOrCreateKey(cfg Config) (s *attest.SoftwareSigner, created bool, err error) {
	s, created, err = attest.LoadOrCreateSoftware(cfg.Key)
	if err != nil {
		return nil, false, fmt.Errorf("central key (receive.key): %w", err)
	}
	pubPath := cfg.PublicKeyPath()
	if ks, err := attest.ReadPublicPEM(pubPath); err == nil && len(ks) == 1 && ks[0].Equal(s.Public()) {
		return s, created, nil
	}
	if err := attest.WritePublicPEM(pubPath, s.Public()); err != nil {
		return nil, false, fmt.Errorf("central key: %w", err)
	}
	return s, created, nil
}

// ParseDeviceKey parses exactly one PEM "PUBLIC KEY" block holding an ECDSA P-256 key
// (an appliance's keys/signing.pub) and returns it with its key_id.
func ParseDeviceKey(b []byte) (*ecdsa.PublicKey, string, error) {
	blk, rest := pem.Decode(b)
	if blk == nil || blk.Type != "PUBLIC KEY" {
		return nil, "", errors.New("no PEM PUBLIC KEY block")
	}
	if next, _ := pem.Decode(rest); next != nil {
		return nil, "", errors.New("more than one PEM block")
	}
	k, err := x509.ParsePKIXPublicKey(blk.Bytes)
	if err != nil {
		return nil, "", err
	}
	ek, ok := k.(*ecdsa.PublicKey)
	if !ok || ek.Curve != elliptic.P256() {
		return nil, "", errors.New("not an ECDSA P-256 public key")
	}
	kid, err := ledger.KeyID(ek)
	if err != nil {
		return nil, "", err
	}
	return ek, kid, nil
}

func keyPath(dir, site, device string) (string, error) {
	if !ledger.ValidName(site) {
		return "", fmt.Errorf("site %q: must be 1-64 letters, digits, '.', '_' or '-'", site)
	}
	if !ledger.ValidName(device) {
		return "", fmt.Errorf("device %q: must be 1-64 letters, digits, '.', '_' or '-'", device)
	}
	return filepath.Join(dir, site, device+".pub"), nil
}

// Enrolment is the outcome of Enrol.
type Enrolment struct {
	Path     string
	KeyID    string
	Previous string // key_id of the key it replaced; "" when none
	Changed  bool   // false when the same key was enrolled already
}

// Enrol writes pub as the key of site/device in the devices folder dir
// (<dir>/<site>/<device>.pub, 0600, folders 0700). The same key again changes nothing.
// A different enrolled key is replaced only with replace; otherwise Enrol returns an
// error wrapping ErrKeyExists. Without replace the file is created with a link, so a
// key written concurrently by someone else is never overwritten.
func Enrol(dir, site, device string, pub *ecdsa.PublicKey, replace bool) (Enrolment, error) {
	path, err := keyPath(dir, site, device)
	if err != nil {
		return Enrolment{}, fmt.Errorf("enrol: %w", err)
	}
	kid, err := ledger.KeyID(pub)
	if err != nil {
		return Enrolment{}, fmt.Errorf("enrol: %w", err)
	}
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return Enrolment{}, fmt.Errorf("enrol: %w", err)
	}
	data := pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})
	res := Enrolment{Path: path, KeyID: kid}
	old, err := (receiver.FolderKeys{Dir: dir}).Key(context.Background(), site, device)
	switch {
	case errors.Is(err, receiver.ErrUnknownDevice):
	case err != nil:
		return res, fmt.Errorf("enrol %s/%s: %w", site, device, err)
	default:
		okid, _ := ledger.KeyID(old)
		if okid == kid {
			return res, nil
		}
		res.Previous = okid
		if !replace {
			return res, fmt.Errorf("enrol %s/%s: %w (key_id %s, offered %s)", site, device, ErrKeyExists, okid, kid)
		}
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return res, fmt.Errorf("enrol: %w", err)
	}
	if res.Previous != "" {
		err = atomicfile.WriteFile(path, data, 0o600)
	} else {
		err = writeNew(path, data)
	}
	if errors.Is(err, os.ErrExist) {
		// Written meanwhile (another receiver's trust on first use, an operator): the
		// same key is no change, another one is refused as above.
		now, kerr := (receiver.FolderKeys{Dir: dir}).Key(context.Background(), site, device)
		if kerr == nil {
			nkid, _ := ledger.KeyID(now)
			if nkid == kid {
				return res, nil
			}
			res.Previous = nkid
		}
		return res, fmt.Errorf("enrol %s/%s: %w (written meanwhile, key_id %s)", site, device, ErrKeyExists, res.Previous)
	}
	if err != nil {
		return res, fmt.Errorf("enrol %s/%s: %w", site, device, err)
	}
	res.Changed = true
	return res, nil
}

// writeNew creates path with data (0600) only if it does not exist: temp file, fsync,
// hard link to path (which fails when path exists), fsync the folder.
func writeNew(path string, data []byte) error {
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, filepath.Base(path)+".*.tmp")
	if err != nil {
		return err
	}
	tmp := f.Name()
	defer os.Remove(tmp)
	if err := f.Chmod(0o600); err != nil {
		f.Close()
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := os.Link(tmp, path); err != nil {
		return err
	}
	return atomicfile.SyncDir(dir)
}

// Unenrol removes the key of site/device, and its attestation pins if any, and returns
// its key_id. What is stored of the device's chain stays; its next batch is refused as
// from an unknown device.
func Unenrol(dir, site, device string) (string, error) {
	path, err := keyPath(dir, site, device)
	if err != nil {
		return "", fmt.Errorf("remove device: %w", err)
	}
	old, err := (receiver.FolderKeys{Dir: dir}).Key(context.Background(), site, device)
	if errors.Is(err, receiver.ErrUnknownDevice) {
		return "", fmt.Errorf("remove device %s/%s: %w", site, device, ErrNotEnrolled)
	}
	var kid string
	if err == nil {
		kid, _ = ledger.KeyID(old)
	} // a damaged file is removed too: that is what the operator asked for
	if err := os.Remove(path); err != nil {
		return "", fmt.Errorf("remove device: %w", err)
	}
	if err := removeAttestation(dir, site, device); err != nil {
		return kid, fmt.Errorf("remove device: %w", err)
	}
	if err := atomicfile.SyncDir(filepath.Dir(path)); err != nil {
		return kid, fmt.Errorf("remove device: %w", err)
	}
	return kid, nil
}

// Device is one enrolled key, as ListDevices finds it.
type Device struct {
	Site     string    `json:"site"`
	Device   string    `json:"device"`
	KeyID    string    `json:"key_id"`
	Modified time.Time `json:"modified"`
	Path     string    `json:"path"`
	Error    string    `json:"error,omitempty"` // the file does not hold one P-256 key
	// Attested: enrolled from a verified TPM attestation bundle; AKKeyID names the
	// attestation key the device is pinned to.
	Attested bool   `json:"attested"`
	AKKeyID  string `json:"ak_key_id,omitempty"`
}

// ListDevices lists the enrolled keys of the devices folder dir, by site and device. A
// missing folder is an empty list.
func ListDevices(dir string) ([]Device, error) {
	sites, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("list devices: %w", err)
	}
	var out []Device
	for _, s := range sites {
		if !s.IsDir() || !ledger.ValidName(s.Name()) {
			continue
		}
		files, err := os.ReadDir(filepath.Join(dir, s.Name()))
		if err != nil {
			return nil, fmt.Errorf("list devices: %w", err)
		}
		for _, f := range files {
			name, ok := strings.CutSuffix(f.Name(), ".pub")
			if !ok || f.IsDir() || !ledger.ValidName(name) {
				continue
			}
			d := Device{Site: s.Name(), Device: name, Path: filepath.Join(dir, s.Name(), f.Name())}
			if fi, err := f.Info(); err == nil {
				d.Modified = fi.ModTime().UTC()
			}
			if b, err := os.ReadFile(d.Path); err != nil {
				d.Error = err.Error()
			} else if _, kid, err := ParseDeviceKey(b); err != nil {
				d.Error = err.Error()
			} else {
				d.KeyID = kid
			}
			if a, err := ReadAttestation(dir, d.Site, d.Device); err != nil {
				d.Error = err.Error()
			} else if a != nil {
				d.Attested, d.AKKeyID = a.KeyID == d.KeyID, a.AKKeyID
			}
			out = append(out, d)
		}
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Site != out[j].Site {
			return out[i].Site < out[j].Site
		}
		return out[i].Device < out[j].Device
	})
	return out, nil
}

// TOFUKeys is the devices folder with trust on first use: Key is FolderKeys' lookup,
// and Offer enrols a key published by a device that has none enrolled. An enrolled key
// is never replaced by Offer.
type TOFUKeys struct {
	Folder receiver.FolderKeys
	mu     sync.Mutex // serializes Offer's check-then-write
}

var _ receiver.DeviceKeys = (*TOFUKeys)(nil)

// Key implements receiver.DeviceKeys.
func (k *TOFUKeys) Key(ctx context.Context, site, device string) (*ecdsa.PublicKey, error) {
	return k.Folder.Key(ctx, site, device)
}

// Offer outcomes.
const (
	OfferEnrolled = "enrolled" // no key was enrolled; this one now is
	OfferKnown    = "known"    // the same key is enrolled
	OfferConflict = "conflict" // another key is enrolled; nothing changed
)

// Offer takes the PEM key a device published for site/device. It returns the outcome,
// the offered key_id and, for a conflict, the enrolled one. A key that does not parse
// or names that are not valid are errors and change nothing.
func (k *TOFUKeys) Offer(site, device string, pemBytes []byte) (outcome, kid, enrolledKid string, err error) {
	if len(pemBytes) > maxKeyMessageBytes {
		return "", "", "", fmt.Errorf("offered key of %s/%s: %d bytes, more than %d", site, device, len(pemBytes), maxKeyMessageBytes)
	}
	pub, kid, err := ParseDeviceKey(pemBytes)
	if err != nil {
		return "", "", "", fmt.Errorf("offered key of %s/%s: %w", site, device, err)
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	res, err := Enrol(k.Folder.Dir, site, device, pub, false)
	switch {
	case errors.Is(err, ErrKeyExists):
		return OfferConflict, kid, res.Previous, nil
	case err != nil:
		return "", kid, "", err
	case !res.Changed:
		return OfferKnown, kid, "", nil
	}
	return OfferEnrolled, kid, "", nil
}
