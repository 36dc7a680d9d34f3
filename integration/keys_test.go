package integration

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/edgeaudit/edgeaudit/internal/testtpm"
)

// keysShow runs `edgeaudit keys show -json` on a stopped daemon's config.
func keysShow(t testing.TB, d *daemon) map[string]string {
	t.Helper()
	res := runCLI(t, "keys", "show", "-config", d.config, "-json")
	if res.code != 0 {
		t.Fatalf("%s", res)
	}
	var v map[string]string
	if err := json.Unmarshal([]byte(res.stdout), &v); err != nil {
		t.Fatalf("keys show -json: %v\n%s", err, res)
	}
	return v
}

// runFails starts `edgeaudit run` on d's config and requires it to exit with status 1
// and a message containing want, without serving.
func runFails(t testing.TB, d *daemon, want string) {
	t.Helper()
	res := runCLI(t, "run", "--config", d.config)
	if res.code != 1 || !strings.Contains(res.stderr, want) {
		t.Fatalf("run with the key gone: %s\nwant exit 1 naming %q", res, want)
	}
}

// A lost signing key: the daemon refuses to start (it never makes a new key while a
// chain exists), `keys recover` makes one and records the break, and the chain then
// verifies with both keys, the break visible as audit.key_replaced.
func TestSigningKeyLostAndRecovered(t *testing.T) {
	d := startDaemon(t, daemonConfig{MaxAge: 200 * time.Millisecond, Extra: "keys: {tpm: off}\n"})
	sendSyslog(t, d.tcp, "before", 0, 100, 0)
	eventually(t, waitTimeout, func() (bool, string) {
		h := d.mustHealth(t)
		return h.Committed >= 100 && h.OpenEvents == 0, fmt.Sprintf("committed %d", h.Committed)
	})
	d.stop(t)
	old := keysShow(t, d)["key_id"]
	lastGood := mustVerifyData(t, d.dataDir).LastSeq
	if err := os.Remove(filepath.Join(d.dataDir, "keys", "signing.key")); err != nil {
		t.Fatal(err)
	}
	runFails(t, d, "keys recover")
	// Nothing was written: the chain still ends where the old key left it.
	if got := mustVerifyData(t, d.dataDir).LastSeq; got != lastGood {
		t.Fatalf("a refused start changed the chain: last seq %d, was %d", got, lastGood)
	}
	if res := runCLI(t, "keys", "recover", "-config", d.config); res.code != 2 {
		t.Fatalf("recover without -reason: %s", res)
	}
	res := runCLI(t, "keys", "recover", "-config", d.config, "-reason", "disk replaced, key not in backup", "-json")
	if res.code != 0 {
		t.Fatalf("%s", res)
	}
	var rec struct {
		OldKeyID, NewKeyID string
		LastGoodSeq        uint64
	}
	if err := json.Unmarshal([]byte(res.stdout), &rec); err != nil {
		t.Fatal(err)
	}
	if rec.OldKeyID != old || rec.NewKeyID == old || rec.LastGoodSeq != lastGood {
		t.Fatalf("recover %+v, want old %s, a new key, last good seq %d", rec, old, lastGood)
	}
	// A second recover finds the key and refuses.
	if res := runCLI(t, "keys", "recover", "-config", d.config, "-reason", "again"); res.code != 1 || !strings.Contains(res.stderr, "nothing to recover") {
		t.Fatalf("second recover: %s", res)
	}
	d.restart(t)
	sendSyslog(t, d.tcp, "after", 0, 50, 0)
	eventually(t, waitTimeout, func() (bool, string) {
		h := d.mustHealth(t)
		return h.Committed >= 50 && h.OpenEvents == 0, fmt.Sprintf("committed %d", h.Committed)
	})
	d.stop(t)
	// verify -data trusts the new key and the one it replaced (kept beside it).
	v := mustVerifyData(t, d.dataDir)
	if v.LastSeq <= lastGood {
		t.Fatalf("chain ends at %d after the recovery, want beyond %d", v.LastSeq, lastGood)
	}
	if _, out := verify(t, "-data", d.dataDir, "-key", d.pubKey()); out.code != 1 {
		t.Fatalf("the new key alone verified the old key's batches: %s", out)
	}
	var breaks int
	for _, e := range exportEvents(t, d.dataDir, false) {
		if e.Action == "audit.key_replaced" {
			breaks++
			if e.Detail["old_key_id"] != old || e.Detail["last_good_seq"] != strconv.FormatUint(lastGood, 10) {
				t.Errorf("break event detail %v", e.Detail)
			}
		}
	}
	if breaks != 1 {
		t.Fatalf("%d audit.key_replaced events, want 1", breaks)
	}
}

