// Package central wires the central receiver together: the `receive:` config section,
// the store, central's receipt key and its own audit trail, trust on first use, the
// embedded MQTT broker, and receiver.Run; it is the only place on the central side that
// joins concrete types.
package central

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/edgeaudit/edgeaudit/internal/configerr"
	"github.com/edgeaudit/edgeaudit/internal/yamlcfg"
	"github.com/edgeaudit/edgeaudit/ledger"
	"github.com/edgeaudit/edgeaudit/receiver"
)

// Defaults for zero Config fields. Paths without a value go under DataDir.
const (
	DefaultDataDir         = "edgeaudit-central"
	DefaultBroker          = "tcp://127.0.0.1:1883"
	DefaultAuditSite       = "central"
	DefaultAlertsPerMinute = 10
	// DefaultEmbeddedMaxMessageBytes is the embedded broker's largest packet: a batch of
	// the spool's default 192 KiB seal size fits many times over, and a publisher cannot
	// make the broker buffer more than this per message.
	DefaultEmbeddedMaxMessageBytes = 1 << 20
	// maxKeyMessageBytes bounds a key topic payload (a PEM public key is ~180 bytes).
	maxKeyMessageBytes = 4 << 10
)

// Config is the `receive:` section of the config file. Relative paths are relative to
// the config file's folder.
type Config struct {
	// DataDir is central's folder (default DefaultDataDir, mode 0700). Store, Devices,
	// Quarantine and Key default to DataDir/store, DataDir/devices, DataDir/quarantine
	// and DataDir/keys/central.key.
	DataDir string `yaml:"data_dir"`

	// Broker is the MQTT broker the receiver subscribes on (default DefaultBroker when
	// EmbeddedBroker is empty; must be empty when it is set). tcp:// only to a loopback
	// host; tls:// (ssl://, mqtts://) otherwise.
	Broker string `yaml:"broker"`
	// Prefix is the first topic level (default receiver.DefaultPrefix).
	Prefix string `yaml:"prefix"`
	// ClientID is the receiver's MQTT client id (default receiver.DefaultClientID); the
	// key subscription of trust on first use uses ClientID + "-keys".
	ClientID string `yaml:"client_id"`
	// Username and Password log the receiver in to Broker.
	Username string `yaml:"username"`
	Password string `yaml:"password"`
	// TLSCA, TLSCert and TLSKey are PEM files for a tls:// Broker: the CAs of the
	// broker's certificate (default: system roots) and the receiver's client
	// certificate (both or neither).
	TLSCA   string `yaml:"tls_ca"`
	TLSCert string `yaml:"tls_cert"`
	TLSKey  string `yaml:"tls_key"`
	// SharedGroup subscribes through $share/<group>/ so that several receivers on one
	// PostgreSQL store share the load (default "": a plain subscription).
	SharedGroup string `yaml:"shared_group"`

	// Store is a folder (default DataDir/store) or a postgres:// or postgresql:// DSN.
	Store string `yaml:"store"`
	// Devices is the enrolled keys' folder: <devices>/<site>/<device>.pub.
	Devices string `yaml:"devices"`
	// Quarantine keeps refused batches.
	Quarantine string `yaml:"quarantine"`
	// Key is central's receipt signing key (PKCS#8 PEM, 0600); created when missing,
	// with its public half beside it as central.pub (PublicKeyPath), the file sites
	// configure as uplink.central_key.
	Key string `yaml:"key"`
	// KeyName is the receipts' signed-note key name (default receiver.DefaultKeyName).
	KeyName string `yaml:"key_name"`
	// AuditSite and AuditDevice name central's own audit trail (defaults
	// DefaultAuditSite and the host name's first label).
	AuditSite   string `yaml:"audit_site"`
	AuditDevice string `yaml:"audit_device"`
	// AlertsPerMinute bounds the refusal alerts written to central's trail per refusal
	// reason and minute (default DefaultAlertsPerMinute); the rest are counted and
	// written as one summary event.
	AlertsPerMinute int `yaml:"alerts_per_minute"`
	// TrustOnFirstUse enrols the first key a device publishes on <prefix>/<site>/<device>/key
	// when no key is enrolled for it. A different key for an enrolled device is never
	// taken.
	TrustOnFirstUse bool `yaml:"trust_on_first_use"`

	// EmbeddedBroker is the listen address of an in-process MQTT broker ("" = none).
	// Without TLS it must be a loopback address.
	EmbeddedBroker string `yaml:"embedded_broker"`
	// EmbeddedBrokerTLSCert and EmbeddedBrokerTLSKey turn on TLS; with
	// EmbeddedBrokerTLSClientCA a client certificate is required and its subject CN
	// "<site>/<device>" is the device's identity.
	EmbeddedBrokerTLSCert     string `yaml:"embedded_broker_tls_cert"`
	EmbeddedBrokerTLSKey      string `yaml:"embedded_broker_tls_key"`
	EmbeddedBrokerTLSClientCA string `yaml:"embedded_broker_tls_client_ca"`
	// EmbeddedBrokerPasswords is a mosquitto password file ("<site>/<device>:<hash>",
	// mosquitto_passwd's $7$ or $6$ hashes). Without a client CA the user name is the
	// identity; with one, the password is checked too.
	EmbeddedBrokerPasswords string `yaml:"embedded_broker_passwords"`
	// EmbeddedBrokerMaxMessageBytes is the largest MQTT packet the embedded broker
	// takes (default DefaultEmbeddedMaxMessageBytes).
	EmbeddedBrokerMaxMessageBytes int `yaml:"embedded_broker_max_message_bytes"`

	// Limits, see receiver.Config.
	MaxBatchBytes      int           `yaml:"max_batch_bytes"`
	MaxHeld            int           `yaml:"max_held"`
	MaxHeldBytes       int           `yaml:"max_held_bytes"`
	MaxQuarantineBytes int64         `yaml:"max_quarantine_bytes"`
	Queue              int           `yaml:"queue"`
	RetryMax           time.Duration `yaml:"retry_max"`

	// LogLevel is debug|info|warn|error (default info).
	LogLevel string `yaml:"log_level"`
}

