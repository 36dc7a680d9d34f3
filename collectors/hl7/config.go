package hl7

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
	// DefaultMaxMessageSize is 1 MiB: HL7 v2 messages are usually a few KiB, but ORU
	// results may embed base64 PDFs or CDA documents.
	DefaultMaxMessageSize = 1 << 20
	// DefaultMaxConnections bounds the MLLP connections open at once.
	DefaultMaxConnections = 64
	// The default max_connections_per_ip is a quarter of max_connections (at least 1).
	defaultPerIPDivisor = 4
	// DefaultHandshakeTimeout bounds the TLS handshake, separately from the idle timeout.
	DefaultHandshakeTimeout = 10 * time.Second
	// DefaultDrainTimeout is how long a stop waits for the message in hand to commit.
	DefaultDrainTimeout = 3 * time.Second
	// DefaultIdleTimeout closes a connection that sent nothing for this long. Interface
	// engines keep MLLP connections open for hours, so this is generous.
	DefaultIdleTimeout = 10 * time.Minute
	// DefaultACKMode answers each message as it asks: original mode when MSH-15 and
	// MSH-16 are both empty, enhanced mode otherwise (HL7 v2.5.1 chapter 2).
	DefaultACKMode = ACKModeAuto
)

// ACK modes (key `hl7.ack_mode`). Whatever the mode, an ACK is written only after the
// message's event is committed, and at most one ACK answers a message.
const (
	// ACKModeAuto honours what each message asks. MSH-15 and MSH-16 both empty:
	// original mode, AA/AE/AR. Either valued: enhanced mode, a commit ACK CA/CE/CR as
	// MSH-15 asks (AL always, NE never, ER on error, SU on success; empty or unknown
	// counts as AL); when MSH-15 asks for none, an application ACK AA/AE/AR as MSH-16
	// asks (the commit is all the processing an audit sink does); else nothing.
	ACKModeAuto = "auto"
	// ACKModeOriginal answers every message with AA/AE/AR, whatever MSH-15/16 say: for
	// senders that fill MSH-15/16 but wait for an original-mode ACK.
	ACKModeOriginal = "original"
	// ACKModeEnhanced treats every message as enhanced mode, even with MSH-15 and MSH-16
	// empty (then a CA/CE/CR always): for senders that wait for commit ACKs but do not
	// ask for them.
	ACKModeEnhanced = "enhanced"
)

// Bounds checked by Validate.
const (
	// MinMaxMessageSize is the smallest allowed max_message_size.
	MinMaxMessageSize = 4 << 10
	// MaxMaxMessageSize caps max_message_size so one sender cannot make a connection hold
	// an arbitrarily large buffer.
	MaxMaxMessageSize = 64 << 20
	// MaxDrainTimeout keeps the drain inside any sane shutdown budget.
	MaxDrainTimeout = time.Minute
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
	// MaxConnections bounds open connections. When they are all open, the one idle the
	// longest (at least a second) is closed to make room for a new one; if all are
	// active, the new one is closed at once. Both are reported. Zero means
	// DefaultMaxConnections.
	MaxConnections int `yaml:"max_connections"`
	// MaxConnectionsPerIP bounds the connections of one sender IP. At the limit, that
	// IP's own longest-idle connection is closed to make room (never another sender's);
	// if all of them are active, the new one is refused. Zero means a quarter of
	// MaxConnections (at least 1); it may not exceed MaxConnections. An interface engine
	// that keeps more channels open to us than that needs it raised.
	MaxConnectionsPerIP int `yaml:"max_connections_per_ip"`
	// HandshakeTimeout bounds a TLS handshake. Zero means DefaultHandshakeTimeout.
	HandshakeTimeout time.Duration `yaml:"handshake_timeout"`
	// DrainTimeout is how long a stop waits for each connection's message in hand to be
	// committed and acknowledged. Zero means DefaultDrainTimeout.
	DrainTimeout time.Duration `yaml:"drain_timeout"`
	// IdleTimeout is the read deadline of each connection. Zero means DefaultIdleTimeout.
	IdleTimeout time.Duration `yaml:"idle_timeout"`
	// ACKMode is "auto" (as each message asks in MSH-15/MSH-16), "original" (always
	// AA/AE/AR) or "enhanced" (always enhanced-mode rules). Empty means "auto".
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
	if c.MaxConnectionsPerIP < 1 || c.MaxConnectionsPerIP > max(c.MaxConnections, 1) {
		bad("max_connections_per_ip", strconv.Itoa(c.MaxConnectionsPerIP), "must be between 1 and hl7.max_connections ("+strconv.Itoa(c.MaxConnections)+")")
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
	if c.ACKMode != ACKModeAuto && c.ACKMode != ACKModeOriginal && c.ACKMode != ACKModeEnhanced {
		bad("ack_mode", c.ACKMode, `must be "auto", "original" or "enhanced"`)
	}
	if c.Timezone != "" {
		if _, err := time.LoadLocation(c.Timezone); err != nil {
			bad("timezone", c.Timezone, "unknown time zone")
		}
	}
	return errors.Join(errs...)
}

// Check reads the files the config names, as New will (call it after Validate): the
// TLS certificate and key (a valid pair) and the client CAs. It returns every problem
// found, joined, each a *ConfigError.
func (c Config) Check() error {
	if !c.Enabled() || !c.TLS() {
		return nil
	}
	return errors.Join(tlsconf.Check("hl7", c.TLSCert, c.TLSKey, c.TLSClientCA)...)
}
