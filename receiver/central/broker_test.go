package central

import (
	"crypto/fips140"
	"crypto/rand"
	"crypto/sha512"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
)

// sha512Entry is a mosquitto "$6$" password file entry.
func sha512Entry(t testing.TB, password string) string {
	t.Helper()
	salt := make([]byte, 12)
	if _, err := rand.Read(salt); err != nil {
		t.Fatal(err)
	}
	h := sha512.New()
	h.Write([]byte(password))
	h.Write(salt)
	return "$6$" + base64.StdEncoding.EncodeToString(salt) + "$" + base64.StdEncoding.EncodeToString(h.Sum(nil))
}

// writePasswords writes a password file of user → password ($6$ entries).
func writePasswords(t testing.TB, users map[string]string) string {
	t.Helper()
	var b strings.Builder
	b.WriteString("# test devices\n\n")
	for u, p := range users {
		b.WriteString(u + ":" + sha512Entry(t, p) + "\n")
	}
	path := filepath.Join(t.TempDir(), "passwd")
	if err := os.WriteFile(path, []byte(b.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// startBroker runs an embedded broker for cfg (after defaults) until the test ends.
func startBroker(t testing.TB, cfg Config) *EmbeddedBroker {
	t.Helper()
	cfg.SetDefaults()
	cfg.Broker = ""
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	b, err := newEmbeddedBroker(cfg, testLogger())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(b.close)
	b.serveDevices()
	return b
}

// client is one paho connection for the ACL tests.
type client struct {
	c    mqtt.Client
	msgs chan mqtt.Message
}

type dial struct {
	url, id, user, pass string
	tls                 *tls.Config
}

// connect returns the client, or the connect error.
func connect(t testing.TB, d dial) (*client, error) {
	t.Helper()
	cl := &client{msgs: make(chan mqtt.Message, 16)}
	o := mqtt.NewClientOptions().AddBroker(d.url).SetClientID(d.id).SetUsername(d.user).SetPassword(d.pass).
		SetAutoReconnect(false).SetConnectTimeout(5 * time.Second).SetCleanSession(true).
		SetDefaultPublishHandler(func(_ mqtt.Client, m mqtt.Message) { cl.msgs <- m })
	if d.tls != nil {
		o.SetTLSConfig(d.tls)
	}
	cl.c = mqtt.NewClient(o)
	tok := cl.c.Connect()
	if !tok.WaitTimeout(10 * time.Second) {
		return nil, os.ErrDeadlineExceeded
	}
	if err := tok.Error(); err != nil {
		return nil, err
	}
	t.Cleanup(func() { cl.c.Disconnect(50) })
	return cl, nil
}

func mustConnect(t testing.TB, d dial) *client {
	t.Helper()
	c, err := connect(t, d)
	if err != nil {
		t.Fatalf("connect %s as %q: %v", d.url, d.user, err)
	}
	return c
}

// subscribe returns the granted QoS (0x80: refused).
func (c *client) subscribe(t testing.TB, filter string) byte {
	t.Helper()
	tok := c.c.Subscribe(filter, 1, func(_ mqtt.Client, m mqtt.Message) { c.msgs <- m })
	if !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("subscribe %s: %v", filter, tok.Error())
	}
	return tok.(*mqtt.SubscribeToken).Result()[filter]
}

func (c *client) publish(t testing.TB, topic string, retained bool, payload string) error {
	t.Helper()
	tok := c.c.Publish(topic, 1, retained, payload)
	if !tok.WaitTimeout(10 * time.Second) {
		return os.ErrDeadlineExceeded
	}
	return tok.Error()
}

func (c *client) next(t testing.TB) mqtt.Message {
	t.Helper()
	select {
	case m := <-c.msgs:
		return m
	case <-time.After(30 * time.Second):
		t.Fatal("no message within 30s")
		return nil
	}
}

// internalClient is the receiver's own connection to b.
func internalClient(t testing.TB, b *EmbeddedBroker, id string) *client {
	return mustConnect(t, dial{url: "tcp://" + b.internal.Address(), id: id, user: internalUser, pass: b.password})
}

// TestEmbeddedBrokerCertificates: with a client CA, a device is its certificate's CN
// and is confined to its own topics; receipts are retained.
func TestEmbeddedBrokerCertificates(t *testing.T) {
	leakCheck(t)
	p := newPKI(t)
	b := startBroker(t, Config{DataDir: t.TempDir(), EmbeddedBroker: "127.0.0.1:0",
		EmbeddedBrokerTLSCert: p.CertFile, EmbeddedBrokerTLSKey: p.KeyFile, EmbeddedBrokerTLSClientCA: p.CAFile})
	url := "tls://" + b.Addr()
	certTLS := func(cn string) *tls.Config {
		cf, kf := p.issue(t, strings.ReplaceAll(cn, "/", "_"), cn, x509.ExtKeyUsageClientAuth)
		c, err := tls.LoadX509KeyPair(cf, kf)
		if err != nil {
			t.Fatal(err)
		}
		return &tls.Config{RootCAs: p.pool, ServerName: "127.0.0.1", Certificates: []tls.Certificate{c}, MinVersion: tls.VersionTLS12}
	}
	d1TLS := certTLS("s1/d1")
	central := internalClient(t, b, "t-central")
	if got := central.subscribe(t, "edgeaudit/+/+/batch"); got != 1 {
		t.Fatalf("receiver subscription granted %#x, want 1", got)
	}

	d1 := mustConnect(t, dial{url: url, id: "edgeaudit-s1-d1", tls: d1TLS})
	if err := d1.publish(t, "edgeaudit/s1/d1/batch", false, "one"); err != nil {
		t.Fatal(err)
	}
	if m := central.next(t); m.Topic() != "edgeaudit/s1/d1/batch" || string(m.Payload()) != "one" {
		t.Fatalf("receiver got %s %q, want edgeaudit/s1/d1/batch \"one\"", m.Topic(), m.Payload())
	}
	for _, tt := range []struct {
		filter string
		want   byte
	}{
		{"edgeaudit/s1/d1/ack", 1},
		{"edgeaudit/s1/d2/ack", 0x80},
		{"edgeaudit/s1/+/ack", 0x80},
		{"edgeaudit/+/+/batch", 0x80},
		{"#", 0x80},
	} {
		if got := d1.subscribe(t, tt.filter); got != tt.want {
			t.Errorf("device s1/d1 subscribe %s: granted %#x, want %#x", tt.filter, got, tt.want)
		}
	}
	// A publish on another device's topic is dropped (and, MQTT 3.1.1, the client is
	// disconnected); the next allowed one is the first the receiver sees.
	_ = d1.publish(t, "edgeaudit/s1/d2/batch", false, "forged")
	d1.c.Disconnect(50)
	d1 = mustConnect(t, dial{url: url, id: "edgeaudit-s1-d1", tls: d1TLS})
	if err := d1.publish(t, "edgeaudit/s1/d1/batch", false, "two"); err != nil {
		t.Fatal(err)
	}
	if m := central.next(t); string(m.Payload()) != "two" {
		t.Fatalf("receiver got %s %q after a forged publish, want \"two\"", m.Topic(), m.Payload())
	}

	// Receipts are retained: a device that connects later gets the last one.
	if err := central.publish(t, "edgeaudit/s1/d1/ack", true, "receipt 7"); err != nil {
		t.Fatal(err)
	}
	d1.c.Disconnect(50)
	d1 = mustConnect(t, dial{url: url, id: "edgeaudit-s1-d1", tls: d1TLS})
	d1.subscribe(t, "edgeaudit/s1/d1/ack")
	if m := d1.next(t); string(m.Payload()) != "receipt 7" || !m.Retained() {
		t.Fatalf("late subscriber got %q retained=%v, want the retained \"receipt 7\"", m.Payload(), m.Retained())
	}

	refused := []struct {
		name string
		d    dial
	}{
		{"no client certificate", dial{url: url, id: "edgeaudit-s1-d1", tls: &tls.Config{RootCAs: p.pool, ServerName: "127.0.0.1"}}},
		{"CN not site/device", dial{url: url, id: "edgeaudit-s1-d1", tls: certTLS("modality1")}},
		{"another device's client id", dial{url: url, id: "edgeaudit-s1-d2", tls: d1TLS}},
		{"the receiver's client id", dial{url: url, id: "edgeaudit-receiver", tls: d1TLS}},
		{"user name not the CN", dial{url: url, id: "edgeaudit-s1-d1", user: "s1/d2", tls: d1TLS}},
		{"plain TCP to the TLS listener", dial{url: "tcp://" + b.Addr(), id: "edgeaudit-s1-d1", user: "s1/d1"}},
	}
	for _, tt := range refused {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := connect(t, tt.d); err == nil {
				t.Fatal("connected, want refused")
			}
		})
	}
}

