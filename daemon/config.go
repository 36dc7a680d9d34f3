// Package daemon wires the appliance together: it loads and validates the config, opens
// keys and spool, runs the collectors, records self-audit events, serves the admin
// endpoint, and shuts everything down in order.
package daemon

import (
	_ "embed"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/edgeaudit/edgeaudit/collectors/fhir"
	"github.com/edgeaudit/edgeaudit/collectors/hl7"
	"github.com/edgeaudit/edgeaudit/collectors/syslog"
	"github.com/edgeaudit/edgeaudit/internal/configerr"
	"github.com/edgeaudit/edgeaudit/internal/listenaddr"
	"github.com/edgeaudit/edgeaudit/spool"
	"github.com/edgeaudit/edgeaudit/uplink"
)

// Defaults of the zero-config daemon (`edgeaudit run` with no flags): unprivileged
// loopback ports and a data folder in the working directory, so it runs anywhere without
// root. Packaged installs ship a config that points at /var/lib/edgeaudit.
const (
	// DefaultSite names the zero-config daemon's site; a config file must name its own
	// (site: required), and `run` says in its start log which one it uses.
	DefaultSite      = "site"
	DefaultDataDir   = "edgeaudit-data"
	DefaultSyslogUDP = "127.0.0.1:5514"
	DefaultSyslogTCP = "127.0.0.1:5514"
	DefaultAdmin     = "127.0.0.1:9780"
	DefaultHL7MLLP   = "127.0.0.1:2575"
	// DefaultFHIRHTTP is plain HTTP, so it is not 443 or 8443, which people read as
	// HTTPS, nor 8080, where PACS servers (dcm4chee-arc, Tomcat viewers) listen: the
	// admin endpoint's neighbour. With fhir.tls_cert, the usual HTTPS port is
	// DefaultFHIRHTTPS.
	DefaultFHIRHTTP        = "127.0.0.1:9781"
	DefaultFHIRHTTPS       = ":8443"
	DefaultShutdownTimeout = 8 * time.Second // below systemd's TimeoutStopSec (packaging sets 15s)
	DefaultLogLevel        = "info"
	// DefaultUplinkBroker is the zero-config uplink: a broker on this machine (the
	// embedded one of `edgeaudit receive`, or the demo's); it retries in the
	// background while none answers.
	DefaultUplinkBroker = "tcp://127.0.0.1:1883"
)

// SampleConfig is the commented sample `edgeaudit config` prints.
//
//go:embed sample.yaml
var SampleConfig string

// Config is the whole config file.
type Config struct {
	// Site and Device name this appliance in every batch header and MQTT topic. Site is
	// required in a config file (DefaultSite without one); Device defaults to the host
	// name's first label.
	Site   string `yaml:"site"`
	Device string `yaml:"device"`
	// DataDir holds the spool and the software keys (mode 0700).
	DataDir string `yaml:"data_dir"`

	Syslog  syslog.Config `yaml:"syslog"`
	HL7     hl7.Config    `yaml:"hl7"`
	FHIR    fhir.Config   `yaml:"fhir"`
	Batch   BatchConfig   `yaml:"batch"`
	Spool   SpoolConfig   `yaml:"spool"`
	Privacy PrivacyConfig `yaml:"privacy"`
	// Uplink sends sealed batches to central; a file without `uplink:` has none.
	Uplink UplinkSection `yaml:"uplink"`
	// NTP checks the clock; its evidence goes into every batch header.
	NTP NTPSection `yaml:"ntp"`
	// Keys says where the signing and data keys live (a TPM, or software).
	Keys KeysConfig `yaml:"keys"`
	// Receive is central's section (`edgeaudit receive`); one file may serve both, so
	// the appliance accepts it and leaves it alone.
	Receive yaml.Node `yaml:"receive"`

	// Admin is the loopback HTTP address of /metrics, /healthz and the privileged
	// requests (host:port), or a unix socket (unix:/run/edgeaudit/admin.sock, mode
	// 0660); "" disables it.
	Admin string `yaml:"admin"`
	// ShutdownTimeout bounds the orderly stop (collectors, seal, close).
	ShutdownTimeout time.Duration `yaml:"shutdown_timeout"`
	// LogLevel is debug|info|warn|error.
	LogLevel string `yaml:"log_level"`
	// MemoryLimit is the Go runtime's soft memory limit in bytes (DefaultMemoryLimit;
	// -1 = none); the GOMEMLIMIT environment variable overrides it (memory.go).
	MemoryLimit int64 `yaml:"memory_limit"`

	// src is what LoadConfig kept of the file (lines of the keys, its problems); nil
	// for a config built in code.
	src *source
}

