package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/edgeaudit/edgeaudit/attest"
	"github.com/edgeaudit/edgeaudit/collectors/fhir"
	"github.com/edgeaudit/edgeaudit/collectors/hl7"
	"github.com/edgeaudit/edgeaudit/collectors/syslog"
	"github.com/edgeaudit/edgeaudit/daemon"
	"github.com/edgeaudit/edgeaudit/ledger"
	"github.com/edgeaudit/edgeaudit/receiver"
	"github.com/edgeaudit/edgeaudit/receiver/central"
	"github.com/edgeaudit/edgeaudit/uplink"
)

// DemoCommand runs the whole flow on one machine: an appliance, a central receiver with
// its embedded broker, realistic traffic from every source, and a report.
type DemoCommand struct {
	// Out is where the report goes (default stdout).
	Out io.Writer
}

// The demo's identities and the identifiers its traffic names. The identifiers are
// made up; the report checks that none of them reached central in clear.
const (
	demoSite, demoDevice = "demo", "appliance1"
	demoTimeout          = 60 * time.Second
)

var demoPatientIDs = []string{"MRN1000234", "MRN1000777", "MRN-300471"}

// Run implements the command.
func (c *DemoCommand) Run(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("edgeaudit demo", flag.ContinueOnError)
	dir := fs.String("dir", "", "keep everything in this folder (default: a temporary one, removed at the end)")
	fs.Usage = c.Usage
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() != 0 {
		return &usageError{"demo: no arguments"}
	}
	out := c.Out
	if out == nil {
		out = os.Stdout
	}
	root := *dir
	if root == "" {
		tmp, err := os.MkdirTemp("", "edgeaudit-demo-")
		if err != nil {
			return fmt.Errorf("demo: %w", err)
		}
		defer os.RemoveAll(tmp)
		root = tmp
	}
	ctx, cancel := context.WithTimeout(ctx, 2*demoTimeout)
	defer cancel()
	return runDemo(ctx, root, out)
}

