package uplink

import (
	"context"
	"crypto/tls"
	"net"
	"net/url"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	"golang.org/x/net/proxy"
)

// dialer opens the broker connection itself (paho's own dial, plus quick ACKs): TCP (via
// ALL_PROXY/NO_PROXY when set, as paho does), then TLS with the configured verification.
//
// Why quick ACKs: mosquitto leaves Nagle's algorithm on by default (set_tcp_nodelay
// false), so it holds a receipt behind the PUBACK it sent just before until this side
// ACKs that PUBACK, and Linux delays that ACK up to 40 ms. With a window of 8 that capped
// the drain at about 190 batches/s on loopback. Asking for an immediate ACK after each
// read (TCP_QUICKACK, Linux only; the kernel clears it again, hence every read) removes
// the stall from this side, whatever the broker's config.
//
// The dial and the TLS handshake end when ctx does, so a stop never waits out
// connect_timeout against a broker that does not answer.
func (u *Uplink) dialer(runCtx context.Context) mqtt.OpenConnectionFunc {
	return func(uri *url.URL, _ mqtt.ClientOptions) (net.Conn, error) {
		ctx, cancel := context.WithTimeout(runCtx, u.cfg.ConnectTimeout)
		defer cancel()
		d := &net.Dialer{Timeout: u.cfg.ConnectTimeout, KeepAlive: 30 * time.Second}
		var raw net.Conn
		var err error
		if cd, ok := proxy.FromEnvironmentUsing(d).(proxy.ContextDialer); ok {
			raw, err = cd.DialContext(ctx, "tcp", uri.Host)
		} else {
			raw, err = d.DialContext(ctx, "tcp", uri.Host)
		}
		if err != nil {
			return nil, err
		}
		if tc, ok := raw.(*net.TCPConn); ok {
			raw = &quickAckConn{TCPConn: tc}
		}
		if u.tls == nil {
			return raw, nil
		}
		c := tls.Client(raw, u.tls)
		if err := c.HandshakeContext(ctx); err != nil {
			raw.Close()
			return nil, err
		}
		return c, nil
	}
}

// quickAckConn asks the kernel to ACK at once after every read.
type quickAckConn struct{ *net.TCPConn }

func (c *quickAckConn) Read(p []byte) (int, error) {
	n, err := c.TCPConn.Read(p)
	if n > 0 {
		quickAck(c.TCPConn)
	}
	return n, err
}
