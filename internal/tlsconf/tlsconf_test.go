package tlsconf

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func writePair(t *testing.T, dir string) (cert, key string) {
	t.Helper()
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "edge"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &k.PublicKey, k)
	if err != nil {
		t.Fatal(err)
	}
	kd, _ := x509.MarshalPKCS8PrivateKey(k)
	cert, key = filepath.Join(dir, "c.pem"), filepath.Join(dir, "k.pem")
	os.WriteFile(cert, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600)
	os.WriteFile(key, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kd}), 0o600)
	return cert, key
}

func TestServer(t *testing.T) {
	dir := t.TempDir()
	cert, key := writePair(t, dir)
	tc, err := Server("hl7", cert, key, "")
	if err != nil || tc.ClientAuth != tls.NoClientCert || tc.MinVersion != tls.VersionTLS12 {
		t.Fatalf("plain: %+v %v", tc, err)
	}
	tc, err = Server("hl7", cert, key, cert)
	if err != nil || tc.ClientAuth != tls.RequireAndVerifyClientCert {
		t.Fatalf("mutual: %v %v", tc.ClientAuth, err)
	}
	garbage := filepath.Join(dir, "g.pem")
	os.WriteFile(garbage, []byte("nothing"), 0o600)
	for _, tt := range []struct{ cert, key, ca, want string }{
		{garbage, key, "", "hl7.tls_cert"},
		{cert, key, garbage, "hl7.tls_client_ca"},
		{cert, key, filepath.Join(dir, "missing"), "hl7.tls_client_ca"},
	} {
		if _, err := Server("hl7", tt.cert, tt.key, tt.ca); err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("err=%v, want one naming %s", err, tt.want)
		}
	}
}

// Check reports every problem of the files, each naming its key, as Server would meet
// them one at a time.
func TestCheck(t *testing.T) {
	dir := t.TempDir()
	cert, key := writePair(t, dir)
	other := t.TempDir()
	_, otherKey := writePair(t, other)
	garbage := filepath.Join(dir, "g.pem")
	os.WriteFile(garbage, []byte("nothing"), 0o600)
	missing := filepath.Join(dir, "missing.pem")
	for _, tt := range []struct {
		name          string
		cert, key, ca string
		want          []string
	}{
		{"good", cert, key, cert, nil},
		{"both missing", missing, missing, "", []string{"syslog.tls_cert: \"" + missing + "\": no such file", "syslog.tls_key: \"" + missing + "\": no such file"}},
		{"not a pair", cert, otherKey, "", []string{"syslog.tls_cert: \"" + cert + "\": with syslog.tls_key " + otherKey + ": not a valid certificate and key pair: private key does not match public key"}},
		{"CA not PEM", cert, key, garbage, []string{"syslog.tls_client_ca: \"" + garbage + "\": no PEM certificate found"}},
		{"CA a folder", cert, key, dir, []string{"syslog.tls_client_ca: \"" + dir + "\": is a folder, not a file"}},
		{"no cert", "", key, "", []string{"syslog.tls_cert: required"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var got []string
			for _, e := range Check("syslog", tt.cert, tt.key, tt.ca) {
				got = append(got, e.Error())
			}
			if strings.Join(got, "\n") != strings.Join(tt.want, "\n") {
				t.Errorf("Check:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(tt.want, "\n"))
			}
		})
	}
}
