package integration

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/edgeaudit/edgeaudit/internal/testtpm"
)

// centralDir writes a central config (receive: section only, folder store) in a new
// temp folder and returns the config's path.
func centralDir(t testing.TB) string {
	t.Helper()
	dir := t.TempDir()
	path := filepath.Join(dir, "central.yaml")
	text := fmt.Sprintf("receive:\n  data_dir: %s\n  audit_device: c1\n", strconv.Quote(filepath.Join(dir, "central")))
	if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// issueNonce runs central's `devices nonce` and checks it is 32 bytes of hex.
func issueNonce(t testing.TB) string {
	t.Helper()
	res := runCLI(t, "devices", "nonce")
	n := strings.TrimSpace(res.stdout)
	if res.code != 0 || !regexp.MustCompile(`^[0-9a-f]{64}$`).MatchString(n) {
		t.Fatalf("devices nonce: %s\nwant 64 hex digits", res)
	}
	return n
}

// keysAttest runs `keys attest -json` on d's config and returns what it printed and
// the bundle file; it requires exit 0.
func keysAttest(t testing.TB, d *daemon, nonce string) (map[string]string, string) {
	t.Helper()
	out := filepath.Join(t.TempDir(), "bundle.json")
	res := runCLI(t, "keys", "attest", "-config", d.config, "-nonce", nonce, "-out", out, "-json")
	if res.code != 0 {
		t.Fatalf("%s", res)
	}
	var v map[string]string
	if err := json.Unmarshal([]byte(res.stdout), &v); err != nil {
		t.Fatalf("keys attest -json: %v\n%s", err, res)
	}
	fi, err := os.Stat(out)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("bundle file: %v mode %v, want 0600", err, fi.Mode().Perm())
	}
	return v, out
}

// tpmAppliance starts a daemon with keys.tpm: require on its own swtpm, seals 100
// syslog events and stops it.
func tpmAppliance(t testing.TB) (*daemon, *testtpm.TPM) {
	t.Helper()
	tpm := testtpm.Start(t)
	keys := fmt.Sprintf("keys: {tpm: require, tpm_device: %s}\n", strconv.Quote(tpm.Spec))
	d := startDaemon(t, daemonConfig{MaxAge: 200 * time.Millisecond, Extra: keys})
	sendSyslog(t, d.tcp, "attest", 0, 100, 0)
	eventually(t, waitTimeout, func() (bool, string) {
		h := d.mustHealth(t)
		return h.Committed >= 100 && h.OpenEvents == 0, fmt.Sprintf("committed %d", h.Committed)
	})
	return d, tpm
}

