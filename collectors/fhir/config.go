package fhir

import (
	"errors"
	"github.com/edgeaudit/edgeaudit/internal/configerr"
	"github.com/edgeaudit/edgeaudit/internal/listenaddr"
	"github.com/edgeaudit/edgeaudit/internal/tlsconf"
	"strconv"
	"strings"
	"time"
)

// Defaults applied by SetDefaults to zero fields.
const (
	// DefaultMaxBodyBytes is 4 MiB: a Bundle of a few hundred AuditEvents, far more than
	// one ITI-20 feed request normally carries.
	DefaultMaxBodyBytes = 4 << 20
	// DefaultReadTimeout bounds reading one whole request (headers and body).
	DefaultReadTimeout = 30 * time.Second
	// DefaultBasePath is where the FHIR base URL is mounted.
	DefaultBasePath = "/"
	// DefaultMaxInflightBytes is 64 MiB: room for 16 maximum bodies at once, or a few
	// maximum Bundles with their decoded trees, while the daemon stays well under 256 MiB
	// resident whatever the senders do.
	DefaultMaxInflightBytes = 64 << 20
	// DefaultMaxConnections bounds the FHIR connections open at once.
	DefaultMaxConnections = 256
	// DefaultMaxConnectionsPerIP is one sender's share: a sender with its keep-alive
	// pool (HAPI and curl keep a handful) fits many times over, and one address can
	// never take every slot.
	DefaultMaxConnectionsPerIP = 32
)

// Bounds checked by Validate.
const (
	// MinMaxBodyBytes keeps room for one ordinary AuditEvent.
	MinMaxBodyBytes = 4 << 10
	// MaxMaxBodyBytes caps max_body_bytes: the whole body is held in memory.
	MaxMaxBodyBytes = 64 << 20
	// MaxMaxInflightBytes caps max_inflight_bytes at 1 GiB.
	MaxMaxInflightBytes = 1 << 30
)

// Config is the FHIR collector's part of the daemon config (key `fhir`).
type Config struct {
	// HTTP is the listen address, e.g. "127.0.0.1:9781" (plain HTTP) or ":8443" (with
	// TLSCert and TLSKey, HTTPS). Empty disables the collector (the zero-config daemon
	// uses daemon.DefaultFHIRHTTP).
	HTTP string `yaml:"http"`
	// TLSCert and TLSKey are PEM files with the server certificate (chain) and its key.
	// When both are set the listener speaks HTTPS; when both are empty, plain HTTP.
	TLSCert string `yaml:"tls_cert"`
	TLSKey  string `yaml:"tls_key"`
	// TLSClientCA is a PEM file of CAs. When set (HTTPS only), clients must present a
	// certificate that chains to one of them (mutual TLS as IHE ATNA asks).
	TLSClientCA string `yaml:"tls_client_ca"`
	// BearerTokensFile is a file of accepted bearer tokens, one per line (blank lines and
	// lines starting with '#' are skipped). When set, every request needs
	// "Authorization: Bearer <token>". Empty means no token is asked for.
	BearerTokensFile string `yaml:"bearer_tokens_file"`
	// MaxBodyBytes is the largest request body accepted; larger ones get 413. Zero means
	// DefaultMaxBodyBytes.
	MaxBodyBytes int64 `yaml:"max_body_bytes"`
	// ReadTimeout bounds reading one request, headers and body. Zero means
	// DefaultReadTimeout.
	ReadTimeout time.Duration `yaml:"read_timeout"`
	// BasePath is the FHIR base path; it must start and end with '/'. Empty means "/".
	BasePath string `yaml:"base_path"`
	// MaxInflightBytes bounds the memory all requests together may hold for their
	// bodies and decoded resources. A request that does not fit is answered 503 with
	// Retry-After before its body is read. It must be at least max_body_bytes. Zero means
	// DefaultMaxInflightBytes.
	MaxInflightBytes int64 `yaml:"max_inflight_bytes"`
	// MaxConnections bounds the connections open at once; over it the longest-idle one
	// is closed to make room, or the new one is refused. Zero means
	// DefaultMaxConnections.
	MaxConnections int `yaml:"max_connections"`
	// MaxConnectionsPerIP bounds one peer address's connections (at most
	// max_connections). Zero means DefaultMaxConnectionsPerIP, or max_connections when
	// that is smaller.
	MaxConnectionsPerIP int `yaml:"max_connections_per_ip"`
}

