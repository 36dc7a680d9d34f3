package fhir

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
)

const loginJSON = `{"resourceType":"AuditEvent","type":{"system":"http://dicom.nema.org/resources/ontology/DCM","code":"110114"},"subtype":[{"system":"http://dicom.nema.org/resources/ontology/DCM","code":"110122"}],"action":"E","recorded":"2026-03-15T09:00:00Z","outcome":"0","agent":[{"who":{"identifier":{"value":"u1"}},"requestor":true}],"source":{"observer":{"display":"app"}}}`

func newPost(t testing.TB, url, ct, body string) *http.Request {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), http.MethodPost, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", ct)
	return req
}

// TestCreatedAfterCommit checks over a real socket that the 201 and its Location are
// sent only after the sink's commit callback ran.
func TestCreatedAfterCommit(t *testing.T) {
	hold := make(chan struct{})
	sink := &fakeSink{hold: hold}
	c := newTestCollector(t, Config{HTTP: "127.0.0.1:0"}, sink, &fakeReporter{})
	startCollector(t, c)

	type result struct {
		resp *http.Response
		err  error
	}
	done := make(chan result, 1)
	go func() {
		resp, err := http.DefaultClient.Do(newPost(t, "http://"+c.Addr().String()+"/AuditEvent", "application/fhir+json", loginJSON))
		if err == nil {
			sink.record("response")
		}
		done <- result{resp, err}
	}()
	deadline := time.Now().Add(5 * time.Second)
	for {
		sink.mu.Lock()
		n := sink.n
		sink.mu.Unlock()
		if n == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("event never appended")
		}
		time.Sleep(time.Millisecond)
	}
	select {
	case r := <-done:
		t.Fatalf("response before commit: %v %v", r.resp, r.err)
	case <-time.After(100 * time.Millisecond):
	}
	close(hold)
	r := <-done
	if r.err != nil {
		t.Fatal(r.err)
	}
	defer r.resp.Body.Close()
	mustStatus(t, r.resp, http.StatusCreated)
	id := strings.Repeat("0", 31) + "1"
	if got, want := r.resp.Header.Get("Location"), "/AuditEvent/"+id; got != want {
		t.Fatalf("Location=%q, want %q", got, want)
	}
	if got, want := strings.Join(sink.logLines(), ","), "commit "+id+",response"; got != want {
		t.Fatalf("order=%q, want %q", got, want)
	}
	if got := c.Stats().Events; got != 1 {
		t.Fatalf("Stats.Events=%d, want 1", got)
	}
}

// TestSinkRefuses503: a single AuditEvent or a transaction that the sink refuses gets
// 503 + Retry-After and an OperationOutcome (a batch is answered per entry, see
// TestBatchPerEntry).
func TestSinkRefuses503(t *testing.T) {
	sink := &fakeSink{refuseAll: true}
	rep := &fakeReporter{}
	c := newTestCollector(t, Config{}, sink, rep)
	for _, tt := range []struct {
		name, path, body string
	}{
		{"single", "/AuditEvent", loginJSON},
		{"transaction", "/", `{"resourceType":"Bundle","type":"transaction","entry":[{"resource":` + loginJSON + `,"request":{"method":"POST","url":"AuditEvent"}},{"resource":` + loginJSON + `}]}`},
	} {
		t.Run(tt.name, func(t *testing.T) {
			rec := post(t, c.Handler(), tt.path, "application/fhir+json", []byte(tt.body))
			if got, want := rec.Code, http.StatusServiceUnavailable; got != want {
				t.Fatalf("status=%d, want %d", got, want)
			}
			if got := rec.Header().Get("Retry-After"); got != "5" {
				t.Fatalf("Retry-After=%q, want 5", got)
			}
			if !strings.Contains(rec.Body.String(), `"OperationOutcome"`) || rec.Header().Get("Location") != "" {
				t.Fatalf("body=%s location=%q", rec.Body, rec.Header().Get("Location"))
			}
		})
	}
	if got := c.Stats().Unavailable; got != 3 {
		t.Fatalf("Stats.Unavailable=%d, want 3", got)
	}
	if n := len(rep.get()); n != 0 {
		t.Fatalf("%d rejects reported for 503s (the sender retries; nothing is lost)", n)
	}
}

