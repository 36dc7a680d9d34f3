// Package daemon wires the appliance together: it loads and validates the config, opens
// keys and spool, runs the collectors, records self-audit events, serves the admin
// endpoint, and shuts everything down in order.
package daemon

import (
	_ "embed"
	"errors"
	"fmt"
	"io"
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
	"github.com/edgeaudit/edgeaudit/spool"
	"github.com/edgeaudit/edgeaudit/uplink"
)

// Defaults of the zero-config daemon (`edgeaudit run` with no flags): unprivileged
// loopback ports and a data folder in the working directory, so it runs anywhere without
// root. Packaged installs ship a config that points at /var/lib/edgeaudit.
const (
	DefaultSite            = "site"
	DefaultDataDir         = "edgeaudit-data"
	DefaultSyslogUDP       = "127.0.0.1:5514"
	DefaultSyslogTCP       = "127.0.0.1:5514"
	DefaultAdmin           = "127.0.0.1:9780"
	DefaultHL7MLLP         = "127.0.0.1:2575"
	DefaultFHIRHTTP        = "127.0.0.1:8443"
	DefaultShutdownTimeout = 8 * time.Second // below systemd's TimeoutStopSec (packaging sets 15s)
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
	// Site and Device name this appliance in every batch header and MQTT topic.
	Site   string `yaml:"site"`
	Device string `yaml:"device"` // default: the host name
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

	// Admin is the loopback HTTP address of /metrics and /healthz; "" disables it.
	Admin string `yaml:"admin"`
	// ShutdownTimeout bounds the orderly stop (collectors, seal, close).
	ShutdownTimeout time.Duration `yaml:"shutdown_timeout"`
	// LogLevel is debug|info|warn|error.
	LogLevel string `yaml:"log_level"`
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

// DefaultConfig is the zero-config daemon.
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

// LoadConfig reads path (strict: unknown keys are errors, so a typo never silently
// disables a listener) over the defaults. An empty path gives the defaults.
func LoadConfig(path string) (Config, error) {
	c := DefaultConfig()
	if path == "" {
		return c, nil
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return c, fmt.Errorf("load config: %w", err)
	}
	// A file that names syslog replaces the default listeners entirely: an admin who
	// configures only TLS must not get plain TCP too.
	// The same holds for the clinical listeners: a config file opens only what it names.
	c.Syslog, c.HL7, c.FHIR = syslog.Config{}, hl7.Config{}, fhir.Config{}
	c.Admin = ""
	c.Uplink = UplinkSection{}
	var probe map[string]any
	if err := yaml.Unmarshal(b, &probe); err != nil {
		return c, fmt.Errorf("load config %s: %w", path, err)
	}
	if _, ok := probe["syslog"]; !ok {
		c.Syslog = syslog.Config{UDP: DefaultSyslogUDP, TCP: DefaultSyslogTCP}
	}
	if _, ok := probe["admin"]; !ok {
		c.Admin = DefaultAdmin
	}
	if _, ok := probe["ntp"]; !ok {
		c.NTP = NTPSection{Off: true}
	}
	dec := yaml.NewDecoder(strings.NewReader(string(b)))
	dec.KnownFields(true)
	if err := dec.Decode(&c); err != nil && !errors.Is(err, io.EOF) { // an empty file is all defaults
		return c, fmt.Errorf("load config %s: %w", path, nameFields(b, err))
	}
	// Relative paths in the file are relative to the file, not to wherever the daemon
	// was started from.
	base := filepath.Dir(path)
	for _, p := range []*string{&c.DataDir, &c.Syslog.TLSCert, &c.Syslog.TLSKey, &c.Syslog.TLSClientCA,
		&c.HL7.TLSCert, &c.HL7.TLSKey, &c.HL7.TLSClientCA,
		&c.FHIR.TLSCert, &c.FHIR.TLSKey, &c.FHIR.TLSClientCA, &c.FHIR.BearerTokensFile,
		&c.Uplink.CA, &c.Uplink.Cert, &c.Uplink.Key, &c.Uplink.CentralKey} {
		if *p != "" && !filepath.IsAbs(*p) {
			*p = filepath.Join(base, *p)
		}
	}
	return c, nil
}

// lineRE finds the line numbers in yaml.v3's type errors ("line 2: cannot unmarshal ...").
var lineRE = regexp.MustCompile(`line (\d+): (.*)`)

// nameFields rewrites yaml.v3's type errors, which give only a line number, to name the
// dotted field path too ("batch.max_age"), so a site admin sees which key is wrong.
func nameFields(src []byte, err error) error {
	var te *yaml.TypeError
	if !errors.As(err, &te) {
		return err
	}
	var root yaml.Node
	if yaml.Unmarshal(src, &root) != nil {
		return err
	}
	var errs []error
	for _, msg := range te.Errors {
		m := lineRE.FindStringSubmatch(msg)
		if m == nil {
			errs = append(errs, errors.New(msg))
			continue
		}
		var line int
		fmt.Sscan(m[1], &line)
		if path := fieldAtLine(&root, "", line, m[2]); path != "" {
			errs = append(errs, fmt.Errorf("%s (line %d): %s", path, line, m[2]))
		} else {
			errs = append(errs, errors.New(msg))
		}
	}
	return errors.Join(errs...)
}

// fieldAtLine returns the dotted path of the mapping value on line whose text appears in
// msg, or the first key on that line.
func fieldAtLine(n *yaml.Node, prefix string, line int, msg string) string {
	switch n.Kind {
	case yaml.DocumentNode:
		for _, c := range n.Content {
			if p := fieldAtLine(c, prefix, line, msg); p != "" {
				return p
			}
		}
	case yaml.MappingNode:
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, v := n.Content[i], n.Content[i+1]
			path := k.Value
			if prefix != "" {
				path = prefix + "." + k.Value
			}
			if v.Kind == yaml.ScalarNode && v.Line == line && strings.Contains(msg, "`"+v.Value+"`") {
				return path
			}
			if p := fieldAtLine(v, path, line, msg); p != "" {
				return p
			}
		}
	}
	return ""
}