// file is the config file: the receive: section strictly, the rest ignored (an
// appliance's config may hold both).

// LoadConfig reads the receive: section of the YAML file at path ("" gives the
// defaults). Other top-level keys are ignored; unknown keys inside receive: are errors.
// Relative paths are made relative to the file's folder. Defaults are not applied:
// call SetDefaults, then Validate.
func LoadConfig(path string) (Config, error) {
	if path == "" {
		return Config{}, nil
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return Config{}, fmt.Errorf("load config: %w", err)
	}
	var root yaml.Node
	if err := yaml.Unmarshal(b, &root); err != nil {
		return Config{}, fmt.Errorf("load config %s: %w", path, yamlcfg.SyntaxError(b, err))
	}
	// The receive: section, read as the appliance's sections are: every problem at
	// once, each with its line, the key path, and what is accepted; unknown keys with a
	// "did you mean".
	var c Config
	doc := &root
	if doc.Kind == yaml.DocumentNode && len(doc.Content) == 1 {
		doc = doc.Content[0]
	}
	if doc.Kind == yaml.MappingNode {
		for i := 0; i+1 < len(doc.Content); i += 2 {
			if doc.Content[i].Value == "receive" && !yamlcfg.IsNull(doc.Content[i+1]) {
				d := yamlcfg.New()
				d.Decode(doc.Content[i+1], &c, "receive")
				if len(d.Problems) > 0 {
					return Config{}, fmt.Errorf("load config %s: %w", path, errors.Join(yamlcfg.Sort(d.Problems)...))
				}
			}
		}
	}
	base := filepath.Dir(path)
	for _, p := range []*string{&c.DataDir, &c.TLSCA, &c.TLSCert, &c.TLSKey, &c.Devices, &c.Quarantine, &c.Key,
		&c.EmbeddedBrokerTLSCert, &c.EmbeddedBrokerTLSKey, &c.EmbeddedBrokerTLSClientCA, &c.EmbeddedBrokerPasswords} {
		if *p != "" && !filepath.IsAbs(*p) {
			*p = filepath.Join(base, *p)
		}
	}
	if c.Store != "" && !IsPostgres(c.Store) && !filepath.IsAbs(c.Store) {
		c.Store = filepath.Join(base, c.Store)
	}
	return c, nil
}

// IsPostgres reports whether store is a PostgreSQL DSN rather than a folder.
func IsPostgres(store string) bool {
	return strings.HasPrefix(store, "postgres://") || strings.HasPrefix(store, "postgresql://")
}