func TestBodyLimit413(t *testing.T) {
	rep := &fakeReporter{}
	c := newTestCollector(t, Config{MaxBodyBytes: MinMaxBodyBytes}, &fakeSink{}, rep)
	big := `{"resourceType":"AuditEvent","id":"` + strings.Repeat("x", MinMaxBodyBytes) + `"}`
	// With a Content-Length: refused before reading.
	rec := post(t, c.Handler(), "/AuditEvent", "application/fhir+json", []byte(big))
	if rec.Code != http.StatusRequestEntityTooLarge {
		t.Fatalf("status=%d, want 413", rec.Code)
	}
	// Chunked, without a length: refused when the limit is crossed.
	req := httptest.NewRequest(http.MethodPost, "/AuditEvent", io.MultiReader(strings.NewReader(big)))
	req.ContentLength = -1
	req.Header.Set("Content-Type", "application/fhir+json")
	rr := httptest.NewRecorder()
	c.Handler().ServeHTTP(rr, req)
	if rr.Code != http.StatusRequestEntityTooLarge || !strings.Contains(rr.Body.String(), "too-long") {
		t.Fatalf("status=%d body=%s, want 413 too-long", rr.Code, rr.Body)
	}
	rj := rep.get()
	if len(rj) != 2 || rj[0].Reason != ReasonTooLarge || rj[1].Reason != ReasonTooLarge || rj[1].Size != MinMaxBodyBytes {
		t.Fatalf("rejects=%+v", rj)
	}
}

func TestBearerToken(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "tokens")
	if err := os.WriteFile(path, []byte("# feeders\nsecret-one\n\n  secret-two  \n"), 0o600); err != nil {
		t.Fatal(err)
	}
	rep := &fakeReporter{}
	c := newTestCollector(t, Config{HTTP: "127.0.0.1:0", BearerTokensFile: path}, &fakeSink{}, rep)
	startCollector(t, c)
	url := "http://" + c.Addr().String() + "/AuditEvent"
	for _, tt := range []struct {
		name, auth string
		want       int
	}{
		{"none", "", http.StatusUnauthorized},
		{"wrong", "Bearer secret-three", http.StatusUnauthorized},
		{"basic", "Basic c2VjcmV0LW9uZQ==", http.StatusUnauthorized},
		{"prefix", "Bearer secret-on", http.StatusUnauthorized},
		{"first", "Bearer secret-one", http.StatusCreated},
		{"second", "bearer secret-two", http.StatusCreated},
	} {
		t.Run(tt.name, func(t *testing.T) {
			req := newPost(t, url, "application/fhir+json", loginJSON)
			if tt.auth != "" {
				req.Header.Set("Authorization", tt.auth)
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			mustStatus(t, resp, tt.want)
			if tt.want == http.StatusUnauthorized && !strings.HasPrefix(resp.Header.Get("WWW-Authenticate"), "Bearer") {
				t.Fatalf("WWW-Authenticate=%q", resp.Header.Get("WWW-Authenticate"))
			}
		})
	}
	if got := c.Stats().Rejects[ReasonUnauthorized]; got != 4 {
		t.Fatalf("unauthorized rejects=%d, want 4", got)
	}
}

