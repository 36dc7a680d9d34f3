package integration

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"
)

// --- the shared corpus ------------------------------------------------------------------

// clinicalCorpus returns the shared corpus folder (../../shared/corpus from this package),
// skipping the test when it is absent, failing under CI=true.
func clinicalCorpus(t testing.TB) string {
	t.Helper()
	dir := filepath.Join("..", "..", "shared", "corpus")
	if _, err := os.Stat(dir); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("shared corpus missing at %s (CI=true): %v", dir, err)
		}
		t.Skipf("shared corpus missing at %s", dir)
	}
	return dir
}

// corpusGlob returns the sorted files of the corpus matching pattern; none is a failure.
func corpusGlob(t testing.TB, pattern string) []string {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(clinicalCorpus(t), pattern))
	if err != nil {
		t.Fatal(err)
	}
	if len(files) == 0 {
		t.Fatalf("no corpus files match %s", pattern)
	}
	sort.Strings(files)
	return files
}

func mustRead(t testing.TB, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// --- a daemon with the clinical listeners ----------------------------------------------

// clinicalConfig selects the listeners of a clinical daemon. Plain syslog TCP is always
// on; the others are on when set.
type clinicalConfig struct {
	SyslogTLS    *serverTLS // syslog.tls with these PEM files
	HL7          bool       // hl7.mllp
	FHIR         bool       // fhir.http
	MaxBodyBytes int        // fhir.max_body_bytes; 0 = default
}

// clinicalDaemon is an `edgeaudit run` with the clinical listeners. Its config stays in
// place so that it can be started again on the same data folder.
type clinicalDaemon struct {
	*daemon
	cfg       clinicalConfig
	mllp      string // "" when off
	fhir      string // "" when off
	starts    int
	listening int // how many listening lines a ready daemon has logged
}

// startClinical writes a config into a new temp dir, starts the daemon and waits until
// every listener is bound. Taken ports are retried like startDaemon does.
func startClinical(t testing.TB, cfg clinicalConfig) *clinicalDaemon {
	t.Helper()
	dir := t.TempDir()
	for attempt := 1; ; attempt++ {
		d := &clinicalDaemon{cfg: cfg, daemon: &daemon{
			dir:     dir,
			config:  filepath.Join(dir, "edgeaudit.yaml"),
			dataDir: filepath.Join(dir, "data"),
			tcp:     freeAddr(t, "tcp"),
			admin:   freeAddr(t, "tcp"),
		}}
		if cfg.SyslogTLS != nil {
			d.tls = freeAddr(t, "tcp")
		}
		if cfg.HL7 {
			d.mllp = freeAddr(t, "tcp")
		}
		if cfg.FHIR {
			d.fhir = freeAddr(t, "tcp")
		}
		for _, a := range []string{d.tcp, d.tls, d.mllp, d.fhir, d.admin} {
			if a != "" {
				mustLoopback(t, a)
				d.listening++
			}
		}
		d.listening-- // admin logs no listening line
		if err := os.RemoveAll(d.dataDir); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(d.config, []byte(d.yaml()), 0o600); err != nil {
			t.Fatal(err)
		}
		err := d.start(t)
		if err == nil {
			return d
		}
		if d.done() && strings.Contains(d.log(), "address already in use") && attempt < 5 {
			t.Logf("daemon start %d: a port was taken meanwhile; retrying with new ports", attempt)
			continue
		}
		t.Fatalf("daemon did not start: %v\n%s", err, d.log())
	}
}

// restart starts the daemon again with the same config and data folder; the previous
// process must have exited.
func (d *clinicalDaemon) restart(t testing.TB) {
	t.Helper()
	if !d.done() {
		t.Fatal("restart: the daemon still runs")
	}
	for attempt := 1; ; attempt++ {
		err := d.start(t)
		if err == nil {
			return
		}
		if !d.done() || !strings.Contains(d.log(), "address already in use") || attempt == 5 {
			t.Fatalf("daemon did not restart: %v\n%s", err, d.log())
		}
		// Another process took a port while the daemon was down: move the listeners.
		t.Logf("daemon restart %d: a port was taken meanwhile; retrying with new ports", attempt)
		for _, a := range []*string{&d.tcp, &d.tls, &d.mllp, &d.fhir, &d.admin} {
			if *a != "" {
				*a = freeAddr(t, "tcp")
			}
		}
		if err := os.WriteFile(d.config, []byte(d.yaml()), 0o600); err != nil {
			t.Fatal(err)
		}
	}
}

func (d *clinicalDaemon) start(t testing.TB) error {
	t.Helper()
	d.starts++
	cmd := exec.Command(binPath, "run", "--config", d.config)
	d.process = startProcess(t, fmt.Sprintf("edgeaudit-clinical-%d", d.starts), d.dir, cmd)
	deadline := time.Now().Add(startTimeout)
	for {
		if d.done() {
			return fmt.Errorf("exited: %v", d.waitErr)
		}
		l := d.log()
		if strings.Count(l, "msg=listening ") >= d.listening {
			if _, err := d.healthz(t.Context()); err == nil {
				return nil
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("not ready after %v", startTimeout)
		}
		time.Sleep(pollInterval)
	}
}

func (d *clinicalDaemon) yaml() string {
	var b strings.Builder
	q := strconv.Quote
	fmt.Fprintf(&b, "site: %s\ndevice: %s\ndata_dir: %s\n", testSite, testDevice, q(d.dataDir))
	fmt.Fprintf(&b, "syslog:\n  tcp: %s\n", q(d.tcp))
	if c := d.cfg.SyslogTLS; c != nil {
		fmt.Fprintf(&b, "  tls: %s\n  tls_cert: %s\n  tls_key: %s\n", q(d.tls), q(c.Cert), q(c.Key))
		if c.ClientCA != "" {
			fmt.Fprintf(&b, "  tls_client_ca: %s\n", q(c.ClientCA))
		}
	}
	if d.mllp != "" {
		// original: the corpus has senders that ask for no ACK on success (MSH-15 ER),
		// and these tests read one ACK per message.
		fmt.Fprintf(&b, "hl7:\n  mllp: %s\n  ack_mode: original\n", q(d.mllp))
	}
	if d.fhir != "" {
		fmt.Fprintf(&b, "fhir:\n  http: %s\n", q(d.fhir))
		if d.cfg.MaxBodyBytes != 0 {
			fmt.Fprintf(&b, "  max_body_bytes: %d\n", d.cfg.MaxBodyBytes)
		}
	}
	fmt.Fprintf(&b, "admin: %s\nlog_level: debug\n", q(d.admin))
	return b.String()
}

// --- exported events, with the fields the clinical tests read ---------------------------

// clinicalEvent is the part of an exported event the clinical tests check.
type clinicalEvent struct {
	ID     string `json:"id"`
	Source struct {
		Kind      string `json:"kind"`
		IP        string `json:"ip"`
		Transport string `json:"transport"`
	} `json:"source"`
	Action        string            `json:"action"`
	Outcome       string            `json:"outcome"`
	Reason        string            `json:"reason"`
	CorrelationID string            `json:"correlation_id"`
	Patient       string            `json:"patient"`
	Accession     string            `json:"accession"`
	Malformed     bool              `json:"malformed"`
	Detail        map[string]string `json:"detail"`
	RawSHA256     string            `json:"raw_sha256"`
	line          string            // the exported JSON line
}

// exportClinical runs `export -events` (with -open: also unsealed events) on a stopped
// daemon's data folder and decodes the lines.
func exportClinical(t testing.TB, dataDir string, open bool) []clinicalEvent {
	t.Helper()
	out := filepath.Join(t.TempDir(), "events.jsonl")
	args := []string{"export", "-data", dataDir, "-out", out, "-events"}
	if open {
		args = append(args, "-open")
	}
	if res := runCLI(t, args...); res.code != 0 {
		t.Fatalf("export failed\n%s", res)
	}
	b := mustRead(t, out)
	var evs []clinicalEvent
	for i, line := range bytes.Split(bytes.TrimSuffix(b, []byte("\n")), []byte("\n")) {
		if len(line) == 0 {
			continue
		}
		var e clinicalEvent
		if err := json.Unmarshal(line, &e); err != nil {
			t.Fatalf("exported event %d: %v: %.200s", i, err, line)
		}
		e.line = string(line)
		evs = append(evs, e)
	}
	return evs
}

func eventsOfKind(evs []clinicalEvent, kind string) []clinicalEvent {
	var out []clinicalEvent
	for _, e := range evs {
		if e.Source.Kind == kind {
			out = append(out, e)
		}
	}
	return out
}

// rejectedReasons counts the daemon's audit.input_rejected events of one collector by
// reason.
func rejectedReasons(evs []clinicalEvent, collector string) map[string]int {
	m := map[string]int{}
	for _, e := range evs {
		if e.Source.Kind == "self" && e.Action == "audit.input_rejected" && e.Detail["collector"] == collector {
			m[e.Reason]++
		}
	}
	return m
}

func sha256Hex(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// --- DICOM audit messages over syslog TLS ------------------------------------------------

// dicomFrame is an RFC 5424 message carrying xml as MSG, the way ATNA senders send it.
func dicomFrame(xml []byte) []byte {
	return append([]byte("<85>1 2026-11-27T08:00:00.000Z it-pacs dcm4chee - IHE+RFC-3881 - "), xml...)
}

// sendDICOMCorpus sends every DICOM audit sample over one mutual-TLS connection to the
// daemon's syslog TLS listener, octet-counted. It returns the SHA-256 of each message
// (what the event's raw_sha256 holds) by file name.
func sendDICOMCorpus(t testing.TB, addr string, cfg *tls.Config) map[string]string {
	t.Helper()
	mustLoopback(t, addr)
	files := corpusGlob(t, filepath.Join("dicom-audit", "*.xml"))
	d := &tls.Dialer{NetDialer: &net.Dialer{Timeout: 5 * time.Second}, Config: cfg}
	c, err := d.DialContext(t.Context(), "tcp", addr)
	if err != nil {
		t.Fatalf("dial tls %s: %v", addr, err)
	}
	defer c.Close()
	sums := map[string]string{}
	var buf []byte
	for _, f := range files {
		msg := dicomFrame(mustRead(t, f))
		sums[filepath.Base(f)] = sha256Hex(msg)
		buf = append(buf, strconv.Itoa(len(msg))...)
		buf = append(buf, ' ')
		buf = append(buf, msg...)
	}
	if err := c.SetWriteDeadline(time.Now().Add(30 * time.Second)); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Write(buf); err != nil {
		t.Fatalf("send DICOM corpus: %v", err)
	}
	return sums
}

// checkDICOMEvents requires exactly one dicom event over tls per sample, matched by
// raw_sha256.
func checkDICOMEvents(t testing.TB, evs []clinicalEvent, sums map[string]string) {
	t.Helper()
	bySum := map[string][]clinicalEvent{}
	for _, e := range eventsOfKind(evs, "dicom") {
		bySum[e.RawSHA256] = append(bySum[e.RawSHA256], e)
	}
	for name, sum := range sums {
		got := bySum[sum]
		if len(got) != 1 {
			t.Errorf("%s: %d dicom events, want exactly 1", name, len(got))
			continue
		}
		if e := got[0]; e.Source.Transport != "tls" || e.Source.IP != "127.0.0.1" || e.Malformed {
			t.Errorf("%s: transport %q from %q malformed=%v, want tls from 127.0.0.1", name, e.Source.Transport, e.Source.IP, e.Malformed)
		}
	}
	for _, e := range evs {
		if e.Source.Kind == "syslog" && e.Detail["dicom.error"] != "" {
			t.Errorf("a sample was kept as syslog with dicom.error=%s: %.300s", e.Detail["dicom.error"], e.line)
		}
	}
}

// --- HL7 v2 over MLLP --------------------------------------------------------------------

// hl7Sample is one MLLP block to send.
type hl7Sample struct {
	name  string
	block []byte
}

// hl7CorpusRejected are the good-corpus samples the collector refuses (collectors/hl7
// corpus_test.go corpusRejected), with the reason the AR names.
var hl7CorpusRejected = map[string]string{
	"python-hl7-mllp-frame.bin#0":             "bad_msh",
	"dcm4che-ORU_R01-embedded-pdf-base64.hl7": "malformed",
}

// hl7Corpus returns the samples of hl7v2/: each .hl7 file as one block, and the blocks
// of the MLLP-framed .bin files.
func hl7Corpus(t testing.TB) []hl7Sample {
	t.Helper()
	var out []hl7Sample
	for _, f := range corpusGlob(t, filepath.Join("hl7v2", "*.hl7")) {
		out = append(out, hl7Sample{filepath.Base(f), mustRead(t, f)})
	}
	bins, err := filepath.Glob(filepath.Join(clinicalCorpus(t), "hl7v2", "mllp", "*.bin"))
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range bins {
		b := mustRead(t, f)
		for i := 0; ; i++ {
			s := bytes.IndexByte(b, 0x0B)
			if s < 0 {
				break
			}
			e := bytes.IndexByte(b[s:], 0x1C)
			if e < 0 {
				break
			}
			out = append(out, hl7Sample{fmt.Sprintf("%s#%d", filepath.Base(f), i), bytes.Clone(b[s+1 : s+e])})
			b = b[s+e+1:]
		}
	}
	return out
}

// mshControlIDs returns MSH-10 of every MSH segment of a block (several in a batch).
func mshControlIDs(block []byte) []string {
	var ids []string
	for _, seg := range hl7Segments(string(block)) {
		if len(seg) < 4 || seg[:3] != "MSH" {
			continue
		}
		f := strings.Split(seg, seg[3:4])
		if len(f) > 9 {
			ids = append(ids, f[9])
		} else {
			ids = append(ids, "")
		}
	}
	return ids
}

func hl7Segments(s string) []string {
	return strings.FieldsFunc(s, func(r rune) bool { return r == '\r' || r == '\n' })
}

// mllpClient is one MLLP connection.
type mllpClient struct {
	c net.Conn
	r *bufio.Reader
}

func dialMLLP(addr string) (*mllpClient, error) {
	if err := checkLoopback(addr); err != nil {
		return nil, err
	}
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return nil, err
	}
	return &mllpClient{c: c, r: bufio.NewReader(c)}, nil
}

func (m *mllpClient) Close() error { return m.c.Close() }

// exchange sends one block and reads its ACK block.
func (m *mllpClient) exchange(block []byte, timeout time.Duration) ([]byte, error) {
	if err := m.c.SetDeadline(time.Now().Add(timeout)); err != nil {
		return nil, err
	}
	frame := make([]byte, 0, len(block)+3)
	frame = append(append(append(frame, 0x0B), block...), 0x1C, 0x0D)
	if _, err := m.c.Write(frame); err != nil {
		return nil, err
	}
	for {
		b, err := m.r.ReadByte()
		if err != nil {
			return nil, err
		}
		if b == 0x0B {
			break
		}
	}
	ack, err := m.r.ReadBytes(0x1C)
	if err != nil {
		return nil, err
	}
	if b, err := m.r.ReadByte(); err != nil {
		return nil, err
	} else if b != 0x0D {
		return nil, fmt.Errorf("ACK end block 0x1C followed by %#x, want 0x0D", b)
	}
	return ack[:len(ack)-1], nil
}

// ackMSA returns MSA-1 (the code), MSA-2 (the acknowledged control id) and MSA-3.
func ackMSA(ack []byte) (code, ctrl, text string, err error) {
	s := string(ack)
	if !strings.HasPrefix(s, "MSH") || len(s) < 4 {
		return "", "", "", fmt.Errorf("ACK does not start with MSH: %q", s)
	}
	fs := s[3:4]
	for _, seg := range hl7Segments(s) {
		f := strings.Split(seg, fs)
		if f[0] != "MSA" {
			continue
		}
		get := func(i int) string {
			if i < len(f) {
				return f[i]
			}
			return ""
		}
		return get(1), get(2), get(3), nil
	}
	return "", "", "", fmt.Errorf("ACK without MSA: %q", s)
}

// hl7Result is what sending the corpus gave.
type hl7Result struct {
	sent     int
	accepted map[string]int // control id -> events expected (batches count each message)
	aaBlocks int
	arBlocks int
}

// sendHL7Corpus sends every hl7v2 sample over one MLLP connection, one at a time, and
// checks each ACK: AA with MSA-2 = MSH-10 for the accepted ones, AR naming the reason for
// the documented rejects.
func sendHL7Corpus(t testing.TB, addr string) hl7Result {
	t.Helper()
	res := hl7Result{accepted: map[string]int{}}
	c, err := dialMLLP(addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for _, s := range hl7Corpus(t) {
		res.sent++
		ack, err := c.exchange(s.block, 30*time.Second)
		if err != nil {
			t.Fatalf("%s: no ACK: %v", s.name, err)
		}
		code, ctrl, text, err := ackMSA(ack)
		if err != nil {
			t.Fatalf("%s: %v", s.name, err)
		}
		ids := mshControlIDs(s.block)
		if reason, rejected := hl7CorpusRejected[s.name]; rejected {
			if code != "AR" || !strings.Contains(text, reason) {
				t.Errorf("%s: ACK %s %q, want AR naming %s", s.name, code, text, reason)
			}
			res.arBlocks++
			continue
		}
		if code != "AA" {
			t.Errorf("%s: ACK %s %q, want AA", s.name, code, text)
			continue
		}
		if len(ids) == 0 || ctrl != ids[0] {
			t.Errorf("%s: MSA-2 %q, want MSH-10 %q", s.name, ctrl, ids)
		}
		res.aaBlocks++
		for _, id := range ids {
			res.accepted[id]++
		}
	}
	return res
}

// checkHL7Events requires the hl7 events to be exactly the accepted messages, by control
// id (with multiplicity: a batch stores each of its messages).
func checkHL7Events(t testing.TB, evs []clinicalEvent, accepted map[string]int) {
	t.Helper()
	got := map[string]int{}
	for _, e := range eventsOfKind(evs, "hl7") {
		got[e.CorrelationID]++
		if e.Source.Transport != "mllp" || e.Source.IP != "127.0.0.1" {
			t.Errorf("hl7 event %s: transport %q from %q, want mllp from 127.0.0.1", e.CorrelationID, e.Source.Transport, e.Source.IP)
		}
	}
	for id, n := range accepted {
		if got[id] != n {
			t.Errorf("control id %q: %d hl7 events, want %d", id, got[id], n)
		}
	}
	for id, n := range got {
		if _, ok := accepted[id]; !ok {
			t.Errorf("control id %q: %d hl7 events of a message that was not acknowledged", id, n)
		}
	}
}

// --- FHIR with curl -----------------------------------------------------------------------

// curlResult is one curl POST's answer.
type curlResult struct {
	status  int
	headers string
	body    string
}

// curlPost posts body to url with content type ct through the real curl.
func curlPost(t testing.TB, curl, url, ct string, body []byte) curlResult {
	t.Helper()
	dir := t.TempDir()
	in := filepath.Join(dir, "body")
	if err := os.WriteFile(in, body, 0o600); err != nil {
		t.Fatal(err)
	}
	hdr, out := filepath.Join(dir, "headers"), filepath.Join(dir, "response")
	var stderr bytes.Buffer
	cmd := exec.CommandContext(t.Context(), curl, "-sS", "--noproxy", "*", "--max-time", "30",
		"-X", "POST", "-H", "Content-Type: "+ct, "-H", "Accept: application/fhir+json",
		"--data-binary", "@"+in, "-D", hdr, "-o", out, "-w", "%{http_code}", url)
	cmd.Stderr = &stderr
	code, err := cmd.Output()
	if err != nil {
		t.Fatalf("curl %s: %v\n%s", url, err, stderr.String())
	}
	st, err := strconv.Atoi(strings.TrimSpace(string(code)))
	if err != nil {
		t.Fatalf("curl %s: status %q: %v", url, code, err)
	}
	return curlResult{status: st, headers: string(mustRead(t, hdr)), body: string(mustRead(t, out))}
}

// header returns the value of the named response header.
func (r curlResult) header(name string) string {
	for _, l := range strings.Split(r.headers, "\n") {
		k, v, ok := strings.Cut(strings.TrimRight(l, "\r"), ":")
		if ok && strings.EqualFold(strings.TrimSpace(k), name) {
			return strings.TrimSpace(v)
		}
	}
	return ""
}

func fhirContentType(path string) string {
	if strings.HasSuffix(path, ".xml") {
		return "application/fhir+xml"
	}
	return "application/fhir+json"
}

// fhirCorpusResult is what posting the FHIR corpus gave.
type fhirCorpusResult struct {
	files, events, bundles, searchsets int
}

// postFHIRCorpus posts every sample of fhir/: AuditEvents to {base}AuditEvent (201),
// batch/transaction Bundles to {base} (200). The corpus Bundles are search sets, which the
// collector refuses (400 unsupported_bundle, by design); their AuditEvents are then
// re-posted: JSON ones inside a transaction Bundle, XML ones one by one.
func postFHIRCorpus(t testing.TB, curl, base string) fhirCorpusResult {
	t.Helper()
	var res fhirCorpusResult
	for _, f := range corpusGlob(t, filepath.Join("fhir", "*", "*")) {
		res.files++
		name := filepath.Base(f)
		body := mustRead(t, f)
		ct := fhirContentType(f)
		root := fhirTree(t, body, ct)
		switch rt := root.str("resourceType"); rt {
		case "AuditEvent":
			r := curlPost(t, curl, base+"AuditEvent", ct, body)
			if r.status != 201 || r.header("Location") == "" {
				t.Errorf("%s: status %d Location %q, want 201 with a Location: %s", name, r.status, r.header("Location"), r.body)
				continue
			}
			res.events++
		case "Bundle":
			res.bundles++
			r := curlPost(t, curl, base, ct, body)
			typ := root.str("type")
			if typ == "batch" || typ == "transaction" {
				if r.status != 200 {
					t.Errorf("%s: status %d, want 200: %s", name, r.status, r.body)
				}
				res.events += strings.Count(r.body, "201")
				continue
			}
			if r.status != 400 || !strings.Contains(r.body, "OperationOutcome") {
				t.Errorf("%s: %s Bundle: status %d, want 400 with an OperationOutcome: %s", name, typ, r.status, r.body)
			}
			res.searchsets++
			if ct == "application/fhir+json" {
				tx := jsonAsTransaction(t, body)
				r := curlPost(t, curl, base, ct, tx)
				if n := strings.Count(r.body, "201 Created"); r.status != 200 || n == 0 {
					t.Errorf("%s re-posted as a transaction: status %d, %d entries created: %s", name, r.status, n, r.body)
				} else {
					res.events += n
				}
				continue
			}
			for i, ae := range xmlAuditEvents(body) {
				r := curlPost(t, curl, base+"AuditEvent", ct, ae)
				if r.status != 201 {
					t.Errorf("%s entry %d re-posted: status %d, want 201: %s", name, i, r.status, r.body)
					continue
				}
				res.events++
			}
		default:
			t.Errorf("%s: unexpected resourceType %q", name, rt)
		}
	}
	return res
}

// jsonAsTransaction wraps the AuditEvents of a JSON Bundle into a transaction Bundle.
func jsonAsTransaction(t testing.TB, body []byte) []byte {
	t.Helper()
	var b struct {
		Entry []struct {
			Resource json.RawMessage `json:"resource"`
		} `json:"entry"`
	}
	if err := json.Unmarshal(body, &b); err != nil {
		t.Fatal(err)
	}
	var entries []any
	for _, e := range b.Entry {
		var rt struct {
			ResourceType string `json:"resourceType"`
		}
		if json.Unmarshal(e.Resource, &rt) != nil || rt.ResourceType != "AuditEvent" {
			continue
		}
		entries = append(entries, map[string]any{
			"resource": e.Resource,
			"request":  map[string]string{"method": "POST", "url": "AuditEvent"},
		})
	}
	out, err := json.Marshal(map[string]any{"resourceType": "Bundle", "type": "transaction", "entry": entries})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// xmlAuditEvents cuts the <AuditEvent xmlns=...>…</AuditEvent> elements out of an XML
// Bundle (each declares the FHIR namespace itself in the corpus; added when it does not).
func xmlAuditEvents(body []byte) [][]byte {
	var out [][]byte
	s := string(body)
	for {
		i := strings.Index(s, "<AuditEvent")
		if i < 0 {
			return out
		}
		j := strings.Index(s[i:], "</AuditEvent>")
		if j < 0 {
			return out
		}
		el := s[i : i+j+len("</AuditEvent>")]
		if open := el[:strings.IndexByte(el, '>')]; !strings.Contains(open, "xmlns=") {
			el = `<AuditEvent xmlns="http://hl7.org/fhir"` + el[len("<AuditEvent"):]
		}
		out = append(out, []byte(el))
		s = s[i+j+len("</AuditEvent>"):]
	}
}

// fnode is a FHIR resource read generically from JSON or XML: a primitive value or named
// children (lists of one and more alike).
type fnode struct {
	val  string
	kids map[string][]*fnode
}

func (n *fnode) get(k string) *fnode {
	if n == nil || len(n.kids[k]) == 0 {
		return nil
	}
	return n.kids[k][0]
}

func (n *fnode) all(k string) []*fnode {
	if n == nil {
		return nil
	}
	return n.kids[k]
}

func (n *fnode) str(k string) string {
	if c := n.get(k); c != nil {
		return c.val
	}
	return ""
}

func (n *fnode) add(k string, c *fnode) {
	if n.kids == nil {
		n.kids = map[string][]*fnode{}
	}
	n.kids[k] = append(n.kids[k], c)
}

// fhirTree reads a FHIR resource. XML elements named like a resource (an upper-case
// first letter) get a resourceType child, as in JSON.
func fhirTree(t testing.TB, body []byte, ct string) *fnode {
	t.Helper()
	if ct == "application/fhir+json" {
		var v any
		if err := json.Unmarshal(body, &v); err != nil {
			t.Fatalf("test JSON reader: %v", err)
		}
		return jsonNode(v)
	}
	n, err := xmlTree(body)
	if err != nil {
		t.Fatalf("test XML reader: %v", err)
	}
	return n
}

func jsonNode(v any) *fnode {
	switch x := v.(type) {
	case map[string]any:
		n := &fnode{}
		for k, c := range x {
			if a, ok := c.([]any); ok {
				for _, e := range a {
					n.add(k, jsonNode(e))
				}
				continue
			}
			n.add(k, jsonNode(c))
		}
		return n
	case string:
		return &fnode{val: x}
	case nil:
		return &fnode{}
	default:
		return &fnode{val: fmt.Sprint(x)}
	}
}

// --- PHI values of the samples ---------------------------------------------------------------

// A PHI value of a sample: where it came from, and the value.
type phiValue struct{ kind, value string }

// commonWords are values the extractors find that are ordinary words or codes, which
// occur in events and in the spool for reasons that have nothing to do with a patient
// (a code display, a field name, a test placeholder). They are not checked, like values
// shorter than 4 characters, which match by chance (sex codes, "MR", years).
var commonWords = map[string]bool{
	"test": true, "patient": true, "example": true, "unknown": true, "none": true,
	"null": true, "true": true, "false": true, "anonymous": true,
	// Placeholders that samples put where a value goes, and that are also the DICOM
	// keyword a broad query's detail["query_keys"] names (by keyword, never by value).
	"accessionnumber": true, "patientid": true, "patientname": true,
}

func keepPHI(v string) bool {
	v = strings.TrimSpace(v)
	return len(v) >= 4 && !commonWords[strings.ToLower(v)] && v != `""`
}

// jsonEscaped is how v looks inside a JSON string when it needs escaping.
func jsonEscaped(v string) string {
	b, _ := json.Marshal(v)
	return string(b[1 : len(b)-1])
}

// errNoMSH is returned by hl7PHIValues for a block without an MSH.
var errNoMSH = errors.New("no MSH")

// hl7PHIValues extracts, with a splitter independent of the collector's parser (as
// collectors/hl7 corpus_test.go phiValues does): PID-3 component 1 of every repetition,
// PID-5 family and given names of every repetition, PID-7 (the first 8 digits), OBR-18.1
// and IPC-1.1 accession numbers.
func hl7PHIValues(block []byte) ([]phiValue, error) {
	s := string(block)
	i := strings.Index(s, "MSH")
	if i < 0 || len(s) < i+8 {
		return nil, errNoMSH
	}
	fs, comp, rep := s[i+3:i+4], s[i+4:i+5], s[i+5:i+6]
	var out []phiValue
	add := func(kind, v string) {
		if v = strings.TrimSpace(v); keepPHI(v) && !strings.ContainsAny(v, `\&`) {
			out = append(out, phiValue{kind, v})
		}
	}
	first := func(v string) string { return strings.Split(strings.Split(v, rep)[0], comp)[0] }
	for _, seg := range hl7Segments(s) {
		f := strings.Split(seg, fs)
		get := func(n int) string {
			if n < len(f) {
				return f[n]
			}
			return ""
		}
		switch f[0] {
		case "PID":
			for _, r := range strings.Split(get(3), rep) {
				add("PID-3", strings.Split(r, comp)[0])
			}
			for _, r := range strings.Split(get(5), rep) {
				c := strings.Split(r, comp)
				add("PID-5 family", c[0])
				if len(c) > 1 {
					add("PID-5 given", c[1])
				}
			}
			if dob := first(get(7)); len(dob) >= 8 && isDigits(dob[:8]) {
				add("PID-7", dob[:8])
			}
		case "OBR":
			add("OBR-18", first(get(18)))
		case "IPC":
			add("IPC-1", first(get(1)))
		}
	}
	return out, nil
}

func isDigits(s string) bool {
	for _, r := range s {
		if r < '0' || r > '9' {
			return false
		}
	}
	return s != ""
}

// fhirPatientRef finds the logical id of a Patient reference.
func fhirPatientRef(ref string) (string, bool) {
	i := strings.LastIndex(ref, "Patient/")
	if i < 0 || (i > 0 && ref[i-1] != '/') {
		return "", false
	}
	id := ref[i+len("Patient/"):]
	if j := strings.IndexAny(id, "/?#"); j >= 0 {
		id = id[:j]
	}
	return id, id != ""
}

// fhirPHIValues extracts, after collectors/fhir corpus_test.go phiValues: the ids of
// Patient references (as "Patient/<id>"; the bare id only when it cannot be confused with
// ordinary words), identifier values, name family/given/text of Patient resources and of
// patient entities (role 1, or what = a Patient reference), and every birthDate.
func fhirPHIValues(root *fnode) []phiValue {
	var out []phiValue
	add := func(kind, v string) {
		if v = strings.TrimSpace(v); keepPHI(v) {
			out = append(out, phiValue{kind, v})
		}
	}
	isPatientEntity := func(n *fnode) bool {
		role := n.get("role")
		if role.str("code") == "1" {
			return true
		}
		for _, c := range role.all("coding") {
			if c.str("code") == "1" {
				return true
			}
		}
		_, ok := fhirPatientRef(n.get("what").str("reference"))
		return ok
	}
	var walk func(key string, n *fnode, inPatient bool)
	walk = func(key string, n *fnode, inPatient bool) {
		if n.str("resourceType") == "Patient" {
			inPatient = true
		}
		switch key {
		case "reference":
			if id, ok := fhirPatientRef(n.val); ok {
				out = append(out, phiValue{"Patient reference", "Patient/" + id})
				add("Patient reference id", id)
			}
		case "birthDate":
			add("birthDate", n.val)
		case "name":
			if inPatient {
				for _, k := range []string{"text", "family", "given"} {
					for _, c := range n.all(k) {
						add("Patient name", c.val)
					}
				}
			}
		case "entity":
			if isPatientEntity(n) {
				add("patient entity identifier", n.get("what").get("identifier").str("value"))
				add("patient entity name", n.str("name"))
				add("patient entity name", n.get("what").str("display"))
			}
		case "identifier":
			if inPatient {
				add("Patient identifier", n.str("value"))
			}
		}
		for k, l := range n.kids {
			for _, c := range l {
				walk(k, c, inPatient)
			}
		}
	}
	walk("", root, false)
	return out
}
