package uplink

import (
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/edgeaudit/edgeaudit/internal/configerr"
	"github.com/edgeaudit/edgeaudit/internal/tlsconf"
)

// Defaults for zero Config fields.
const (
	DefaultPrefix          = "edgeaudit"
	DefaultWindow          = 16
	DefaultAckTimeout      = 30 * time.Second
	DefaultMaxMessageBytes = 256 << 10
	DefaultConnectTimeout  = 10 * time.Second
	DefaultKeepAlive       = 30 * time.Second
	DefaultPollInterval    = 250 * time.Millisecond
	DefaultBackoffMin      = time.Second
	DefaultBackoffMax      = 2 * time.Minute
)

// Config is the `uplink:` section. Site and Device come from the top level of the file.
type Config struct {
	// Broker is tls://host:port (or ssl://, mqtts://). tcp:// (no TLS) is accepted only
	// for a loopback host: an embedded broker on the same box, or tests.
	Broker string `yaml:"broker"`
	// Prefix is the first topic level (default "edgeaudit").
	Prefix string `yaml:"prefix"`
	Site   string `yaml:"-"`
	Device string `yaml:"-"`
	// ClientID is the MQTT client id (default "edgeaudit-<site>-<device>").
	ClientID string `yaml:"client_id"`
	// CA is a PEM file of the CAs that sign the broker's certificate (default: the
	// system roots). The broker's name is always verified.
	CA string `yaml:"ca"`
	// Cert and Key are the client certificate and its key (PEM), both or neither.
	Cert string `yaml:"cert"`
	Key  string `yaml:"key"`
	// CentralKey is the PEM public key central signs receipts with. The uplink does not
	// read it: the daemon loads it into the ReceiptVerifier (ledger.VerifyReceipt) and
	// refuses to start an uplink without it.
	CentralKey string `yaml:"central_key"`
	// Username and Password are optional MQTT credentials.
	Username string `yaml:"username"`
	Password string `yaml:"password"`
	// Window is how many batches may be published and not yet receipted (default 16).
	Window int `yaml:"window"`
	// AckTimeout: without a receipt for this long, resend from the first unreceipted
	// seq (default 30s).
	AckTimeout time.Duration `yaml:"ack_timeout"`
	// MaxMessageBytes is the largest batch payload published (default 256 KiB, below
	// common broker limits). A larger batch is reported and kept unreceipted, never
	// dropped.
	MaxMessageBytes int `yaml:"max_message_bytes"`
	// ConnectTimeout bounds one connection attempt (default 10s).
	ConnectTimeout time.Duration `yaml:"connect_timeout"`
	// KeepAlive is the MQTT keepalive (default 30s).
	KeepAlive time.Duration `yaml:"keep_alive"`
	// PollInterval is how often the spool is checked for newly sealed batches (default
	// 250ms; Notify wakes the uplink sooner).
	PollInterval time.Duration `yaml:"poll_interval"`
	// BackoffMin and BackoffMax bound the jittered reconnect backoff (defaults 1s, 2m).
	BackoffMin time.Duration `yaml:"backoff_min"`
	BackoffMax time.Duration `yaml:"backoff_max"`

	// PublicKey is the device's signing key as PEM (keys/signing.pub). When set, it is
	// published retained on KeyTopic at each connect, so that a central that trusts on
	// first use can enrol the device; central never takes a key it already holds a
	// different one for.
	PublicKey []byte `yaml:"-"`

	// TLS, when set, is used instead of CA, Cert and Key (tests, or a daemon that builds
	// its own).
	TLS *tls.Config `yaml:"-"`
}

// Topics of one device.
func (c *Config) topic(leaf string) string {
	return c.Prefix + "/" + c.Site + "/" + c.Device + "/" + leaf
}

// BatchTopic, AckTopic, StatusTopic and KeyTopic are the device's topics (DESIGN "MQTT").
func (c *Config) BatchTopic() string  { return c.topic("batch") }
func (c *Config) AckTopic() string    { return c.topic("ack") }
func (c *Config) StatusTopic() string { return c.topic("status") }

// KeyTopic is where the device's public key is published, retained (trust on first use).
func (c *Config) KeyTopic() string { return c.topic("key") }

// ApplyDefaults fills zero fields.
func (c *Config) ApplyDefaults() {
	if c.Prefix == "" {
		c.Prefix = DefaultPrefix
	}
	if c.ClientID == "" {
		c.ClientID = "edgeaudit-" + c.Site + "-" + c.Device
	}
	if c.Window == 0 {
		c.Window = DefaultWindow
	}
	if c.AckTimeout == 0 {
		c.AckTimeout = DefaultAckTimeout
	}
	if c.MaxMessageBytes == 0 {
		c.MaxMessageBytes = DefaultMaxMessageBytes
	}
	if c.ConnectTimeout == 0 {
		c.ConnectTimeout = DefaultConnectTimeout
	}
	if c.KeepAlive == 0 {
		c.KeepAlive = DefaultKeepAlive
	}
	if c.PollInterval == 0 {
		c.PollInterval = DefaultPollInterval
	}
	if c.BackoffMin == 0 {
		c.BackoffMin = DefaultBackoffMin
	}
	if c.BackoffMax == 0 {
		c.BackoffMax = DefaultBackoffMax
	}
}

var errNotLevel = errors.New("must be one MQTT topic level: not empty, no '/', '+', '#' or NUL")

func topicLevel(s string) bool {
	return s != "" && !strings.ContainsAny(s, "/+#\x00")
}