// SetDefaults fills what the file left empty.
func (c *Config) SetDefaults() {
	if c.DataDir == "" {
		c.DataDir = DefaultDataDir
	}
	def := func(p *string, v string) {
		if *p == "" {
			*p = v
		}
	}
	if c.EmbeddedBroker == "" {
		def(&c.Broker, DefaultBroker)
	}
	def(&c.Prefix, receiver.DefaultPrefix)
	def(&c.ClientID, receiver.DefaultClientID)
	def(&c.Store, filepath.Join(c.DataDir, "store"))
	def(&c.Devices, filepath.Join(c.DataDir, "devices"))
	def(&c.Quarantine, filepath.Join(c.DataDir, "quarantine"))
	def(&c.Key, filepath.Join(c.DataDir, "keys", "central.key"))
	def(&c.KeyName, receiver.DefaultKeyName)
	def(&c.AuditSite, DefaultAuditSite)
	if c.AuditDevice == "" {
		c.AuditDevice = hostDevice()
	}
	def(&c.LogLevel, "info")
	if c.AlertsPerMinute == 0 {
		c.AlertsPerMinute = DefaultAlertsPerMinute
	}
	if c.EmbeddedBrokerMaxMessageBytes == 0 {
		c.EmbeddedBrokerMaxMessageBytes = DefaultEmbeddedMaxMessageBytes
	}
}

// hostDevice is the host name's first label as a valid name ("central" if none).
func hostDevice() string {
	h, err := os.Hostname()
	if err != nil {
		return "central"
	}
	h, _, _ = strings.Cut(h, ".")
	var b strings.Builder
	for _, r := range h {
		if r < 0x80 && (r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_') {
			b.WriteRune(r)
		}
	}
	if s := b.String(); ledger.ValidName(s) {
		return s
	}
	return "central"
}

// PublicKeyPath is central.pub beside Key: what sites configure as uplink.central_key.
func (c *Config) PublicKeyPath() string { return filepath.Join(filepath.Dir(c.Key), "central.pub") }

// ReceiverConfig is the receiver package's config (without TLS, which New loads).
func (c *Config) ReceiverConfig() receiver.Config {
	return receiver.Config{
		Quarantine: c.Quarantine, KeyName: c.KeyName,
		MaxHeld: c.MaxHeld, MaxHeldBytes: c.MaxHeldBytes, MaxBatchBytes: c.MaxBatchBytes,
		MaxQuarantineBytes: c.MaxQuarantineBytes,
		Broker:             c.Broker, Prefix: c.Prefix, ClientID: c.ClientID,
		Username: c.Username, Password: c.Password, Queue: c.Queue, RetryMax: c.RetryMax,
	}
}

var errLevel = errors.New("must be one MQTT topic level: not empty, no '/', '+', '#' or NUL")

func topicLevel(s string) bool { return s != "" && !strings.ContainsAny(s, "/+#\x00") }

