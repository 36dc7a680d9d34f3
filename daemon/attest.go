package daemon

import (
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/edgeaudit/edgeaudit/attest"
)

// ErrSoftwareKey: the chain is signed by a software key, which no TPM can vouch for.
var ErrSoftwareKey = errors.New("the signing key is a software key, not a TPM key")

// attester is the part of *attest.TPMSigner that makes bundles.
type attester interface {
	Attest(nonce []byte) (*attest.Bundle, error)
}

// AttestRequest is the body of POST /v1/keys/attest.
type AttestRequest struct {
	// Nonce is the verifier's nonce in hex (1-64 bytes).
	Nonce string `json:"nonce"`
}

// ParseNonce decodes a hex nonce of 1-64 bytes (the TPM's qualifying data limit).
func ParseNonce(s string) ([]byte, error) {
	n, err := hex.DecodeString(strings.TrimSpace(s))
	if err != nil {
		return nil, fmt.Errorf("nonce: not hex: %w", err)
	}
	if len(n) == 0 || len(n) > 64 {
		return nil, fmt.Errorf("nonce: %d bytes, want 1-64 (central issues 32)", len(n))
	}
	return n, nil
}

// Attest makes the attestation bundle of the keyring's signing key for nonce: a
// TPM2_Certify of the key and a PCR quote, both by the TPM's attestation key over the
// nonce. A software key is ErrSoftwareKey.
func Attest(k *Keyring, nonce []byte) (*attest.Bundle, error) {
	a, ok := k.Signer.(attester)
	if !ok {
		return nil, fmt.Errorf("attest: %w (%s); only a key made in a TPM (keys.tpm: auto or require) can be attested",
			ErrSoftwareKey, k.Signer.KeyID())
	}
	b, err := a.Attest(nonce)
	if err != nil {
		return nil, fmt.Errorf("attest: %w", err)
	}
	return b, nil
}

// attestHandler answers POST /v1/keys/attest ({"nonce": hex}) with the bundle's JSON.
// It goes through the daemon because the TPM connection is the daemon's (swtpm serves
// one connection at a time; a second opener would wait for the daemon to stop). The
// admin token is required: an attestation is the TPM's signature on the caller's data.
func attestHandler(keys *Keyring, adminToken string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if !adminAuthorized(w, r, adminToken) {
			return
		}
		var req AttestRequest
		if err := json.NewDecoder(io.LimitReader(r.Body, 4096)).Decode(&req); err != nil {
			http.Error(w, "body: want {\"nonce\": \"<hex>\"}", http.StatusBadRequest)
			return
		}
		nonce, err := ParseNonce(req.Nonce)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		b, err := Attest(keys, nonce)
		switch {
		case errors.Is(err, ErrSoftwareKey):
			http.Error(w, err.Error(), http.StatusConflict)
			return
		case err != nil:
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(b)
	}
}

// RunningPID returns the pid in the data folder's run marker when that process is
// alive: a daemon that holds the TPM connection (swtpm serves one connection at a time,
// so an offline tool would wait for it forever). 0 when none runs. A stale marker whose
// pid was reused reads as running; the caller's message says how to check.
func RunningPID(cfg *Config) int {
	b, err := os.ReadFile(filepath.Join(cfg.DataDir, runMarker))
	if err != nil {
		return 0
	}
	var pid int
	if _, err := fmt.Sscanf(string(b), "pid %d", &pid); err != nil || pid <= 0 || pid == os.Getpid() {
		return 0
	}
	p, err := os.FindProcess(pid)
	if err != nil {
		return 0
	}
	if err := p.Signal(syscall.Signal(0)); err != nil && !errors.Is(err, os.ErrPermission) {
		return 0
	}
	return pid
}