// SetDefaults fills zero fields with the Default* values.
func (c *Config) SetDefaults() {
	if c.MaxBodyBytes == 0 {
		c.MaxBodyBytes = DefaultMaxBodyBytes
	}
	if c.ReadTimeout == 0 {
		c.ReadTimeout = DefaultReadTimeout
	}
	if c.BasePath == "" {
		c.BasePath = DefaultBasePath
	}
	if c.MaxInflightBytes == 0 {
		c.MaxInflightBytes = DefaultMaxInflightBytes
	}
	if c.MaxConnections == 0 {
		c.MaxConnections = DefaultMaxConnections
	}
	if c.MaxConnectionsPerIP == 0 {
		c.MaxConnectionsPerIP = min(DefaultMaxConnectionsPerIP, c.MaxConnections)
	}
}

// Enabled reports whether the listener is configured.
func (c Config) Enabled() bool { return c.HTTP != "" }

// TLS reports whether the listener speaks HTTPS.
func (c Config) TLS() bool { return c.TLSCert != "" || c.TLSKey != "" }

// ConfigError is one invalid config value, naming the YAML field (e.g. "fhir.tls_cert").
type ConfigError = configerr.Error

// Validate checks the config as it will be used (call SetDefaults first; zero sizes are
// refused here). It returns every problem found, joined, each a *ConfigError.
func (c Config) Validate() error {
	var errs []error
	bad := func(field, value, msg string) {
		errs = append(errs, &ConfigError{Field: "fhir." + field, Value: value, Err: errors.New(msg)})
	}
	if c.HTTP != "" {
		if err := listenaddr.Check(c.HTTP); err != nil {
			errs = append(errs, &ConfigError{Field: "fhir.http", Value: c.HTTP, Err: err})
		}
	}
	if c.TLSCert != "" && c.TLSKey == "" {
		bad("tls_key", "", "required when fhir.tls_cert is set")
	}
	if c.TLSKey != "" && c.TLSCert == "" {
		bad("tls_cert", "", "required when fhir.tls_key is set")
	}
	if c.TLSClientCA != "" && !c.TLS() {
		bad("tls_client_ca", c.TLSClientCA, "needs fhir.tls_cert and fhir.tls_key (mutual TLS is HTTPS only)")
	}
	if c.MaxBodyBytes < MinMaxBodyBytes || c.MaxBodyBytes > MaxMaxBodyBytes {
		bad("max_body_bytes", strconv.FormatInt(c.MaxBodyBytes, 10),
			"must be between "+strconv.Itoa(MinMaxBodyBytes)+" and "+strconv.Itoa(MaxMaxBodyBytes))
	}
	if c.MaxInflightBytes < c.MaxBodyBytes || c.MaxInflightBytes > MaxMaxInflightBytes {
		bad("max_inflight_bytes", strconv.FormatInt(c.MaxInflightBytes, 10),
			"must be between fhir.max_body_bytes ("+strconv.FormatInt(c.MaxBodyBytes, 10)+") and "+strconv.Itoa(MaxMaxInflightBytes))
	}
	if c.MaxConnections < 1 {
		bad("max_connections", strconv.Itoa(c.MaxConnections), "must be at least 1")
	}
	if c.MaxConnectionsPerIP < 1 || c.MaxConnectionsPerIP > c.MaxConnections {
		bad("max_connections_per_ip", strconv.Itoa(c.MaxConnectionsPerIP),
			"must be between 1 and fhir.max_connections ("+strconv.Itoa(c.MaxConnections)+")")
	}
	if c.ReadTimeout <= 0 {
		bad("read_timeout", c.ReadTimeout.String(), "must be positive")
	}
	if !strings.HasPrefix(c.BasePath, "/") || !strings.HasSuffix(c.BasePath, "/") {
		bad("base_path", c.BasePath, "must start and end with '/'")
	} else if strings.ContainsAny(c.BasePath, "?#% \t") {
		bad("base_path", c.BasePath, "must be a plain path without query, fragment, escapes or spaces")
	}
	return errors.Join(errs...)
}

// Check reads the files the config names, as New will (call it after Validate): the
// TLS certificate and key (a valid pair), the client CAs and the bearer tokens file. It
// returns every problem found, joined, each a *ConfigError.
func (c Config) Check() error {
	if !c.Enabled() {
		return nil
	}
	var errs []error
	if c.TLS() {
		errs = append(errs, tlsconf.Check("fhir", c.TLSCert, c.TLSKey, c.TLSClientCA)...)
	}
	if c.BearerTokensFile != "" {
		if _, err := loadTokens(c.BearerTokensFile); err != nil {
			var ce *ConfigError
			if !errors.As(err, &ce) {
				err = &ConfigError{Field: "fhir.bearer_tokens_file", Value: c.BearerTokensFile, Err: tlsconf.FileError(err)}
			}
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}
