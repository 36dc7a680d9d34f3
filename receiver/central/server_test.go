package central

import (
	"context"
	"crypto/ecdsa"
	"crypto/x509"
	"encoding/pem"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/edgeaudit/edgeaudit/audit"
	"github.com/edgeaudit/edgeaudit/internal/ratelog"
	"github.com/edgeaudit/edgeaudit/internal/testmqtt"
	"github.com/edgeaudit/edgeaudit/ledger"
	"github.com/edgeaudit/edgeaudit/receiver"
	"github.com/edgeaudit/edgeaudit/uplink"
)

// appliance is one device driven by the real uplink package.
type appliance struct {
	c   *chain
	src *source
	v   *verifier
}

// runAppliance runs an uplink for c with cfg (broker, credentials) until the test ends.
func runAppliance(t testing.TB, c *chain, centralPub *ecdsa.PublicKey, cfg uplink.Config) *appliance {
	t.Helper()
	a := &appliance{c: c, src: &source{c: c}, v: &verifier{pub: centralPub, site: c.site, device: c.device}}
	cfg.Site, cfg.Device = c.site, c.device
	cfg.AckTimeout, cfg.PollInterval = time.Second, 20*time.Millisecond
	cfg.BackoffMin, cfg.BackoffMax, cfg.ConnectTimeout = 50*time.Millisecond, 500*time.Millisecond, 5*time.Second
	u, err := uplink.New(cfg, a.src, a.v, nil, testLogger())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- u.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("uplink Run: %v", err)
		}
	})
	return a
}

