// Package fhir receives FHIR AuditEvent resources (R4 and R5, JSON and XML) over HTTP(S),
// as IHE RESTful ATNA / ITI-20 feeds them, and appends them to a sink.
package fhir

import (
	"bufio"
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/tls"
	"errors"
	"fmt"
	"log"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/edgeaudit/edgeaudit/audit"
	"github.com/edgeaudit/edgeaudit/collectors"
	"github.com/edgeaudit/edgeaudit/internal/connset"
	"github.com/edgeaudit/edgeaudit/internal/ratelog"
	"github.com/edgeaudit/edgeaudit/internal/tlsconf"
)

const (
	// maxHeaderBytes bounds request headers (a bearer token and a few standard headers).
	maxHeaderBytes = 64 << 10
	// maxReadHeaderTimeout bounds the wait for headers, so idle half-open connections do
	// not hold server resources for the whole read timeout.
	maxReadHeaderTimeout = 10 * time.Second
	// idleTimeout closes keep-alive connections that send nothing.
	idleTimeout = 2 * time.Minute
	// shutdownGrace is how long Run waits for in-flight requests (which wait for their
	// commits) before it aborts them.
	shutdownGrace = 5 * time.Second
	// retryAfter is the Retry-After of a 503, in seconds.
	retryAfter = "5"
)

// Collector serves the FHIR AuditEvent endpoints. Create it with New and start it with
// Run; Handler serves the same endpoints without a listener (tests, embedding).
type Collector struct {
	cfg    Config
	sink   collectors.Sink
	atomic collectors.AtomicSink // sink, when it can commit a transaction at once; else nil
	rep    collectors.Reporter
	log    *slog.Logger
	tlsCfg *tls.Config
	tokens [][sha256.Size]byte // SHA-256 of each accepted bearer token
	mapper mapper
	now    func() time.Time

	started atomic.Bool
	ready   chan struct{}

	mu   sync.Mutex
	addr net.Addr

	inflight sync.WaitGroup
	budget   *budget
	conns    *connset.Set // open connections, under fhir.max_connections and max_connections_per_ip
	stats    counters
	limit    ratelog.Limiter
}

// New validates cfg (after applying defaults), loads the TLS material and bearer tokens,
// and returns a collector that has not started anything yet. sink, rep and tok must not
// be nil; logger may be nil to discard logs (the caller tags it with the component).
// SetRedactor applies the site's redaction rules to the senders' free text (outcome
// descriptions). Call it before Run.
func (c *Collector) SetRedactor(r *audit.Redactor) { c.mapper.redact = r }

func New(cfg Config, sink collectors.Sink, rep collectors.Reporter, tok *audit.Tokenizer, logger *slog.Logger) (*Collector, error) {
	cfg.SetDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if sink == nil || rep == nil || tok == nil {
		return nil, errors.New("fhir: New needs a sink, a reporter and a tokenizer")
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	c := &Collector{
		cfg:    cfg,
		sink:   sink,
		rep:    rep,
		log:    logger,
		mapper: mapper{tok: tok},
		now:    time.Now,
		ready:  make(chan struct{}),
		budget: newBudget(cfg.MaxInflightBytes),
		conns:  connset.New(connset.Limits{Max: cfg.MaxConnections, MaxPerIP: cfg.MaxConnectionsPerIP}),
	}
	// A transaction Bundle is all or nothing, which only a sink that commits several
	// events at once can promise; without one, transactions are refused (501).
	c.atomic, _ = sink.(collectors.AtomicSink)
	if cfg.TLS() {
		tc, err := loadTLS(cfg)
		if err != nil {
			return nil, err
		}
		c.tlsCfg = tc
	}
	if cfg.BearerTokensFile != "" {
		toks, err := loadTokens(cfg.BearerTokensFile)
		if err != nil {
			return nil, err
		}
		c.tokens = toks
	}
	return c, nil
}

func loadTLS(cfg Config) (*tls.Config, error) {
	tc, err := tlsconf.Server("fhir", cfg.TLSCert, cfg.TLSKey, cfg.TLSClientCA)
	if err != nil {
		return nil, err
	}
	// HTTP/1.1 only: net/http would offer h2, which the collector does not serve.
	tc.NextProtos = []string{"http/1.1"}
	return tc, nil
}

// loadTokens reads one token per line; blank lines and '#' comments are skipped. Only
// the tokens' SHA-256 are kept, so comparisons take the same time whatever the length.
func loadTokens(path string) ([][sha256.Size]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("load fhir.bearer_tokens_file: %w", err)
	}
	defer f.Close()
	var out [][sha256.Size]byte
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		t := strings.TrimSpace(sc.Text())
		if t == "" || strings.HasPrefix(t, "#") {
			continue
		}
		out = append(out, sha256.Sum256([]byte(t)))
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("load fhir.bearer_tokens_file: %w", err)
	}
	if len(out) == 0 {
		return nil, &ConfigError{Field: "fhir.bearer_tokens_file", Value: path, Err: errors.New("holds no token")}
	}
	return out, nil
}

// authorized reports whether r carries one of the accepted bearer tokens. Every token is
// compared, in constant time, whether or not one already matched.
func (c *Collector) authorized(r *http.Request) bool {
	if c.tokens == nil {
		return true
	}
	h := r.Header.Get("Authorization")
	scheme, tok, ok := strings.Cut(h, " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return false
	}
	sum := sha256.Sum256([]byte(strings.TrimSpace(tok)))
	match := 0
	for i := range c.tokens {
		match |= subtle.ConstantTimeCompare(sum[:], c.tokens[i][:])
	}
	return match == 1
}