// Attestation end to end with the real binaries on real swtpms: `keys attest` (through
// the running daemon's admin endpoint, and from the TPM with the daemon stopped) writes
// a bundle; central's `devices add -bundle` verifies it against the nonce it issued and
// enrols the TPM's key, pinned to that TPM; a second swtpm's bundle for the same device
// and a wrong nonce are refused and change nothing; `devices list` says attested; and
// the appliance's exported batches import at central, while the other TPM's are
// refused: the enrolled key is the one in the first TPM.
func TestAttestEnrolment(t *testing.T) {
	a, _ := tpmAppliance(t)
	cfg := centralDir(t)
	add := func(bundle, nonce string, extra ...string) cliResult {
		args := append([]string{"devices", "add", "-config", cfg, "-site", testSite, "-device", testDevice, "-bundle", bundle, "-nonce", nonce}, extra...)
		return runCLI(t, args...)
	}

	// While the daemon runs, it holds swtpm's one connection: the command asks it.
	n0 := issueNonce(t)
	got, _ := keysAttest(t, a, n0)
	if got["via"] != "the running daemon" {
		t.Fatalf("keys attest with the daemon running went through %q, want the running daemon", got["via"])
	}
	a.stop(t)
	shown := keysShow(t, a)
	if got["key_id"] != shown["key_id"] {
		t.Fatalf("bundle certifies %s, want the appliance's key %s", got["key_id"], shown["key_id"])
	}

	// A wrong nonce (the bundle answers another one) is refused; nothing is enrolled.
	_, staleBundle := keysAttest(t, a, issueNonce(t))
	if res := add(staleBundle, issueNonce(t)); res.code != 1 || !strings.Contains(res.stderr, "nonce does not match") {
		t.Fatalf("add with the wrong nonce: %s", res)
	}
	if res := runCLI(t, "devices", "list", "-config", cfg); res.code != 0 || strings.Contains(res.stdout, testDevice) {
		t.Fatalf("a refused bundle enrolled the device: %s", res)
	}

	// Daemon stopped: the command opens the TPM itself.
	n := issueNonce(t)
	got, bundle := keysAttest(t, a, n)
	if got["via"] != "the TPM (daemon stopped)" || got["key_id"] != shown["key_id"] {
		t.Fatalf("keys attest with the daemon stopped: %v, want key %s through the TPM", got, shown["key_id"])
	}
	res := add(bundle, n)
	if res.code != 0 || !strings.Contains(res.stdout, "key "+shown["key_id"]+" enrolled") || !strings.Contains(res.stdout, "ak "+got["ak_key_id"]) {
		t.Fatalf("attested add: %s\nwant key %s enrolled, pinned to ak %s", res, shown["key_id"], got["ak_key_id"])
	}
	// The same bundle and nonce again is a replay.
	if res := add(bundle, n); res.code != 1 || !strings.Contains(res.stderr, "nonce already used") {
		t.Fatalf("replayed bundle: %s", res)
	}

	// Another appliance's TPM, claiming the same device: refused by the pins, with or
	// without -replace.
	b, _ := tpmAppliance(t)
	b.stop(t)
	for _, extra := range [][]string{nil, {"-replace"}} {
		nb := issueNonce(t)
		_, other := keysAttest(t, b, nb)
		if res := add(other, nb, extra...); res.code != 1 || !strings.Contains(res.stderr, "not the pinned attestation key") {
			t.Fatalf("another TPM's bundle %v: %s", extra, res)
		}
	}

	var devs []struct {
		Site     string `json:"site"`
		Device   string `json:"device"`
		KeyID    string `json:"key_id"`
		Attested bool   `json:"attested"`
		AKKeyID  string `json:"ak_key_id"`
	}
	res = runCLI(t, "devices", "list", "-config", cfg, "-json")
	if err := json.Unmarshal([]byte(res.stdout), &devs); err != nil || res.code != 0 {
		t.Fatalf("devices list -json: %v\n%s", err, res)
	}
	if len(devs) != 1 || !devs[0].Attested || devs[0].KeyID != shown["key_id"] || devs[0].AKKeyID != got["ak_key_id"] {
		t.Fatalf("devices %+v, want one attested with key %s, ak %s", devs, shown["key_id"], got["ak_key_id"])
	}
	if res := runCLI(t, "devices", "list", "-config", cfg); !strings.Contains(res.stdout, "tpm ak "+got["ak_key_id"][:16]) {
		t.Fatalf("devices list table does not show the attestation: %s", res)
	}
	res = runCLI(t, "query", "-config", cfg, "-site", "central", "-action", "admin.key_change")
	if res.code != 0 || strings.Count(res.stdout, `"attested":"true"`) != 1 || !strings.Contains(res.stdout, got["ak_key_id"]) {
		t.Fatalf("central's trail: %s\nwant one admin.key_change attested=true naming ak %s", res, got["ak_key_id"])
	}

	// The TPM appliance's batches are stored; the other TPM's, under the same names,
	// are refused: only the first TPM's key is enrolled.
	wantBatches := regexp.MustCompile(`: (\d+) batches: (\d+) stored, 0 duplicates, 0 refused`)
	res = runCLI(t, "receive", "import", "-config", cfg, exportWire(t, a.dataDir, "-config", a.config))
	m := wantBatches.FindStringSubmatch(res.stdout)
	if res.code != 0 || m == nil || m[1] != m[2] || m[1] == "0" {
		t.Fatalf("import of the attested appliance's export: %s\nwant every batch stored", res)
	}
	res = runCLI(t, "receive", "import", "-config", cfg, exportWire(t, b.dataDir, "-config", b.config))
	if res.code != 1 || !strings.Contains(res.stdout, "0 stored") {
		t.Fatalf("import of the other TPM's export: %s\nwant it refused", res)
	}
}

// A software-key appliance has nothing a TPM can vouch for: keys attest refuses, through
// the running daemon and with it stopped, and writes no file.
func TestAttestSoftwareKeyRefused(t *testing.T) {
	d := startDaemon(t, daemonConfig{MaxAge: 200 * time.Millisecond, Extra: "keys: {tpm: off}\n"})
	out := filepath.Join(t.TempDir(), "bundle.json")
	n := strings.Repeat("ab", 32)
	for _, state := range []string{"running", "stopped"} {
		if state == "stopped" {
			d.stop(t)
		}
		res := runCLI(t, "keys", "attest", "-config", d.config, "-nonce", n, "-out", out)
		if res.code != 1 || !strings.Contains(res.stderr, "software key") {
			t.Fatalf("keys attest, daemon %s: %s\nwant exit 1 naming the software key", state, res)
		}
		if _, err := os.Stat(out); !os.IsNotExist(err) {
			t.Fatalf("daemon %s: a refused attest wrote %s (%v)", state, out, err)
		}
	}
	for _, args := range [][]string{
		{"-nonce", n},                 // no -out
		{"-out", out},                 // no -nonce
		{"-nonce", "zz", "-out", out}, // not hex
	} {
		if res := runCLI(t, append([]string{"keys", "attest", "-config", d.config}, args...)...); res.code != 2 {
			t.Fatalf("keys attest %v: %s\nwant usage exit 2", args, res)
		}
	}
}
