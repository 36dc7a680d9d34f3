package central

import (
	"fmt"
	"path/filepath"
	"strings"
	"testing"

	"github.com/edgeaudit/edgeaudit/audit"
	"github.com/edgeaudit/edgeaudit/internal/testmqtt"
	"github.com/edgeaudit/edgeaudit/internal/testpg"
	"github.com/edgeaudit/edgeaudit/receiver"
	"github.com/edgeaudit/edgeaudit/uplink"
)

// pgURL is a postgres:// DSN of a new database on the tests' shared cluster, the form
// receive.store takes.
func pgURL(t *testing.T) string {
	t.Helper()
	c := testpg.Shared(t)
	dsn := c.NewDatabase(t)
	var db string
	for _, f := range strings.Fields(dsn) {
		if v, ok := strings.CutPrefix(f, "dbname="); ok {
			db = v
		}
	}
	return fmt.Sprintf("postgres://%s@127.0.0.1:%d/%s?sslmode=disable", testpg.Superuser, c.Port, db)
}

// TestPostgresStore: receive.store as a postgres:// DSN: the store is migrated, an
// appliance's batches are stored and receipted, and OpenStore's Querier finds central's
// own trail in the database.
func TestPostgresStore(t *testing.T) {
	leakCheck(t)
	pw := writePasswords(t, map[string]string{"s1/d1": "pw1"})
	cfg := Config{DataDir: t.TempDir(), Store: pgURL(t), EmbeddedBroker: "127.0.0.1:0", EmbeddedBrokerPasswords: pw, AuditDevice: "c1"}
	cfg.SetDefaults()
	d1 := newChain(t, "s1", "d1")
	d1.add(t, 3, 4)
	enrol(t, cfg, d1)
	srv, err := New(cfg, testLogger())
	if err != nil {
		t.Fatal(err)
	}
	stop := runServer(t, srv)
	a := runAppliance(t, d1, readCentralPub(t, cfg), uplink.Config{Broker: "tcp://" + srv.Broker().Addr(), Username: "s1/d1", Password: "pw1"})
	eventually(t, "appliance acked to the last seq", func() bool { return a.src.ackedSeq() == 3 })
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	st, closeFn, err := OpenStore(t.Context(), cfg, testLogger())
	if err != nil {
		t.Fatal(err)
	}
	defer closeFn()
	h, err := st.Head(t.Context(), "s1", "d1")
	if err != nil || h.Seq != 3 || h.Hash != d1.hashes[2] {
		t.Fatalf("stored head %+v (%v), want seq 3 hash %s", h, err, d1.hashes[2])
	}
	var got []string
	err = st.Query(t.Context(), receiver.Query{Site: cfg.AuditSite, Device: cfg.AuditDevice}, func(m receiver.Match) error {
		e, err := audit.Decode(m.Event)
		got = append(got, e.Action)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || got[0] != audit.ActionAppStart || got[1] != audit.ActionAppStop {
		t.Fatalf("central's trail in PostgreSQL: %v, want start and stop", got)
	}
}

// TestSharedGroup: two receivers share one PostgreSQL store through a shared
// subscription on a real mosquitto (receive.shared_group), with one central key and one
// devices folder; every batch of an appliance is stored once and receipted, and each
// receiver writes its own trail.
func TestSharedGroup(t *testing.T) {
	leakCheck(t)
	b := testmqtt.Start(t, testmqtt.Options{Users: map[string]string{"central": "cpw", "d1": "pw1"}, ACL: mosquittoACL, TCPNoDelay: true})
	certFile, keyFile := writeClientCert(t, b)
	store, shared := pgURL(t), t.TempDir()
	cfgs := make([]Config, 2)
	for i := range cfgs {
		cfgs[i] = Config{DataDir: t.TempDir(), Store: store, Devices: filepath.Join(shared, "devices"), Key: filepath.Join(shared, "central.key"),
			Broker: b.URL, Username: "central", Password: "cpw", TLSCA: b.PKI.CAFile, TLSCert: certFile, TLSKey: keyFile,
			SharedGroup: "g1", ClientID: fmt.Sprintf("central-%d", i+1), AuditDevice: fmt.Sprintf("c%d", i+1)}
		cfgs[i].SetDefaults()
	}
	d1 := newChain(t, "s1", "d1")
	d1.add(t, 20, 3)
	enrol(t, cfgs[0], d1)
	var srvs []*Server
	var stops []func() error
	for _, c := range cfgs {
		srv, err := New(c, testLogger())
		if err != nil {
			t.Fatal(err)
		}
		srvs = append(srvs, srv)
		stops = append(stops, runServer(t, srv))
	}
	a := runAppliance(t, d1, readCentralPub(t, cfgs[0]), uplink.Config{Broker: b.URL, TLS: b.ClientTLS(), Username: "d1", Password: "pw1"})
	eventually(t, "appliance acked to the last seq", func() bool { return a.src.ackedSeq() == 20 })
	for _, stop := range stops {
		if err := stop(); err != nil {
			t.Fatal(err)
		}
	}
	var stored uint64
	for _, s := range srvs {
		stored += s.Stats().Batches
	}
	if stored != 20 {
		t.Errorf("the two receivers stored %d batches, want 20 (each once)", stored)
	}
	st, closeFn, err := OpenStore(t.Context(), cfgs[0], testLogger())
	if err != nil {
		t.Fatal(err)
	}
	defer closeFn()
	if h, err := st.Head(t.Context(), "s1", "d1"); err != nil || h.Seq != 20 || h.Hash != d1.hashes[19] {
		t.Fatalf("stored head %+v (%v), want seq 20", h, err)
	}
	for _, c := range cfgs {
		var n int
		if err := st.Query(t.Context(), receiver.Query{Site: c.AuditSite, Device: c.AuditDevice}, func(receiver.Match) error { n++; return nil }); err != nil || n != 2 {
			t.Errorf("trail %s/%s: %d events (%v), want start and stop", c.AuditSite, c.AuditDevice, n, err)
		}
	}
	t.Logf("stored by receiver 1: %d, by receiver 2: %d", srvs[0].Stats().Batches, srvs[1].Stats().Batches)
}
