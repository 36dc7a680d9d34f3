package daemon

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/edgeaudit/edgeaudit/audit"
	"github.com/edgeaudit/edgeaudit/collectors/syslog"
)

// ActionHealthProbe records a probe of the listeners (`edgeaudit health -probe`).
const ActionHealthProbe = "audit.health_probe"

// probeTimeout bounds one listener's probe: send, and wait for the commit.
const probeTimeout = 5 * time.Second

// Probe results.
const (
	ProbeCommitted = "committed" // sent through the listener and committed to the spool
	ProbeFailed    = "failed"
	ProbeSkipped   = "skipped" // cannot be probed from here (client certificates required)
)

// ProbeResult is one listener's probe.
type ProbeResult struct {
	Listener string  `json:"listener"` // the YAML key, e.g. syslog.tcp
	Addr     string  `json:"addr"`
	Result   string  `json:"result"`
	Detail   string  `json:"detail,omitempty"`
	Millis   float64 `json:"ms"`
}

// probeWatch lets a probe see its syslog message committed: the sink calls match for
// every event while a probe runs (one atomic load otherwise), and the commit's done
// callback tells the waiting probe.
type probeWatch struct {
	active atomic.Int32
	mu     sync.Mutex
	wait   map[string]chan error // nonce -> commit result
}

func (w *probeWatch) expect(nonce string) chan error {
	ch := make(chan error, 1)
	w.mu.Lock()
	if w.wait == nil {
		w.wait = map[string]chan error{}
	}
	w.wait[nonce] = ch
	w.mu.Unlock()
	w.active.Add(1)
	return ch
}

func (w *probeWatch) forget(nonce string) {
	w.mu.Lock()
	delete(w.wait, nonce)
	w.mu.Unlock()
	w.active.Add(-1)
}

// wrap returns done, or, for a probe's event, a done that also reports the commit.
func (w *probeWatch) wrap(e *audit.Event, done func(error)) func(error) {
	if w == nil || w.active.Load() == 0 || !strings.Contains(e.Message, probeMarker) {
		return done
	}
	w.mu.Lock()
	var ch chan error
	for nonce, c := range w.wait {
		if strings.Contains(e.Message, nonce) {
			ch = c
			break
		}
	}
	w.mu.Unlock()
	if ch == nil {
		return done
	}
	return func(err error) {
		if done != nil {
			done(err)
		}
		select {
		case ch <- err:
		default:
		}
	}
}

// probeMarker starts every probe message; it says what the event is to whoever reads it.
const probeMarker = "edgeaudit health probe"

// probeHandler sends a test message through each listener and reports whether it was
// committed; the probe is recorded in the chain.
func (d *Daemon) probeHandler(adminToken string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if !adminAuthorized(w, r, adminToken) {
			return
		}
		ctx, cancel := context.WithTimeout(r.Context(), 4*probeTimeout)
		defer cancel()
		res := d.probe(ctx)
		e := selfEvent(time.Now(), ActionHealthProbe, "success", "")
		e.Actor.User = r.Header.Get("X-Edgeaudit-User")
		e.Detail = map[string]string{}
		for _, p := range res {
			e.Detail[p.Listener] = p.Result
			if p.Result == ProbeFailed {
				e.Outcome, e.Reason = audit.OutcomeMinorFailure, "a listener failed its probe"
			}
		}
		d.mu.Lock()
		self := d.self
		d.mu.Unlock()
		if err := self.record(ctx, e); err != nil {
			http.Error(w, "record the probe: "+err.Error(), http.StatusServiceUnavailable)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(res)
	}
}

// probe runs every listener's probe, one after the other (a probe is a handful of
// messages; concurrency would only blur which listener is slow).
func (d *Daemon) probe(ctx context.Context) []ProbeResult {
	d.mu.Lock()
	sl, hc, fc := d.syslog, d.hl7, d.fhir
	d.mu.Unlock()
	var out []ProbeResult
	run := func(key string, a net.Addr, fn func(ctx context.Context, addr, nonce string) (string, error)) {
		if a == nil {
			out = append(out, ProbeResult{Listener: key, Result: ProbeFailed, Detail: "not bound"})
			return
		}
		addr := dialable(a)
		nonce := newNonce()
		start := time.Now()
		pctx, cancel := context.WithTimeout(ctx, probeTimeout)
		defer cancel()
		res, err := fn(pctx, addr, nonce)
		p := ProbeResult{Listener: key, Addr: addr, Result: res, Millis: float64(time.Since(start).Microseconds()) / 1000}
		if err != nil {
			p.Detail = err.Error()
		}
		out = append(out, p)
	}
	if sl != nil {
		c := d.cfg.Syslog
		if c.UDP != "" {
			run("syslog.udp", sl.UDPAddr(), d.probeSyslog("udp", nil))
		}
		if c.TCP != "" {
			run("syslog.tcp", sl.TCPAddr(), d.probeSyslog("tcp", nil))
		}
		if c.TLS != "" {
			run("syslog.tls", sl.TLSAddr(), d.probeSyslog("tcp", d.probeTLS(c.TLSCert, c.TLSKey)))
		}
		if r := sl.RELP(); r != nil {
			if c.RELP != "" {
				run("syslog.relp", r.Addr(), probeRELP(nil))
			}
			if c.RELPTLS != "" {
				run("syslog.relp_tls", r.TLSAddr(), probeRELP(d.probeTLS(c.TLSCert, c.TLSKey)))
			}
		}
	}
	if hc != nil {
		var tc *tls.Config
		if d.cfg.HL7.TLSCert != "" {
			tc = d.probeTLS(d.cfg.HL7.TLSCert, d.cfg.HL7.TLSKey)
		}
		run("hl7.mllp", hc.Addr(), probeMLLP(tc))
	}
	if fc != nil {
		var tc *tls.Config
		if d.cfg.FHIR.TLSCert != "" {
			tc = d.probeTLS(d.cfg.FHIR.TLSCert, d.cfg.FHIR.TLSKey)
		}
		run("fhir.http", fc.Addr(), probeFHIR(tc))
	}
	return out
}