// BatchConfig is the `batch:` section.
type BatchConfig struct {
	MaxEvents int           `yaml:"max_events"`
	MaxBytes  int64         `yaml:"max_bytes"`
	MaxAge    time.Duration `yaml:"max_age"`
	Heartbeat time.Duration `yaml:"heartbeat"`
}

// SpoolConfig is the `spool:` section.
type SpoolConfig struct {
	MaxSizeBytes int64         `yaml:"max_size_bytes"`
	MinFreeBytes int64         `yaml:"min_free_bytes"`
	Retention    time.Duration `yaml:"retention"`
	QueueSize    int           `yaml:"queue_size"`
	CommitEvents int           `yaml:"commit_events"`
	// See spool.Config for these.
	EvidenceReserveBytes int64         `yaml:"evidence_reserve_bytes"`
	CloseGrace           time.Duration `yaml:"close_grace"`
	ScrubInterval        time.Duration `yaml:"scrub_interval"`
	ScrubRate            int64         `yaml:"scrub_rate"`
	// Encrypt stores events encrypted under the data key (AES-256-GCM), so that a
	// copied disk or spool.db shows none of them (default true; nil = the default).
	// Turning it off keeps what is stored encrypted readable: new events go in clear.
	Encrypt *bool `yaml:"encrypt"`
}

// eventsAtRest names how new events are stored, for the start event.
func eventsAtRest(c *Config) string {
	if c.SpoolEncrypt() {
		return "aes-256-gcm"
	}
	return "clear"
}

// SpoolEncrypt is spool.encrypt with its default, true.
func (c *Config) SpoolEncrypt() bool { return c.Spool.Encrypt == nil || *c.Spool.Encrypt }

// SpoolOptions are the spool's options for this config and keys: the signer, the data
// key (always, so that events stored encrypted stay readable), and encryption of new
// events as spool.encrypt says. The caller adds the logger and the hooks.
func (c *Config) SpoolOptions(keys *Keyring) spool.Options {
	return spool.Options{Site: c.Site, Device: c.Device, Signer: keys.Signer, DataKey: keys.DataKey, Encrypt: c.SpoolEncrypt()}
}

// SpoolConfig returns the spool package's config.
func (c *Config) SpoolConfig() spool.Config {
	return spool.Config{
		MaxEvents: c.Batch.MaxEvents, MaxBytes: c.Batch.MaxBytes, MaxAge: c.Batch.MaxAge, Heartbeat: c.Batch.Heartbeat,
		MaxSizeBytes: c.Spool.MaxSizeBytes, MinFreeBytes: c.Spool.MinFreeBytes, Retention: c.Spool.Retention,
		QueueSize: c.Spool.QueueSize, CommitEvents: c.Spool.CommitEvents,
		EvidenceReserveBytes: c.Spool.EvidenceReserveBytes, CloseGrace: c.Spool.CloseGrace,
		ScrubInterval: c.Spool.ScrubInterval, ScrubRate: c.Spool.ScrubRate,
	}
}

// SpoolPath is the bbolt file.
func (c *Config) SpoolPath() string { return filepath.Join(c.DataDir, "spool.db") }

// KeyPath is the software signing key.
func (c *Config) KeyPath() string { return filepath.Join(c.DataDir, "keys", "signing.key") }

// PublicKeyPath is the public half, the trust anchor for verify.
func (c *Config) PublicKeyPath() string { return filepath.Join(c.DataDir, "keys", "signing.pub") }

// DefaultConfig is the zero-config daemon (`edgeaudit run` without -config): every
// listener on its default loopback address, an uplink to a broker on this machine, the
// clock checked against DefaultServer. SetDefaults fills the rest.
func DefaultConfig() Config {
	c := Config{
		Site:    DefaultSite,
		DataDir: DefaultDataDir,
		Syslog:  syslog.Config{UDP: DefaultSyslogUDP, TCP: DefaultSyslogTCP},
		HL7:     hl7.Config{MLLP: DefaultHL7MLLP},
		FHIR:    fhir.Config{HTTP: DefaultFHIRHTTP},
		Admin:   DefaultAdmin,
		Uplink:  UplinkSection{Config: uplink.Config{Broker: DefaultUplinkBroker}},
	}
	return c
}

// HostDevice is the default device name: the host name's first label ("" when the
// host name is unknown).
func HostDevice() string {
	h, err := os.Hostname()
	if err != nil {
		return ""
	}
	h, _, _ = strings.Cut(h, ".")
	return h
}

var nameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$`)

// drainMargin is what the shutdown budget keeps beyond the collectors' drain: the rest
// of the syslog drain's counting window, the stop event, the seal, the spool's close.
const drainMargin = 3 * time.Second

// SetDefaults fills what the file left empty with the defaults: this is where they
// live (the sample config shows them, and a test keeps the two equal). Sections a
// config file leaves out stay off (uplink, ntp, hl7, fhir); their keys get defaults
// only when the section is on. Site is not defaulted: a file must name it.
func (c *Config) SetDefaults() {
	if c.Device == "" {
		c.Device = HostDevice()
	}
	if c.DataDir == "" {
		c.DataDir = DefaultDataDir
	}
	if c.ShutdownTimeout == 0 {
		c.ShutdownTimeout = DefaultShutdownTimeout
	}
	if c.LogLevel == "" {
		c.LogLevel = DefaultLogLevel
	}
	if c.MemoryLimit == 0 {
		c.MemoryLimit = DefaultMemoryLimit
	}
	c.Syslog.SetDefaults()
	c.HL7.SetDefaults()
	c.FHIR.SetDefaults()
	sc := c.SpoolConfig()
	sc.SetDefaults()
	c.Batch = BatchConfig{MaxEvents: sc.MaxEvents, MaxBytes: sc.MaxBytes, MaxAge: sc.MaxAge, Heartbeat: sc.Heartbeat}
	c.Spool.MaxSizeBytes, c.Spool.MinFreeBytes, c.Spool.Retention = sc.MaxSizeBytes, sc.MinFreeBytes, sc.Retention
	c.Spool.QueueSize, c.Spool.CommitEvents = sc.QueueSize, sc.CommitEvents
	c.Spool.EvidenceReserveBytes, c.Spool.CloseGrace = sc.EvidenceReserveBytes, sc.CloseGrace
	c.Spool.ScrubInterval, c.Spool.ScrubRate = sc.ScrubInterval, sc.ScrubRate
	if c.Spool.Encrypt == nil {
		c.Spool.Encrypt = new(true)
	}
	if c.Privacy.Redact == nil {
		c.Privacy.Redact = new(true)
	}
	if c.Privacy.SeenIDs == 0 {
		c.Privacy.SeenIDs = DefaultSeenIDs
	}
	if c.uplinkEnabled() {
		c.Uplink.setDefaults()
		u := c.UplinkConfig()
		u.ApplyDefaults()
		u.Site, u.Device = "", ""
		c.Uplink.Config = u
	}
	c.Keys.setDefaults()
	if !c.NTP.Off {
		c.NTP.ApplyDefaults()
	}
}

// Validate checks every value and combination before anything starts (the files the
// config names are Check's); every problem is reported, joined, each naming its key.
func (c *Config) Validate() error {
	var errs []error
	bad := func(field string, v any, msg string) {
		errs = append(errs, &configerr.Error{Field: field, Value: fmt.Sprint(v), Err: errors.New(msg)})
	}
	// Site and device become MQTT topic levels and file names: keep them plain.
	switch {
	case c.Site == "":
		bad("site", "", "required: the name of this imaging center in every batch header and topic")
	case !nameRE.MatchString(c.Site):
		bad("site", c.Site, "must be 1-64 letters, digits, '.', '_' or '-'")
	}
	switch {
	case c.Device == "":
		bad("device", "", "required: the host name is unknown; name this appliance (1-64 letters, digits, '.', '_' or '-')")
	case !nameRE.MatchString(c.Device):
		bad("device", c.Device, "must be 1-64 letters, digits, '.', '_' or '-' (the default is the host name's first label)")
	}
	if c.DataDir == "" {
		bad("data_dir", c.DataDir, "must not be empty")
	}
	if c.Admin != "" {
		if err := checkAdmin(c.Admin, listenaddr.Check); err != nil {
			bad("admin", c.Admin, err.Error())
		}
	}
	if c.ShutdownTimeout < time.Second || c.ShutdownTimeout > 5*time.Minute {
		bad("shutdown_timeout", c.ShutdownTimeout, "must be between 1s and 5m")
	}
	switch c.LogLevel {
	case "debug", "info", "warn", "error":
	default:
		bad("log_level", c.LogLevel, "must be debug, info, warn or error")
	}
	if msg := c.memoryLimitProblem(); msg != "" {
		bad("memory_limit", c.MemoryLimit, msg)
	}
	errs = append(errs, c.Syslog.Validate())
	// A collector's drain at stop, and the seal and close after it, must fit the
	// shutdown budget; the syslog drain may run about a second past its timeout.
	if d := c.Syslog.DrainTimeout; d > c.ShutdownTimeout-drainMargin {
		bad("syslog.drain_timeout", d, fmt.Sprintf("must be at most shutdown_timeout (%s) minus %s", c.ShutdownTimeout, drainMargin))
	}
	if d := c.HL7.DrainTimeout; c.HL7.Enabled() && d > c.ShutdownTimeout-drainMargin {
		bad("hl7.drain_timeout", d, fmt.Sprintf("must be at most shutdown_timeout (%s) minus %s", c.ShutdownTimeout, drainMargin))
	}
	if c.HL7.Enabled() {
		errs = append(errs, c.HL7.Validate())
	}
	if c.FHIR.Enabled() {
		errs = append(errs, c.FHIR.Validate())
	}
	errs = append(errs, c.sameAddress()...)
	if c.uplinkEnabled() {
		uc := c.UplinkConfig()
		uc.ApplyDefaults()
		for _, e := range configerr.Flatten(uc.Validate()) {
			if f := configerr.FieldOf(e); f != "site" && f != "device" { // said above
				errs = append(errs, e)
			}
		}
		if d := c.Uplink.DrainTimeout; d > 0 && c.Syslog.DrainTimeout+d > c.ShutdownTimeout-drainMargin {
			bad("uplink.drain_timeout", d, fmt.Sprintf("syslog.drain_timeout (%s) plus this must be at most shutdown_timeout (%s) minus %s",
				c.Syslog.DrainTimeout, c.ShutdownTimeout, drainMargin))
		}
	}
	errs = append(errs, c.Keys.Validate())
	if !c.NTP.Off {
		nc := c.NTP.Config
		nc.ApplyDefaults()
		errs = append(errs, nc.Validate())
	}
	errs = append(errs, c.Privacy.Validate())
	sc := c.SpoolConfig()
	sc.SetDefaults()
	for _, e := range configerr.Flatten(sc.Validate()) {
		var se *spool.ConfigError
		if errors.As(e, &se) {
			e = &configerr.Error{Field: se.Field, Value: fmt.Sprint(se.Value), Err: errors.New(se.Msg)}
		}
		errs = append(errs, e)
	}
	return c.locate(errors.Join(errs...))
}

// listener is one address the daemon binds, with its key and network.
type listener struct{ key, network, addr string }

// listeners are the addresses the config binds (empty ones are off).
func (c *Config) listeners() []listener {
	all := []listener{
		{"syslog.udp", "udp", c.Syslog.UDP},
		{"syslog.tcp", "tcp", c.Syslog.TCP},
		{"syslog.tls", "tcp", c.Syslog.TLS},
		{"syslog.relp", "tcp", c.Syslog.RELP},
		{"syslog.relp_tls", "tcp", c.Syslog.RELPTLS},
		{"hl7.mllp", "tcp", c.HL7.MLLP},
		{"fhir.http", "tcp", c.FHIR.HTTP},
	}
	// A unix socket is not a port: listenAdmin deals with a stale one.
	if network, _ := AdminNetwork(c.Admin); network == "tcp" {
		all = append(all, listener{"admin", "tcp", c.Admin})
	}
	var out []listener
	for _, l := range all {
		if l.addr != "" {
			out = append(out, l)
		}
	}
	return out
}

// sameAddress reports two listeners of one network on one port and host (or one on
// every interface): the second could never bind.
func (c *Config) sameAddress() []error {
	var errs []error
	ls := c.listeners()
	for i, a := range ls {
		ah, ap, err := net.SplitHostPort(a.addr)
		if err != nil || ap == "0" {
			continue
		}
		for _, b := range ls[:i] {
			bh, bp, err := net.SplitHostPort(b.addr)
			if err != nil || b.network != a.network || bp != ap {
				continue
			}
			if ah == bh || anyHost(ah) || anyHost(bh) {
				errs = append(errs, &configerr.Error{Field: a.key, Value: a.addr,
					Err: fmt.Errorf("the same %s port as %s (%s): give each listener its own", strings.ToUpper(a.network), b.key, b.addr)})
				break
			}
		}
	}
	return errs
}

func anyHost(h string) bool { return h == "" || h == "0.0.0.0" || h == "::" }

// Warnings are what the config allows but probably does not mean; `run` logs them and
// `config -check` prints them. (Every listener off is the daemon's own warning.)
func (c *Config) Warnings() []string {
	var w []string
	if c.FHIR.Enabled() {
		_, port, _ := net.SplitHostPort(c.FHIR.HTTP)
		switch {
		case !c.FHIR.TLS() && (port == "443" || port == "8443"):
			w = append(w, fmt.Sprintf("fhir.http: %q is plain HTTP on port %s, which senders read as HTTPS: set fhir.tls_cert and fhir.tls_key, or use another port (the default is %s)", c.FHIR.HTTP, port, DefaultFHIRHTTP))
		case c.FHIR.TLS() && (port == "80" || port == "8080"):
			w = append(w, fmt.Sprintf("fhir.http: %q is HTTPS (fhir.tls_cert is set) on port %s, which senders read as plain HTTP: use 443 or 8443", c.FHIR.HTTP, port))
		}
	}
	return w
}
