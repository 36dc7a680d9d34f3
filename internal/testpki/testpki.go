// Package testpki makes a throw-away CA with a server certificate for 127.0.0.1 and a
// client certificate, for the TLS tests of the listeners. Tests only.
package testpki

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// PKI is a throw-away CA with a server certificate for 127.0.0.1 and a client
// certificate, written as PEM files into a temporary folder.
type PKI struct {
	CAFile, CertFile, KeyFile string
	// ClientCertFile and ClientKeyFile are Client as PEM files, for a process under
	// test that reads its client certificate from a config.
	ClientCertFile, ClientKeyFile string
	Pool                          *x509.CertPool
	Client                        tls.Certificate
}

// New writes a new CA, server and client certificate into t.TempDir().
func New(t testing.TB) *PKI {
	t.Helper()
	dir := t.TempDir()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	// Longer than the 30 days within which edgeaudit health warns of an expiry.
	const validFor = 90 * 24 * time.Hour
	caTmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "edgeaudit test CA"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(validFor),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, err := x509.ParseCertificate(caDER)
	if err != nil {
		t.Fatal(err)
	}
	issue := func(serial int64, cn string, usage x509.ExtKeyUsage) ([]byte, *ecdsa.PrivateKey) {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		tmpl := &x509.Certificate{
			SerialNumber: big.NewInt(serial),
			Subject:      pkix.Name{CommonName: cn},
			NotBefore:    now.Add(-time.Hour),
			NotAfter:     now.Add(validFor),
			KeyUsage:     x509.KeyUsageDigitalSignature,
			ExtKeyUsage:  []x509.ExtKeyUsage{usage},
			IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
		if err != nil {
			t.Fatal(err)
		}
		return der, key
	}
	write := func(name, typ string, der []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	keyDER := func(k *ecdsa.PrivateKey) []byte {
		b, err := x509.MarshalECPrivateKey(k)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	srvDER, srvKey := issue(2, "127.0.0.1", x509.ExtKeyUsageServerAuth)
	cliDER, cliKey := issue(3, "modality1", x509.ExtKeyUsageClientAuth)
	p := &PKI{
		CAFile:   write("ca.pem", "CERTIFICATE", caDER),
		CertFile: write("server.pem", "CERTIFICATE", srvDER),
		KeyFile:  write("server-key.pem", "EC PRIVATE KEY", keyDER(srvKey)),
		Pool:     x509.NewCertPool(),
		Client:   tls.Certificate{Certificate: [][]byte{cliDER}, PrivateKey: cliKey},

		ClientCertFile: write("client.pem", "CERTIFICATE", cliDER),
		ClientKeyFile:  write("client-key.pem", "EC PRIVATE KEY", keyDER(cliKey)),
	}
	p.Pool.AddCert(ca)
	return p
}

// ClientConfig trusts the CA and, with withCert, presents the client certificate.
func (p *PKI) ClientConfig(withCert bool) *tls.Config {
	c := &tls.Config{RootCAs: p.Pool, ServerName: "127.0.0.1", MinVersion: tls.VersionTLS12}
	if withCert {
		c.Certificates = []tls.Certificate{p.Client}
	}
	return c
}
