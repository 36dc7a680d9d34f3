package attest

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"math/big"
	"slices"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"github.com/edgeaudit/edgeaudit/ledger"
)

// BundleVersion is the Bundle's "v".
const BundleVersion = 1

// EK certificate NV indices (TCG EK Credential Profile): RSA-2048 and ECC P-256.
const (
	EKCertIndexRSA = 0x01c00002
	EKCertIndexECC = 0x01c0000a
)

// akTemplate is the attestation key: a restricted ECDSA P-256 signing primary of the
// endorsement hierarchy. Restricted means the TPM signs with it only structures it made
// itself (TPM_GENERATED magic), so a Certify or Quote under it cannot be forged by
// feeding the TPM a chosen digest. As a primary it is the same key at every call.
var akTemplate = func() tpm2.TPMTPublic {
	t := signTemplate
	t.ObjectAttributes.Restricted = true
	return t
}()

// Bundle is the attestation bundle: evidence that the signing key lives in a TPM, and
// of the TPM's PCRs, both fresh for the verifier's nonce. Its JSON encoding is the
// documented exchange format (docs/format.md "TPM keys"); []byte fields are standard
// base64, holding TPM-native encodings.
type Bundle struct {
	Version int `json:"v"`
	// SigningPublic is the signing key's TPM2B_PUBLIC.
	SigningPublic []byte `json:"signing_public"`
	// AKPublic and EKPublic are the attestation and endorsement keys' TPM2B_PUBLIC.
	AKPublic []byte `json:"ak_public"`
	EKPublic []byte `json:"ek_public"`
	// EKCert is the DER certificate found at EKCertIndex, when the TPM has one.
	EKCert      []byte `json:"ek_cert,omitempty"`
	EKCertIndex uint32 `json:"ek_cert_index,omitempty"`
	// Certify is the TPMS_ATTEST of TPM2_Certify(signing key, by the AK, extraData =
	// nonce); CertifySignature is its TPMT_SIGNATURE.
	Certify          []byte `json:"certify"`
	CertifySignature []byte `json:"certify_signature"`
	// Quote is the TPMS_ATTEST of TPM2_Quote(PCRs, by the AK, extraData = nonce).
	Quote          []byte `json:"quote"`
	QuoteSignature []byte `json:"quote_signature"`
	// PCRs are the quoted SHA-256 PCR values, ascending by index.
	PCRs []PCRValue `json:"pcrs"`
}

// PCRValue is one SHA-256 PCR.
type PCRValue struct {
	Index  int    `json:"index"`
	SHA256 string `json:"sha256"` // hex
}

