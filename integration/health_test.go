package integration

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/edgeaudit/edgeaudit/internal/testntp"
)

// edgeaudit health against a real daemon: exit 0 and a checklist when healthy, 1 with
// the reason when the clock cannot be checked, 2 and what to do when the daemon is not
// running; -json is the daemon's answer.
func TestHealthCommand(t *testing.T) {
	for _, tc := range []struct {
		name  string
		extra string
		code  int
		want  []string
	}{
		{"healthy", "", 0, []string{"OK   edgeaudit", "ok   chain ", "ok   listener.syslog.tcp syslog.tcp: bound to 127.0.0.1:",
			"note uplink         no uplink configured", "note clock          time sync not checked", "ok   scrub ", "ok   disk ", "ok   input "}},
		{"clock unsynced", ntpYAML(testntp.ClosedPort(t)), 1, []string{"WARN edgeaudit", "WARN clock          clock unsynced"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := startDaemon(t, daemonConfig{Extra: tc.extra})
			var res cliResult
			eventually(t, waitTimeout, func() (bool, string) {
				res = runCLI(t, "health", "-config", d.config)
				return res.code == tc.code, res.String()
			})
			for _, w := range tc.want {
				if !strings.Contains(res.stdout, w) {
					t.Errorf("health output lacks %q\n%s", w, res.stdout)
				}
			}
			js := runCLI(t, "health", "-config", d.config, "-json")
			var h struct {
				Status string `json:"status"`
				Site   string `json:"site"`
			}
			if err := json.Unmarshal([]byte(js.stdout), &h); err != nil || h.Site != testSite || js.code != tc.code {
				t.Fatalf("health -json: %+v %v\n%s", h, err, js)
			}
			d.stop(t)
			down := runCLI(t, "health", "-config", d.config)
			if down.code != 2 || !strings.Contains(down.stderr, "not running") {
				t.Fatalf("health of a stopped daemon: %s", down)
			}
		})
	}
}
