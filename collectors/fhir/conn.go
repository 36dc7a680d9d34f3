package fhir

import (
	"context"
	"errors"
	"net"
	"sync/atomic"

	"github.com/edgeaudit/edgeaudit/audit"
	"github.com/edgeaudit/edgeaudit/internal/connset"
)

// holdListener wraps each connection that connset.Listener admitted in an httpConn, so
// that a handler can keep its connection from being evicted while it waits for a commit.
type holdListener struct{ net.Listener }

func (l holdListener) Accept() (net.Conn, error) {
	conn, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	if tc, ok := conn.(*connset.Conn); ok {
		return &httpConn{Conn: tc}, nil
	}
	return conn, nil
}

// httpConn is a tracked connection that a handler can hold busy. connset counts a
// connection as idle while a Read waits for its peer, and net/http keeps a Read waiting
// in the background while a handler runs (to notice a client that goes away); without
// the hold, a request waiting for its commit would look idle and could be evicted to
// make room, and its sender would lose the 201 of an event that is stored.
type httpConn struct {
	*connset.Conn
	held atomic.Bool
}

// CloseWrite shuts the write side of the TCP connection (closeUnread's FIN); the
// embedded net.Conn interface does not promote it.
func (c *httpConn) CloseWrite() error {
	if cw, ok := c.Conn.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return errors.ErrUnsupported
}

func (c *httpConn) Read(p []byte) (int, error) {
	if c.held.Load() {
		return c.Conn.Conn.Read(p) // the raw connection: the idle state stays busy
	}
	return c.Conn.Read(p)
}

// hold marks the connection busy until release. A background Read already waiting has
// marked it idle; Busy after it wins, and the Reads that start while held leave it alone.
func (c *httpConn) hold() {
	c.held.Store(true)
	c.Busy()
}

func (c *httpConn) release() { c.held.Store(false) }

// holdConn holds the request's connection busy (see httpConn) and returns the release;
// outside Run (Handler in tests) it does nothing.
func holdConn(ctx context.Context) func() {
	hc, ok := ctx.Value(httpConnKey{}).(*httpConn)
	if !ok {
		return func() {}
	}
	hc.hold()
	return hc.release
}

// httpConnKey is the request-context key of the request's *httpConn.
type httpConnKey struct{}

// connContext puts the connection (for closeUnread) and its httpConn (for holdConn)
// into every request's context.
func connContext(ctx context.Context, conn net.Conn) context.Context {
	ctx = context.WithValue(ctx, connKey{}, conn)
	inner := conn
	if nc, ok := conn.(interface{ NetConn() net.Conn }); ok { // *tls.Conn
		inner = nc.NetConn()
	}
	if hc, ok := inner.(*httpConn); ok {
		ctx = context.WithValue(ctx, httpConnKey{}, hc)
	}
	return ctx
}

// connRefused counts and reports a connection that the limits refused or evicted.
func (c *Collector) connRefused(ip, reason string) {
	transport := "http"
	if c.tlsCfg != nil {
		transport = "https"
	}
	if i := reasonIndex(reason); i >= 0 {
		c.stats.rejects[i].Add(1)
	}
	c.rep.Reject(audit.KindFHIR, transport, ip, reason, "", 0)
	if ok, n := c.limit.Allow("conn/"+reason, c.now()); ok {
		c.log.Warn("fhir connection refused", attrPeer, ip, attrReason, reason,
			attrOpen, c.conns.Open(), attrSuppressed, n)
	}
}