func TestMethodsMediaTypesAndPaths(t *testing.T) {
	c := newTestCollector(t, Config{BasePath: "/fhir/"}, &fakeSink{}, &fakeReporter{})
	h := c.Handler()
	for _, tt := range []struct {
		name, method, path, ct, accept, body string
		want                                 int
		reason                               string
		xmlResp                              bool
	}{
		{"get", http.MethodGet, "/fhir/AuditEvent", "", "", "", 405, ReasonMethodNotAllowed, false},
		{"get xml", http.MethodGet, "/fhir/AuditEvent/1", "", "application/fhir+xml", "", 405, ReasonMethodNotAllowed, true},
		{"put", http.MethodPut, "/fhir/AuditEvent/1", "application/fhir+json", "", loginJSON, 405, ReasonMethodNotAllowed, false},
		{"delete", http.MethodDelete, "/fhir/AuditEvent/1", "", "", "", 405, ReasonMethodNotAllowed, false},
		{"outside base", http.MethodPost, "/AuditEvent", "application/fhir+json", "", loginJSON, 404, ReasonNotFound, false},
		{"other type", http.MethodPost, "/fhir/Patient", "application/fhir+json", "", loginJSON, 404, ReasonNotFound, false},
		{"text/plain", http.MethodPost, "/fhir/AuditEvent", "text/plain", "", loginJSON, 415, ReasonUnsupportedMediaType, false},
		{"no content type", http.MethodPost, "/fhir/AuditEvent", "", "", loginJSON, 415, ReasonUnsupportedMediaType, false},
		{"json with params", http.MethodPost, "/fhir/AuditEvent", "application/json; charset=utf-8; fhirVersion=4.0", "", loginJSON, 201, "", false},
		{"json in, xml out", http.MethodPost, "/fhir/AuditEvent", "application/fhir+json", "application/fhir+xml", loginJSON, 201, "", true},
		{"AuditEvent to base", http.MethodPost, "/fhir/", "application/fhir+json", "", loginJSON, 400, ReasonWrongResourceType, false},
		{"searchset", http.MethodPost, "/fhir/", "application/fhir+json", "", `{"resourceType":"Bundle","type":"searchset"}`, 400, ReasonUnsupportedBundle, false},
		{"array", http.MethodPost, "/fhir/AuditEvent", "application/fhir+json", "", `[]`, 400, ReasonBadJSON, false},
		{"trailing", http.MethodPost, "/fhir/AuditEvent", "application/fhir+json", "", loginJSON + `{}`, 400, ReasonBadJSON, false},
		{"xml not fhir ns", http.MethodPost, "/fhir/AuditEvent", "application/fhir+xml", "", `<AuditEvent xmlns="urn:x"/>`, 400, ReasonBadXML, true},
		{"xml latin1", http.MethodPost, "/fhir/AuditEvent", "application/xml", "", `<?xml version="1.0" encoding="ISO-8859-1"?><AuditEvent xmlns="http://hl7.org/fhir"/>`, 400, ReasonBadXML, true},
		{"xml entity", http.MethodPost, "/fhir/AuditEvent", "application/xml", "", `<AuditEvent xmlns="http://hl7.org/fhir"><id value="&nbsp;"/></AuditEvent>`, 400, ReasonBadXML, true},
		{"xml wrong type", http.MethodPost, "/fhir/AuditEvent", "application/xml", "", `<Patient xmlns="http://hl7.org/fhir"/>`, 400, ReasonWrongResourceType, true},
		{"xml invalid utf8", http.MethodPost, "/fhir/AuditEvent", "application/xml", "", "<AuditEvent xmlns=\"http://hl7.org/fhir\"><id value=\"\xe9\"/></AuditEvent>", 400, ReasonInvalidUTF8, true},
		{"xml deep", http.MethodPost, "/fhir/AuditEvent", "application/xml", "", `<AuditEvent xmlns="http://hl7.org/fhir">` + strings.Repeat("<a>", 100) + strings.Repeat("</a>", 100) + `</AuditEvent>`, 400, ReasonBadXML, true},
		{"json deep", http.MethodPost, "/fhir/AuditEvent", "application/json", "", `{"resourceType":"AuditEvent","a":` + strings.Repeat(`{"a":`, 100) + `1` + strings.Repeat(`}`, 101), 400, ReasonBadJSON, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			req := httptest.NewRequest(tt.method, tt.path, strings.NewReader(tt.body))
			if tt.ct != "" {
				req.Header.Set("Content-Type", tt.ct)
			}
			if tt.accept != "" {
				req.Header.Set("Accept", tt.accept)
			}
			before := c.Stats().Rejects
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, req)
			if rec.Code != tt.want {
				t.Fatalf("status=%d, want %d: %s", rec.Code, tt.want, rec.Body)
			}
			ct := rec.Header().Get("Content-Type")
			if got := strings.HasPrefix(ct, "application/fhir+xml"); got != tt.xmlResp {
				t.Fatalf("Content-Type=%q, want xml=%v", ct, tt.xmlResp)
			}
			if tt.want == 405 && rec.Header().Get("Allow") != http.MethodPost {
				t.Fatalf("Allow=%q", rec.Header().Get("Allow"))
			}
			if tt.reason != "" {
				if got := c.Stats().Rejects[tt.reason] - before[tt.reason]; got != 1 {
					t.Fatalf("%s rejects +%d, want +1", tt.reason, got)
				}
				if !strings.Contains(rec.Body.String(), "OperationOutcome") {
					t.Fatalf("no OperationOutcome: %s", rec.Body)
				}
			}
		})
	}
}

