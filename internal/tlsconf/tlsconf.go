// Package tlsconf builds the server TLS configuration that every listener shares: a
// certificate from PEM files, TLS 1.2 at least, and, when a client CA file is given,
// mutual authentication (IHE ATNA's node authentication).
package tlsconf

import (
	"crypto/tls"
	"fmt"
)

// Server loads certFile and keyFile and, when clientCAFile is not empty, requires and
// verifies client certificates against it. section names the config section in errors
// ("syslog" gives "syslog.tls_cert").
func Server(section, certFile, keyFile, clientCAFile string) (*tls.Config, error) {
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return nil, fmt.Errorf("load %s.tls_cert %s and %s.tls_key %s: %w", section, certFile, section, keyFile, err)
	}
	tc := &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	if clientCAFile != "" {
		pool, err := LoadCAs(clientCAFile)
		if err != nil {
			return nil, fmt.Errorf("load %s.tls_client_ca %s: %w", section, clientCAFile, err)
		}
		tc.ClientCAs = pool
		tc.ClientAuth = tls.RequireAndVerifyClientCert
	}
	return tc, nil
}