func runDemo(ctx context.Context, root string, out io.Writer) error {
	if err := os.MkdirAll(root, 0o700); err != nil {
		return fmt.Errorf("demo: %w", err)
	}
	logFile, err := os.OpenFile(filepath.Join(root, "demo.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("demo: %w", err)
	}
	defer logFile.Close()
	logger := slog.New(slog.NewTextHandler(logFile, &slog.HandlerOptions{Level: slog.LevelInfo}))
	say := func(format string, args ...any) { fmt.Fprintf(out, format+"\n", args...) }

	// Central: the receiver, its folder store, and the embedded broker the appliance
	// logs in to with a password.
	secret := make([]byte, 16)
	rand.Read(secret)
	password := hex.EncodeToString(secret)
	line, err := central.PasswordLine(demoSite+"/"+demoDevice, password)
	if err != nil {
		return err
	}
	passwd := filepath.Join(root, "central-passwd")
	if err := os.WriteFile(passwd, []byte(line+"\n"), 0o600); err != nil {
		return fmt.Errorf("demo: %w", err)
	}
	ccfg := central.Config{DataDir: filepath.Join(root, "central"), EmbeddedBroker: "127.0.0.1:0",
		EmbeddedBrokerPasswords: passwd, TrustOnFirstUse: true, AuditDevice: "central1"}
	ccfg.SetDefaults()
	ccfg.Broker = ""
	srv, err := central.New(ccfg, logger.With("side", "central"))
	if err != nil {
		return fmt.Errorf("demo: central: %w", err)
	}
	cctx, stopCentral := context.WithCancel(ctx)
	defer stopCentral()
	cdone := make(chan error, 1)
	go func() { cdone <- srv.Run(cctx) }()
	select {
	case <-srv.Ready():
	case err := <-cdone:
		return fmt.Errorf("demo: central: %w", err)
	case <-ctx.Done():
		return errors.New("demo: central did not start")
	}
	say("central: receiver and embedded MQTT broker on %s, store %s", srv.Broker().Addr(), ccfg.Store)

	// The appliance: every listener on a free loopback port, the uplink to central.
	acfg := daemon.DefaultConfig()
	acfg.Site, acfg.Device, acfg.DataDir = demoSite, demoDevice, filepath.Join(root, "appliance")
	acfg.Syslog = syslog.Config{TCP: "127.0.0.1:0"}
	acfg.HL7 = hl7.Config{MLLP: "127.0.0.1:0"}
	acfg.FHIR = fhir.Config{HTTP: "127.0.0.1:0"}
	acfg.Admin = "127.0.0.1:0"
	acfg.Batch.MaxAge = 500 * time.Millisecond
	acfg.NTP.Off = true // a demo must not depend on reaching pool.ntp.org
	acfg.Uplink = daemon.UplinkSection{Config: uplink.Config{Broker: "tcp://" + srv.Broker().Addr(),
		Username: demoSite + "/" + demoDevice, Password: password, CentralKey: ccfg.PublicKeyPath(),
		AckTimeout: 2 * time.Second, BackoffMin: 100 * time.Millisecond, BackoffMax: time.Second}}
	d, err := daemon.New(acfg, buildVersion(), logger.With("side", "appliance"))
	if err != nil {
		return fmt.Errorf("demo: appliance: %w", err)
	}
	actx, stopAppliance := context.WithCancel(ctx)
	defer stopAppliance()
	adone := make(chan error, 1)
	go func() { adone <- d.Run(actx) }()
	select {
	case <-d.Ready():
	case err := <-adone:
		return fmt.Errorf("demo: appliance: %w", err)
	case <-ctx.Done():
		return errors.New("demo: appliance did not start")
	}
	_, tcp, _ := d.SyslogAddrs()
	mllp, fhirAddr := d.ClinicalAddrs()
	say("appliance %s/%s: syslog %s, HL7 MLLP %s, FHIR http://%s, uplink to central", demoSite, demoDevice, tcp, mllp, fhirAddr)

	// Traffic: what a modality, a PACS, a RIS and an EHR would send.
	sent, err := sendDemoTraffic(ctx, tcp.String(), mllp.String(), fhirAddr.String())
	if err != nil {
		return fmt.Errorf("demo: traffic: %w", err)
	}
	say("sent: %d syslog messages (one a DICOM audit message), %d HL7 messages over MLLP (%s), %d FHIR AuditEvents",
		sent.syslog, sent.hl7, strings.Join(sent.acks, ", "), sent.fhir)

	// Wait until central has receipted everything the appliance sealed.
	h, err := waitReceipted(ctx, d.AdminAddr().String(), sent.total())
	if err != nil {
		return fmt.Errorf("demo: %w", err)
	}
	say("appliance: %d events committed, %d batches sealed and signed (%s key), all receipted by central (acked seq %d)",
		h.Committed, h.HeadSeq, h.Signer, h.AckedSeq)
	stopAppliance()
	if err := <-adone; err != nil {
		return fmt.Errorf("demo: appliance: %w", err)
	}
	stopCentral()
	if err := <-cdone; err != nil {
		return fmt.Errorf("demo: central: %w", err)
	}
	return demoReport(ctx, root, ccfg, acfg, say)
}

// demoSent counts what the traffic generator delivered.
type demoSent struct {
	syslog, hl7, fhir int
	acks              []string
}

func (s demoSent) total() int { return s.syslog + s.hl7 + s.fhir }

func sendDemoTraffic(ctx context.Context, tcp, mllp, fhirAddr string) (demoSent, error) {
	var s demoSent
	now := time.Now().UTC().Format(time.RFC3339)
	dicom := `<?xml version="1.0" encoding="UTF-8"?><AuditMessage>` +
		`<EventIdentification EventActionCode="R" EventDateTime="` + now + `" EventOutcomeIndicator="0">` +
		`<EventID csd-code="110103" codeSystemName="DCM" originalText="DICOM Instances Accessed"/></EventIdentification>` +
		`<ActiveParticipant UserID="dr.lee" UserIsRequestor="true" NetworkAccessPointID="rad-ws-07" NetworkAccessPointTypeCode="1"/>` +
		`<ActiveParticipant UserID="PACS1" AlternativeUserID="AETITLES=PACS1" UserIsRequestor="false"><RoleIDCode csd-code="110152" codeSystemName="DCM" originalText="Destination Role ID"/></ActiveParticipant>` +
		`<AuditSourceIdentification AuditSourceID="PACS1"/>` +
		`<ParticipantObjectIdentification ParticipantObjectID="1.2.826.0.1.3680043.10.999.7.1" ParticipantObjectTypeCode="2" ParticipantObjectTypeCodeRole="3"><ParticipantObjectIDTypeCode csd-code="110180" codeSystemName="DCM" originalText="Study Instance UID"/></ParticipantObjectIdentification>` +
		`<ParticipantObjectIdentification ParticipantObjectID="` + demoPatientIDs[0] + `" ParticipantObjectTypeCode="1" ParticipantObjectTypeCodeRole="1"><ParticipantObjectIDTypeCode csd-code="2" codeSystemName="RFC-3881" originalText="Patient Number"/></ParticipantObjectIdentification>` +
		`</AuditMessage>`
	lines := []string{
		"<86>1 " + now + " modality1 sshd 4121 - - Accepted publickey for tech01 from 10.1.2.3 port 52000 ssh2",
		"<86>1 " + now + " modality1 sshd 4188 - - Failed password for invalid user admin from 10.9.9.9 port 40022 ssh2",
		`<110>1 ` + now + ` pacs1 viewer 77 - [meta@32473 user="dr.lee" patient_id="` + demoPatientIDs[0] + `"] study opened`,
		"<110>1 " + now + " pacs1 dicom 78 - - " + dicom,
	}
	conn, err := net.DialTimeout("tcp", tcp, 5*time.Second)
	if err != nil {
		return s, err
	}
	for _, l := range lines {
		if _, err := fmt.Fprintf(conn, "%d %s", len(l), l); err != nil {
			conn.Close()
			return s, err
		}
		s.syslog++
	}
	conn.Close()

	stamp := time.Now().UTC().Format("20060102150405")
	msgs := []string{
		"MSH|^~\\&|RIS|HOSP|EDGEAUDIT|SITE|" + stamp + "||ADT^A01^ADT_A01|MSG0001|P|2.5.1\rEVN|A01|" + stamp + "|||clerk7\rPID|1||" + demoPatientIDs[1] + "^^^HOSP^MR||DOE^JANE||19700101|F\rPV1|1|O\r",
		"MSH|^~\\&|RIS|HOSP|EDGEAUDIT|SITE|" + stamp + "||ORM^O01^ORM_O01|MSG0002|P|2.5.1\rPID|1||" + demoPatientIDs[1] + "^^^HOSP^MR||DOE^JANE\rORC|NW|ORD1001|||||||" + stamp + "|||clerk7\rOBR|1|ORD1001||CT^CT HEAD\r",
	}
	mc, err := net.DialTimeout("tcp", mllp, 5*time.Second)
	if err != nil {
		return s, err
	}
	defer mc.Close()
	rd := bufio.NewReader(mc)
	for _, m := range msgs {
		mc.SetDeadline(time.Now().Add(10 * time.Second))
		if _, err := mc.Write(append(append([]byte{0x0b}, m...), 0x1c, 0x0d)); err != nil {
			return s, err
		}
		ack, err := rd.ReadBytes(0x1c)
		if err != nil {
			return s, fmt.Errorf("hl7 ack: %w", err)
		}
		rd.ReadByte() // the CR after 0x1c
		code := "?"
		for _, seg := range strings.Split(string(ack), "\r") {
			if f := strings.Split(strings.TrimLeft(seg, "\x0b"), "|"); f[0] == "MSA" && len(f) > 1 {
				code = f[1]
			}
		}
		s.acks = append(s.acks, code)
		s.hl7++
	}

	ev := map[string]any{
		"resourceType": "AuditEvent",
		"type":         map[string]string{"system": "http://terminology.hl7.org/CodeSystem/audit-event-type", "code": "rest"},
		"subtype":      []map[string]string{{"system": "http://hl7.org/fhir/restful-interaction", "code": "read"}},
		"action":       "R", "recorded": now, "outcome": "0",
		"source": map[string]any{"observer": map[string]string{"reference": "Device/ehr1"}},
		"agent":  []map[string]any{{"who": map[string]any{"identifier": map[string]string{"value": "dr.lee"}}, "requestor": true}},
		"entity": []map[string]any{{"what": map[string]any{"reference": "Patient/pt-1",
			"identifier": map[string]string{"system": "urn:oid:1.2.840.99999.1", "value": demoPatientIDs[2]}},
			"type": map[string]string{"system": "http://terminology.hl7.org/CodeSystem/audit-entity-type", "code": "1"},
			"role": map[string]string{"system": "http://terminology.hl7.org/CodeSystem/object-role", "code": "1"}}},
	}
	body, _ := json.Marshal(ev)
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://"+fhirAddr+"/AuditEvent", bytes.NewReader(body))
	if err != nil {
		return s, err
	}
	req.Header.Set("Content-Type", "application/fhir+json")
	resp, err := (&http.Client{Timeout: 10 * time.Second}).Do(req)
	if err != nil {
		return s, err
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusCreated {
		return s, fmt.Errorf("FHIR answered %s", resp.Status)
	}
	s.fhir++
	return s, nil
}

// demoHealth is the part of /healthz the demo reads.
type demoHealth struct {
	HeadSeq    uint64 `json:"head_seq"`
	AckedSeq   uint64 `json:"acked_seq"`
	OpenEvents int    `json:"open_events"`
	Committed  uint64 `json:"events_committed"`
	Signer     string `json:"signer"`
	Uplink     *struct {
		Unsent uint64 `json:"unsent_batches"`
	} `json:"uplink"`
}

// waitReceipted polls the appliance's health until min events are committed, sealed,
// and receipted by central.
func waitReceipted(ctx context.Context, admin string, min int) (demoHealth, error) {
	deadline := time.Now().Add(demoTimeout)
	var h demoHealth
	for time.Now().Before(deadline) {
		resp, err := http.Get("http://" + admin + "/healthz")
		if err == nil {
			h = demoHealth{}
			json.NewDecoder(resp.Body).Decode(&h)
			resp.Body.Close()
			if h.Committed >= uint64(min) && h.OpenEvents == 0 && h.HeadSeq > 0 && h.AckedSeq == h.HeadSeq && h.Uplink != nil && h.Uplink.Unsent == 0 {
				return h, nil
			}
		}
		select {
		case <-ctx.Done():
			return h, ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
	return h, fmt.Errorf("central did not receipt everything within %s: %+v", demoTimeout, h)
}

// demoReport reads central's store as a security team would: the events by source and
// action, the chain verified with the appliance's key, a query by patient token, and a
// scan for the identifiers that must never be there in clear.
func demoReport(ctx context.Context, root string, ccfg central.Config, acfg daemon.Config, say func(string, ...any)) error {
	store, closeStore, err := central.OpenStore(ctx, ccfg, slog.New(slog.DiscardHandler))
	if err != nil {
		return fmt.Errorf("demo: %w", err)
	}
	defer closeStore()
	type row struct{ kind, action string }
	counts := map[row]int{}
	tokens := map[string]bool{}
	var total int
	err = store.Query(ctx, receiver.Query{Site: demoSite, Device: demoDevice}, func(m receiver.Match) error {
		var e struct {
			Action  string `json:"action"`
			Patient string `json:"patient"`
			Source  struct {
				Kind string `json:"kind"`
			} `json:"source"`
		}
		if err := json.Unmarshal(m.Event, &e); err != nil {
			return err
		}
		counts[row{e.Source.Kind, e.Action}]++
		if e.Patient != "" {
			tokens[e.Patient] = true
		}
		total++
		return nil
	})
	if err != nil {
		return fmt.Errorf("demo: query: %w", err)
	}
	say("central holds %d events of %s/%s:", total, demoSite, demoDevice)
	var rows []row
	for r := range counts {
		rows = append(rows, r)
	}
	slices.SortFunc(rows, func(a, b row) int { return strings.Compare(a.kind+a.action, b.kind+b.action) })
	for _, r := range rows {
		say("  %-7s %-28s %d", r.kind, r.action, counts[r])
	}

	// The chain as stored, verified with the key the appliance wrote.
	head, err := store.Head(ctx, demoSite, demoDevice)
	if err != nil {
		return fmt.Errorf("demo: %w", err)
	}
	pubs, err := readPublicKeys(acfg.PublicKeyPath())
	if err != nil {
		return err
	}
	v, err := ledger.NewVerifier(pubs...)
	if err != nil {
		return err
	}
	for seq := uint64(1); seq <= head.Seq; seq++ {
		wire, err := store.Batch(ctx, demoSite, demoDevice, head.Chain, seq)
		if err != nil {
			return fmt.Errorf("demo: batch %d: %w", seq, err)
		}
		b, err := ledger.NewReader(bytes.NewReader(wire)).Next()
		if err != nil {
			return fmt.Errorf("demo: batch %d: %w", seq, err)
		}
		if _, err := v.Verify(b); err != nil {
			return fmt.Errorf("demo: central's copy does not verify: %w", err)
		}
	}
	say("central's copy: %d batches, signatures, Merkle roots and links verified with the appliance's key", head.Seq)

	// A patient query, answered from the store.
	tokenList := slices.Sorted(func(yield func(string) bool) {
		for t := range tokens {
			if !yield(t) {
				return
			}
		}
	})
	say("patient identifiers: %d sent in clear, stored as %d tokens: %s", len(demoPatientIDs), len(tokenList), strings.Join(tokenList, " "))
	if len(tokenList) > 0 {
		var n int
		err := store.Query(ctx, receiver.Query{Patient: tokenList[0]}, func(receiver.Match) error { n++; return nil })
		if err != nil {
			return fmt.Errorf("demo: query: %w", err)
		}
		say("query by patient token %s: %d events (edgeaudit query -patient TOKEN answers this, and records the query)", tokenList[0], n)
	}
	// No identifier reached central in clear.
	found := 0
	filepath.WalkDir(ccfg.Store, func(p string, de fs.DirEntry, err error) error {
		if err != nil || de.IsDir() {
			return nil
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return nil
		}
		for _, id := range demoPatientIDs {
			if bytes.Contains(b, []byte(id)) {
				found++
			}
		}
		return nil
	})
	say("identifiers in clear in central's store: %d", found)
	if found != 0 || len(tokenList) == 0 || total == 0 {
		return errors.New("demo: the report is not what it must be (see above)")
	}
	say("demo ok (files in %s)", root)
	return nil
}

// readPublicKeys reads the appliance's public key and any it replaced.
func readPublicKeys(current string) ([]*ecdsa.PublicKey, error) {
	paths := []string{current}
	old, _ := filepath.Glob(filepath.Join(filepath.Dir(current), "signing-*.pub"))
	var keys []*ecdsa.PublicKey
	for _, p := range append(paths, old...) {
		k, err := attest.ReadPublicPEM(p)
		if err != nil {
			return nil, err
		}
		keys = append(keys, k...)
	}
	return keys, nil
}

// Usage prints the man page.
func (c *DemoCommand) Usage() {
	fmt.Fprint(os.Stderr, `The demo command runs the whole flow on this machine, with nothing else installed,
and reports what happened:

	central: a receiver with its folder store and an embedded MQTT broker
	appliance: the daemon, every listener on a free loopback port, the uplink to central
	traffic: SSH logins over syslog, a PACS viewer's log line, a DICOM audit message,
	         HL7 ADT and ORM messages over MLLP, a FHIR AuditEvent over HTTP

It waits until central has verified, stored and receipted every batch, stops both, and
then reads central's store as a security team would: the events by source and action,
the stored chain verified with the appliance's key, the patient identifiers as tokens,
a query by patient token, and a scan of the store for the identifiers in clear (there
must be none). Exit 0 when all of that holds.

Usage:

	edgeaudit demo [-dir DIR]

	-dir DIR
	    Keep the data folders, the logs (demo.log) and central's store in DIR;
	    by default a temporary folder is used and removed.
`)
}
