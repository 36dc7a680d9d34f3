package attest

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"github.com/edgeaudit/edgeaudit/internal/atomicfile"
	"github.com/edgeaudit/edgeaudit/ledger"
)

// Files of a TPM key folder. Each holds TPM-native encodings (tpm2-tools reads the same
// TPM2B_PUBLIC and TPM2B_PRIVATE as its .pub and .priv files):
//
//	signing.tpmkey   "EATK" 0x01 | TPM2B_PUBLIC | TPM2B_PRIVATE
//	datakey.tpmseal  "EATK" 0x01 | TPM2B_PUBLIC | TPM2B_PRIVATE | TPML_PCR_SELECTION
//
// The private parts are wrapped by the TPM's storage key: useless on any other TPM, or on
// this one after TPM2_Clear.
const (
	TPMSigningFile = "signing.tpmkey"
	TPMDataKeyFile = "datakey.tpmseal"
	tpmFileMagic   = "EATK\x01"
)

// DefaultQuotePCRs are the PCRs Attest quotes when TPMOptions.QuotePCRs is empty: the PC
// Client firmware and boot-loader measurements.
var DefaultQuotePCRs = []int{0, 1, 2, 3, 4, 5, 6, 7}

// TPMOptions shape a TPM key folder.
type TPMOptions struct {
	// PCRs binds the sealed data key, when it is created, to the current values of these
	// SHA-256 PCRs (TPM2_PolicyPCR): once one of them changes, unsealing fails with
	// ErrPolicy. Empty means no policy. Loading ignores it: the folder records the
	// selection it was sealed with.
	PCRs []int
	// DataKey is sealed instead of a fresh random key when the folder is created (to keep
	// the software data key, and so every patient token, when moving to the TPM). It must
	// be DataKeySize bytes. Loading ignores it.
	DataKey []byte
	// QuotePCRs are the PCRs that Attest quotes; empty means DefaultQuotePCRs.
	QuotePCRs []int
}

// TPMSigner signs with an ECDSA P-256 key that the TPM made and never lets out
// (fixedTPM, fixedParent, sensitiveDataOrigin), and unseals the data key sealed beside it.
// Nothing stays loaded in the TPM between calls: each call recreates the storage primary
// from its fixed template, loads the blob, uses it and flushes everything. It is safe for
// concurrent use; calls are serialized.
type TPMSigner struct {
	c      *tpmConn
	dir    string
	sign   blob
	seal   blob
	sealTo tpm2.TPMLPCRSelection
	quote  []int
	pub    *ecdsa.PublicKey
	keyID  string
}

type blob struct {
	pub  tpm2.TPM2BPublic
	priv tpm2.TPM2BPrivate
}

// Templates. Every primary is derived from its hierarchy's seed and the template alone,
// so the same template gives the same key after a restart and nothing needs to be
// persisted in the TPM.
var (
	// srkTemplate is the TCG ECC P-256 storage root key (restricted decrypt, AES-128-CFB).
	srkTemplate = tpm2.ECCSRKTemplate

	signTemplate = tpm2.TPMTPublic{
		Type:    tpm2.TPMAlgECC,
		NameAlg: tpm2.TPMAlgSHA256,
		ObjectAttributes: tpm2.TPMAObject{
			FixedTPM: true, FixedParent: true, SensitiveDataOrigin: true,
			UserWithAuth: true, SignEncrypt: true, NoDA: true,
		},
		Parameters: tpm2.NewTPMUPublicParms(tpm2.TPMAlgECC, &tpm2.TPMSECCParms{
			Symmetric: tpm2.TPMTSymDefObject{Algorithm: tpm2.TPMAlgNull},
			Scheme: tpm2.TPMTECCScheme{
				Scheme:  tpm2.TPMAlgECDSA,
				Details: tpm2.NewTPMUAsymScheme(tpm2.TPMAlgECDSA, &tpm2.TPMSSigSchemeECDSA{HashAlg: tpm2.TPMAlgSHA256}),
			},
			CurveID: tpm2.TPMECCNistP256,
			KDF:     tpm2.TPMTKDFScheme{Scheme: tpm2.TPMAlgNull},
		}),
	}
)

