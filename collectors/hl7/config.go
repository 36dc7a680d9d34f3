package hl7

import (
	"errors"
	"github.com/edgeaudit/edgeaudit/internal/configerr"
	"github.com/edgeaudit/edgeaudit/internal/listenaddr"
	"strconv"
	"time"
)

// Defaults applied by SetDefaults to zero fields.
const (
	// DefaultMaxMessageSize is 1 MiB: HL7 v2 messages are usually a few KiB, but ORU
	// results may embed base64 PDFs or CDA documents.
	DefaultMaxMessageSize = 1 << 20
	// DefaultMaxConnections bounds the MLLP connections open at once.
	DefaultMaxConnections = 64
	// DefaultIdleTimeout closes a connection that sent nothing for this long. Interface
	// engines keep MLLP connections open for hours, so this is generous.
	DefaultIdleTimeout = 10 * time.Minute
	// DefaultACKMode answers every message with an application ACK (AA/AE/AR).
	DefaultACKMode = ACKModeOriginal
)

// ACK modes (key `hl7.ack_mode`).
const (
	// ACKModeOriginal answers AA/AE/AR (HL7 v2 original acknowledgement mode).
	ACKModeOriginal = "original"
	// ACKModeEnhanced answers CA/CE/CR commit acknowledgements when the message asks for
	// them in MSH-15, and AA/AE/AR when MSH-15 is empty.
	ACKModeEnhanced = "enhanced"
)

// Bounds checked by Validate.
const (
	// MinMaxMessageSize is the smallest allowed max_message_size.
	MinMaxMessageSize = 4 << 10
	// MaxMaxMessageSize caps max_message_size so one sender cannot make a connection hold
	// an arbitrarily large buffer.
	MaxMaxMessageSize = 64 << 20
)

// Config is the HL7 v2 collector's part of the daemon config (key `hl7`).
type Config struct {
	// MLLP is the listen address, e.g. "127.0.0.1:2575". Empty disables the collector.
	// When TLSCert and TLSKey are set, the listener speaks MLLP over TLS.
	MLLP string `yaml:"mllp"`
	// TLSCert and TLSKey are PEM files with the server certificate (chain) and its key.
	// Both empty means plain TCP.
	TLSCert string `yaml:"tls_cert"`
	TLSKey  string `yaml:"tls_key"`
	// TLSClientCA is a PEM file of CAs. When set, clients must present a certificate that
	// chains to one of them; when empty, any client may connect.
	TLSClientCA string `yaml:"tls_client_ca"`
	// MaxMessageSize is the largest MLLP block kept, in bytes; larger ones are discarded,
	// reported and answered with AR. Zero means DefaultMaxMessageSize.
	MaxMessageSize int `yaml:"max_message_size"`
	// MaxConnections bounds open connections. Zero means DefaultMaxConnections.
	MaxConnections int `yaml:"max_connections"`
	// IdleTimeout is the read deadline of each connection. Zero means DefaultIdleTimeout.
	IdleTimeout time.Duration `yaml:"idle_timeout"`
	// ACKMode is "original" (AA/AE/AR) or "enhanced" (CA/CE/CR when MSH-15 asks for a
	// commit acknowledgement). Empty means "original".
	ACKMode string `yaml:"ack_mode"`
	// Timezone is the IANA zone in which MSH-7 and PID-7 times without an offset are
	// read, e.g. "Europe/Berlin". Empty means the appliance's local zone.
	Timezone string `yaml:"timezone"`
}

// SetDefaults fills zero fields with the Default* values.
func (c *Config) SetDefaults() {
	if c.MaxMessageSize == 0 {
		c.MaxMessageSize = DefaultMaxMessageSize
	}
	if c.MaxConnections == 0 {
		c.MaxConnections = DefaultMaxConnections
	}
	if c.IdleTimeout == 0 {
		c.IdleTimeout = DefaultIdleTimeout
	}
	if c.ACKMode == "" {
		c.ACKMode = DefaultACKMode
	}
}

// Enabled reports whether the listener is configured.
func (c Config) Enabled() bool { return c.MLLP != "" }

// TLS reports whether the listener speaks MLLP over TLS.
func (c Config) TLS() bool { return c.TLSCert != "" || c.TLSKey != "" }

// ConfigError is one invalid config value, naming the YAML field (e.g. "hl7.tls_cert").
type ConfigError = configerr.Error

// Validate checks the config as it will be used (call SetDefaults first; zero sizes are
// refused here). It returns every problem found, joined, each a *ConfigError.
func (c Config) Validate() error {
	var errs []error
	bad := func(field, value, msg string) {
		errs = append(errs, &ConfigError{Field: "hl7." + field, Value: value, Err: errors.New(msg)})
	}
	if c.MLLP != "" {
		if err := listenaddr.Check(c.MLLP); err != nil {
			errs = append(errs, &ConfigError{Field: "hl7.mllp", Value: c.MLLP, Err: err})
		}
	}
	if c.TLSCert != "" && c.TLSKey == "" {
		bad("tls_key", "", "required when hl7.tls_cert is set")
	}
	if c.TLSKey != "" && c.TLSCert == "" {
		bad("tls_cert", "", "required when hl7.tls_key is set")
	}
	if c.TLSClientCA != "" && !c.TLS() {
		bad("tls_client_ca", c.TLSClientCA, "needs hl7.tls_cert and hl7.tls_key")
	}
	if c.MaxMessageSize < MinMaxMessageSize || c.MaxMessageSize > MaxMaxMessageSize {
		bad("max_message_size", strconv.Itoa(c.MaxMessageSize),
			"must be between "+strconv.Itoa(MinMaxMessageSize)+" and "+strconv.Itoa(MaxMaxMessageSize))
	}
	if c.MaxConnections < 1 {
		bad("max_connections", strconv.Itoa(c.MaxConnections), "must be at least 1")
	}
	if c.IdleTimeout <= 0 {
		bad("idle_timeout", c.IdleTimeout.String(), "must be positive")
	}
	if c.ACKMode != ACKModeOriginal && c.ACKMode != ACKModeEnhanced {
		bad("ack_mode", c.ACKMode, `must be "original" or "enhanced"`)
	}
	if c.Timezone != "" {
		if _, err := time.LoadLocation(c.Timezone); err != nil {
			bad("timezone", c.Timezone, "unknown time zone")
		}
	}
	return errors.Join(errs...)
}