// TestLifecycle runs, serves and stops the collector and checks that nothing is left
// running.
func TestLifecycle(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	sink := &fakeSink{}
	c, err := New(Config{HTTP: "127.0.0.1:0"}, sink, &fakeReporter{}, testTokenizer(t), nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- c.Run(ctx) }()
	<-c.Ready()
	tr := &http.Transport{}
	cl := &http.Client{Transport: tr}
	resp, err := cl.Do(newPost(t, "http://"+c.Addr().String()+"/AuditEvent", "application/fhir+json", loginJSON))
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	mustStatus(t, resp, http.StatusCreated)
	cancel()
	select {
	case err := <-errc:
		if err != nil {
			t.Fatalf("Run: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return")
	}
	tr.CloseIdleConnections()
	if err := c.Run(context.Background()); err == nil {
		t.Fatal("second Run succeeded")
	}
	if _, err := net.Dial("tcp", c.Addr().String()); err == nil {
		t.Fatal("listener still open after Run returned")
	}
	sink.raw()
}

func TestBindError(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	c := newTestCollector(t, Config{HTTP: ln.Addr().String()}, &fakeSink{}, &fakeReporter{})
	err = c.Run(t.Context())
	if err == nil || !strings.Contains(err.Error(), "fhir.http") {
		t.Fatalf("Run=%v, want a bind error naming fhir.http", err)
	}
}

// pki writes a CA, a server certificate for 127.0.0.1 and a client certificate.
type pki struct {
	dir                   string
	caPEM                 []byte
	client                tls.Certificate
	serverCert, serverKey string
}

func newPKI(t testing.TB) *pki {
	t.Helper()
	dir := t.TempDir()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test ca"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	issue := func(cn string, usage x509.ExtKeyUsage, ip bool) ([]byte, []byte) {
		k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		tmpl := &x509.Certificate{
			SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: cn},
			NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
			KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{usage},
		}
		if ip {
			tmpl.IPAddresses = []net.IP{net.IPv4(127, 0, 0, 1)}
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &k.PublicKey, caKey)
		if err != nil {
			t.Fatal(err)
		}
		kb, _ := x509.MarshalECPrivateKey(k)
		return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb})
	}
	p := &pki{dir: dir, caPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER})}
	sc, sk := issue("server", x509.ExtKeyUsageServerAuth, true)
	p.serverCert, p.serverKey = filepath.Join(dir, "server.pem"), filepath.Join(dir, "server.key")
	for name, b := range map[string][]byte{p.serverCert: sc, p.serverKey: sk, filepath.Join(dir, "ca.pem"): p.caPEM} {
		if err := os.WriteFile(name, b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	cc, ck := issue("client", x509.ExtKeyUsageClientAuth, false)
	if p.client, err = tls.X509KeyPair(cc, ck); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestMutualTLS(t *testing.T) {
	p := newPKI(t)
	sink := &fakeSink{}
	rep := &fakeReporter{}
	c := newTestCollector(t, Config{HTTP: "127.0.0.1:0", TLSCert: p.serverCert, TLSKey: p.serverKey,
		TLSClientCA: filepath.Join(p.dir, "ca.pem")}, sink, rep)
	startCollector(t, c)
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(p.caPEM)
	url := "https://" + c.Addr().String() + "/AuditEvent"

	noCert := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots}}}
	resp, err := noCert.Do(newPost(t, url, "application/fhir+json", loginJSON))
	if err == nil {
		resp.Body.Close()
		t.Fatalf("client without certificate got status %d", resp.StatusCode)
	}
	deadline := time.Now().Add(5 * time.Second)
	for c.Stats().Rejects[ReasonTLSHandshake] == 0 {
		if time.Now().After(deadline) {
			t.Fatal("failed handshake not reported")
		}
		time.Sleep(time.Millisecond)
	}
	if rj := rep.get(); len(rj) != 1 || rj[0].Reason != ReasonTLSHandshake || rj[0].Transport != "https" {
		t.Fatalf("rejects=%+v", rj)
	}

	withCert := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots, Certificates: []tls.Certificate{p.client}}}}
	resp, err = withCert.Do(newPost(t, url, "application/fhir+json", loginJSON))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	mustStatus(t, resp, http.StatusCreated)
	withCert.CloseIdleConnections()
	raw := sink.raw()
	if len(raw) != 1 || !bytes.Contains(raw[0], []byte(`"transport":"https"`)) {
		t.Fatalf("events=%s", raw)
	}
}