func sealTemplate(policy []byte) tpm2.TPMTPublic {
	return tpm2.TPMTPublic{
		Type:    tpm2.TPMAlgKeyedHash,
		NameAlg: tpm2.TPMAlgSHA256,
		ObjectAttributes: tpm2.TPMAObject{
			FixedTPM: true, FixedParent: true, NoDA: true,
			// With a policy, the policy is the only way in.
			UserWithAuth: len(policy) == 0,
		},
		AuthPolicy: tpm2.TPM2BDigest{Buffer: policy},
		Parameters: tpm2.NewTPMUPublicParms(tpm2.TPMAlgKeyedHash,
			&tpm2.TPMSKeyedHashParms{Scheme: tpm2.TPMTKeyedHashScheme{Scheme: tpm2.TPMAlgNull}}),
	}
}

// HasTPMKeys reports whether dir holds a TPM key folder (complete or not). The daemon
// must not fall back to software keys when it does, even if no TPM answers.
func HasTPMKeys(dir string) (bool, error) {
	_, err := os.Stat(dir)
	if errors.Is(err, os.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("tpm keys: %w", err)
	}
	return true, nil
}

// LoadOrCreateTPMSigner loads the TPM key folder dir, or, when dir does not exist, makes
// the signing key and the sealed data key together under the owner hierarchy's storage
// primary and writes them as one folder (built beside it as dir+".new", then renamed), so
// a crash leaves either no folder or a complete one. A folder with a blob missing is
// ErrKeyMissing and is never completed with a new key.
func LoadOrCreateTPMSigner(tp transport.TPM, dir string, o TPMOptions) (*TPMSigner, bool, error) {
	ok, err := HasTPMKeys(dir)
	if err != nil {
		return nil, false, err
	}
	if ok {
		s, err := LoadTPMSigner(tp, dir, o)
		return s, false, err
	}
	if err := createTPMKeys(tp, dir, o); err != nil {
		return nil, false, err
	}
	s, err := LoadTPMSigner(tp, dir, o)
	return s, true, err
}

