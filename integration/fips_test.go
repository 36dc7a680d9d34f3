package integration

import (
	"crypto/tls"
	"encoding/json"
	"fmt"
	"net"
	"path/filepath"
	"strconv"
	"testing"
	"time"
)

// The whole flow with FIPS 140-3 approved algorithms only: the appliance, `edgeaudit
// receive` and the CLI all run with GODEBUG=fips140=only, under which Go's
// cryptography refuses (or panics on) anything off the approved list, so a stray MD5,
// a short PBKDF2 salt or a GCM with caller-chosen nonces fails this test. Syslog over
// TCP and over mutual TLS, HL7 over MLLP and FHIR over HTTP go in; the batches reach
// central over mosquitto with TLS and are receipted; the spool, central's copy and the
// export verify. The spool written in FIPS mode then reads outside it.
func TestFIPSOnlyWholeFlow(t *testing.T) {
	t.Setenv("GODEBUG", "fips140=only") // inherited by every process the test starts
	c, rp := startCentralProc(t)
	ca := newPKI(t, t.TempDir(), "fips")
	mllp, fhirAddr := freeAddr(t, "tcp"), freeAddr(t, "tcp")
	mustLoopback(t, mllp)
	mustLoopback(t, fhirAddr)
	q := strconv.Quote
	d := startDaemon(t, daemonConfig{MaxAge: 200 * time.Millisecond, Prepare: c.enrolledKey(),
		TLS:   &serverTLS{Cert: ca.ServerCert, Key: ca.ServerKey, ClientCA: ca.CAFile},
		Extra: c.uplinkYAML("") + fmt.Sprintf("hl7:\n  mllp: %s\nfhir:\n  http: %s\n", q(mllp), q(fhirAddr))})

	const n = 200
	sendSyslog(t, d.tcp, "fips-tcp", 0, n, 0)
	conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", d.tls, ca.clientTLS(t, ca.ClientCert, ca.ClientKey))
	if err != nil {
		t.Fatalf("syslog TLS: %v", err)
	}
	for i := range 10 {
		msg := fmt.Sprintf("<110>1 2026-12-02T08:00:00.000Z it-host fipstest - - - fips-tls-%d", i)
		fmt.Fprintf(conn, "%d %s", len(msg), msg)
	}
	conn.Close()
	m, err := dialMLLP(mllp)
	if err != nil {
		t.Fatal(err)
	}
	ack, err := m.exchange([]byte("MSH|^~\\&|RIS|IMAGING|EDGE|SITE|20261202080000||ADT^A08^ADT_A01|FIPS1|P|2.5.1\r"+
		"EVN|A08|20261202080000\rPID|1||FIPS-MRN-1^^^HOSP^MR||DOE^JANE\r"), 20*time.Second)
	m.Close()
	if code, _, _, _ := ackMSA(ack); err != nil || code != "AA" {
		t.Fatalf("HL7 ACK %q (%v), want AA", ack, err)
	}
	body := `{"resourceType":"AuditEvent","type":{"system":"http://terminology.hl7.org/CodeSystem/audit-event-type","code":"rest"},` +
		`"subtype":[{"system":"http://hl7.org/fhir/restful-interaction","code":"read"}],"action":"R","recorded":"2026-12-02T08:00:02Z","outcome":"0",` +
		`"agent":[{"requestor":true,"who":{"identifier":{"value":"rad03"}}}],"source":{"observer":{"display":"ehr"}}}`
	if res := curlPost(t, peer(t, "curl", "CURL"), "http://"+fhirAddr+"/AuditEvent", "application/fhir+json", []byte(body)); res.status != 201 {
		t.Fatalf("FHIR POST: %d, want 201\n%s", res.status, res.body)
	}

	d.waitAllReceipted(t, n+10+2, waitTimeout)
	hj := runCLI(t, "health", "-config", d.config, "-json")
	var h struct {
		FIPS bool `json:"fips140"`
	}
	if err := json.Unmarshal([]byte(hj.stdout), &h); err != nil || !h.FIPS {
		t.Fatalf("health -json says fips140=%v (%v)\n%s", h.FIPS, err, hj)
	}
	d.stop(t)
	rp.stop(t)
	if d.done() && d.waitErr != nil {
		t.Fatalf("daemon exited with %v\n%s", d.waitErr, d.log())
	}

	res, out := verify(t, "-data", d.dataDir)
	if out.code != 0 || !res.OK || res.Events < n+12 {
		t.Fatalf("verify -data under fips140=only: %+v\n%s", res, out)
	}
	chain, seqs, events := c.storedEvents(t)
	checkExactlyOnce(t, tagged(t, events, "fips-tcp"), n)
	batches, _ := filepath.Glob(filepath.Join(c.store.Dir, testSite, testDevice, chain, "batches", "*.eab"))
	if res, out := verify(t, append([]string{"-key", d.pubKey()}, batches...)...); out.code != 0 || !res.OK || res.Batches != len(seqs) {
		t.Fatalf("verify of central's copy under fips140=only: %+v\n%s", res, out)
	}

	// Outside FIPS mode the same spool (events encrypted by the module's GCM) reads.
	t.Setenv("GODEBUG", "fips140=off")
	if res, out := verify(t, "-data", d.dataDir); out.code != 0 || !res.OK {
		t.Fatalf("verify -data outside FIPS mode of a spool written in it: %+v\n%s", res, out)
	}
}
