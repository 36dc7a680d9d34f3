// Package deptest guards the direction of dependencies between the project's packages
// (cmd → daemon → components → audit, ledger), as Tailscale's deptest does.
package deptest

import (
	"os/exec"
	"strings"
	"testing"
)

const mod = "github.com/edgeaudit/edgeaudit/"

// allowed lists, per package prefix, which of our packages it may import. Anything of
// ours not listed is a violation.
var allowed = map[string][]string{
	"audit":       {},
	"ledger":      {},
	"internal/":   {"internal/"},
	"attest":      {"ledger", "internal/"},
	"spool":       {"audit", "ledger", "internal/"},
	"collectors":  {"audit", "collectors", "internal/"},
	"vault":       {},
	"daemon":      {"audit", "ledger", "attest", "spool", "collectors", "vault", "uplink", "timesync", "internal/"},
	"cmd/":        {"daemon", "audit", "ledger", "attest", "spool", "vault", "collectors", "receiver", "evidence", "uplink", "internal/"},
	"integration": {"audit", "ledger", "attest", "spool", "internal/"},
	"bench":       {"audit", "ledger", "attest", "spool", "internal/"},
	// The growth harness fills a spool through the daemon's own config, keys and spool
	// options, so that what it measures is the daemon's spool; it is a tool, as cmd is.
	"bench/growth": {"daemon", "audit", "ledger", "attest", "spool", "internal/"},
	"receiver":     {"audit", "ledger", "internal/"},
	// The central side: the stores build on receiver's interfaces; central is the one
	// place there that joins concrete types (as daemon is on the appliance).
	"receiver/pgstore": {"receiver", "audit", "ledger", "internal/"},
	"receiver/central": {"receiver", "attest", "audit", "ledger", "internal/"},
	"evidence":         {"receiver", "audit", "ledger", "internal/"},
	"uplink":           {"ledger", "internal/"},
	"timesync":         {"ledger", "internal/"},
	"internal/dep":     {},
}

func TestDependencyDirection(t *testing.T) {
	out, err := exec.Command("go", "list", "-f", `{{.ImportPath}} {{join .Imports " "}}`, mod+"...").CombinedOutput()
	if err != nil {
		t.Fatalf("go list: %v\n%s", err, out)
	}
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		f := strings.Fields(line)
		pkg := strings.TrimPrefix(f[0], mod)
		rules, ok := rulesFor(pkg)
		if !ok {
			t.Errorf("%s: no dependency rule; add one to allowed", pkg)
			continue
		}
		for _, imp := range f[1:] {
			if !strings.HasPrefix(imp, mod) {
				continue
			}
			dep := strings.TrimPrefix(imp, mod)
			if !permitted(dep, rules) {
				t.Errorf("%s imports %s, which breaks the dependency direction", pkg, dep)
			}
		}
	}
}

// rulesFor picks the longest matching prefix.
func rulesFor(pkg string) ([]string, bool) {
	best, found := "", false
	for p := range allowed {
		if (pkg == p || strings.HasPrefix(pkg, strings.TrimSuffix(p, "/")+"/") || strings.HasPrefix(pkg, p) && strings.HasSuffix(p, "/")) && len(p) >= len(best) {
			best, found = p, true
		}
	}
	return allowed[best], found
}

func permitted(dep string, rules []string) bool {
	for _, r := range rules {
		if dep == strings.TrimSuffix(r, "/") || strings.HasPrefix(dep, strings.TrimSuffix(r, "/")+"/") {
			return true
		}
	}
	return false
}