// LoadTPMSigner loads the TPM key folder dir and never creates anything: a missing folder
// or blob is ErrKeyMissing. It loads the signing key once to prove the TPM accepts it
// (ErrKeyRejected otherwise). tp should come from OpenTPM: signers sharing it are then
// serialized against each other, not only each against itself.
func LoadTPMSigner(tp transport.TPM, dir string, o TPMOptions) (*TPMSigner, error) {
	s := &TPMSigner{c: conn(tp), dir: dir, quote: o.QuotePCRs}
	if len(s.quote) == 0 {
		s.quote = DefaultQuotePCRs
	}
	var err error
	var rest []byte
	if s.sign, _, err = readBlob(filepath.Join(dir, TPMSigningFile)); err != nil {
		return nil, err
	}
	if s.seal, rest, err = readBlob(filepath.Join(dir, TPMDataKeyFile)); err != nil {
		return nil, err
	}
	sel, err := tpm2.Unmarshal[tpm2.TPMLPCRSelection](rest)
	if err != nil {
		return nil, fmt.Errorf("load tpm keys %s: pcr selection: %w", dir, err)
	}
	s.sealTo = *sel
	if s.pub, err = signingPublic(s.sign.pub); err != nil {
		return nil, fmt.Errorf("load tpm keys %s: %w", dir, err)
	}
	if s.keyID, err = ledger.KeyID(s.pub); err != nil {
		return nil, err
	}
	err = s.c.do(func(tp transport.TPM) error {
		h, _, err := loadChild(tp, s.sign)
		if err != nil {
			return err
		}
		flush(tp, h)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("load tpm signing key %s: %w", dir, err)
	}
	return s, nil
}

func createTPMKeys(tp transport.TPM, dir string, o TPMOptions) error {
	data := o.DataKey
	if data == nil {
		data = make([]byte, DataKeySize)
		if _, err := rand.Read(data); err != nil {
			return fmt.Errorf("create tpm keys: %w", err)
		}
	}
	if len(data) != DataKeySize {
		return fmt.Errorf("create tpm keys: data key of %d bytes, want %d", len(data), DataKeySize)
	}
	sel, err := pcrSelection(o.PCRs)
	if err != nil {
		return fmt.Errorf("create tpm keys: %w", err)
	}
	var sign, seal blob
	c := conn(tp)
	err = c.do(func(tp transport.TPM) error {
		srk, err := tpm2.CreatePrimary{PrimaryHandle: tpm2.TPMRHOwner, InPublic: tpm2.New2B(srkTemplate)}.Execute(tp)
		if err != nil {
			return tpmErr("create storage primary", err)
		}
		defer flush(tp, srk.ObjectHandle)
		parent := tpm2.AuthHandle{Handle: srk.ObjectHandle, Name: srk.Name, Auth: tpm2.PasswordAuth(nil)}
		sk, err := tpm2.Create{ParentHandle: parent, InPublic: tpm2.New2B(signTemplate)}.Execute(tp)
		if err != nil {
			return tpmErr("create signing key", err)
		}
		sign = blob{sk.OutPublic, sk.OutPrivate}
		seal, err = sealUnder(tp, parent, data, sel, len(o.PCRs) > 0)
		return err
	})
	if err != nil {
		return fmt.Errorf("create tpm keys: %w", err)
	}
	// Build the folder beside its final name, then rename it into place: the folder's
	// existence is the commit point that LoadOrCreateTPMSigner relies on.
	stage := dir + ".new"
	if err := os.RemoveAll(stage); err != nil {
		return fmt.Errorf("create tpm keys: %w", err)
	}
	if err := os.MkdirAll(stage, 0o700); err != nil {
		return fmt.Errorf("create tpm keys: %w", err)
	}
	files := []struct {
		name string
		data []byte
	}{
		{TPMSigningFile, encodeBlob(sign, nil)},
		{TPMDataKeyFile, encodeBlob(seal, tpm2.Marshal(sel))},
	}
	for _, f := range files {
		if err := atomicfile.WriteFile(filepath.Join(stage, f.name), f.data, 0o600); err != nil {
			return fmt.Errorf("create tpm keys: %w", err)
		}
	}
	if err := os.Rename(stage, dir); err != nil {
		return fmt.Errorf("create tpm keys: %w", err)
	}
	if err := atomicfile.SyncDir(filepath.Dir(dir)); err != nil {
		return fmt.Errorf("create tpm keys: %w", err)
	}
	return nil
}

// sealUnder seals data under parent, bound to the current values of the PCRs in sel
// when withPolicy is set.
func sealUnder(tp transport.TPM, parent tpm2.AuthHandle, data []byte, sel tpm2.TPMLPCRSelection, withPolicy bool) (blob, error) {
	var policy []byte
	if withPolicy {
		idx, err := selectedPCRs(sel)
		if err != nil {
			return blob{}, err
		}
		vals, err := readPCRs(tp, idx)
		if err != nil {
			return blob{}, err
		}
		if policy, err = pcrPolicy(sel, vals); err != nil {
			return blob{}, err
		}
	}
	so, err := tpm2.Create{
		ParentHandle: parent,
		InPublic:     tpm2.New2B(sealTemplate(policy)),
		InSensitive: tpm2.TPM2BSensitiveCreate{Sensitive: &tpm2.TPMSSensitiveCreate{
			Data: tpm2.NewTPMUSensitiveCreate(&tpm2.TPM2BSensitiveData{Buffer: data})}},
	}.Execute(tp)
	if err != nil {
		return blob{}, tpmErr("seal data key", err)
	}
	return blob{so.OutPublic, so.OutPrivate}, nil
}

func encodeBlob(b blob, tail []byte) []byte {
	out := []byte(tpmFileMagic)
	out = append(out, tpm2.Marshal(b.pub)...)
	out = append(out, tpm2.Marshal(b.priv)...)
	return append(out, tail...)
}

// readBlob reads a key file; what follows the two blobs is returned as rest.
func readBlob(path string) (blob, []byte, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return blob{}, nil, fmt.Errorf("load tpm keys: %w: %s (restore it from a backup of the key folder; a new key would need a key rotation)", ErrKeyMissing, path)
	}
	if err != nil {
		return blob{}, nil, fmt.Errorf("load tpm keys: %w", err)
	}
	bad := func(why string) (blob, []byte, error) {
		return blob{}, nil, fmt.Errorf("load tpm keys %s: %s", path, why)
	}
	if !bytes.HasPrefix(b, []byte(tpmFileMagic)) {
		return bad("not a TPM key file")
	}
	b = b[len(tpmFileMagic):]
	next := func() ([]byte, bool) {
		if len(b) < 2 {
			return nil, false
		}
		n := 2 + int(binary.BigEndian.Uint16(b))
		if len(b) < n {
			return nil, false
		}
		part := b[:n]
		b = b[n:]
		return part, true
	}
	pubBytes, ok1 := next()
	privBytes, ok2 := next()
	if !ok1 || !ok2 {
		return bad("truncated")
	}
	pub, err := tpm2.Unmarshal[tpm2.TPM2BPublic](pubBytes)
	if err != nil {
		return bad("public: " + err.Error())
	}
	priv, err := tpm2.Unmarshal[tpm2.TPM2BPrivate](privBytes)
	if err != nil {
		return bad("private: " + err.Error())
	}
	return blob{*pub, *priv}, b, nil
}