// TPM-bound keys on a real swtpm: the daemon signs with a key the TPM holds (no key file
// in the data folder, the data key sealed), the same key after restarting swtpm and the
// daemon, and the chain verifies with it. Deleting the key blob stops the daemon; the
// recovery makes a new TPM key and records the break.
func TestTPMKeysDaemon(t *testing.T) {
	tpm := testtpm.Start(t)
	keys := fmt.Sprintf("keys: {tpm: require, tpm_device: %s}\n", strconv.Quote(tpm.Spec))
	d := startDaemon(t, daemonConfig{MaxAge: 200 * time.Millisecond, Extra: keys})
	sendSyslog(t, d.tcp, "tpm", 0, 100, 0)
	eventually(t, waitTimeout, func() (bool, string) {
		h := d.mustHealth(t)
		return h.Committed >= 100 && h.OpenEvents == 0, fmt.Sprintf("committed %d", h.Committed)
	})
	d.stop(t)
	for _, f := range []string{"signing.key", "data.key"} {
		if _, err := os.Stat(filepath.Join(d.dataDir, "keys", f)); err == nil {
			t.Errorf("keys/%s exists: with a TPM no key is in a file", f)
		}
	}
	shown := keysShow(t, d)
	if shown["signer"] != "tpm" {
		t.Fatalf("keys show %v, want a tpm signer", shown)
	}
	first := mustVerifyData(t, d.dataDir, "-config", d.config)

	tpm.Restart()
	d.restart(t)
	sendSyslog(t, d.tcp, "tpm2", 0, 50, 0)
	eventually(t, waitTimeout, func() (bool, string) {
		h := d.mustHealth(t)
		return h.Committed >= 50 && h.OpenEvents == 0, fmt.Sprintf("committed %d", h.Committed)
	})
	d.stop(t)
	if got := keysShow(t, d)["key_id"]; got != shown["key_id"] {
		t.Fatalf("key after the swtpm restart %s, want the same %s", got, shown["key_id"])
	}
	if v := mustVerifyData(t, d.dataDir, "-config", d.config); v.LastSeq <= first.LastSeq {
		t.Fatalf("chain did not continue after the restart: %d then %d", first.LastSeq, v.LastSeq)
	}

	// The TPM blob is deleted: no start, and no new key unannounced.
	if err := os.Remove(filepath.Join(d.dataDir, "keys", "tpm", "signing.tpmkey")); err != nil {
		t.Fatal(err)
	}
	runFails(t, d, "missing")
	res := runCLI(t, "keys", "recover", "-config", d.config, "-reason", "TPM blob lost")
	if res.code != 0 {
		t.Fatalf("%s", res)
	}
	if got := keysShow(t, d); got["signer"] != "tpm" || got["key_id"] == shown["key_id"] {
		t.Fatalf("after recover %v, want a new tpm key", got)
	}
	mustVerifyData(t, d.dataDir, "-config", d.config)
}

// keys.tpm: auto without a TPM: software keys, and both health and the chain say why.
func TestTPMAutoFallsBack(t *testing.T) {
	keys := fmt.Sprintf("keys: {tpm: auto, tpm_device: %s}\n", strconv.Quote("tcp://"+freeAddr(t, "tcp")))
	d := startDaemon(t, daemonConfig{MaxAge: 200 * time.Millisecond, Extra: keys})
	h := d.mustHealth(t)
	var warned bool
	for _, w := range h.Warnings {
		warned = warned || strings.Contains(w, "no TPM at")
	}
	if !warned {
		t.Fatalf("health warnings %q, want the missing TPM named", h.Warnings)
	}
	d.stop(t)
	var said bool
	for _, e := range exportEvents(t, d.dataDir, true) {
		if e.Action == "audit.start" && strings.Contains(e.Detail["software_key_why"], "no TPM at") {
			said = true
		}
	}
	if !said {
		t.Fatal("the start event does not say why the key is a software key")
	}
}