// ConfigError names the bad field and value.
type ConfigError struct {
	Field string
	Value any
	Msg   string
}

func (e *ConfigError) Error() string {
	return fmt.Sprintf("%s: %q: %s", e.Field, fmt.Sprint(e.Value), e.Msg)
}

var nameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$`)

// drainMargin is what the shutdown budget keeps beyond the collectors' drain: the rest
// of the syslog drain's counting window, the stop event, the seal, the spool's close.
const drainMargin = 3 * time.Second

// SetDefaults fills what the file left empty.
func (c *Config) SetDefaults() {
	if c.Device == "" {
		if h, err := os.Hostname(); err == nil {
			c.Device = strings.Split(h, ".")[0]
		}
	}
	if c.ShutdownTimeout == 0 {
		c.ShutdownTimeout = DefaultShutdownTimeout
	}
	if c.LogLevel == "" {
		c.LogLevel = "info"
	}
	c.Syslog.SetDefaults()
	c.Uplink.setDefaults()
	c.Keys.setDefaults()
	c.HL7.SetDefaults()
	c.FHIR.SetDefaults()
}

// Validate checks everything before anything starts; every problem is reported.
func (c *Config) Validate() error {
	var errs []error
	bad := func(field string, v any, msg string) { errs = append(errs, &ConfigError{field, v, msg}) }
	// Site and device become MQTT topic levels and file names: keep them plain.
	if !nameRE.MatchString(c.Site) {
		bad("site", c.Site, "must be 1-64 letters, digits, '.', '_' or '-'")
	}
	if !nameRE.MatchString(c.Device) {
		bad("device", c.Device, "must be 1-64 letters, digits, '.', '_' or '-'")
	}
	if c.DataDir == "" {
		bad("data_dir", c.DataDir, "must not be empty")
	}
	if c.Admin != "" {
		if _, _, err := net.SplitHostPort(c.Admin); err != nil {
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
	if err := c.Syslog.Validate(); err != nil {
		errs = append(errs, err)
	}
	// A collector's drain at stop, and the seal and close after it, must fit the
	// shutdown budget; the syslog drain may run about a second past its timeout.
	if d := c.Syslog.DrainTimeout; d > c.ShutdownTimeout-drainMargin {
		bad("syslog.drain_timeout", d, fmt.Sprintf("must be at most shutdown_timeout (%s) minus %s", c.ShutdownTimeout, drainMargin))
	}
	if d := c.HL7.DrainTimeout; c.HL7.Enabled() && d > c.ShutdownTimeout-drainMargin {
		bad("hl7.drain_timeout", d, fmt.Sprintf("must be at most shutdown_timeout (%s) minus %s", c.ShutdownTimeout, drainMargin))
	}
	if c.HL7.Enabled() {
		if err := c.HL7.Validate(); err != nil {
			errs = append(errs, err)
		}
	}
	if c.FHIR.Enabled() {
		if err := c.FHIR.Validate(); err != nil {
			errs = append(errs, err)
		}
	}
	if c.uplinkEnabled() {
		uc := c.UplinkConfig()
		uc.ApplyDefaults()
		if err := uc.Validate(); err != nil {
			errs = append(errs, err)
		}
		if d := c.Uplink.DrainTimeout; d > 0 && c.Syslog.DrainTimeout+d > c.ShutdownTimeout-drainMargin {
			bad("uplink.drain_timeout", d, fmt.Sprintf("syslog.drain_timeout (%s) plus this must be at most shutdown_timeout (%s) minus %s",
				c.Syslog.DrainTimeout, c.ShutdownTimeout, drainMargin))
		}
	}
	if err := c.Keys.Validate(); err != nil {
		errs = append(errs, err)
	}
	if !c.NTP.Off {
		nc := c.NTP.Config
		nc.ApplyDefaults()
		if err := nc.Validate(); err != nil {
			errs = append(errs, err)
		}
	}
	if err := c.Privacy.Validate(); err != nil {
		errs = append(errs, err)
	}
	sc := c.SpoolConfig()
	sc.SetDefaults()
	if err := sc.Validate(); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}
