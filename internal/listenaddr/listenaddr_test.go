package listenaddr

import "testing"

func TestCheck(t *testing.T) {
	for _, tt := range []struct {
		addr string
		ok   bool
	}{
		{":514", true}, {"127.0.0.1:0", true}, {"[::1]:6514", true}, {"edge.site.example:2575", true},
		{"nope", false}, {"127.0.0.1:99999", false}, {"127.0.0.1:http", false}, {"bad host!:514", false},
	} {
		if err := Check(tt.addr); (err == nil) != tt.ok {
			t.Errorf("Check(%q)=%v, want ok=%v", tt.addr, err, tt.ok)
		}
	}
}
