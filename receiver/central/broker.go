package central

import (
	"bufio"
	"bytes"
	"context"
	"crypto/fips140"
	"crypto/pbkdf2"
	"crypto/rand"
	"crypto/sha512"
	"crypto/subtle"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	mochi "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/listeners"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/edgeaudit/edgeaudit/internal/ratelog"
	"github.com/edgeaudit/edgeaudit/ledger"
)

// Listener ids of the embedded broker: devices connect to "devices", the receiver's own
// clients to "internal" (127.0.0.1, a random port, a random per-process password).
const (
	listenerDevices  = "devices"
	listenerInternal = "internal"
	// internalUser is the receiver's user name on the internal listener; a device's
	// identity is always "<site>/<device>", which this can never be.
	internalUser = "$receiver"
)

// Device topic leaves.
const (
	leafBatch  = "batch"
	leafStatus = "status"
	leafKey    = "key"
	leafAck    = "ack"
)

// EmbeddedBroker is an in-process MQTT broker (mochi-mqtt) for small sites and the
// demo. Each device is confined to its own topics: it may publish only
// <prefix>/<site>/<device>/{batch,status,key} and subscribe only to
// <prefix>/<site>/<device>/ack. Its identity is the subject CN "<site>/<device>" of its
// client certificate when a client CA is configured, else its user name, checked
// against the password file. Anonymous clients are refused. Retained messages (receipts
// on …/ack, status, keys) are kept in memory, without expiry, until the process ends.
type EmbeddedBroker struct {
	srv      *mochi.Server
	addr     string
	tls      *tls.Config
	password string // the internal user's, random
	hook     *authHook
	log      *slog.Logger
	internal *listeners.TCP
	devices  *listeners.TCP
}

// newEmbeddedBroker loads the TLS files and the password file. It starts nothing.
func newEmbeddedBroker(cfg Config, logger *slog.Logger) (*EmbeddedBroker, error) {
	b := &EmbeddedBroker{addr: cfg.EmbeddedBroker, log: logger.With(attrComponent, "central.broker")}
	if cfg.EmbeddedBrokerTLSCert != "" {
		tc, err := serverTLS(cfg)
		if err != nil {
			return nil, err
		}
		b.tls = tc
	}
	h := &authHook{prefix: cfg.Prefix, certs: cfg.EmbeddedBrokerTLSClientCA != "", log: b.log,
		reserved: map[string]bool{cfg.ClientID: true, cfg.ClientID + keysClientSuffix: true}}
	if cfg.EmbeddedBrokerPasswords != "" {
		pw, err := LoadPasswords(cfg.EmbeddedBrokerPasswords)
		if err != nil {
			return nil, err
		}
		h.passwords = pw
	}
	var rnd [24]byte
	if _, err := rand.Read(rnd[:]); err != nil {
		return nil, fmt.Errorf("embedded broker: %w", err)
	}
	b.password = hex.EncodeToString(rnd[:])
	h.internalPass = []byte(b.password)
	h.subscribedCh = make(chan struct{})
	b.hook = h
	caps := mochi.NewDefaultServerCapabilities()
	caps.MaximumPacketSize = uint32(cfg.EmbeddedBrokerMaxMessageBytes)
	// No forced expiry: retained receipts and queued messages stay until replaced.
	caps.MaximumMessageExpiryInterval = 0
	b.srv = mochi.New(&mochi.Options{Capabilities: caps, Logger: slog.New(newMochiLog(b.log.Handler(), slog.LevelWarn)),
		SysTopicResendInterval: 3600, InlineClient: true})
	if err := b.srv.AddHook(h, nil); err != nil {
		return nil, fmt.Errorf("embedded broker: %w", err)
	}
	return b, nil
}

