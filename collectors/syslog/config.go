package syslog

import (
	"errors"
	"github.com/edgeaudit/edgeaudit/internal/configerr"
	"github.com/edgeaudit/edgeaudit/internal/listenaddr"
	"github.com/edgeaudit/edgeaudit/internal/tlsconf"
	"strconv"
	"time"
)

// Defaults applied by SetDefaults to zero fields.
const (
	// DefaultMaxMessageSize is 64 KiB: twice what DICOM PS3.15 A.6 requires of TLS
	// receivers (32 KiB), so a large ATNA XML message fits with room to spare.
	DefaultMaxMessageSize = 64 << 10
	// DefaultMaxConnections bounds the TCP and TLS connections open at once, together.
	DefaultMaxConnections = 256
	// The default max_connections_per_ip is a quarter of max_connections (at least 1):
	// one sender cannot take every slot, and a site's busiest sender still has plenty.
	defaultPerIPDivisor = 4
	// DefaultHandshakeTimeout bounds the TLS handshake, separately from the idle timeout,
	// so connections that never send a ClientHello cannot hold slots for minutes.
	DefaultHandshakeTimeout = 10 * time.Second
	// DefaultDrainTimeout is how long a stop keeps reading what senders have queued; it
	// sits well inside the daemon's 8 s shutdown budget.
	DefaultDrainTimeout = 3 * time.Second
	// DefaultIdleTimeout closes a connection that sent nothing for this long.
	DefaultIdleTimeout = 5 * time.Minute
	// DefaultUDPReadBuffer is the SO_RCVBUF asked for the UDP socket. The kernel caps it at
	// net.core.rmem_max unless the process has CAP_NET_ADMIN.
	DefaultUDPReadBuffer = 4 << 20
)

// Bounds checked by Validate.
const (
	// MinMaxMessageSize is the smallest allowed max_message_size: RFC 5424 §6.1 says
	// receivers SHOULD accept 2048 octets.
	MinMaxMessageSize = 2048
	// MaxMaxMessageSize caps max_message_size so one sender cannot make a connection hold
	// an arbitrarily large buffer.
	MaxMaxMessageSize = 16 << 20
	// maxUDPReadBuffer is a sanity cap; nobody needs a 1 GiB socket buffer.
	maxUDPReadBuffer = 1 << 30
	// MaxDrainTimeout keeps the drain inside any sane shutdown budget (the daemon's must
	// be larger; it checks).
	MaxDrainTimeout = time.Minute
)

// Config is the syslog collector's part of the daemon config (key `syslog`).
type Config struct {
	// UDP is the RFC 5426 listen address, e.g. "127.0.0.1:5514". Empty disables it.
	UDP string `yaml:"udp"`
	// TCP is the RFC 6587 listen address (octet counting or LF framing). Empty disables it.
	TCP string `yaml:"tcp"`
	// TLS is the RFC 5425 listen address. Empty disables it; when set, TLSCert and TLSKey
	// are required.
	TLS string `yaml:"tls"`
	// TLSCert and TLSKey are PEM files with the server certificate (chain) and its key.
	TLSCert string `yaml:"tls_cert"`
	TLSKey  string `yaml:"tls_key"`
	// TLSClientCA is a PEM file of CAs. When set, clients must present a certificate that
	// chains to one of them (mutual authentication as IHE ATNA asks); when empty, any
	// client may connect.
	TLSClientCA string `yaml:"tls_client_ca"`

	// MaxMessageSize is the largest frame kept, in bytes; larger ones are rejected and
	// reported. Zero means DefaultMaxMessageSize. DICOM PS3.15 needs at least 32768.
	MaxMessageSize int `yaml:"max_message_size"`
	// MaxConnections bounds open TCP+TLS connections. When they are all open, the one
	// idle the longest (at least a second) is closed to make room for a new one; if all
	// are active, the new one is closed at once. Both are reported. Zero means
	// DefaultMaxConnections.
	MaxConnections int `yaml:"max_connections"`
	// MaxConnectionsPerIP bounds the connections of one sender IP. At the limit, that
	// IP's own longest-idle connection is closed to make room (never another sender's);
	// if all of them are active, the new one is refused. Zero means a quarter of
	// MaxConnections (at least 1); it may not exceed MaxConnections.
	MaxConnectionsPerIP int `yaml:"max_connections_per_ip"`
	// HandshakeTimeout bounds a TLS handshake. Zero means DefaultHandshakeTimeout.
	HandshakeTimeout time.Duration `yaml:"handshake_timeout"`
	// DrainTimeout is how long a stop keeps reading and appending what the connections
	// and the UDP socket have queued; what is left after it is counted and reported.
	// Zero means DefaultDrainTimeout. Keep it below the daemon's shutdown_timeout.
	DrainTimeout time.Duration `yaml:"drain_timeout"`
	// IdleTimeout is the read deadline of each connection. Zero means DefaultIdleTimeout.
	IdleTimeout time.Duration `yaml:"idle_timeout"`
	// UDPReadBuffer is the SO_RCVBUF size in bytes. Zero means DefaultUDPReadBuffer.
	UDPReadBuffer int `yaml:"udp_read_buffer"`
	// RFC3164TimeZone is the IANA zone that BSD-syslog timestamps (which carry none) are
	// read in, e.g. "Europe/Berlin" or "UTC". Empty means the appliance's local zone,
	// which is what rsyslog assumes too.
	RFC3164TimeZone string `yaml:"rfc3164_timezone"`

	// RELPConfig holds the RELP listener's keys (relp, relp_tls, relp_window,
	// relp_full_wait; see relp.go), inline beside the other listeners.
	RELPConfig `yaml:",inline"`
}

