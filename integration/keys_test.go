package integration

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/edgeaudit/edgeaudit/attest"
	"github.com/edgeaudit/edgeaudit/internal/testtpm"
	"github.com/edgeaudit/edgeaudit/ledger"
	"github.com/edgeaudit/edgeaudit/receiver"
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

	// Central accepts the chain across the break: the old key's part with the old key
	// enrolled, then, once the operator enrols the new key, the new part, linked to the
	// stored head.
	cdir := t.TempDir()
	store := receiver.FolderStore{Dir: filepath.Join(cdir, "store")}
	keysDir := filepath.Join(cdir, "devices")
	enrol := func(pub []byte) {
		t.Helper()
		if err := os.MkdirAll(filepath.Join(keysDir, testSite), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(keysDir, testSite, testDevice+".pub"), pub, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	csigner, _, err := attest.LoadOrCreateSoftware(filepath.Join(cdir, "central.key"))
	if err != nil {
		t.Fatal(err)
	}
	r, err := receiver.New(receiver.Config{Quarantine: filepath.Join(cdir, "q")}, store, receiver.FolderKeys{Dir: keysDir}, csigner, nil)
	if err != nil {
		t.Fatal(err)
	}
	// importFrom returns the import's result and the last seq of the file: every export
	// (and the failed verify above) is recorded in the chain, which so grows past v.LastSeq.
	importFrom := func(from uint64) (receiver.ImportResult, uint64) {
		t.Helper()
		out := filepath.Join(t.TempDir(), "part.eab")
		if res := runCLI(t, "export", "-data", d.dataDir, "-out", out, "-from", strconv.FormatUint(from, 10)); res.code != 0 {
			t.Fatalf("%s", res)
		}
		bs := readWireFrom(t, out)
		h, err := ledger.ParseHeader(bs[len(bs)-1].Header)
		if err != nil {
			t.Fatal(err)
		}
		f, err := os.Open(out)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		ir, err := r.Import(t.Context(), f)
		if err != nil {
			t.Fatal(err)
		}
		return ir, h.Seq
	}
	oldPub, err := os.ReadFile(filepath.Join(d.dataDir, "keys", "signing-"+old[:16]+".pub"))
	if err != nil {
		t.Fatal(err)
	}
	enrol(oldPub)
	if ir, last := importFrom(1); len(ir.Refused) != int(last-lastGood) {
		t.Fatalf("with the old key enrolled: %d refused, want the %d batches the new key signed", len(ir.Refused), last-lastGood)
	}
	newPub, err := os.ReadFile(d.pubKey())
	if err != nil {
		t.Fatal(err)
	}
	enrol(newPub) // edgeaudit devices add -replace
	ir, last := importFrom(lastGood + 1)
	if len(ir.Refused) != 0 {
		t.Fatalf("the new key's part: %v", ir.Refused)
	}
	if h, err := store.Head(t.Context(), testSite, testDevice); err != nil || h.Seq != last {
		t.Fatalf("central head %+v %v, want seq %d", h, err, last)
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

// The data key is sealed to a PCR; the PCR changes (as after a firmware update): the
// daemon refuses to start and names the way out; `keys recover -data-key` seals a new
// data key, the chain records it, the signing key stays, and patient tokens differ from
// then on.
func TestTPMDataKeyPCRChange(t *testing.T) {
	tpm := testtpm.Start(t)
	keys := fmt.Sprintf("keys: {tpm: require, tpm_device: %s, pcrs: [23]}\n", strconv.Quote(tpm.Spec))
	d := startDaemon(t, daemonConfig{MaxAge: 200 * time.Millisecond, Extra: keys})
	send := func(tag string) {
		t.Helper()
		sendSyslog(t, d.tcp, tag, 0, 1, 0)
		eventually(t, waitTimeout, func() (bool, string) {
			h := d.mustHealth(t)
			return h.Committed >= 1 && h.OpenEvents == 0, fmt.Sprintf("committed %d open %d", h.Committed, h.OpenEvents)
		})
	}
	// The same labelled MRN before and after: its token shows which data key made it.
	sendMRN := func() {
		t.Helper()
		conn := dial(t, "tcp", d.tcp)
		msg := "<110>1 2026-12-01T08:00:00.000Z it-host pacs - - - viewed patient MRN: M7654321"
		fmt.Fprintf(conn, "%d %s", len(msg), msg)
		conn.Close()
	}
	sendMRN()
	send("before")
	d.stop(t)
	kid := keysShow(t, d)["key_id"]
	// The token under the data key sealed at the start.
	tokenOf := func(events []event) string {
		for _, e := range events {
			if strings.Contains(e.Message, "viewed patient") {
				return e.Patient
			}
		}
		return ""
	}
	tokens := []string{tokenOf(exportEvents(t, d.dataDir, false, "-config", d.config))}

	cmd := exec.Command("tpm2_pcrextend", "23:sha256="+strings.Repeat("ab", 32))
	cmd.Env = append(os.Environ(), "TPM2TOOLS_TCTI="+tpm.TCTI())
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("tpm2_pcrextend: %v\n%s", err, out)
	}
	runFails(t, d, "keys recover -data-key")
	if res := runCLI(t, "keys", "recover", "-config", d.config, "-reason", "BIOS update", "-data-key"); res.code != 0 {
		t.Fatalf("%s", res)
	}
	if res := runCLI(t, "keys", "recover", "-config", d.config, "-reason", "again", "-data-key"); res.code != 1 || !strings.Contains(res.stderr, "nothing to recover") {
		t.Fatalf("second recover -data-key: %s", res)
	}
	// The spool's events were encrypted under the lost data key: that spool is kept
	// aside (quarantined) and the chain starts anew, naming it.
	if q, _ := filepath.Glob(filepath.Join(d.dataDir, "spool.db.quarantine-*")); len(q) != 1 {
		t.Fatalf("quarantined spools %v, want the one encrypted under the lost key", q)
	}
	d.restart(t)
	sendMRN()
	send("after")
	d.stop(t)
	if got := keysShow(t, d)["key_id"]; got != kid {
		t.Fatalf("signing key changed: %s, was %s", got, kid)
	}
	mustVerifyData(t, d.dataDir, "-config", d.config)
	events := exportEvents(t, d.dataDir, false, "-config", d.config)
	tokens = append(tokens, tokenOf(events))
	var replaced, quarantined int
	for _, e := range events {
		switch e.Action {
		case "audit.data_key_replaced":
			replaced++
		case "audit.spool_quarantined":
			quarantined++
		}
	}
	if replaced != 1 || quarantined != 1 {
		t.Fatalf("%d audit.data_key_replaced and %d audit.spool_quarantined events, want 1 and 1", replaced, quarantined)
	}
	if tokens[0] == "" || tokens[1] == "" || tokens[0] == tokens[1] {
		t.Fatalf("patient tokens before and after %q: want two different tokens", tokens)
	}
	for _, tok := range tokens {
		if strings.Contains(tok, "7654321") {
			t.Fatalf("token %q holds the identifier", tok)
		}
	}
}

// Key rotation end to end: the appliance rotates (software, then on a real swtpm), the
// old key signs the rotation, `verify` trusting only the old key follows it, and central
// (the real receiver over mosquitto) enrols the new key from the rotation batch and
// stores what the new key signs, every message once.
func TestKeyRotationFollowed(t *testing.T) {
	tpm := testtpm.Start(t)
	for _, tc := range []struct{ name, keys string }{
		{"software", "keys: {tpm: off}\n"},
		{"tpm", fmt.Sprintf("keys: {tpm: require, tpm_device: %s}\n", strconv.Quote(tpm.Spec))},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := startCentral(t)
			d := startDaemon(t, daemonConfig{MaxAge: 200 * time.Millisecond, Extra: c.uplinkYAML("") + tc.keys})
			// Enrol the key the daemon made (its first batches wait for it).
			pub, err := os.ReadFile(d.pubKey())
			if err != nil {
				t.Fatal(err)
			}
			if err := os.MkdirAll(filepath.Join(c.keys, testSite), 0o700); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(c.keys, testSite, testDevice+".pub"), pub, 0o600); err != nil {
				t.Fatal(err)
			}
			sendSyslog(t, d.tcp, "rot1", 0, 100, 0)
			d.waitAllReceipted(t, 100, waitTimeout)
			d.stop(t)
			old := keysShow(t, d)["key_id"]
			oldPub := filepath.Join(t.TempDir(), "old.pub")
			if err := os.WriteFile(oldPub, pub, 0o600); err != nil {
				t.Fatal(err)
			}
			res := runCLI(t, "keys", "rotate", "-config", d.config, "-reason", "yearly rotation")
			if res.code != 0 {
				t.Fatalf("%s", res)
			}
			if now := keysShow(t, d); now["key_id"] == old || now["signer"] != tc.name {
				t.Fatalf("after rotate %v, want a new %s key", now, tc.name)
			}
			d.restart(t)
			sendSyslog(t, d.tcp, "rot2", 0, 100, 0)
			d.waitAllReceipted(t, 100, waitTimeout)
			d.stop(t)
			// Only the old key trusted: verify follows the rotation to the new one.
			if v, out := verify(t, "-data", d.dataDir, "-config", d.config, "-key", oldPub); out.code != 0 || !v.OK {
				t.Fatalf("verify trusting only the old key: %s", out)
			}
			// Central followed: the enrolled key is the new one, the old one kept beside.
			enrolled, err := os.ReadFile(filepath.Join(c.keys, testSite, testDevice+".pub"))
			if err != nil {
				t.Fatal(err)
			}
			cur, err := os.ReadFile(d.pubKey())
			if err != nil {
				t.Fatal(err)
			}
			if string(enrolled) != string(cur) {
				t.Fatal("central's enrolled key is not the rotated one")
			}
			_, _, events := c.storedEvents(t)
			checkExactlyOnce(t, tagged(t, events, "rot2"), 100)
		})
	}
}