// TestEmbeddedBrokerPasswords: without a client CA, the user name is the identity and
// the password file decides; anonymous and the receiver's user are refused on the
// devices' listener.
func TestEmbeddedBrokerPasswords(t *testing.T) {
	leakCheck(t)
	pw := writePasswords(t, map[string]string{"s1/d1": "pw1", "s1/d2": "pw2", "receiver/keys": "pwk"})
	b := startBroker(t, Config{DataDir: t.TempDir(), EmbeddedBroker: "127.0.0.1:0", EmbeddedBrokerPasswords: pw,
		EmbeddedBrokerMaxMessageBytes: 4096})
	url := "tcp://" + b.Addr()
	central := internalClient(t, b, "t-central")
	central.subscribe(t, "edgeaudit/+/+/status")
	d1 := mustConnect(t, dial{url: url, id: "edgeaudit-s1-d1", user: "s1/d1", pass: "pw1"})
	// Not retained: a retained message published while the SUBACK is under way can
	// arrive twice (live and as retained), which is MQTT, not what this test is about.
	if err := d1.publish(t, "edgeaudit/s1/d1/status", false, "online"); err != nil {
		t.Fatal(err)
	}
	if m := central.next(t); string(m.Payload()) != "online" {
		t.Fatalf("receiver got %q, want online", m.Payload())
	}
	// A message over the size limit ends the connection and never arrives.
	_ = d1.publish(t, "edgeaudit/s1/d1/status", false, strings.Repeat("x", 5000))
	d1.c.Disconnect(50)
	d1 = mustConnect(t, dial{url: url, id: "edgeaudit-s1-d1", user: "s1/d1", pass: "pw1"})
	if err := d1.publish(t, "edgeaudit/s1/d1/status", false, "small"); err != nil {
		t.Fatal(err)
	}
	if m := central.next(t); string(m.Payload()) != "small" {
		t.Fatalf("receiver got %d bytes, want the small message after an oversize one", len(m.Payload()))
	}
	for _, tt := range []struct {
		name string
		d    dial
	}{
		{"wrong password", dial{url: url, id: "edgeaudit-s1-d1", user: "s1/d1", pass: "pw2"}},
		{"a device whose client id is the receiver's", dial{url: url, id: "edgeaudit-receiver-keys", user: "receiver/keys", pass: "pwk"}},
		{"anonymous", dial{url: url, id: "edgeaudit-s1-d1"}},
		{"unknown user", dial{url: url, id: "edgeaudit-s1-d3", user: "s1/d3", pass: "pw1"}},
		{"receiver's user on the devices' listener", dial{url: url, id: "x", user: internalUser, pass: b.password}},
		{"device on the internal listener", dial{url: "tcp://" + b.internal.Address(), id: "edgeaudit-s1-d1", user: "s1/d1", pass: "pw1"}},
		{"wrong internal password", dial{url: "tcp://" + b.internal.Address(), id: "x", user: internalUser, pass: "guess"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := connect(t, tt.d); err == nil {
				t.Fatal("connected, want refused")
			}
		})
	}
}