// dialable turns a wildcard bind address into the loopback one of its family.
func dialable(a net.Addr) string {
	host, port, err := net.SplitHostPort(a.String())
	if err != nil {
		return a.String()
	}
	ip := net.ParseIP(host)
	switch {
	case ip == nil || !ip.IsUnspecified():
		return a.String()
	case ip.To4() != nil:
		return net.JoinHostPort("127.0.0.1", port)
	default:
		return net.JoinHostPort("::1", port)
	}
}

func newNonce() string {
	b := make([]byte, 8)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// probeTLS is the client side of a probe of the appliance's own TLS listener. It does
// not verify the server: it is this process, reached over loopback, and what is probed
// is that the listener takes and commits a message. It offers the listener's own
// certificate, which a listener that requires client certificates may or may not take.
func (d *Daemon) probeTLS(certFile, keyFile string) *tls.Config {
	c := &tls.Config{InsecureSkipVerify: true, MinVersion: tls.VersionTLS12}
	if kp, err := tls.LoadX509KeyPair(certFile, keyFile); err == nil {
		c.Certificates = []tls.Certificate{kp}
	}
	return c
}

// dialProbe connects (and shakes hands, with tc) to a listener; the connection's
// deadline is ctx's.
func dialProbe(ctx context.Context, network, addr string, tc *tls.Config) (net.Conn, error) {
	var dl net.Dialer
	conn, err := dl.DialContext(ctx, network, addr)
	if err != nil {
		return nil, err
	}
	if d, ok := ctx.Deadline(); ok {
		conn.SetDeadline(d)
	}
	if tc == nil {
		return conn, nil
	}
	tconn := tls.Client(conn, tc)
	if err := tconn.HandshakeContext(ctx); err != nil {
		conn.Close()
		return nil, errHandshake{err}
	}
	return tconn, nil
}

// errHandshake: the TLS listener answered but refused the probe's handshake, as one
// that requires client certificates from its own CA does.
type errHandshake struct{ err error }

func (e errHandshake) Error() string {
	return "TLS handshake refused (client certificates from tls_client_ca required?): " + e.err.Error()
}

// result maps a probe's error: a refused handshake is skipped, anything else failed.
func result(err error) string {
	var h errHandshake
	switch {
	case err == nil:
		return ProbeCommitted
	case errors.As(err, &h):
		return ProbeSkipped
	default:
		return ProbeFailed
	}
}

func probeText(nonce string) string {
	return probeMarker + " " + nonce + " (edgeaudit health -probe; no action needed)"
}

// probeSyslog sends one RFC 5424 message over network ("udp", or "tcp" octet-counted)
// and waits until the spool has committed it.
func (d *Daemon) probeSyslog(network string, tc *tls.Config) func(ctx context.Context, addr, nonce string) (string, error) {
	return func(ctx context.Context, addr, nonce string) (string, error) {
		ch := d.probes.expect(nonce)
		defer d.probes.forget(nonce)
		msg := fmt.Sprintf("<110>1 %s %s edgeaudit - - - %s", time.Now().UTC().Format(time.RFC3339Nano), d.cfg.Device, probeText(nonce))
		conn, err := dialProbe(ctx, network, addr, tc)
		if err != nil {
			return result(err), err
		}
		defer conn.Close()
		frame := msg
		if network == "tcp" {
			frame = strconv.Itoa(len(msg)) + " " + msg
		}
		if _, err := io.WriteString(conn, frame); err != nil {
			return ProbeFailed, fmt.Errorf("send: %w", err)
		}
		select {
		case err := <-ch:
			if err != nil {
				return ProbeFailed, fmt.Errorf("not committed: %w", err)
			}
			return ProbeCommitted, nil
		case <-ctx.Done():
			return ProbeFailed, errors.New("sent, but not committed within " + probeTimeout.String())
		}
	}
}

// probeRELP opens a RELP session, sends one syslog command and reads its rsp, which
// the listener sends only after the commit.
func probeRELP(tc *tls.Config) func(ctx context.Context, addr, nonce string) (string, error) {
	return func(ctx context.Context, addr, nonce string) (string, error) {
		conn, err := dialProbe(ctx, "tcp", addr, tc)
		if err != nil {
			return result(err), err
		}
		defer conn.Close()
		msg := fmt.Sprintf("<110>1 %s - edgeaudit - - - %s", time.Now().UTC().Format(time.RFC3339Nano), probeText(nonce))
		var b []byte
		b = syslog.AppendRELPFrame(b, 1, "open", []byte("relp_version=0\nrelp_software=edgeaudit-probe\ncommands=syslog"))
		b = syslog.AppendRELPFrame(b, 2, "syslog", []byte(msg))
		if _, err := conn.Write(b); err != nil {
			return ProbeFailed, fmt.Errorf("send: %w", err)
		}
		fr := syslog.NewRELPFramer(bufio.NewReader(conn), 64<<10)
		for {
			f, err := fr.Next()
			if err != nil {
				return ProbeFailed, fmt.Errorf("read rsp: %w", err)
			}
			if f.Txnr != 2 {
				continue
			}
			if !bytes.HasPrefix(f.Data, []byte("200")) {
				return ProbeFailed, fmt.Errorf("rsp %q", f.Data)
			}
			conn.Write(syslog.AppendRELPFrame(nil, 3, "close", nil))
			return ProbeCommitted, nil
		}
	}
}

// probeMLLP sends an HL7 v2 NMD^N02 (application management data) message; the
// collector acknowledges AA only after the commit.
func probeMLLP(tc *tls.Config) func(ctx context.Context, addr, nonce string) (string, error) {
	return func(ctx context.Context, addr, nonce string) (string, error) {
		conn, err := dialProbe(ctx, "tcp", addr, tc)
		if err != nil {
			return result(err), err
		}
		defer conn.Close()
		ts := time.Now().UTC().Format("20060102150405")
		msg := "MSH|^~\\&|EDGEAUDIT|PROBE|EDGEAUDIT|PROBE|" + ts + "||NMD^N02^NMD_N02|" + nonce + "|P|2.5\r" +
			"NTE|1||" + probeText(nonce) + "\r"
		if _, err := conn.Write(append(append([]byte{0x0b}, msg...), 0x1c, 0x0d)); err != nil {
			return ProbeFailed, fmt.Errorf("send: %w", err)
		}
		r := bufio.NewReader(conn)
		if _, err := r.ReadBytes(0x0b); err != nil {
			return ProbeFailed, fmt.Errorf("read ACK: %w", err)
		}
		ack, err := r.ReadBytes(0x1c)
		if err != nil {
			return ProbeFailed, fmt.Errorf("read ACK: %w", err)
		}
		for _, seg := range strings.Split(string(ack), "\r") {
			if f := strings.Split(seg, "|"); len(f) > 1 && f[0] == "MSA" {
				if f[1] == "AA" || f[1] == "CA" {
					return ProbeCommitted, nil
				}
				return ProbeFailed, fmt.Errorf("ACK %s", strings.Join(f[1:], "|"))
			}
		}
		return ProbeFailed, errors.New("ACK without MSA")
	}
}

// probeFHIR posts one AuditEvent; 201 comes only after the commit.
func probeFHIR(tc *tls.Config) func(ctx context.Context, addr, nonce string) (string, error) {
	return func(ctx context.Context, addr, nonce string) (string, error) {
		scheme := "http"
		tr := &http.Transport{DisableKeepAlives: true}
		if tc != nil {
			scheme, tr.TLSClientConfig = "https", tc
		}
		body := fmt.Sprintf(`{"resourceType":"AuditEvent","type":{"system":"http://dicom.nema.org/resources/ontology/DCM","code":"110100","display":"Application Activity"},`+
			`"action":"E","recorded":%q,"outcome":"0","agent":[{"requestor":false,"who":{"display":"edgeaudit"}}],`+
			`"source":{"observer":{"display":"edgeaudit"}},"entity":[{"what":{"display":%q}}]}`,
			time.Now().UTC().Format(time.RFC3339), probeText(nonce))
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, scheme+"://"+addr+"/AuditEvent", strings.NewReader(body))
		if err != nil {
			return ProbeFailed, err
		}
		req.Header.Set("Content-Type", "application/fhir+json")
		resp, err := (&http.Client{Transport: tr}).Do(req)
		if err != nil {
			var rec tls.RecordHeaderError
			if errors.As(err, &rec) || strings.Contains(err.Error(), "tls:") {
				return ProbeSkipped, errHandshake{err}
			}
			return ProbeFailed, err
		}
		defer resp.Body.Close()
		io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
		if resp.StatusCode != http.StatusCreated {
			return ProbeFailed, fmt.Errorf("answered %s", resp.Status)
		}
		return ProbeCommitted, nil
	}
}