// serverTLS is the embedded broker's TLS: its certificate, TLS 1.2 at least, and with
// a client CA, client certificates required and verified.
func serverTLS(cfg Config) (*tls.Config, error) {
	cert, err := tls.LoadX509KeyPair(cfg.EmbeddedBrokerTLSCert, cfg.EmbeddedBrokerTLSKey)
	if err != nil {
		return nil, fmt.Errorf("load receive.embedded_broker_tls_cert %s and receive.embedded_broker_tls_key %s: %w",
			cfg.EmbeddedBrokerTLSCert, cfg.EmbeddedBrokerTLSKey, err)
	}
	tc := &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	if cfg.EmbeddedBrokerTLSClientCA != "" {
		pem, err := os.ReadFile(cfg.EmbeddedBrokerTLSClientCA)
		if err != nil {
			return nil, fmt.Errorf("load receive.embedded_broker_tls_client_ca: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("load receive.embedded_broker_tls_client_ca %s: no PEM certificate found", cfg.EmbeddedBrokerTLSClientCA)
		}
		tc.ClientCAs, tc.ClientAuth = pool, tls.RequireAndVerifyClientCert
	}
	return tc, nil
}

// start serves the internal listener and binds the devices' one, which serves only
// after serveDevices: a device that connects before the receiver has subscribed waits
// in the listen backlog instead of publishing into a broker that drops its batch. The
// returned URL is the internal listener's, for the receiver's own clients.
func (b *EmbeddedBroker) start() (internalURL string, err error) {
	b.internal = listeners.NewTCP(listeners.Config{ID: listenerInternal, Address: "127.0.0.1:0"})
	if err := b.srv.AddListener(b.internal); err != nil {
		return "", fmt.Errorf("embedded broker internal listener: %w", err)
	}
	if err := b.srv.Serve(); err != nil {
		b.srv.Close()
		return "", fmt.Errorf("embedded broker: %w", err)
	}
	b.devices = listeners.NewTCP(listeners.Config{ID: listenerDevices, Address: b.addr, TLSConfig: b.tls})
	if err := b.srv.AddListener(b.devices); err != nil {
		b.srv.Close()
		return "", fmt.Errorf("embedded broker listen %s: %w", b.addr, err)
	}
	return "tcp://" + b.internal.Address(), nil
}

// serveDevices starts taking device connections.
func (b *EmbeddedBroker) serveDevices() {
	b.srv.Listeners.Serve(listenerDevices, b.srv.EstablishConnection)
	scheme := "tcp"
	if b.tls != nil {
		scheme = "tls"
	}
	b.log.Info("embedded broker listening", attrAddr, b.devices.Address(), "scheme", scheme, "client_certs", b.hook.certs,
		"passwords", len(b.hook.passwords))
}

// expectSubscriptions makes subscribed() wait for the receiver's subscriptions to
// these filters (without any $share/<group>/ prefix). Call it before start.
func (b *EmbeddedBroker) expectSubscriptions(filters ...string) {
	b.hook.want = map[string]bool{}
	for _, f := range filters {
		b.hook.want[f] = true
	}
}

// subscribed is closed once the receiver's clients hold every expected subscription.
func (b *EmbeddedBroker) subscribed() <-chan struct{} { return b.hook.subscribedCh }

// Addr is the devices' listener address once started (with the real port for ":0").
func (b *EmbeddedBroker) Addr() string {
	if b.devices == nil {
		return ""
	}
	return b.devices.Address()
}

// retain publishes payload retained on topic from inside the broker (no ACL applies).
func (b *EmbeddedBroker) retain(topic string, payload []byte) error {
	return b.srv.Publish(topic, payload, true, 1)
}

// close disconnects every client and waits for their goroutines.
func (b *EmbeddedBroker) close() { b.srv.Close() }

// authHook authenticates clients and confines each device to its own topics.
type authHook struct {
	mochi.HookBase
	prefix       string
	certs        bool                     // identity from the client certificate's CN
	passwords    map[string]passwordEntry // nil: no password file
	internalPass []byte
	reserved     map[string]bool // the receiver's client ids, which no device may use
	log          *slog.Logger

	subMu        sync.Mutex
	want         map[string]bool // the receiver's filters not yet subscribed
	subscribedCh chan struct{}   // closed when want is empty
	limit        ratelog.Limiter
}

func (h *authHook) ID() string { return "edgeaudit-auth" }

func (h *authHook) Provides(b byte) bool {
	return b == mochi.OnConnectAuthenticate || b == mochi.OnACLCheck || b == mochi.OnSubscribed
}

// OnSubscribed implements mochi.Hook: it notes the receiver's granted subscriptions.
func (h *authHook) OnSubscribed(cl *mochi.Client, pk packets.Packet, codes []byte) {
	if string(cl.Properties.Username) != internalUser || cl.Net.Listener != listenerInternal {
		return
	}
	h.subMu.Lock()
	defer h.subMu.Unlock()
	if h.want == nil {
		return
	}
	for i, f := range pk.Filters {
		if i >= len(codes) || codes[i] > 2 {
			continue
		}
		filter := f.Filter
		if rest, ok := strings.CutPrefix(filter, "$share/"); ok {
			_, filter, _ = strings.Cut(rest, "/")
		}
		delete(h.want, filter)
	}
	if len(h.want) == 0 {
		close(h.subscribedCh)
		h.want = nil
	}
}

// OnConnectAuthenticate implements mochi.Hook. On success the client's user name is
// replaced by its identity, which OnACLCheck reads.
func (h *authHook) OnConnectAuthenticate(cl *mochi.Client, pk packets.Packet) bool {
	id, err := h.authenticate(cl, pk)
	if err != nil {
		if ok, n := h.limit.Allow("auth "+cl.Net.Remote, time.Now()); ok {
			h.log.Warn("client refused", attrPeer, cl.Net.Remote, "client_id", pk.Connect.ClientIdentifier, attrError, err, "suppressed", n)
		}
		return false
	}
	cl.Properties.Username = []byte(id)
	return true
}

func (h *authHook) authenticate(cl *mochi.Client, pk packets.Packet) (string, error) {
	user := string(pk.Connect.Username)
	if cl.Net.Listener == listenerInternal {
		if user != internalUser || subtle.ConstantTimeCompare(pk.Connect.Password, h.internalPass) != 1 {
			return "", errors.New("internal listener: not the receiver's credentials")
		}
		return internalUser, nil
	}
	id := user
	if h.certs {
		tc, ok := cl.Net.Conn.(*tls.Conn)
		if !ok {
			return "", errors.New("no TLS connection")
		}
		st := tc.ConnectionState()
		if len(st.PeerCertificates) == 0 {
			return "", errors.New("no client certificate")
		}
		id = st.PeerCertificates[0].Subject.CommonName
		if user != "" && user != id {
			return "", fmt.Errorf("user name %q is not the certificate's CN %q", user, id)
		}
	}
	if id == "" {
		return "", errors.New("anonymous")
	}
	site, device, ok := splitIdentity(id)
	if !ok {
		return "", fmt.Errorf("identity %q is not <site>/<device>", id)
	}
	if h.passwords != nil {
		e, ok := h.passwords[id]
		if !ok || !e.check(pk.Connect.Password) {
			return "", fmt.Errorf("identity %q: bad user name or password", id)
		}
	} else if !h.certs {
		return "", errors.New("no password file and no client certificates")
	}
	// A device's client id is the uplink's default, so that no client takes over
	// another's session (or the receiver's).
	if want := "edgeaudit-" + site + "-" + device; pk.Connect.ClientIdentifier != want {
		return "", fmt.Errorf("client id %q: the embedded broker wants %q for %s", pk.Connect.ClientIdentifier, want, id)
	}
	if h.reserved[pk.Connect.ClientIdentifier] {
		return "", fmt.Errorf("client id %q is the receiver's", pk.Connect.ClientIdentifier)
	}
	if pk.Connect.WillFlag && !h.deviceMayPublish(site, device, pk.Connect.WillTopic) {
		return "", fmt.Errorf("last will on topic %q is not the device's own", pk.Connect.WillTopic)
	}
	return id, nil
}

func splitIdentity(id string) (site, device string, ok bool) {
	site, device, ok = strings.Cut(id, "/")
	return site, device, ok && ledger.ValidName(site) && ledger.ValidName(device)
}

func (h *authHook) deviceMayPublish(site, device, topic string) bool {
	base := h.prefix + "/" + site + "/" + device + "/"
	leaf, ok := strings.CutPrefix(topic, base)
	return ok && (leaf == leafBatch || leaf == leafStatus || leaf == leafKey)
}

// OnACLCheck implements mochi.Hook: topic is a publish topic (write), a subscription
// filter, or the topic of a message about to be delivered (read).
func (h *authHook) OnACLCheck(cl *mochi.Client, topic string, write bool) bool {
	id := string(cl.Properties.Username)
	if id == internalUser && cl.Net.Listener == listenerInternal {
		return h.receiverMay(topic, write)
	}
	site, device, ok := splitIdentity(id)
	if !ok {
		return false
	}
	if write {
		return h.deviceMayPublish(site, device, topic)
	}
	return topic == h.prefix+"/"+site+"/"+device+"/"+leafAck
}

// receiverMay: the receiver publishes receipts on any device's ack topic and reads
// every device's batch, status and key topics (also through a shared subscription).
func (h *authHook) receiverMay(topic string, write bool) bool {
	if !write {
		if rest, ok := strings.CutPrefix(topic, "$share/"); ok {
			_, f, ok := strings.Cut(rest, "/")
			if !ok {
				return false
			}
			topic = f
		}
	}
	l := strings.Split(topic, "/")
	if len(l) != 4 || l[0] != h.prefix {
		return false
	}
	name := func(s string) bool { return ledger.ValidName(s) || !write && s == "+" }
	if !name(l[1]) || !name(l[2]) {
		return false
	}
	if write {
		return l[3] == leafAck
	}
	return l[3] == leafBatch || l[3] == leafStatus || l[3] == leafKey
}

// mochiLog is mochi's logger: records below level are dropped (mochi logs every
// connection at INFO), and its message-less per-connection warnings (a client that
// went away, an oversize packet, a refused login) are named and rate-limited, so that a
// hostile client cannot flood the journal.
type mochiLog struct {
	slog.Handler
	level slog.Level
	limit *ratelog.Limiter
}

func newMochiLog(h slog.Handler, level slog.Level) mochiLog {
	return mochiLog{Handler: h, level: level, limit: new(ratelog.Limiter)}
}

func (m mochiLog) Enabled(ctx context.Context, l slog.Level) bool {
	return l >= m.level && m.Handler.Enabled(ctx, l)
}

func (m mochiLog) Handle(ctx context.Context, r slog.Record) error {
	if r.Message == "" {
		ok, n := m.limit.Allow("connection", r.Time)
		if !ok {
			return nil
		}
		r.Message = "mqtt client connection ended"
		r.AddAttrs(slog.Int("suppressed", n))
	}
	return m.Handler.Handle(ctx, r)
}

func (m mochiLog) WithAttrs(a []slog.Attr) slog.Handler {
	return mochiLog{m.Handler.WithAttrs(a), m.level, m.limit}
}

func (m mochiLog) WithGroup(n string) slog.Handler {
	return mochiLog{m.Handler.WithGroup(n), m.level, m.limit}
}

// passwordEntry is one line of a mosquitto password file.
type passwordEntry struct {
	kind       byte // '6': SHA-512(password || salt); '7': PBKDF2-SHA512
	iterations int
	salt, hash []byte
}

func (e passwordEntry) check(password []byte) bool {
	var got []byte
	switch e.kind {
	case '6':
		h := sha512.New()
		h.Write(password)
		h.Write(e.salt)
		got = h.Sum(nil)
	case '7':
		k, err := pbkdf2.Key(sha512.New, string(password), e.salt, e.iterations, len(e.hash))
		if err != nil {
			return false
		}
		got = k
	default:
		return false
	}
	return subtle.ConstantTimeCompare(got, e.hash) == 1
}

// LoadPasswords reads a mosquitto password file (mosquitto_passwd writes it): one
// "<site>/<device>:<hash>" a line, the hash $7$ (PBKDF2-SHA512, mosquitto 2's default)
// or $6$ (salted SHA-512). Blank lines and lines starting with '#' are skipped; any
// other line that does not parse is an error naming the line.
func LoadPasswords(path string) (map[string]passwordEntry, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("load receive.embedded_broker_passwords: %w", err)
	}
	out := map[string]passwordEntry{}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || line[0] == '#' {
			continue
		}
		user, hash, ok := strings.Cut(line, ":")
		if !ok {
			return nil, fmt.Errorf("load receive.embedded_broker_passwords %s line %d: want user:hash", path, n)
		}
		if _, _, ok := splitIdentity(user); !ok {
			return nil, fmt.Errorf("load receive.embedded_broker_passwords %s line %d: user %q is not <site>/<device>", path, n, user)
		}
		e, err := parseHash(hash)
		if err != nil {
			return nil, fmt.Errorf("load receive.embedded_broker_passwords %s line %d: %w", path, n, err)
		}
		out[user] = e
	}
	return out, sc.Err()
}

