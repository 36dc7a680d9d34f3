package integration

import (
	"os"
	"testing"
)

// What a start does to the appliance is in its chain: the keys it created, the TPM it
// fell back from, the config's hash, and a config changed since the previous start.
func TestSelfAuditOfStart(t *testing.T) {
	d := startDaemon(t, daemonConfig{})
	d.stop(t)
	first := exportClinical(t, d.dataDir, true)
	count := func(evs []clinicalEvent, action string) []clinicalEvent {
		var out []clinicalEvent
		for _, e := range evs {
			if e.Action == action {
				out = append(out, e)
			}
		}
		return out
	}
	starts := count(first, "audit.start")
	if len(starts) != 1 || len(starts[0].Detail["config_sha256"]) != 64 {
		t.Fatalf("start events %+v, want one with a config_sha256", starts)
	}
	created := map[string]bool{}
	for _, e := range count(first, "audit.key_created") {
		created[e.Detail["key"]] = true
	}
	if !created["signing"] || !created["data"] {
		t.Fatalf("key_created events name %v, want signing and data", created)
	}
	if _, err := os.Stat("/dev/tpmrm0"); os.IsNotExist(err) {
		if fb := count(first, "audit.tpm_fallback"); len(fb) != 1 || fb[0].Reason == "" {
			t.Fatalf("tpm_fallback events %+v, want one with the reason (no TPM here, keys.tpm: auto)", fb)
		}
	}
	if got := count(first, "audit.config_changed"); len(got) != 0 {
		t.Fatalf("config_changed on the first start: %+v", got)
	}

	// The same config again: no change recorded, no key made.
	d.restart(t)
	d.stop(t)
	if evs := exportClinical(t, d.dataDir, true); len(count(evs, "audit.config_changed")) != 0 || len(count(evs, "audit.key_created")) != 2 {
		t.Fatalf("a restart on the same config recorded a change or made keys")
	}

	f, err := os.OpenFile(d.config, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteString("shutdown_timeout: 7s\n")
	f.Close()
	d.restart(t)
	d.stop(t)
	evs := exportClinical(t, d.dataDir, true)
	changed := count(evs, "audit.config_changed")
	if len(changed) != 1 || changed[0].Detail["previous_sha256"] != starts[0].Detail["config_sha256"] {
		t.Fatalf("config_changed events %+v, want one naming the first start's hash %s", changed, starts[0].Detail["config_sha256"])
	}
	if last := count(evs, "audit.start"); changed[0].Detail["config_sha256"] != last[len(last)-1].Detail["config_sha256"] {
		t.Fatalf("config_changed names %s, the last start ran with %s", changed[0].Detail["config_sha256"], last[len(last)-1].Detail["config_sha256"])
	}
}