// signingPublic checks that pub is a non-exportable ECDSA P-256 signing key made inside
// a TPM, and returns its public key.
func signingPublic(pub tpm2.TPM2BPublic) (*ecdsa.PublicKey, error) {
	p, err := pub.Contents()
	if err != nil {
		return nil, fmt.Errorf("signing public: %w", err)
	}
	a := p.ObjectAttributes
	if p.Type != tpm2.TPMAlgECC || !a.FixedTPM || !a.FixedParent || !a.SensitiveDataOrigin || !a.SignEncrypt || a.Decrypt || a.Restricted {
		return nil, errors.New("signing public: not a fixedTPM, fixedParent, sensitiveDataOrigin, unrestricted ECC signing key")
	}
	return eccPublic(p)
}

func eccPublic(p *tpm2.TPMTPublic) (*ecdsa.PublicKey, error) {
	k, err := tpm2.Pub(*p)
	if err != nil {
		return nil, fmt.Errorf("public key: %w", err)
	}
	ek, ok := k.(*ecdsa.PublicKey)
	if !ok || ek.Curve != elliptic.P256() {
		return nil, errors.New("public key: not ECDSA P-256")
	}
	return ek, nil
}

// loadChild recreates the storage primary, loads b under it and flushes the primary
// (a loaded child stays usable without its parent); the caller flushes the returned
// handle.
func loadChild(tp transport.TPM, b blob) (tpm2.TPMHandle, tpm2.TPM2BName, error) {
	h, name, _, err := loadChildSRK(tp, b, true)
	return h, name, err
}

// srkInfo is a storage primary left loaded, for a salted session; the caller flushes it.
type srkInfo struct {
	handle tpm2.TPMHandle
	pub    tpm2.TPMTPublic
}

// loadChildSRK is loadChild that, with flushSRK false, leaves the primary loaded and
// returns it too.
func loadChildSRK(tp transport.TPM, b blob, flushSRK bool) (tpm2.TPMHandle, tpm2.TPM2BName, *srkInfo, error) {
	srk, err := tpm2.CreatePrimary{PrimaryHandle: tpm2.TPMRHOwner, InPublic: tpm2.New2B(srkTemplate)}.Execute(tp)
	if err != nil {
		return 0, tpm2.TPM2BName{}, nil, tpmErr("create storage primary", err)
	}
	ld, err := tpm2.Load{
		ParentHandle: tpm2.AuthHandle{Handle: srk.ObjectHandle, Name: srk.Name, Auth: tpm2.PasswordAuth(nil)},
		InPublic:     b.pub,
		InPrivate:    b.priv,
	}.Execute(tp)
	if err != nil {
		flush(tp, srk.ObjectHandle)
		if errors.Is(err, errTransport) {
			return 0, tpm2.TPM2BName{}, nil, tpmErr("load key", err)
		}
		// Integrity, binding or size failures: these blobs were not made under this
		// TPM's storage seed.
		return 0, tpm2.TPM2BName{}, nil, fmt.Errorf("load key: %w (was the TPM cleared, or is this another machine's key folder?): %w", ErrKeyRejected, err)
	}
	if flushSRK {
		flush(tp, srk.ObjectHandle)
		return ld.ObjectHandle, ld.Name, nil, nil
	}
	sp, err := srk.OutPublic.Contents()
	if err != nil {
		flush(tp, ld.ObjectHandle)
		flush(tp, srk.ObjectHandle)
		return 0, tpm2.TPM2BName{}, nil, tpmErr("storage primary public", err)
	}
	return ld.ObjectHandle, ld.Name, &srkInfo{srk.ObjectHandle, *sp}, nil
}