func parseHash(s string) (passwordEntry, error) {
	f := strings.Split(s, "$")
	dec := base64.StdEncoding.DecodeString
	switch {
	case len(f) == 4 && f[0] == "" && f[1] == "6":
		salt, err1 := dec(f[2])
		hash, err2 := dec(f[3])
		if err1 != nil || err2 != nil || len(hash) != sha512.Size {
			return passwordEntry{}, errors.New("bad $6$ hash")
		}
		return passwordEntry{kind: '6', salt: salt, hash: hash}, nil
	case len(f) == 5 && f[0] == "" && f[1] == "7":
		it, err := strconv.Atoi(f[2])
		salt, err1 := dec(f[3])
		hash, err2 := dec(f[4])
		if err != nil || it < 1 || it > 10_000_000 || err1 != nil || err2 != nil || len(hash) == 0 {
			return passwordEntry{}, errors.New("bad $7$ hash")
		}
		if fips140.Enforced() && len(salt) < 16 {
			// Checking it would panic in the module: say so at load, with what to do.
			return passwordEntry{}, fmt.Errorf("$7$ hash with a %d-byte salt (mosquitto_passwd's): GODEBUG=fips140=only needs at least 16 bytes; run with fips140=on (the packaged default), or write the line with a 16-byte salt", len(salt))
		}
		return passwordEntry{kind: '7', iterations: it, salt: salt, hash: hash}, nil
	}
	return passwordEntry{}, errors.New("hash is neither $7$ (PBKDF2-SHA512) nor $6$ (SHA-512); make it with mosquitto_passwd")
}