// Validate checks c after ApplyDefaults; it reports every problem, joined, each a
// *configerr.Error naming the YAML field.
func (c *Config) Validate() error {
	var errs []error
	bad := func(field, value string, err error) {
		errs = append(errs, &configerr.Error{Field: "uplink." + field, Value: value, Err: err})
	}
	if c.Broker == "" {
		bad("broker", "", ErrNoBroker)
	} else if u, err := url.Parse(c.Broker); err != nil {
		bad("broker", c.Broker, errors.New("want scheme://host:port, e.g. tls://central.example:8883"))
	} else if u.Port() == "" || u.Hostname() == "" {
		bad("broker", c.Broker, errors.New("want scheme://host:port, e.g. tls://central.example:8883"))
	} else {
		switch u.Scheme {
		case "tls", "ssl", "mqtts":
		case "tcp", "mqtt":
			if ip := net.ParseIP(u.Hostname()); (ip == nil || !ip.IsLoopback()) && u.Hostname() != "localhost" {
				bad("broker", c.Broker, errors.New("tcp:// (no TLS) only to a loopback broker; use tls://"))
			}
		default:
			bad("broker", c.Broker, errors.New("scheme must be tls:// (or tcp:// to loopback)"))
		}
	}
	if !topicLevel(c.Prefix) {
		bad("prefix", c.Prefix, errNotLevel)
	}
	if !topicLevel(c.Site) {
		errs = append(errs, &configerr.Error{Field: "site", Value: c.Site, Err: errNotLevel})
	}
	if !topicLevel(c.Device) {
		errs = append(errs, &configerr.Error{Field: "device", Value: c.Device, Err: errNotLevel})
	}
	if (c.Cert == "") != (c.Key == "") {
		if c.Cert == "" {
			bad("cert", "", errors.New("required with uplink.key (the client certificate and its key go together)"))
		} else {
			bad("key", "", errors.New("required with uplink.cert (the client certificate and its key go together)"))
		}
	}
	if c.Password != "" && c.Username == "" {
		bad("username", "", errors.New("a password needs a username"))
	}
	if c.Window < 1 || c.Window > 1024 {
		bad("window", fmt.Sprint(c.Window), errors.New("must be 1..1024"))
	}
	if c.MaxMessageBytes < 1024 {
		bad("max_message_bytes", fmt.Sprint(c.MaxMessageBytes), errors.New("must be at least 1024"))
	}
	for _, d := range []struct {
		field string
		v     time.Duration
	}{{"ack_timeout", c.AckTimeout}, {"connect_timeout", c.ConnectTimeout}, {"keep_alive", c.KeepAlive},
		{"poll_interval", c.PollInterval}, {"backoff_min", c.BackoffMin}, {"backoff_max", c.BackoffMax}} {
		if d.v < 0 {
			bad(d.field, d.v.String(), errors.New("must not be negative"))
		}
	}
	if c.BackoffMax < c.BackoffMin {
		bad("backoff_max", c.BackoffMax.String(), errors.New("must be at least uplink.backoff_min"))
	}
	return errors.Join(errs...)
}

// usesTLS says whether the broker is reached over TLS (tcp:// and mqtt:// are plain).
func (c *Config) usesTLS() bool {
	return !strings.HasPrefix(c.Broker, "tcp://") && !strings.HasPrefix(c.Broker, "mqtt://")
}

// Check reads the files New will (call it after Validate): with a TLS broker, the CA
// file and the client certificate and key (a valid pair). It returns every problem
// found, joined, each a *configerr.Error naming its key.
func (c *Config) Check() error {
	if c.TLS != nil || !c.usesTLS() {
		return nil
	}
	var errs []error
	bad := func(field, value string, err error) {
		errs = append(errs, &configerr.Error{Field: "uplink." + field, Value: value, Err: err})
	}
	if c.CA != "" {
		if _, err := tlsconf.LoadCAs(c.CA); err != nil {
			bad("ca", c.CA, tlsconf.FileError(err))
		}
	}
	if c.Cert != "" && c.Key != "" {
		okFiles := true
		for _, f := range []struct{ field, path string }{{"cert", c.Cert}, {"key", c.Key}} {
			if fh, err := os.Open(f.path); err != nil {
				bad(f.field, f.path, tlsconf.FileError(err))
				okFiles = false
			} else {
				fh.Close()
			}
		}
		if okFiles {
			if _, err := tls.LoadX509KeyPair(c.Cert, c.Key); err != nil {
				bad("cert", c.Cert, fmt.Errorf("with uplink.key %s: not a valid certificate and key pair: %s", c.Key, strings.TrimPrefix(err.Error(), "tls: ")))
			}
		}
	}
	return errors.Join(errs...)
}

// tlsConfig builds the client TLS config: server verification always, a client
// certificate when configured.
func (c *Config) tlsConfig() (*tls.Config, error) {
	if c.TLS != nil {
		return c.TLS.Clone(), nil
	}
	u, _ := url.Parse(c.Broker)
	tc := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: u.Hostname()}
	if c.CA != "" {
		pool, err := tlsconf.LoadCAs(c.CA)
		if err != nil {
			return nil, fmt.Errorf("load uplink.ca %s: %w", c.CA, err)
		}
		tc.RootCAs = pool
	}
	if c.Cert != "" {
		cert, err := tls.LoadX509KeyPair(c.Cert, c.Key)
		if err != nil {
			return nil, fmt.Errorf("load uplink.cert %s and uplink.key %s: %w", c.Cert, c.Key, err)
		}
		tc.Certificates = []tls.Certificate{cert}
	}
	return tc, nil
}
