package clinical

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
)

// auditEvent is a typical R4 AuditEvent of a viewer (about 1.4 KiB of JSON): a study
// retrieved (DCM 110104 / R), with the user, the viewer as observer, the patient and the
// study.
func auditEvent(seq int) string {
	return fmt.Sprintf(`{"resourceType":"AuditEvent","id":"ev-%d",`+
		`"type":{"system":"http://dicom.nema.org/resources/ontology/DCM","code":"110104","display":"DICOM Instances Transferred"},`+
		`"action":"R","recorded":"2026-03-15T09:58:00.250+01:00","outcome":"0",`+
		`"agent":[{"type":{"coding":[{"system":"http://terminology.hl7.org/CodeSystem/extra-security-role-type","code":"humanuser","display":"human user"}]},`+
		`"who":{"identifier":{"value":"dr.house"}},"name":"Gregory House","requestor":true,"network":{"address":"192.0.2.44","type":"2"}},`+
		`{"type":{"coding":[{"system":"http://dicom.nema.org/resources/ontology/DCM","code":"110153","display":"Source Role ID"}]},`+
		`"who":{"display":"PACS1"},"requestor":false,"network":{"address":"pacs1.example","type":"1"}}],`+
		`"source":{"site":"Radiology","observer":{"display":"viewer.example.org"},"type":[{"system":"http://terminology.hl7.org/CodeSystem/security-source-type","code":"1"}]},`+
		`"entity":[{"what":{"reference":"Patient/p%d"},"type":{"system":"http://terminology.hl7.org/CodeSystem/audit-entity-type","code":"1"},"role":{"system":"http://terminology.hl7.org/CodeSystem/object-role","code":"1"}},`+
		`{"what":{"identifier":{"type":{"coding":[{"system":"http://dicom.nema.org/resources/ontology/DCM","code":"110180"}]},"value":"urn:oid:1.2.840.99.%d"}},`+
		`"type":{"system":"http://terminology.hl7.org/CodeSystem/audit-entity-type","code":"2"},"role":{"system":"http://terminology.hl7.org/CodeSystem/object-role","code":"3"}}]}`,
		seq, seq%100000, seq)
}

// client is a keep-alive HTTP client with room for every benchmark connection.
func client(conns int) *http.Client {
	return &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: conns, MaxConnsPerHost: conns, DisableCompression: true}}
}

// post sends body and returns the response body; it fails unless the status is want.
func post(c *http.Client, url string, body []byte, want int) ([]byte, error) {
	resp, err := c.Post(url, "application/fhir+json", bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	out, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != want {
		return nil, fmt.Errorf("status %d, want %d: %s", resp.StatusCode, want, out)
	}
	return out, nil
}

// BenchmarkFHIRSingle POSTs one AuditEvent per request ([base]AuditEvent) from N
// concurrent keep-alive clients; each waits for its 201 (sent after the commit).
func BenchmarkFHIRSingle(b *testing.B) {
	for _, clients := range []int{1, 16} {
		b.Run(fmt.Sprintf("clients=%d", clients), func(b *testing.B) { benchFHIRSingle(b, clients) })
	}
}

func benchFHIRSingle(b *testing.B, clients int) {
	s := startDaemon(b)
	_, addr := s.d.ClinicalAddrs()
	url := "http://" + addr.String() + "/AuditEvent"
	c := client(clients)
	defer c.CloseIdleConnections()
	bodies := make([][]byte, 1024)
	for i := range bodies {
		bodies[i] = []byte(auditEvent(i))
	}
	s.measure(b, b.N, func() {
		var next atomic.Int64
		var wg sync.WaitGroup
		errs := make(chan error, clients)
		for range clients {
			wg.Go(func() {
				for {
					i := int(next.Add(1)) - 1
					if i >= b.N {
						return
					}
					if _, err := post(c, url, bodies[i%len(bodies)], http.StatusCreated); err != nil {
						errs <- err
						return
					}
				}
			})
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			b.Fatal(err)
		}
	})
}

// BenchmarkFHIRBundle POSTs batch Bundles of 100 AuditEvents to [base] from one client;
// the 200 batch-response arrives after every entry was committed and must list 100
// "201 Created" entries. b.N counts Bundles; events/s counts AuditEvents.
func BenchmarkFHIRBundle(b *testing.B) {
	for _, clients := range []int{1, 4} {
		b.Run(fmt.Sprintf("clients=%d", clients), func(b *testing.B) { benchFHIRBundle(b, clients) })
	}
}

const bundleSize = 100

func benchFHIRBundle(b *testing.B, clients int) {
	s := startDaemon(b)
	_, addr := s.d.ClinicalAddrs()
	url := "http://" + addr.String() + "/"
	c := client(clients)
	defer c.CloseIdleConnections()
	bodies := make([][]byte, 16)
	for i := range bodies {
		var sb strings.Builder
		sb.WriteString(`{"resourceType":"Bundle","type":"batch","entry":[`)
		for j := range bundleSize {
			if j > 0 {
				sb.WriteByte(',')
			}
			sb.WriteString(`{"resource":`)
			sb.WriteString(auditEvent(i*bundleSize + j))
			sb.WriteString(`,"request":{"method":"POST","url":"AuditEvent"}}`)
		}
		sb.WriteString(`]}`)
		bodies[i] = []byte(sb.String())
	}
	s.measure(b, b.N*bundleSize, func() {
		var next atomic.Int64
		var wg sync.WaitGroup
		errs := make(chan error, clients)
		for range clients {
			wg.Go(func() {
				for {
					i := int(next.Add(1)) - 1
					if i >= b.N {
						return
					}
					out, err := post(c, url, bodies[i%len(bodies)], http.StatusOK)
					if err != nil {
						errs <- err
						return
					}
					if n := bytes.Count(out, []byte("201 Created")); n != bundleSize {
						errs <- fmt.Errorf("%d entries created, want %d", n, bundleSize)
						return
					}
				}
			})
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			b.Fatal(err)
		}
	})
}