// Ready is closed once Run has bound the listener; Addr is then available.
func (c *Collector) Ready() <-chan struct{} { return c.ready }

// Addr returns the bound address, or nil if the collector is disabled or not yet bound.
func (c *Collector) Addr() net.Addr {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.addr
}

// Handler returns the HTTP handler of the FHIR endpoints. Requests it serves append to
// the sink, so it may only serve while the sink accepts appends.
func (c *Collector) Handler() http.Handler { return http.HandlerFunc(c.serveHTTP) }

// Run binds the listener and serves until ctx is done; then it stops accepting, gives
// in-flight requests shutdownGrace to finish (each waits for its commit), aborts the
// rest, and returns only once every handler has returned, so no Append happens after it.
// A bind error is returned at once. With fhir.http empty, Run just waits for ctx. It may
// be called once.
func (c *Collector) Run(ctx context.Context) error {
	if !c.started.CompareAndSwap(false, true) {
		return errors.New("fhir: Run called twice")
	}
	if !c.cfg.Enabled() {
		close(c.ready)
		<-ctx.Done()
		return nil
	}
	if ctx.Err() != nil {
		return nil
	}
	var lc net.ListenConfig
	ln, err := lc.Listen(ctx, "tcp", c.cfg.HTTP)
	if err != nil {
		return fmt.Errorf("listen fhir.http %s: %w", c.cfg.HTTP, err)
	}
	c.mu.Lock()
	c.addr = ln.Addr()
	c.mu.Unlock()
	// The limits apply to TCP connections, before TLS: a client that never finishes its
	// handshake holds a slot (and is idle, so it is the first to be evicted).
	ln = holdListener{connset.Listener(ln, c.conns, c.connRefused)}
	if c.tlsCfg != nil {
		ln = tls.NewListener(ln, c.tlsCfg)
	}

	// Requests get a context that outlives ctx by the shutdown grace, so that a commit in
	// progress can still be acknowledged when the daemon stops.
	reqCtx, abort := context.WithCancel(context.WithoutCancel(ctx))
	defer abort()
	rht := min(maxReadHeaderTimeout, c.cfg.ReadTimeout)
	srv := &http.Server{
		Handler:           c.Handler(),
		ReadHeaderTimeout: rht,
		ReadTimeout:       c.cfg.ReadTimeout,
		WriteTimeout:      c.cfg.ReadTimeout + shutdownGrace,
		IdleTimeout:       idleTimeout,
		MaxHeaderBytes:    maxHeaderBytes,
		BaseContext:       func(net.Listener) context.Context { return reqCtx },
		ConnContext:       connContext,
		ErrorLog:          log.New(serverLog{c}, "", 0),
	}
	serveErr := make(chan error, 1)
	var wg sync.WaitGroup
	wg.Go(func() { serveErr <- srv.Serve(ln) })
	close(c.ready)
	c.log.Info("listening", attrAddr, ln.Addr().String(), attrTLS, c.tlsCfg != nil)

	var runErr error
	select {
	case <-ctx.Done():
	case err := <-serveErr:
		runErr = fmt.Errorf("serve fhir.http %s: %w", c.cfg.HTTP, err)
		serveErr <- nil
	}
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), shutdownGrace)
	err = srv.Shutdown(sctx)
	cancel()
	if err != nil {
		abort() // in-flight requests stop waiting for their commits (no 201 is sent)
		_ = srv.Close()
	}
	wg.Wait()
	if e := <-serveErr; e != nil && !errors.Is(e, http.ErrServerClosed) && runErr == nil {
		runErr = fmt.Errorf("serve fhir.http %s: %w", c.cfg.HTTP, e)
	}
	abort()
	c.inflight.Wait()
	return runErr
}

// serverLog receives net/http's own error lines: failed TLS handshakes (no client
// certificate, wrong CA, plain HTTP on the TLS port) become rejects, like every other
// refused input; the rest is logged at debug level.
type serverLog struct{ c *Collector }

const handshakePrefix = "http: TLS handshake error from "

func (l serverLog) Write(p []byte) (int, error) {
	line := strings.TrimSpace(string(p))
	if rest, ok := strings.CutPrefix(line, handshakePrefix); ok {
		addr, cause, _ := strings.Cut(rest, ": ")
		ip := peerIP(addr)
		// A client that never finishes its handshake (net/http bounds it at
		// min(10s, read_timeout)) is told apart from one that fails it, as the syslog and
		// MLLP listeners do.
		reason := ReasonTLSHandshake
		if strings.HasSuffix(cause, "i/o timeout") {
			reason = ReasonHandshakeTimeout
		}
		l.c.rep.Reject(audit.KindFHIR, "https", ip, reason, "", 0)
		if i := reasonIndex(reason); i >= 0 {
			l.c.stats.rejects[i].Add(1)
		}
		if ok, n := l.c.limit.Allow("reject/"+reason, l.c.now()); ok {
			l.c.log.Debug("fhir TLS handshake failed", attrPeer, ip, attrReason, reason, attrSuppressed, n)
		}
		return len(p), nil
	}
	l.c.log.Debug("fhir http server", attrErr, line)
	return len(p), nil
}