// Attest makes a bundle for nonce (1-64 bytes, chosen by the verifier): the EK public
// (and certificate, where NV holds one), the AK public, a Certify of the signing key and
// a Quote of the QuotePCRs, both signed by the AK over the nonce.
func (s *TPMSigner) Attest(nonce []byte) (*Bundle, error) {
	if len(nonce) == 0 || len(nonce) > 64 {
		return nil, fmt.Errorf("attest: nonce of %d bytes, want 1-64", len(nonce))
	}
	sel, err := pcrSelection(s.quote)
	if err != nil {
		return nil, fmt.Errorf("attest: %w", err)
	}
	idx, err := selectedPCRs(sel)
	if err != nil {
		return nil, fmt.Errorf("attest: %w", err)
	}
	b := &Bundle{Version: BundleVersion, SigningPublic: tpm2.Marshal(s.sign.pub)}
	err = s.c.do(func(tp transport.TPM) error {
		// The reference TPM has three object slots: the EK comes and goes first, then
		// the signing key is loaded (its parent flushed at once), then the AK.
		ek, err := tpm2.CreatePrimary{PrimaryHandle: tpm2.TPMRHEndorsement, InPublic: tpm2.New2B(tpm2.ECCEKTemplate)}.Execute(tp)
		if err != nil {
			return tpmErr("attest: create ek", err)
		}
		flush(tp, ek.ObjectHandle)
		b.EKPublic = tpm2.Marshal(ek.OutPublic)
		b.EKCert, b.EKCertIndex = readEKCert(tp)

		h, name, err := loadChild(tp, s.sign)
		if err != nil {
			return err
		}
		defer flush(tp, h)
		ak, err := tpm2.CreatePrimary{PrimaryHandle: tpm2.TPMRHEndorsement, InPublic: tpm2.New2B(akTemplate)}.Execute(tp)
		if err != nil {
			return tpmErr("attest: create ak", err)
		}
		defer flush(tp, ak.ObjectHandle)
		b.AKPublic = tpm2.Marshal(ak.OutPublic)
		akAuth := tpm2.AuthHandle{Handle: ak.ObjectHandle, Name: ak.Name, Auth: tpm2.PasswordAuth(nil)}
		cr, err := tpm2.Certify{
			ObjectHandle:   tpm2.AuthHandle{Handle: h, Name: name, Auth: tpm2.PasswordAuth(nil)},
			SignHandle:     akAuth,
			QualifyingData: tpm2.TPM2BData{Buffer: nonce},
			InScheme:       tpm2.TPMTSigScheme{Scheme: tpm2.TPMAlgNull},
		}.Execute(tp)
		if err != nil {
			return tpmErr("attest: certify", err)
		}
		b.Certify, b.CertifySignature = cr.CertifyInfo.Bytes(), tpm2.Marshal(cr.Signature)
		// A PCR may be extended between the quote and the read (the kernel's IMA
		// extends PCR 10 all the time); quote again until both saw the same values.
		for range 5 {
			q, err := tpm2.Quote{
				SignHandle:     akAuth,
				QualifyingData: tpm2.TPM2BData{Buffer: nonce},
				InScheme:       tpm2.TPMTSigScheme{Scheme: tpm2.TPMAlgNull},
				PCRSelect:      sel,
			}.Execute(tp)
			if err != nil {
				return tpmErr("attest: quote", err)
			}
			vals, err := readPCRs(tp, idx)
			if err != nil {
				return err
			}
			b.Quote, b.QuoteSignature = q.Quoted.Bytes(), tpm2.Marshal(q.Signature)
			b.PCRs = b.PCRs[:0]
			for i, v := range vals {
				b.PCRs = append(b.PCRs, PCRValue{Index: idx[i], SHA256: hex.EncodeToString(v)})
			}
			if _, err := quotedPCRs(b, sel); err == nil {
				return nil
			}
		}
		return fmt.Errorf("attest: %w: the PCRs kept changing under the quote", ErrTPM)
	})
	if err != nil {
		return nil, err
	}
	return b, nil
}

// readEKCert returns the EK certificate from NV, ECC first; none (0) when the TPM has
// none or refuses to read it: the certificate is optional evidence.
func readEKCert(tp transport.TPM) ([]byte, uint32) {
	for _, idx := range []uint32{EKCertIndexECC, EKCertIndexRSA} {
		pub, err := tpm2.NVReadPublic{NVIndex: tpm2.TPMHandle(idx)}.Execute(tp)
		if err != nil {
			continue
		}
		nv, err := pub.NVPublic.Contents()
		if err != nil {
			continue
		}
		index := tpm2.NamedHandle{Handle: tpm2.TPMHandle(idx), Name: pub.NVName}
		// The EK Credential Profile's indices allow reading with the index's own empty
		// auth (AUTHREAD) or the owner's (OWNERREAD); try both.
		for _, auth := range []tpm2.AuthHandle{
			{Handle: index.Handle, Name: index.Name, Auth: tpm2.PasswordAuth(nil)},
			{Handle: tpm2.TPMRHOwner, Auth: tpm2.PasswordAuth(nil)},
		} {
			if out := readNV(tp, auth, index, nv.DataSize); out != nil {
				return out, idx
			}
		}
	}
	return nil, 0
}

// readNV reads size bytes of an NV index in chunks; nil on any failure.
func readNV(tp transport.TPM, auth tpm2.AuthHandle, index tpm2.NamedHandle, size uint16) []byte {
	var out []byte
	for off := 0; off < int(size); {
		n := min(int(size)-off, 512) // below every TPM's MAX_NV_BUFFER_SIZE
		rsp, err := tpm2.NVRead{AuthHandle: auth, NVIndex: index, Size: uint16(n), Offset: uint16(off)}.Execute(tp)
		if err != nil {
			return nil
		}
		out = append(out, rsp.Data.Buffer...)
		off += n
	}
	return out
}

// Pins are keys a verifier learned at enrolment. A bundle made by another TPM has other
// endorsement and attestation keys (both derive from the TPM's endorsement seed), so
// pinning either refuses it.
type Pins struct {
	AK *ecdsa.PublicKey
	EK *ecdsa.PublicKey
}

