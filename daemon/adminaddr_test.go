package daemon

import (
	"testing"

	"github.com/edgeaudit/edgeaudit/internal/listenaddr"
)

func TestCheckAdmin(t *testing.T) {
	for _, tt := range []struct {
		admin string
		ok    bool
	}{
		{"127.0.0.1:9780", true},
		{"unix:/run/edgeaudit/admin.sock", true},
		{"unix:admin.sock", false},
		{"unix:", false},
		{"localhost", false},
	} {
		err := checkAdmin(tt.admin, listenaddr.Check)
		if (err == nil) != tt.ok {
			t.Errorf("checkAdmin(%q)=%v, want ok=%v", tt.admin, err, tt.ok)
		}
	}
	for _, tt := range []struct{ admin, network, addr string }{
		{"127.0.0.1:9780", "tcp", "127.0.0.1:9780"},
		{"unix:/run/x.sock", "unix", "/run/x.sock"},
	} {
		if n, a := AdminNetwork(tt.admin); n != tt.network || a != tt.addr {
			t.Errorf("AdminNetwork(%q)=%s %s, want %s %s", tt.admin, n, a, tt.network, tt.addr)
		}
	}
}