// TestPasswordsFromMosquittoPasswd: a password file written by mosquitto_passwd ($7$,
// PBKDF2-SHA512) is read and checked.
func TestPasswordsFromMosquittoPasswd(t *testing.T) {
	bin, err := exec.LookPath("mosquitto_passwd")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("mosquitto_passwd not found (CI=true: a missing peer is a failure; apt-get install mosquitto)")
		}
		t.Skip("mosquitto_passwd not found; apt-get install mosquitto to run this test")
	}
	path := filepath.Join(t.TempDir(), "passwd")
	if out, err := exec.Command(bin, "-c", "-b", path, "s1/d1", "secret one").CombinedOutput(); err != nil {
		t.Fatalf("mosquitto_passwd: %v\n%s", err, out)
	}
	pw, err := LoadPasswords(path)
	if fips140.Enforced() {
		// mosquitto_passwd's 12-byte salts are below what PBKDF2 takes in FIPS 140-only mode.
		if err == nil || !strings.Contains(err.Error(), "12-byte salt") {
			t.Fatalf("LoadPasswords under fips140=only: err=%v, want one naming the 12-byte salt", err)
		}
		return
	}
	if err != nil {
		t.Fatal(err)
	}
	e, ok := pw["s1/d1"]
	if !ok {
		t.Fatalf("entries %v, want s1/d1", pw)
	}
	if got, want := string(e.kind), "7"; got != want {
		t.Errorf("hash kind %s, want %s (mosquitto 2's default)", got, want)
	}
	if !e.check([]byte("secret one")) {
		t.Error("the right password does not check")
	}
	if e.check([]byte("secret two")) {
		t.Error("a wrong password checks")
	}
}

func TestLoadPasswordsErrors(t *testing.T) {
	for _, tt := range []struct{ name, file, want string }{
		{"no colon", "s1/d1\n", "line 1: want user:hash"},
		{"not site/device", "d1:" + "$6$AAAA$AAAA\n", `user "d1" is not <site>/<device>`},
		{"plain text password", "s1/d1:secret\n", "neither $7$"},
		{"bad base64", "# c\ns1/d1:$6$!!$!!\n", "line 2: bad $6$ hash"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "passwd")
			if err := os.WriteFile(path, []byte(tt.file), 0o600); err != nil {
				t.Fatal(err)
			}
			_, err := LoadPasswords(path)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err %v, want it to contain %q", err, tt.want)
			}
		})
	}
}
