package daemon

import (
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/edgeaudit/edgeaudit/attest"
	"github.com/edgeaudit/edgeaudit/internal/testtpm"
)

func TestParseNonce(t *testing.T) {
	for _, tt := range []struct {
		name, in string
		want     int // bytes; 0: an error
	}{
		{"32 bytes", strings.Repeat("ab", 32), 32},
		{"spaces around", " 0a0b \n", 2},
		{"64 bytes", strings.Repeat("00", 64), 64},
		{"65 bytes", strings.Repeat("00", 65), 0},
		{"empty", "", 0},
		{"not hex", "xyz", 0},
		{"odd length", "abc", 0},
	} {
		t.Run(tt.name, func(t *testing.T) {
			n, err := ParseNonce(tt.in)
			if got := len(n); got != tt.want || (tt.want == 0) != (err != nil) {
				t.Fatalf("ParseNonce(%q) = %d bytes, %v; want %d bytes", tt.in, got, err, tt.want)
			}
		})
	}
}

// TestAttestHandler: POST /v1/keys/attest needs the admin token and a hex nonce,
// refuses a software key with 409, and returns a bundle of the TPM key that verifies
// against the nonce.
func TestAttestHandler(t *testing.T) {
	sw := testtpm.Start(t)
	tpmCfg := testConfig(t)
	tpmCfg.Keys = KeysConfig{TPM: TPMRequire, TPMDevice: sw.Spec}
	tpmKeys, err := OpenKeys(&tpmCfg, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tpmKeys.Close() })
	softCfg := testConfig(t)
	softCfg.Keys = KeysConfig{TPM: TPMOff}
	softKeys, err := OpenKeys(&softCfg, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Attest(softKeys, []byte{1}); !errors.Is(err, ErrSoftwareKey) {
		t.Fatalf("Attest with a software key: %v, want ErrSoftwareKey", err)
	}
	nonce := strings.Repeat("5a", 32)
	for _, tt := range []struct {
		name       string
		keys       *Keyring
		token      string
		body       string
		wantStatus int
	}{
		{"no token", tpmKeys, "", fmt.Sprintf(`{"nonce":%q}`, nonce), http.StatusUnauthorized},
		{"wrong token", tpmKeys, "nope", fmt.Sprintf(`{"nonce":%q}`, nonce), http.StatusUnauthorized},
		{"not json", tpmKeys, "tok", "nonce", http.StatusBadRequest},
		{"bad nonce", tpmKeys, "tok", `{"nonce":"zz"}`, http.StatusBadRequest},
		{"software key", softKeys, "tok", fmt.Sprintf(`{"nonce":%q}`, nonce), http.StatusConflict},
		{"tpm key", tpmKeys, "tok", fmt.Sprintf(`{"nonce":%q}`, nonce), http.StatusOK},
	} {
		t.Run(tt.name, func(t *testing.T) {
			req := httptest.NewRequest(http.MethodPost, "/v1/keys/attest", strings.NewReader(tt.body))
			if tt.token != "" {
				req.Header.Set("Authorization", "Bearer "+tt.token)
			}
			w := httptest.NewRecorder()
			attestHandler(tt.keys, "tok")(w, req)
			if got := w.Code; got != tt.wantStatus {
				t.Fatalf("status %d, want %d: %s", got, tt.wantStatus, w.Body)
			}
			if tt.wantStatus != http.StatusOK {
				return
			}
			var b attest.Bundle
			if err := json.Unmarshal(w.Body.Bytes(), &b); err != nil {
				t.Fatal(err)
			}
			n, _ := hex.DecodeString(nonce)
			v, err := attest.VerifyBundle(&b, n, tt.keys.Signer.Public())
			if err != nil {
				t.Fatal(err)
			}
			if got, want := v.KeyID, tt.keys.Signer.KeyID(); got != want {
				t.Fatalf("bundle certifies %s, want the daemon's key %s", got, want)
			}
		})
	}
}

// TestRunningPID: a run marker naming a live process is a running daemon; a dead pid,
// garbage or no marker is not.
func TestRunningPID(t *testing.T) {
	cfg := testConfig(t)
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		t.Fatal(err)
	}
	marker := filepath.Join(cfg.DataDir, runMarker)
	for _, tt := range []struct {
		name, content string
		want          int
	}{
		{"none", "", 0},
		{"live (pid 1)", "pid 1 since 2026-12-01T00:00:00Z\n", 1},
		{"dead", "pid 2147483000 since 2026-12-01T00:00:00Z\n", 0},
		{"garbage", "hello", 0},
	} {
		t.Run(tt.name, func(t *testing.T) {
			os.Remove(marker)
			if tt.content != "" {
				if err := os.WriteFile(marker, []byte(tt.content), 0o600); err != nil {
					t.Fatal(err)
				}
			}
			if got := RunningPID(&cfg); got != tt.want {
				t.Fatalf("RunningPID = %d, want %d", got, tt.want)
			}
		})
	}
}