// checkReceipted: every batch acked, the last receipt names the last batch's header,
// and what central stored verifies with the device's key.
func checkReceipted(t *testing.T, cfg Config, a *appliance) {
	t.Helper()
	n := uint64(len(a.c.batches))
	eventually(t, "appliance acked to the last seq", func() bool { return a.src.ackedSeq() == n })
	rs := a.v.receipts()
	last := rs[len(rs)-1]
	if last.Seq != n || last.HeaderHash != a.c.hashes[n-1] || last.Chain != a.c.chain {
		t.Fatalf("last receipt %+v, want seq %d header %s chain %s", last, n, a.c.hashes[n-1], a.c.chain)
	}
	v, err := ledger.NewVerifier(&a.c.key.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	for seq := uint64(1); seq <= n; seq++ {
		raw, err := receiver.FolderStore{Dir: cfg.Store}.Batch(t.Context(), a.c.site, a.c.device, a.c.chain, seq)
		if err != nil {
			t.Fatalf("stored seq %d: %v", seq, err)
		}
		b, err := ledger.NewReader(strings.NewReader(string(raw))).Next()
		if err != nil {
			t.Fatal(err)
		}
		if _, err := v.Verify(b); err != nil {
			t.Fatalf("stored chain: %v", err)
		}
	}
}

// checkAlert: central's trail holds a security.alert for site/device with reason.
func checkAlert(t *testing.T, evs []audit.Event, site, device, reason string) {
	t.Helper()
	for _, e := range withAction(evs, audit.ActionSecurityAlert) {
		if e.Detail["site"] == site && e.Detail["device"] == device && e.Detail["reason"] == reason {
			return
		}
	}
	t.Fatalf("no security.alert %s for %s/%s in central's trail (%d events: %v)", reason, site, device, len(evs), actions(evs))
}

func actions(evs []audit.Event) []string {
	var out []string
	for _, e := range evs {
		out = append(out, e.Action+":"+e.Detail["reason"])
	}
	return out
}

// checkStartStop: the trail begins with the start and ends with the stop, and it
// verifies with central.pub as a chain.
func checkStartStop(t *testing.T, cfg Config, evs []audit.Event) {
	t.Helper()
	if len(evs) < 2 || evs[0].Action != audit.ActionAppStart || evs[len(evs)-1].Action != audit.ActionAppStop {
		t.Fatalf("central's trail %v, want it to start with %s and end with %s", actions(evs), audit.ActionAppStart, audit.ActionAppStop)
	}
	head, err := receiver.FolderStore{Dir: cfg.Store}.Head(t.Context(), cfg.AuditSite, cfg.AuditDevice)
	if err != nil {
		t.Fatal(err)
	}
	v, err := ledger.NewVerifier(readCentralPub(t, cfg))
	if err != nil {
		t.Fatal(err)
	}
	for seq := uint64(1); seq <= head.Seq; seq++ {
		raw, err := receiver.FolderStore{Dir: cfg.Store}.Batch(t.Context(), cfg.AuditSite, cfg.AuditDevice, head.Chain, seq)
		if err != nil {
			t.Fatal(err)
		}
		b, err := ledger.NewReader(strings.NewReader(string(raw))).Next()
		if err != nil {
			t.Fatal(err)
		}
		if _, err := v.Verify(b); err != nil {
			t.Fatalf("central's trail seq %d does not verify with central.pub: %v", seq, err)
		}
	}
}

func enrol(t testing.TB, cfg Config, c *chain) {
	t.Helper()
	if _, err := Enrol(cfg.Devices, c.site, c.device, &c.key.PublicKey, false); err != nil {
		t.Fatal(err)
	}
}

// publishBatch publishes c's batches by hand, as a device would.
func publishBatch(t testing.TB, cl *client, prefix string, c *chain) {
	t.Helper()
	for _, b := range c.batches {
		if err := cl.publish(t, prefix+"/"+c.site+"/"+c.device+"/batch", false, string(b.AppendWire(nil))); err != nil {
			t.Fatal(err)
		}
	}
}

// TestEmbeddedEndToEnd: appliances driven by the real uplink publish to the embedded
// broker; their batches are stored and receipted, the receipts verify with central.pub,
// a device that is not enrolled is refused and the refusal is an alert in central's
// trail, which starts and ends with the start and stop and verifies as a chain.
func TestEmbeddedEndToEnd(t *testing.T) {
	leakCheck(t)
	pw := writePasswords(t, map[string]string{"s1/d1": "pw1", "s1/d2": "pw2", "s1/d9": "pw9"})
	cfg := Config{DataDir: t.TempDir(), EmbeddedBroker: "127.0.0.1:0", EmbeddedBrokerPasswords: pw, AuditDevice: "c1"}
	cfg.SetDefaults()
	d1, d2, d9 := newChain(t, "s1", "d1"), newChain(t, "s1", "d2"), newChain(t, "s1", "d9")
	d1.add(t, 5, 3)
	d2.add(t, 3, 10)
	d9.add(t, 1, 2)
	enrol(t, cfg, d1)
	enrol(t, cfg, d2)
	srv, err := New(cfg, testLogger())
	if err != nil {
		t.Fatal(err)
	}
	if !srv.KeyCreated() {
		t.Error("KeyCreated false on a fresh data folder")
	}
	stop := runServer(t, srv)
	pub := readCentralPub(t, cfg)
	url := "tcp://" + srv.Broker().Addr()
	a1 := runAppliance(t, d1, pub, uplink.Config{Broker: url, Username: "s1/d1", Password: "pw1"})
	a2 := runAppliance(t, d2, pub, uplink.Config{Broker: url, Username: "s1/d2", Password: "pw2"})
	checkReceipted(t, cfg, a1)
	checkReceipted(t, cfg, a2)

	rogue := mustConnect(t, dial{url: url, id: "edgeaudit-s1-d9", user: "s1/d9", pass: "pw9"})
	publishBatch(t, rogue, cfg.Prefix, d9)
	eventually(t, "unknown device refused", func() bool { return srv.Stats().Refused[receiver.ReasonUnknown] == 1 })
	if err := stop(); err != nil {
		t.Fatalf("Run: %v", err)
	}
	evs := trailEvents(t, cfg)
	checkStartStop(t, cfg, evs)
	checkAlert(t, evs, "s1", "d9", receiver.ReasonUnknown)
	if got, want := srv.Stats().Batches, uint64(8); got != want {
		t.Errorf("stored %d batches, want %d", got, want)
	}
	// A restart keeps central's key (the same central.pub), and the embedded broker,
	// whose retained messages died with it, retains each stored head's receipt again:
	// a device learns central's position at connect, with nothing to send.
	srv2, err := New(cfg, testLogger())
	if err != nil {
		t.Fatal(err)
	}
	if srv2.KeyCreated() || !readCentralPub(t, cfg).Equal(pub) {
		t.Error("a second New made a new central key")
	}
	stop2 := runServer(t, srv2)
	dev := mustConnect(t, dial{url: "tcp://" + srv2.Broker().Addr(), id: "edgeaudit-s1-d2", user: "s1/d2", pass: "pw2"})
	dev.subscribe(t, "edgeaudit/s1/d2/ack")
	m := dev.next(t)
	r, err := ledger.VerifyReceipt(m.Payload(), pub)
	if err != nil || !m.Retained() || r.Seq != 3 || r.HeaderHash != d2.hashes[2] {
		t.Fatalf("after a restart: receipt %+v (%v, retained %v), want the retained receipt of s1/d2 seq 3", r, err, m.Retained())
	}
	if err := stop2(); err != nil {
		t.Fatal(err)
	}
}

// mosquittoACL: the receiver reads every batch and key and writes every ack; each
// device (its user name) only its own topics.
const mosquittoACL = `user central
topic read edgeaudit/+/+/batch
topic read edgeaudit/+/+/key
topic write edgeaudit/+/+/ack

pattern write edgeaudit/s1/%u/batch
pattern readwrite edgeaudit/s1/%u/status
pattern write edgeaudit/s1/%u/key
pattern read edgeaudit/s1/%u/ack
`

// TestMosquittoEndToEnd: the same against a real mosquitto with TLS, client
// certificates, passwords and an ACL; the receiver's TLS comes from files.
func TestMosquittoEndToEnd(t *testing.T) {
	leakCheck(t)
	b := testmqtt.Start(t, testmqtt.Options{Users: map[string]string{"central": "cpw", "d1": "pw1", "d9": "pw9"},
		ACL: mosquittoACL, TCPNoDelay: true})
	certFile, keyFile := writeClientCert(t, b)
	cfg := Config{DataDir: t.TempDir(), Broker: b.URL, Username: "central", Password: "cpw",
		TLSCA: b.PKI.CAFile, TLSCert: certFile, TLSKey: keyFile, AuditDevice: "c1"}
	cfg.SetDefaults()
	d1, d9 := newChain(t, "s1", "d1"), newChain(t, "s1", "d9")
	d1.add(t, 4, 5)
	d9.add(t, 2, 1)
	enrol(t, cfg, d1)
	srv, err := New(cfg, testLogger())
	if err != nil {
		t.Fatal(err)
	}
	stop := runServer(t, srv)
	pub := readCentralPub(t, cfg)
	a1 := runAppliance(t, d1, pub, uplink.Config{Broker: b.URL, TLS: b.ClientTLS(), Username: "d1", Password: "pw1"})
	checkReceipted(t, cfg, a1)

	rogue := mustConnect(t, dial{url: b.URL, id: "rogue", user: "d9", pass: "pw9", tls: b.ClientTLS()})
	publishBatch(t, rogue, cfg.Prefix, d9)
	eventually(t, "unknown device refused", func() bool { return srv.Stats().Refused[receiver.ReasonUnknown] == 2 })
	if err := stop(); err != nil {
		t.Fatalf("Run: %v", err)
	}
	evs := trailEvents(t, cfg)
	checkStartStop(t, cfg, evs)
	checkAlert(t, evs, "s1", "d9", receiver.ReasonUnknown)
}

// writeClientCert writes the test PKI's client certificate and key as PEM files, the
// form receive.tls_cert and receive.tls_key take.
func writeClientCert(t testing.TB, b *testmqtt.Broker) (certFile, keyFile string) {
	t.Helper()
	dir := t.TempDir()
	certFile, keyFile = filepath.Join(dir, "client.pem"), filepath.Join(dir, "client-key.pem")
	der, err := x509.MarshalPKCS8PrivateKey(b.PKI.Client.PrivateKey)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: b.PKI.Client.Certificate[0]}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	return certFile, keyFile
}