// Verified is what a bundle proves.
type Verified struct {
	// SigningKey is the certified key and KeyID its ledger key id.
	SigningKey *ecdsa.PublicKey
	KeyID      string
	AK, EK     *ecdsa.PublicKey
	// PCRDigest is the quoted SHA-256 over the PCR values; PCRs are those values.
	PCRDigest []byte
	PCRs      map[int][]byte
	// ResetCount and RestartCount are the TPM's boot counters at the quote.
	ResetCount, RestartCount uint32
}

// VerifyBundle is VerifyBundlePinned without pins: it checks that the bundle is
// consistent and fresh, and that the AK certified the signing key, but it trusts the AK
// it carries.
func VerifyBundle(b *Bundle, nonce []byte, expectedSigningKey *ecdsa.PublicKey) (*Verified, error) {
	return VerifyBundlePinned(b, nonce, expectedSigningKey, Pins{})
}

// VerifyBundlePinned checks b against the verifier's nonce: the AK is a restricted
// fixedTPM signing key; the Certify is TPM-generated, signed by the AK, over nonce, and
// names the bundle's signing key, which is a fixedTPM, sensitiveDataOrigin ECDSA P-256
// key (and equals expectedSigningKey unless that is nil); the Quote is TPM-generated,
// signed by the AK, over nonce, and its PCR digest matches the PCR values. Set pins make
// a bundle with another AK or EK fail. Every failure wraps ErrBundle.
//
// Not checked: that the AK lives in the same TPM as the EK (that needs a
// MakeCredential/ActivateCredential round trip), nor the EK certificate's chain.
func VerifyBundlePinned(b *Bundle, nonce []byte, expectedSigningKey *ecdsa.PublicKey, pins Pins) (*Verified, error) {
	fail := func(format string, args ...any) (*Verified, error) {
		return nil, fmt.Errorf("verify bundle: %w: %s", ErrBundle, fmt.Sprintf(format, args...))
	}
	if b == nil {
		return fail("no bundle")
	}
	if b.Version != BundleVersion {
		return fail("version %d, want %d", b.Version, BundleVersion)
	}
	if len(nonce) == 0 {
		return fail("empty nonce")
	}
	akPub, err := parsePublic(b.AKPublic)
	if err != nil {
		return fail("ak: %v", err)
	}
	a := akPub.ObjectAttributes
	if !a.Restricted || !a.SignEncrypt || a.Decrypt || !a.FixedTPM || !a.FixedParent || !a.SensitiveDataOrigin {
		return fail("ak is not a restricted fixedTPM signing key")
	}
	ak, err := eccPublic(akPub)
	if err != nil {
		return fail("ak: %v", err)
	}
	ekPub, err := parsePublic(b.EKPublic)
	if err != nil {
		return fail("ek: %v", err)
	}
	ek, err := eccPublic(ekPub)
	if err != nil {
		return fail("ek: %v", err)
	}
	if pins.AK != nil && !pins.AK.Equal(ak) {
		return fail("ak is not the pinned attestation key (another TPM?)")
	}
	if pins.EK != nil && !pins.EK.Equal(ek) {
		return fail("ek is not the pinned endorsement key (another TPM?)")
	}

	sp, err := tpm2.Unmarshal[tpm2.TPM2BPublic](b.SigningPublic)
	if err != nil {
		return fail("signing public: %v", err)
	}
	sk, err := signingPublic(*sp)
	if err != nil {
		return fail("%v", err)
	}
	if expectedSigningKey != nil && !expectedSigningKey.Equal(sk) {
		return fail("signing key is not the expected key")
	}
	spc, _ := sp.Contents()
	skName, err := tpm2.ObjectName(spc)
	if err != nil {
		return fail("signing key name: %v", err)
	}

	cert, err := attested(b.Certify, b.CertifySignature, ak, nonce, tpm2.TPMSTAttestCertify)
	if err != nil {
		return fail("certify: %v", err)
	}
	ci, err := cert.Attested.Certify()
	if err != nil {
		return fail("certify: %v", err)
	}
	if !bytes.Equal(ci.Name.Buffer, skName.Buffer) {
		return fail("certify names another key")
	}

	quote, err := attested(b.Quote, b.QuoteSignature, ak, nonce, tpm2.TPMSTAttestQuote)
	if err != nil {
		return fail("quote: %v", err)
	}
	idx := make([]int, len(b.PCRs))
	for i, p := range b.PCRs {
		idx[i] = p.Index
	}
	sel, err := pcrSelection(idx)
	if err != nil {
		return fail("pcrs: %v", err)
	}
	if got, _ := selectedPCRs(sel); !slices.Equal(got, idx) {
		return fail("pcrs not ascending and distinct")
	}
	vals, err := quotedPCRs(b, sel)
	if err != nil {
		return fail("%v", err)
	}
	qi, _ := quote.Attested.Quote()
	id, err := ledger.KeyID(sk)
	if err != nil {
		return fail("%v", err)
	}
	return &Verified{SigningKey: sk, KeyID: id, AK: ak, EK: ek, PCRDigest: qi.PCRDigest.Buffer, PCRs: vals,
		ResetCount: quote.ClockInfo.ResetCount, RestartCount: quote.ClockInfo.RestartCount}, nil
}