// SetDefaults fills zero fields with the Default* values.
func (c *Config) SetDefaults() {
	if c.MaxMessageSize == 0 {
		c.MaxMessageSize = DefaultMaxMessageSize
	}
	if c.MaxConnections == 0 {
		c.MaxConnections = DefaultMaxConnections
	}
	if c.MaxConnectionsPerIP == 0 {
		c.MaxConnectionsPerIP = max(c.MaxConnections/defaultPerIPDivisor, 1)
	}
	if c.HandshakeTimeout == 0 {
		c.HandshakeTimeout = DefaultHandshakeTimeout
	}
	if c.DrainTimeout == 0 {
		c.DrainTimeout = DefaultDrainTimeout
	}
	if c.IdleTimeout == 0 {
		c.IdleTimeout = DefaultIdleTimeout
	}
	if c.UDPReadBuffer == 0 {
		c.UDPReadBuffer = DefaultUDPReadBuffer
	}
	c.RELPConfig.SetDefaults()
}

// Enabled reports whether at least one listener is configured.
func (c Config) Enabled() bool { return c.UDP != "" || c.TCP != "" || c.TLS != "" || c.RELPEnabled() }

// ConfigError is one invalid config value, naming the YAML field (e.g. "syslog.tls_cert").
type ConfigError = configerr.Error

// Validate checks the config as it will be used (call SetDefaults first; zero sizes are
// refused here). It returns every problem found, joined, each a *ConfigError.
func (c Config) Validate() error {
	var errs []error
	bad := func(field, value, msg string) {
		errs = append(errs, &ConfigError{Field: "syslog." + field, Value: value, Err: errors.New(msg)})
	}
	for _, a := range []struct{ field, addr string }{{"udp", c.UDP}, {"tcp", c.TCP}, {"tls", c.TLS}} {
		if a.addr == "" {
			continue
		}
		if err := listenaddr.Check(a.addr); err != nil {
			errs = append(errs, &ConfigError{Field: "syslog." + a.field, Value: a.addr, Err: err})
		}
	}
	if c.TLS != "" {
		if c.TLSCert == "" {
			bad("tls_cert", "", "required when syslog.tls is set")
		}
		if c.TLSKey == "" {
			bad("tls_key", "", "required when syslog.tls is set")
		}
	}
	if c.MaxMessageSize < MinMaxMessageSize || c.MaxMessageSize > MaxMaxMessageSize {
		bad("max_message_size", strconv.Itoa(c.MaxMessageSize),
			"must be between "+strconv.Itoa(MinMaxMessageSize)+" and "+strconv.Itoa(MaxMaxMessageSize))
	}
	if c.MaxConnections < 1 {
		bad("max_connections", strconv.Itoa(c.MaxConnections), "must be at least 1")
	}
	if c.MaxConnectionsPerIP < 1 || c.MaxConnectionsPerIP > max(c.MaxConnections, 1) {
		bad("max_connections_per_ip", strconv.Itoa(c.MaxConnectionsPerIP), "must be between 1 and syslog.max_connections ("+strconv.Itoa(c.MaxConnections)+")")
	}
	if c.HandshakeTimeout <= 0 {
		bad("handshake_timeout", c.HandshakeTimeout.String(), "must be positive")
	}
	if c.DrainTimeout <= 0 || c.DrainTimeout > MaxDrainTimeout {
		bad("drain_timeout", c.DrainTimeout.String(), "must be positive and at most "+MaxDrainTimeout.String())
	}
	if c.IdleTimeout <= 0 {
		bad("idle_timeout", c.IdleTimeout.String(), "must be positive")
	}
	if c.UDPReadBuffer < 1 || c.UDPReadBuffer > maxUDPReadBuffer {
		bad("udp_read_buffer", strconv.Itoa(c.UDPReadBuffer), "must be between 1 and "+strconv.Itoa(maxUDPReadBuffer))
	}
	if c.RFC3164TimeZone != "" {
		if _, err := time.LoadLocation(c.RFC3164TimeZone); err != nil {
			bad("rfc3164_timezone", c.RFC3164TimeZone, "unknown time zone")
		}
	}
	errs = append(errs, c.ValidateRELP(c.TLSCert, c.TLSKey)...)
	return errors.Join(errs...)
}

// Check reads the files the config names, as New will (call it after Validate): the
// TLS certificate and key (a valid pair) and the client CAs, when a TLS or RELP-TLS
// listener uses them. It returns every problem found, joined, each a *ConfigError.
func (c Config) Check() error {
	if c.TLS == "" && c.RELPTLS == "" {
		return nil
	}
	return errors.Join(tlsconf.Check("syslog", c.TLSCert, c.TLSKey, c.TLSClientCA)...)
}
