package integration

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

// serverName is the daemon certificate's CN and DNS name, which rsyslog checks
// (StreamDriverAuthMode x509/name, StreamDriverPermittedPeers).
const serverName = "edgeaudit-it-server"

// pki is a throwaway CA with one server and one client certificate, as PEM files.
type pki struct {
	CAFile                string
	ServerCert, ServerKey string
	ClientCert, ClientKey string
	caCert                *x509.Certificate
	caKey                 *ecdsa.PrivateKey
	dir                   string
	pool                  *x509.CertPool // the CA, for Go clients
}

// newPKI creates the CA and both leaf certificates in dir.
func newPKI(t testing.TB, dir, name string) *pki {
	t.Helper()
	p := &pki{dir: dir}
	caKey := newKey(t)
	tmpl := &x509.Certificate{
		Subject:               pkix.Name{CommonName: name + " test CA"},
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	p.caCert, p.CAFile = p.sign(t, tmpl, caKey, nil, nil, name+"-ca")
	p.caKey = caKey
	p.pool = x509.NewCertPool()
	p.pool.AddCert(p.caCert)

	p.ServerCert, p.ServerKey = p.leaf(t, name+"-server", &x509.Certificate{
		Subject:     pkix.Name{CommonName: serverName},
		DNSNames:    []string{serverName, "localhost"},
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	})
	p.ClientCert, p.ClientKey = p.leaf(t, name+"-client", &x509.Certificate{
		Subject:     pkix.Name{CommonName: "edgeaudit-it-client"},
		DNSNames:    []string{"edgeaudit-it-client"},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	})
	return p
}

// leaf issues a certificate from the CA and writes it and its key.
func (p *pki) leaf(t testing.TB, file string, tmpl *x509.Certificate) (certFile, keyFile string) {
	t.Helper()
	key := newKey(t)
	tmpl.KeyUsage = x509.KeyUsageDigitalSignature
	_, certFile = p.sign(t, tmpl, key, p.caCert, p.caKey, file)
	keyFile = filepath.Join(p.dir, file+".key")
	der, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	// EC PRIVATE KEY (SEC 1): what both GnuTLS and Go read.
	writePEM(t, keyFile, "EC PRIVATE KEY", der)
	return certFile, keyFile
}

// sign creates tmpl signed by parent (self-signed when parent is nil).
func (p *pki) sign(t testing.TB, tmpl *x509.Certificate, key *ecdsa.PrivateKey, parent *x509.Certificate, parentKey *ecdsa.PrivateKey, file string) (*x509.Certificate, string) {
	t.Helper()
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 62))
	if err != nil {
		t.Fatal(err)
	}
	tmpl.SerialNumber = serial
	tmpl.NotBefore = time.Now().Add(-time.Hour)
	if tmpl.NotAfter.IsZero() {
		// Longer than the 30 days within which edgeaudit health warns of an expiry.
		tmpl.NotAfter = time.Now().Add(90 * 24 * time.Hour)
	}
	if parent == nil {
		parent, parentKey = tmpl, key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, &key.PublicKey, parentKey)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	name := filepath.Join(p.dir, file+".pem")
	writePEM(t, name, "CERTIFICATE", der)
	return cert, name
}

// clientTLS is a Go client config that trusts the CA and presents the certificate in
// certFile (none when it is empty) whatever CAs the server asks for: Go's client would
// otherwise send no certificate at all when its issuer is not among them.
func (p *pki) clientTLS(t testing.TB, certFile, keyFile string) *tls.Config {
	t.Helper()
	c := &tls.Config{RootCAs: p.pool, ServerName: serverName, MinVersion: tls.VersionTLS12}
	if certFile != "" {
		kp, err := tls.LoadX509KeyPair(certFile, keyFile)
		if err != nil {
			t.Fatal(err)
		}
		c.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &kp, nil }
	}
	return c
}

func newKey(t testing.TB) *ecdsa.PrivateKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func writePEM(t testing.TB, name, typ string, der []byte) {
	t.Helper()
	if err := os.WriteFile(name, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
}
