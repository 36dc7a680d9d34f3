package tlsconf

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io/fs"
	"os"
	"strings"

	"github.com/edgeaudit/edgeaudit/internal/configerr"
)

// Check reads what Server would load, without building anything, and reports every
// problem as a *configerr.Error naming its key (section.tls_cert, section.tls_key,
// section.tls_client_ca): a file missing or unreadable, no PEM in it, a certificate and
// key that are not a pair. An empty clientCAFile is not checked.
func Check(section, certFile, keyFile, clientCAFile string) []error {
	var errs []error
	bad := func(key, file string, err error) {
		errs = append(errs, &configerr.Error{Field: section + "." + key, Value: file, Err: err})
	}
	certOK := readable(certFile, "tls_cert", bad)
	keyOK := readable(keyFile, "tls_key", bad)
	if certOK && keyOK {
		if _, err := tls.LoadX509KeyPair(certFile, keyFile); err != nil {
			bad("tls_cert", certFile, errors.New("with "+section+".tls_key "+keyFile+": not a valid certificate and key pair: "+strings.TrimPrefix(err.Error(), "tls: ")))
		}
	}
	if clientCAFile != "" {
		if readable(clientCAFile, "tls_client_ca", bad) {
			if _, err := LoadCAs(clientCAFile); err != nil {
				bad("tls_client_ca", clientCAFile, err)
			}
		}
	}
	return errs
}

// LoadCAs reads a PEM file of CA certificates into a pool; a file without any is an
// error.
func LoadCAs(file string) (*x509.CertPool, error) {
	pem, err := os.ReadFile(file)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, errors.New("no PEM certificate found")
	}
	return pool, nil
}

// readable reports whether file can be read, and reports why not through bad.
func readable(file, key string, bad func(key, file string, err error)) bool {
	if file == "" {
		bad(key, "", errors.New("required"))
		return false
	}
	f, err := os.Open(file)
	if err != nil {
		bad(key, file, FileError(err))
		return false
	}
	defer f.Close()
	if fi, err := f.Stat(); err == nil && fi.IsDir() {
		bad(key, file, errors.New("is a folder, not a file"))
		return false
	}
	return true
}

// FileError says why a file cannot be opened in words, without the path (the error
// carries it already).
func FileError(err error) error {
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return errors.New("no such file")
	case errors.Is(err, fs.ErrPermission):
		return errors.New("permission denied (the daemon's user must be able to read it)")
	}
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}
