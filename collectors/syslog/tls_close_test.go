package syslog

import (
	"crypto/tls"
	"testing"
	"time"
)

// The TLS listener sends no TLS 1.3 session tickets. A sender that only writes (loggen -U,
// most syslog senders) never reads them; left unread in its receive buffer they turn its
// close() into a TCP reset, and the reset makes the listener's kernel discard what the
// listener had not read yet (loggen -U lost 9k of 20k messages that way). Checked by a
// client that would resume a session if it had been given a ticket.
func TestTLSListenerSendsNoSessionTickets(t *testing.T) {
	pki := newTestPKI(t)
	c := startCollector(t, Config{TLS: "127.0.0.1:0", TLSCert: pki.CertFile, TLSKey: pki.KeyFile}, &fakeSink{}, &fakeReporter{}, nil)
	cc := pki.ClientConfig(false)
	cc.ClientSessionCache = tls.NewLRUClientSessionCache(4)
	for i := range 2 {
		conn, err := tls.Dial("tcp", c.TLSAddr().String(), cc)
		if err != nil {
			t.Fatal(err)
		}
		if got := conn.ConnectionState().DidResume; got {
			t.Fatalf("connection %d resumed a session: the listener sent a session ticket", i)
		}
		// Read briefly, so that a ticket sent after the handshake would be taken in.
		conn.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
		conn.Read(make([]byte, 1))
		conn.Close()
	}
}