// pcrSelection is the SHA-256 bank selection of pcrs (PC Client: 0-23).
func pcrSelection(pcrs []int) (tpm2.TPMLPCRSelection, error) {
	if len(pcrs) == 0 {
		return tpm2.TPMLPCRSelection{}, nil
	}
	idx := make([]uint, 0, len(pcrs))
	for _, p := range pcrs {
		if p < 0 || p > 23 {
			return tpm2.TPMLPCRSelection{}, fmt.Errorf("pcr %d: want 0-23", p)
		}
		idx = append(idx, uint(p))
	}
	return tpm2.TPMLPCRSelection{PCRSelections: []tpm2.TPMSPCRSelection{{
		Hash: tpm2.TPMAlgSHA256, PCRSelect: tpm2.PCClientCompatible.PCRs(idx...)}}}, nil
}

// selectedPCRs lists the SHA-256 PCR indices of sel in ascending order, the order in
// which the TPM concatenates their values for a policy or quote digest.
func selectedPCRs(sel tpm2.TPMLPCRSelection) ([]int, error) {
	var out []int
	for _, s := range sel.PCRSelections {
		if s.Hash != tpm2.TPMAlgSHA256 {
			return nil, fmt.Errorf("pcr bank %v: only sha256", s.Hash)
		}
		for i, b := range s.PCRSelect {
			for bit := range 8 {
				if b&(1<<bit) != 0 {
					out = append(out, i*8+bit)
				}
			}
		}
	}
	slices.Sort(out)
	return slices.Compact(out), nil
}

// readPCRs reads the SHA-256 values of pcrs, one command each (a TPM returns at most
// eight values per PCR_Read, and fewer for a partly allocated bank).
func readPCRs(tp transport.TPM, pcrs []int) ([][]byte, error) {
	out := make([][]byte, 0, len(pcrs))
	for _, p := range pcrs {
		sel, err := pcrSelection([]int{p})
		if err != nil {
			return nil, err
		}
		rsp, err := tpm2.PCRRead{PCRSelectionIn: sel}.Execute(tp)
		if err != nil {
			return nil, tpmErr(fmt.Sprintf("read pcr %d", p), err)
		}
		if len(rsp.PCRValues.Digests) != 1 || len(rsp.PCRValues.Digests[0].Buffer) != sha256.Size {
			return nil, fmt.Errorf("read pcr %d: %w: no sha256 value (bank not allocated?)", p, ErrTPM)
		}
		out = append(out, rsp.PCRValues.Digests[0].Buffer)
	}
	return out, nil
}

// pcrPolicy is the policy digest of TPM2_PolicyPCR over sel with these values.
func pcrPolicy(sel tpm2.TPMLPCRSelection, vals [][]byte) ([]byte, error) {
	h := sha256.New()
	for _, v := range vals {
		h.Write(v)
	}
	calc, err := tpm2.NewPolicyCalculator(tpm2.TPMAlgSHA256)
	if err != nil {
		return nil, fmt.Errorf("pcr policy: %w", err)
	}
	if err := (tpm2.PolicyPCR{PcrDigest: tpm2.TPM2BDigest{Buffer: h.Sum(nil)}, Pcrs: sel}).Update(calc); err != nil {
		return nil, fmt.Errorf("pcr policy: %w", err)
	}
	return calc.Hash().Digest, nil
}
