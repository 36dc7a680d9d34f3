package testmqtt

import (
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
)

func connect(t *testing.T, b *Broker, user, pass string) (mqtt.Client, error) {
	t.Helper()
	o := mqtt.NewClientOptions().AddBroker(b.URL).SetClientID(user).SetUsername(user).SetPassword(pass).
		SetTLSConfig(b.ClientTLS()).SetAutoReconnect(false).SetConnectTimeout(5 * time.Second)
	c := mqtt.NewClient(o)
	tok := c.Connect()
	if !tok.WaitTimeout(10 * time.Second) {
		t.Fatal("connect timed out")
	}
	return c, tok.Error()
}

// TestBrokerAuthAndACL: the right password connects, a wrong one does not, and the ACL
// confines a user to its topics (mosquitto drops the rest silently).
func TestBrokerAuthAndACL(t *testing.T) {
	b := Start(t, Options{
		Users: map[string]string{"d1": "pw1", "central": "pwc"},
		ACL:   "user central\ntopic read x/#\n\npattern write x/%u/#\n",
	})
	tests := []struct {
		name, user, pass string
		ok               bool
	}{
		{"right password", "d1", "pw1", true},
		{"wrong password", "d1", "nope", false},
		{"unknown user", "d9", "pw1", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := connect(t, b, tt.user, tt.pass)
			if got := err == nil; got != tt.ok {
				t.Fatalf("connected=%v (err %v), want %v", got, err, tt.ok)
			}
			if err == nil {
				c.Disconnect(100)
			}
		})
	}

	central, err := connect(t, b, "central", "pwc")
	if err != nil {
		t.Fatal(err)
	}
	defer central.Disconnect(100)
	got := make(chan string, 10)
	if tok := central.Subscribe("x/#", 1, func(_ mqtt.Client, m mqtt.Message) { got <- m.Topic() }); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatalf("subscribe: %v", tok.Error())
	}
	d1, err := connect(t, b, "d1", "pw1")
	if err != nil {
		t.Fatal(err)
	}
	defer d1.Disconnect(100)
	for _, topic := range []string{"x/d2/batch", "x/d1/batch"} { // denied first, then allowed
		if tok := d1.Publish(topic, 1, false, "p"); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
			t.Fatalf("publish %s: %v", topic, tok.Error())
		}
	}
	select {
	case topic := <-got:
		if want := "x/d1/batch"; topic != want {
			t.Fatalf("first delivery %q, want %q (the ACL let a denied publish through)", topic, want)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("allowed publish never arrived")
	}
}

func TestRestartSamePort(t *testing.T) {
	b := Start(t, Options{Users: map[string]string{"d1": "pw1"}})
	addr := b.Addr
	b.Restart()
	if got, want := b.Addr, addr; got != want {
		t.Fatalf("addr after restart=%s, want %s", got, want)
	}
	c, err := connect(t, b, "d1", "pw1")
	if err != nil {
		t.Fatalf("connect after restart: %v", err)
	}
	c.Disconnect(100)
}