// Validate checks c after SetDefaults; every problem is reported, each naming its
// receive.<key>, the value and what is accepted.
func (c *Config) Validate() error {
	var errs []error
	bad := func(key, value string, err error) {
		errs = append(errs, &configerr.Error{Field: "receive." + key, Value: value, Err: err})
	}
	if c.EmbeddedBroker != "" {
		if c.Broker != "" {
			bad("broker", c.Broker, errors.New("must be empty when receive.embedded_broker is set (the receiver then uses the embedded broker)"))
		}
		host, _, err := net.SplitHostPort(c.EmbeddedBroker)
		if err != nil {
			bad("embedded_broker", c.EmbeddedBroker, errors.New("want host:port, e.g. 127.0.0.1:1883 or :8883"))
		} else if c.EmbeddedBrokerTLSCert == "" && !loopback(host) {
			bad("embedded_broker", c.EmbeddedBroker, errors.New("without receive.embedded_broker_tls_cert the address must be loopback (127.0.0.1, ::1, localhost)"))
		}
		if (c.EmbeddedBrokerTLSCert == "") != (c.EmbeddedBrokerTLSKey == "") {
			bad("embedded_broker_tls_cert", c.EmbeddedBrokerTLSCert, errors.New("receive.embedded_broker_tls_cert and receive.embedded_broker_tls_key go together"))
		}
		if c.EmbeddedBrokerTLSClientCA != "" && c.EmbeddedBrokerTLSCert == "" {
			bad("embedded_broker_tls_client_ca", c.EmbeddedBrokerTLSClientCA, errors.New("needs receive.embedded_broker_tls_cert and _key"))
		}
		if c.EmbeddedBrokerTLSClientCA == "" && c.EmbeddedBrokerPasswords == "" {
			bad("embedded_broker_passwords", "", errors.New("required without receive.embedded_broker_tls_client_ca: anonymous devices are refused"))
		}
		for _, k := range []struct{ key, v string }{{"username", c.Username}, {"password", c.Password},
			{"tls_ca", c.TLSCA}, {"tls_cert", c.TLSCert}, {"tls_key", c.TLSKey}} {
			if k.v != "" {
				bad(k.key, "", errors.New("not used with receive.embedded_broker (the receiver logs in to it by itself)"))
			}
		}
		if c.EmbeddedBrokerMaxMessageBytes < 1024 {
			bad("embedded_broker_max_message_bytes", fmt.Sprint(c.EmbeddedBrokerMaxMessageBytes), errors.New("must be at least 1024"))
		}
	} else {
		for _, k := range []struct{ key, v string }{{"embedded_broker_tls_cert", c.EmbeddedBrokerTLSCert},
			{"embedded_broker_tls_key", c.EmbeddedBrokerTLSKey}, {"embedded_broker_tls_client_ca", c.EmbeddedBrokerTLSClientCA},
			{"embedded_broker_passwords", c.EmbeddedBrokerPasswords}} {
			if k.v != "" {
				bad(k.key, k.v, errors.New("needs receive.embedded_broker"))
			}
		}
		if err := validBroker(c.Broker); err != nil {
			bad("broker", c.Broker, err)
		}
		if (c.TLSCert == "") != (c.TLSKey == "") {
			bad("tls_cert", c.TLSCert, errors.New("receive.tls_cert and receive.tls_key go together"))
		}
	}
	if c.Password != "" && c.Username == "" {
		bad("username", "", errors.New("a password needs a username"))
	}
	if !topicLevel(c.Prefix) {
		bad("prefix", c.Prefix, errLevel)
	}
	if c.SharedGroup != "" && !topicLevel(c.SharedGroup) {
		bad("shared_group", c.SharedGroup, errLevel)
	}
	if c.SharedGroup != "" && c.EmbeddedBroker != "" {
		bad("shared_group", c.SharedGroup, errors.New("not with receive.embedded_broker (one process owns the embedded broker)"))
	}
	if c.ClientID == "" || strings.ContainsAny(c.ClientID, "/+#\x00") {
		bad("client_id", c.ClientID, errors.New("must not be empty or contain '/', '+', '#' or NUL"))
	}
	if !ledger.ValidName(c.AuditSite) {
		bad("audit_site", c.AuditSite, errors.New("must be 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit"))
	}
	if !ledger.ValidName(c.AuditDevice) {
		bad("audit_device", c.AuditDevice, errors.New("must be 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit"))
	}
	if c.AlertsPerMinute < 1 || c.AlertsPerMinute > 10000 {
		bad("alerts_per_minute", fmt.Sprint(c.AlertsPerMinute), errors.New("must be 1..10000"))
	}
	if IsPostgres(c.Store) {
		if _, err := url.Parse(c.Store); err != nil {
			bad("store", "postgres://…", fmt.Errorf("not a URL: %w", err))
		}
	}
	if c.Devices == "" {
		bad("devices", "", errors.New("required"))
	}
	switch c.LogLevel {
	case "debug", "info", "warn", "error":
	default:
		bad("log_level", c.LogLevel, errors.New("must be debug, info, warn or error"))
	}
	rc := c.ReceiverConfig()
	if err := rc.Validate(); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

func validBroker(s string) error {
	u, err := url.Parse(s)
	if err != nil {
		return err
	}
	if u.Port() == "" || u.Hostname() == "" {
		return errors.New("want scheme://host:port")
	}
	switch u.Scheme {
	case "tls", "ssl", "mqtts":
	case "tcp", "mqtt":
		if !loopback(u.Hostname()) {
			return errors.New("tcp:// (no TLS) only to a loopback broker; use tls://")
		}
	default:
		return errors.New("scheme must be tls:// (or tcp:// to loopback)")
	}
	return nil
}

func loopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}
