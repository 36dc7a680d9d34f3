package integration

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"testing"

	"github.com/edgeaudit/edgeaudit/internal/testntp"
)

// Every metric the daemon exports is on docs/metrics.md, so that the names monitoring
// keys on are documented: a daemon with every listener, an uplink and a clock check,
// after a rejected frame (the per-reason counters exist only once used).
func TestMetricsDocumented(t *testing.T) {
	doc, err := os.ReadFile(filepath.Join("..", "docs", "metrics.md"))
	if err != nil {
		t.Fatal(err)
	}
	c := startCentral(t)
	ca := newPKI(t, t.TempDir(), "metrics")
	mllp, fhirAddr := freeAddr(t, "tcp"), freeAddr(t, "tcp")
	for _, a := range []string{mllp, fhirAddr} {
		mustLoopback(t, a)
	}
	q := strconv.Quote
	d := startDaemon(t, daemonConfig{UDP: true, RELP: true, TLS: &serverTLS{Cert: ca.ServerCert, Key: ca.ServerKey}, Prepare: c.enrolledKey(),
		Extra: c.uplinkYAML("") + ntpYAML(testntp.ClosedPort(t)) + fmt.Sprintf("hl7:\n  mllp: %s\nfhir:\n  http: %s\n", q(mllp), q(fhirAddr))})
	// A broken octet count: rejected, so edgeaudit_input_rejected_total has a series.
	conn := dialTCP(t, d.tcp)
	conn.Write([]byte("12x <13>1 - - - - - - broken\n"))
	conn.Close()
	eventually(t, waitTimeout, func() (bool, string) {
		m := d.metrics(t)
		return m.sum("edgeaudit_input_rejected_total") > 0, "no rejection counted yet"
	})
	b, err := d.get(t.Context(), "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	names := map[string]bool{}
	for _, m := range regexp.MustCompile(`(?m)^# TYPE (edgeaudit_[a-z0-9_]+) `).FindAllSubmatch(b, -1) {
		names[string(m[1])] = true
	}
	var missing []string
	for n := range names {
		if !strings.Contains(string(doc), "`"+n+"`") {
			missing = append(missing, n)
		}
	}
	sort.Strings(missing)
	if len(missing) > 0 {
		t.Fatalf("metrics not on docs/metrics.md: %v", missing)
	}
	if len(names) < 60 {
		t.Fatalf("only %d edgeaudit_ metrics scraped; the scrape is not what this test thinks", len(names))
	}
}