// quotedPCRs checks that b's Quote covers exactly sel and that its digest is SHA-256 over
// b's PCR values, and returns them by index.
func quotedPCRs(b *Bundle, sel tpm2.TPMLPCRSelection) (map[int][]byte, error) {
	q, err := tpm2.Unmarshal[tpm2.TPMSAttest](b.Quote)
	if err != nil {
		return nil, fmt.Errorf("quote: %w", err)
	}
	qi, err := q.Attested.Quote()
	if err != nil {
		return nil, fmt.Errorf("quote: %w", err)
	}
	got, err := selectedPCRs(qi.PCRSelect)
	if err != nil {
		return nil, fmt.Errorf("quote: %w", err)
	}
	want, _ := selectedPCRs(sel)
	if !slices.Equal(got, want) {
		return nil, fmt.Errorf("quote covers PCRs %v, bundle lists %v", got, want)
	}
	h := sha256.New()
	vals := make(map[int][]byte, len(b.PCRs))
	for _, p := range b.PCRs {
		v, err := hex.DecodeString(p.SHA256)
		if err != nil || len(v) != sha256.Size {
			return nil, fmt.Errorf("pcr %d: not a hex SHA-256 value", p.Index)
		}
		h.Write(v)
		vals[p.Index] = v
	}
	if !bytes.Equal(h.Sum(nil), qi.PCRDigest.Buffer) {
		return nil, errors.New("the PCR values do not hash to the quoted digest")
	}
	return vals, nil
}

func parsePublic(b []byte) (*tpm2.TPMTPublic, error) {
	p, err := tpm2.Unmarshal[tpm2.TPM2BPublic](b)
	if err != nil {
		return nil, err
	}
	return p.Contents()
}

// attested parses a TPMS_ATTEST, checks its TPM_GENERATED magic, type and extraData, and
// its TPMT_SIGNATURE by key over SHA-256 of the exact bytes.
func attested(msg, sig []byte, key *ecdsa.PublicKey, nonce []byte, typ tpm2.TPMISTAttest) (*tpm2.TPMSAttest, error) {
	a, err := tpm2.Unmarshal[tpm2.TPMSAttest](msg)
	if err != nil {
		return nil, err
	}
	if a.Magic != tpm2.TPMGeneratedValue {
		return nil, errors.New("not TPM-generated")
	}
	if a.Type != typ {
		return nil, fmt.Errorf("type %v, want %v", a.Type, typ)
	}
	if !bytes.Equal(a.ExtraData.Buffer, nonce) {
		return nil, errors.New("nonce does not match (stale or replayed)")
	}
	s, err := tpm2.Unmarshal[tpm2.TPMTSignature](sig)
	if err != nil {
		return nil, fmt.Errorf("signature: %w", err)
	}
	if s.SigAlg != tpm2.TPMAlgECDSA {
		return nil, fmt.Errorf("signature algorithm %v, want ECDSA", s.SigAlg)
	}
	e, err := s.Signature.ECDSA()
	if err != nil || e.Hash != tpm2.TPMAlgSHA256 {
		return nil, errors.New("signature is not ECDSA over SHA-256")
	}
	d := sha256.Sum256(msg)
	if !ecdsa.Verify(key, d[:], new(big.Int).SetBytes(e.SignatureR.Buffer), new(big.Int).SetBytes(e.SignatureS.Buffer)) {
		return nil, errors.New("signature does not verify with the ak")
	}
	return a, nil
}