// TestTrustOnFirstUse: with trust_on_first_use, the key a device publishes is enrolled
// (file, 0600, trail event tofu=true) and its batches are receipted; a different key
// later is not taken and is an alert. Without it, the key is ignored and the batches
// are refused.
func TestTrustOnFirstUse(t *testing.T) {
	for _, tofu := range []bool{true, false} {
		name := map[bool]string{true: "on", false: "off"}[tofu]
		t.Run(name, func(t *testing.T) {
			leakCheck(t)
			pw := writePasswords(t, map[string]string{"s1/d1": "pw1"})
			cfg := Config{DataDir: t.TempDir(), EmbeddedBroker: "127.0.0.1:0", EmbeddedBrokerPasswords: pw,
				AuditDevice: "c1", TrustOnFirstUse: tofu}
			cfg.SetDefaults()
			d1 := newChain(t, "s1", "d1")
			d1.add(t, 3, 2)
			srv, err := New(cfg, testLogger())
			if err != nil {
				t.Fatal(err)
			}
			stop := runServer(t, srv)
			url := "tcp://" + srv.Broker().Addr()
			a := runAppliance(t, d1, readCentralPub(t, cfg), uplink.Config{Broker: url, Username: "s1/d1", Password: "pw1",
				PublicKey: pubPEM(t, &d1.key.PublicKey)})
			keyFile := filepath.Join(cfg.Devices, "s1", "d1.pub")
			if !tofu {
				eventually(t, "batches refused", func() bool { return srv.Stats().Refused[receiver.ReasonUnknown] >= 3 })
				if err := stop(); err != nil {
					t.Fatal(err)
				}
				if _, err := os.Stat(keyFile); !os.IsNotExist(err) {
					t.Fatalf("key file without TOFU: %v, want none", err)
				}
				if got := a.src.ackedSeq(); got != 0 {
					t.Fatalf("acked %d without an enrolled key, want 0", got)
				}
				if got := withAction(trailEvents(t, cfg), audit.ActionKeyChange); len(got) != 0 {
					t.Fatalf("key changes in the trail without TOFU: %v", actions(got))
				}
				return
			}
			// The first batches may come before the key and be refused once; the
			// uplink resends them after ack_timeout.
			checkReceipted(t, cfg, a)
			fi, err := os.Stat(keyFile)
			if err != nil {
				t.Fatal(err)
			}
			if got := fi.Mode().Perm(); got != 0o600 {
				t.Errorf("key file mode %o, want 600", got)
			}
			// Another key for the enrolled device, published as a device would.
			other := genKey(t)
			dev := mustConnect(t, dial{url: url, id: "edgeaudit-s1-d1", user: "s1/d1", pass: "pw1"})
			if err := dev.publish(t, "edgeaudit/s1/d1/key", true, string(pubPEM(t, &other.PublicKey))); err != nil {
				t.Fatal(err)
			}
			wantKid, _ := ledger.KeyID(&d1.key.PublicKey)
			otherKid, _ := ledger.KeyID(&other.PublicKey)
			eventually(t, "key conflict alerted", func() bool {
				// The alert is written by the trail loop; look for it in the store.
				for _, e := range withAction(trailEvents(t, cfg), audit.ActionSecurityAlert) {
					if e.Detail["reason"] == ReasonKeyConflict && e.Detail["key_id"] == otherKid && e.Detail["enrolled_key_id"] == wantKid {
						return true
					}
				}
				return false
			})
			// A key offered under central's own trail's site is never taken.
			srv.offerKey(t.Context(), testLogger(), new(ratelog.Limiter), "edgeaudit/"+cfg.AuditSite+"/"+cfg.AuditDevice+"/key", pubPEM(t, &other.PublicKey))
			if _, err := os.Stat(filepath.Join(cfg.Devices, cfg.AuditSite)); !os.IsNotExist(err) {
				t.Fatalf("a key was enrolled under the audit site: %v", err)
			}
			if err := stop(); err != nil {
				t.Fatal(err)
			}
			_, kid, err := readKeyFile(keyFile)
			if err != nil || kid != wantKid {
				t.Fatalf("enrolled key %s (%v) after a conflicting offer, want the first one %s", kid, err, wantKid)
			}
			evs := trailEvents(t, cfg)
			var enrolled bool
			for _, e := range withAction(evs, audit.ActionKeyChange) {
				if e.Detail["tofu"] == "true" && e.Detail["key_id"] == wantKid && e.Detail["site"] == "s1" && e.Detail["device"] == "d1" {
					enrolled = true
				}
			}
			if !enrolled {
				t.Fatalf("no key change tofu=true key_id %s in central's trail: %v", wantKid, actions(evs))
			}
		})
	}
}

func readKeyFile(path string) (*ecdsa.PublicKey, string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, "", err
	}
	return ParseDeviceKey(b)
}
