package central

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/edgeaudit/edgeaudit/attest"
	"github.com/edgeaudit/edgeaudit/audit"
	"github.com/edgeaudit/edgeaudit/internal/testpg"
	"github.com/edgeaudit/edgeaudit/ledger"
	"github.com/edgeaudit/edgeaudit/receiver"
	"github.com/edgeaudit/edgeaudit/uplink"
)

// TestMain refuses name lookups: every address in these tests is a 127.0.0.1 literal,
// so a lookup means something reaches for the network.
func TestMain(m *testing.M) {
	net.DefaultResolver.PreferGo = true
	net.DefaultResolver.Dial = func(context.Context, string, string) (net.Conn, error) {
		return nil, errors.New("tests resolve no names")
	}
	os.Exit(testpg.Main(m))
}

func genKey(t testing.TB) *ecdsa.PrivateKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func pubPEM(t testing.TB, pub *ecdsa.PublicKey) []byte {
	t.Helper()
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})
}

// chain builds the batches one appliance seals: n batches of events events each.
type chain struct {
	site, device, chain string
	key                 *ecdsa.PrivateKey
	pad                 int // events are padded to about this many bytes
	batches             []*ledger.Batch
	hashes              []string
}

func newChain(t testing.TB, site, device string) *chain {
	return &chain{site: site, device: device, chain: strings.Repeat("cd", 16), key: genKey(t)}
}

func (c *chain) add(t testing.TB, n, events int) {
	t.Helper()
	kid, err := ledger.KeyID(&c.key.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	for range n {
		seq := uint64(len(c.batches) + 1)
		prev := ledger.ZeroHash
		if seq > 1 {
			prev = c.hashes[seq-2]
		}
		var evs [][]byte
		for i := range events {
			e := fmt.Appendf(nil, `{"id":"%s-%d-%d","action":"phi.view","pad":"`, c.device, seq, i)
			e = append(e, strings.Repeat("x", max(c.pad-len(e)-2, 0))...)
			evs = append(evs, append(e, `"}`...))
		}
		h := ledger.Header{Site: c.site, Device: c.device, Chain: c.chain, Seq: seq, Prev: prev,
			Sealed: time.Now().UTC().Format(time.RFC3339Nano), TimeSync: ledger.TimeSync{State: "unknown"}, KeyID: kid}
		hb, sig, err := h.Seal(ledger.EventsRoot(evs), len(evs), func(d []byte) ([]byte, error) { return ecdsa.SignASN1(rand.Reader, c.key, d) })
		if err != nil {
			t.Fatal(err)
		}
		c.batches = append(c.batches, &ledger.Batch{Header: hb, Signature: sig, Events: evs})
		sum := ledger.HeaderHash(hb)
		c.hashes = append(c.hashes, hex.EncodeToString(sum[:]))
	}
}

// source is an uplink.Source over a chain.
type source struct {
	mu    sync.Mutex
	c     *chain
	acked uint64
}

func (s *source) Position() (uplink.Position, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	p := uplink.Position{HeadSeq: uint64(len(s.c.batches)), AckedSeq: s.acked}
	if n := len(s.c.hashes); n > 0 {
		p.HeadHash = s.c.hashes[n-1]
	}
	return p, nil
}

func (s *source) Batches(from uint64, fn func(*ledger.Batch) error) error {
	s.mu.Lock()
	bs := append([]*ledger.Batch(nil), s.c.batches...)
	s.mu.Unlock()
	for seq := max(from, 1); seq <= uint64(len(bs)); seq++ {
		if err := fn(bs[seq-1]); err != nil {
			return err
		}
	}
	return nil
}

func (s *source) Ack(seq uint64) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.acked = max(s.acked, min(seq, uint64(len(s.c.batches))))
	return nil
}

func (s *source) ackedSeq() uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.acked
}

// verifier checks receipts as the daemon does: central.pub, this site and device. It
// keeps every verified receipt.
type verifier struct {
	pub          *ecdsa.PublicKey
	site, device string
	mu           sync.Mutex
	kept         []ledger.Receipt
}

func (v *verifier) Verify(b []byte) (uint64, string, error) {
	r, err := ledger.VerifyReceipt(b, v.pub)
	if err != nil {
		return 0, "", err
	}
	if r.Site != v.site || r.Device != v.device {
		return 0, "", fmt.Errorf("receipt for %s/%s", r.Site, r.Device)
	}
	v.mu.Lock()
	v.kept = append(v.kept, r)
	v.mu.Unlock()
	return r.Seq, r.HeaderHash, nil
}

