package attest

import (
	"context"
	"crypto/ecdsa"
	"crypto/fips140"
	"encoding/asn1"
	"errors"
	"fmt"
	"math/big"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"
)

// Sign returns an ASN.1 DER ECDSA signature over a SHA-256 digest, made inside the TPM.
// Each call loads the key and flushes it again. The signature is checked against the
// public key before it is returned, so a TPM fault never puts a bad signature in a chain.
// Errors wrap ErrTPM (or ErrKeyRejected when the TPM no longer accepts the blob).
func (s *TPMSigner) Sign(ctx context.Context, digest []byte) ([]byte, error) {
	if len(digest) != 32 {
		return nil, fmt.Errorf("tpm sign: digest of %d bytes, want 32", len(digest))
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("tpm sign: %w", err)
	}
	var der []byte
	err := s.c.do(func(tp transport.TPM) error {
		h, name, err := loadChild(tp, s.sign)
		if err != nil {
			return err
		}
		defer flush(tp, h)
		rsp, err := tpm2.Sign{
			KeyHandle: tpm2.AuthHandle{Handle: h, Name: name, Auth: tpm2.PasswordAuth(nil)},
			Digest:    tpm2.TPM2BDigest{Buffer: digest},
			InScheme: tpm2.TPMTSigScheme{
				Scheme:  tpm2.TPMAlgECDSA,
				Details: tpm2.NewTPMUSigScheme(tpm2.TPMAlgECDSA, &tpm2.TPMSSchemeHash{HashAlg: tpm2.TPMAlgSHA256}),
			},
			// A null ticket: the key is not restricted, so it may sign any digest.
			Validation: tpm2.TPMTTKHashCheck{Tag: tpm2.TPMSTHashCheck},
		}.Execute(tp)
		if err != nil {
			return tpmErr("tpm sign", err)
		}
		der, err = ecdsaDER(&rsp.Signature)
		return err
	})
	if err != nil {
		return nil, err
	}
	if !ecdsa.VerifyASN1(s.pub, digest, der) {
		return nil, fmt.Errorf("tpm sign: %w: the signature does not verify with the key's public part", ErrTPM)
	}
	return der, nil
}

// ecdsaDER encodes the TPM's (r, s) as the ASN.1 DER SEQUENCE that crypto/ecdsa and the
// ledger verify.
func ecdsaDER(sig *tpm2.TPMTSignature) ([]byte, error) {
	if sig.SigAlg != tpm2.TPMAlgECDSA {
		return nil, fmt.Errorf("tpm signature: algorithm %v, want ECDSA", sig.SigAlg)
	}
	e, err := sig.Signature.ECDSA()
	if err != nil {
		return nil, fmt.Errorf("tpm signature: %w", err)
	}
	der, err := asn1.Marshal(struct{ R, S *big.Int }{
		new(big.Int).SetBytes(e.SignatureR.Buffer), new(big.Int).SetBytes(e.SignatureS.Buffer)})
	if err != nil {
		return nil, fmt.Errorf("tpm signature: %w", err)
	}
	return der, nil
}

// KeyID is the hex SHA-256 of the public key's SubjectPublicKeyInfo.
func (s *TPMSigner) KeyID() string { return s.keyID }

// Public returns the verifying key.
func (s *TPMSigner) Public() *ecdsa.PublicKey { return s.pub }

// Kind names the signer for health output.
func (s *TPMSigner) Kind() string { return "tpm" }

// Dir is the key folder the signer was loaded from.
func (s *TPMSigner) Dir() string { return s.dir }

// PCRs are the SHA-256 PCRs the data key is sealed to; empty when it has no policy.
func (s *TPMSigner) PCRs() []int {
	p, _ := selectedPCRs(s.sealTo)
	return p
}

// UnsealDataKey returns the DataKeySize-byte data key sealed in the folder. The TPM
// answers over a salted, response-encrypted session bound to its storage key, so the key
// never crosses the bus in clear. ErrPolicy: the PCRs it is sealed to have changed since.
func (s *TPMSigner) UnsealDataKey() ([]byte, error) {
	pcrs, err := selectedPCRs(s.sealTo)
	if err != nil {
		return nil, fmt.Errorf("unseal data key: %w", err)
	}
	var key []byte
	err = s.c.do(func(tp transport.TPM) error {
		h, name, srk, err := loadChildSRK(tp, s.seal, false)
		if err != nil {
			return err
		}
		defer flush(tp, srk.handle)
		defer flush(tp, h)
		opts := []tpm2.AuthOption{tpm2.AESEncryption(128, tpm2.EncryptOut), tpm2.Salted(srk.handle, srk.pub)}
		auth := tpm2.HMAC(tpm2.TPMAlgSHA256, 16, opts...)
		if len(pcrs) > 0 {
			auth = tpm2.Policy(tpm2.TPMAlgSHA256, 16, func(tp transport.TPM, sess tpm2.TPMISHPolicy, _ tpm2.TPM2BNonce) error {
				_, err := tpm2.PolicyPCR{PolicySession: sess, Pcrs: s.sealTo}.Execute(tp)
				return err
			}, opts...)
		}
		// TPM 2.0 parameter encryption is AES-CFB (TPM 2.0 Part 1, 21.4), which Go's FIPS
		// 140-3 module does not include, so GODEBUG=fips140=only refuses it. It protects
		// the data key on the bus to the TPM, a second layer over what FIPS mode covers:
		// the one exemption, for this command alone (docs/operations.md, "FIPS mode").
		var rsp *tpm2.UnsealResponse
		fips140.WithoutEnforcement(func() {
			rsp, err = tpm2.Unseal{ItemHandle: tpm2.AuthHandle{Handle: h, Name: name, Auth: auth}}.Execute(tp)
		})
		if errors.Is(err, tpm2.TPMRCPolicyFail) {
			return fmt.Errorf("unseal data key: %w (sealed to sha256 PCRs %v): %w", ErrPolicy, pcrs, err)
		}
		if err != nil {
			return tpmErr("unseal data key", err)
		}
		key = rsp.OutData.Buffer
		return nil
	})
	if err != nil {
		return nil, err
	}
	if len(key) != DataKeySize {
		return nil, fmt.Errorf("unseal data key: %d bytes, want %d", len(key), DataKeySize)
	}
	return key, nil
}