func TestConfigValidate(t *testing.T) {
	for _, tt := range []struct {
		name  string
		cfg   Config
		field string
	}{
		{"bad addr", Config{HTTP: "localhost"}, "fhir.http"},
		{"bad port", Config{HTTP: "127.0.0.1:http"}, "fhir.http"},
		{"cert without key", Config{TLSCert: "a.pem"}, "fhir.tls_key"},
		{"key without cert", Config{TLSKey: "a.key"}, "fhir.tls_cert"},
		{"client ca without tls", Config{TLSClientCA: "ca.pem"}, "fhir.tls_client_ca"},
		{"body too small", Config{MaxBodyBytes: 100}, "fhir.max_body_bytes"},
		{"negative timeout", Config{ReadTimeout: -time.Second}, "fhir.read_timeout"},
		{"base path", Config{BasePath: "/fhir"}, "fhir.base_path"},
		{"budget below body", Config{MaxBodyBytes: 8 << 20, MaxInflightBytes: 4 << 20}, "fhir.max_inflight_bytes"},
		{"budget too big", Config{MaxInflightBytes: 2 << 30}, "fhir.max_inflight_bytes"},
		{"no connections", Config{MaxConnections: -1}, "fhir.max_connections"},
		{"per ip over max", Config{MaxConnections: 4, MaxConnectionsPerIP: 5}, "fhir.max_connections_per_ip"},
		{"negative per ip", Config{MaxConnectionsPerIP: -1}, "fhir.max_connections_per_ip"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			cfg := tt.cfg
			cfg.SetDefaults()
			err := cfg.Validate()
			var ce *ConfigError
			if !errors.As(err, &ce) || ce.Field != tt.field {
				t.Fatalf("Validate=%v, want an error on %s", err, tt.field)
			}
		})
	}
	var ok Config
	ok.SetDefaults()
	if err := ok.Validate(); err != nil {
		t.Fatalf("defaults: %v", err)
	}
	if ok.MaxBodyBytes != DefaultMaxBodyBytes || ok.BasePath != "/" || ok.ReadTimeout != DefaultReadTimeout ||
		ok.MaxInflightBytes != DefaultMaxInflightBytes || ok.MaxConnections != DefaultMaxConnections ||
		ok.MaxConnectionsPerIP != DefaultMaxConnectionsPerIP {
		t.Fatalf("defaults=%+v", ok)
	}
	if _, err := New(Config{BearerTokensFile: filepath.Join(t.TempDir(), "missing")}, &fakeSink{}, &fakeReporter{}, testTokenizer(t), nil); err == nil {
		t.Fatal("New accepted a missing bearer_tokens_file")
	}
}

// TestShutdownWaitsForCommit cancels Run while a request waits for its commit: the
// commit still lands within the grace period, the client gets its 201, and Run returns
// only after the handler did.
func TestShutdownWaitsForCommit(t *testing.T) {
	hold := make(chan struct{})
	sink := &fakeSink{hold: hold}
	c := newTestCollector(t, Config{HTTP: "127.0.0.1:0"}, sink, &fakeReporter{})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	errc := make(chan error, 1)
	go func() { errc <- c.Run(ctx) }()
	<-c.Ready()
	type result struct {
		status int
		err    error
	}
	done := make(chan result, 1)
	go func() {
		resp, err := http.DefaultClient.Do(newPost(t, "http://"+c.Addr().String()+"/AuditEvent", "application/fhir+json", loginJSON))
		if err != nil {
			done <- result{0, err}
			return
		}
		resp.Body.Close()
		done <- result{resp.StatusCode, nil}
	}()
	for {
		sink.mu.Lock()
		n := sink.n
		sink.mu.Unlock()
		if n == 1 {
			break
		}
		time.Sleep(time.Millisecond)
	}
	cancel()
	select {
	case err := <-errc:
		t.Fatalf("Run returned %v while a request waited for its commit", err)
	case <-time.After(100 * time.Millisecond):
	}
	close(hold)
	if r := <-done; r.err != nil || r.status != http.StatusCreated {
		t.Fatalf("response %d %v, want 201", r.status, r.err)
	}
	if err := <-errc; err != nil {
		t.Fatalf("Run: %v", err)
	}
}