func (v *verifier) receipts() []ledger.Receipt {
	v.mu.Lock()
	defer v.mu.Unlock()
	return append([]ledger.Receipt(nil), v.kept...)
}

// readCentralPub reads central.pub as a site would.
func readCentralPub(t testing.TB, cfg Config) *ecdsa.PublicKey {
	t.Helper()
	ks, err := attest.ReadPublicPEM(cfg.PublicKeyPath())
	if err != nil {
		t.Fatal(err)
	}
	return ks[0]
}

// pki is a throw-away CA, a server certificate for 127.0.0.1 and client certificates
// with chosen CNs, as PEM files.
type pki struct {
	dir               string
	caKey             *ecdsa.PrivateKey
	ca                *x509.Certificate
	CAFile            string
	CertFile, KeyFile string
	pool              *x509.CertPool
}

func newPKI(t testing.TB) *pki {
	t.Helper()
	p := &pki{dir: t.TempDir(), caKey: genKey(t), pool: x509.NewCertPool()}
	now := time.Now()
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "central test CA"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Hour), IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &p.caKey.PublicKey, p.caKey)
	if err != nil {
		t.Fatal(err)
	}
	if p.ca, err = x509.ParseCertificate(der); err != nil {
		t.Fatal(err)
	}
	p.pool.AddCert(p.ca)
	p.CAFile = p.write(t, "ca.pem", "CERTIFICATE", der)
	p.CertFile, p.KeyFile = p.issue(t, "server", "127.0.0.1", x509.ExtKeyUsageServerAuth)
	return p
}

var serial int64 = 10

// issue writes a certificate for cn (and 127.0.0.1) and its key; it returns both files.
func (p *pki) issue(t testing.TB, name, cn string, usage x509.ExtKeyUsage) (certFile, keyFile string) {
	t.Helper()
	k := genKey(t)
	serial++
	now := time.Now()
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: cn},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Hour), KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{usage}, IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, p.ca, &k.PublicKey, p.caKey)
	if err != nil {
		t.Fatal(err)
	}
	kd, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		t.Fatal(err)
	}
	return p.write(t, name+".pem", "CERTIFICATE", der), p.write(t, name+"-key.pem", "PRIVATE KEY", kd)
}

func (p *pki) write(t testing.TB, name, typ string, der []byte) string {
	t.Helper()
	path := filepath.Join(p.dir, name)
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// runServer starts s.Run and waits until it is receiving; the returned stop cancels it
// and returns Run's error.
func runServer(t testing.TB, s *Server) (stop func() error) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	select {
	case <-s.Ready():
	case err := <-done:
		cancel()
		t.Fatalf("Run: %v", err)
	case <-time.After(30 * time.Second):
		cancel()
		t.Fatal("Run not ready after 30s")
	}
	var once sync.Once
	var err error
	stop = func() error {
		once.Do(func() {
			cancel()
			select {
			case err = <-done:
			case <-time.After(30 * time.Second):
				err = errors.New("Run did not return 30s after cancel")
			}
		})
		return err
	}
	t.Cleanup(func() { stop() })
	return stop
}

// leakCheck fails the test if a goroutine started during it is still running after its
// cleanups (registered first, so it runs last).
func leakCheck(t *testing.T) {
	opt := goleak.IgnoreCurrent()
	t.Cleanup(func() { goleak.VerifyNone(t, opt) })
}

// trailEvents reads central's own trail from a folder store, in chain order.
func trailEvents(t testing.TB, cfg Config) []audit.Event {
	t.Helper()
	var out []audit.Event
	err := receiver.FolderStore{Dir: cfg.Store}.Query(t.Context(), receiver.Query{Site: cfg.AuditSite, Device: cfg.AuditDevice},
		func(m receiver.Match) error {
			e, err := audit.Decode(m.Event)
			if err != nil {
				return err
			}
			out = append(out, e)
			return nil
		})
	if err != nil {
		t.Fatalf("read central's trail: %v", err)
	}
	return out
}

// withAction returns the events of action.
func withAction(evs []audit.Event, action string) []audit.Event {
	var out []audit.Event
	for _, e := range evs {
		if e.Action == action {
			out = append(out, e)
		}
	}
	return out
}

// eventually polls cond (progress over a real broker; never a timing assert). The
// deadline only bounds a broken test.
func eventually(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not after 30s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// testLogger logs to stderr with EDGEAUDIT_TEST_LOG=1, else nothing. (Not t.Log:
// mochi may log from its goroutines after a test has ended.)
func testLogger() *slog.Logger {
	if os.Getenv("EDGEAUDIT_TEST_LOG") != "1" {
		return slog.New(slog.DiscardHandler)
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
}
