package configerr

import (
	"errors"
	"testing"
)

func TestError(t *testing.T) {
	base := errors.New("must be positive")
	for _, tt := range []struct {
		e    *Error
		want string
	}{
		{&Error{Field: "hl7.idle_timeout", Value: "-1s", Err: base}, `hl7.idle_timeout: "-1s": must be positive`},
		{&Error{Field: "hl7.tls_cert", Err: base}, "hl7.tls_cert: must be positive"},
	} {
		if got := tt.e.Error(); got != tt.want {
			t.Errorf("Error()=%q, want %q", got, tt.want)
		}
		if !errors.Is(tt.e, base) {
			t.Errorf("%v does not unwrap to its cause", tt.e)
		}
	}
}

func TestSuggest(t *testing.T) {
	keys := []string{"udp", "tcp", "tls", "tls_cert", "tls_key", "max_connections", "max_connections_per_ip", "relp_window"}
	for _, tt := range []struct{ key, want string }{
		{"tpc", "tcp"},          // two letters swapped
		{"TCP", "tcp"},          // case
		{"tls_crt", "tls_cert"}, // one letter missing
		{"max_conections", "max_connections"},
		{"relp-window", "relp_window"}, // dash for underscore
		{"zzzzzz", ""},                 // nothing close
		{"x", ""},                      // too short to guess from
	} {
		if got := Suggest(tt.key, keys); got != tt.want {
			t.Errorf("Suggest(%q)=%q, want %q", tt.key, got, tt.want)
		}
	}
}

func TestFieldOfAndParent(t *testing.T) {
	for _, tt := range []struct {
		err  error
		want string
	}{
		{&Error{Field: "hl7.mllp", Err: errors.New("x")}, "hl7.mllp"},
		{errors.New(`privacy.id_domains[1].name: "a b": bad`), "privacy.id_domains[1].name"},
		{&Line{Line: 3, Err: &Error{Field: "ntp.servers[0]", Err: errors.New("x")}}, "ntp.servers[0]"},
		{errors.New("open x: no such file"), ""},
		{errors.New("line 3: not valid YAML"), ""},
	} {
		if got := FieldOf(tt.err); got != tt.want {
			t.Errorf("FieldOf(%v)=%q, want %q", tt.err, got, tt.want)
		}
	}
	for _, tt := range []struct{ path, want string }{
		{"a.b[2]", "a.b"}, {"a.b", "a"}, {"a", ""}, {"privacy.redact_rules[0].pattern", "privacy.redact_rules[0]"},
	} {
		if got := Parent(tt.path); got != tt.want {
			t.Errorf("Parent(%q)=%q, want %q", tt.path, got, tt.want)
		}
	}
}

func TestQuoteAndFlatten(t *testing.T) {
	if got, want := Quote(`M(\d+`), `"M(\d+"`; got != want {
		t.Errorf("Quote=%s, want %s", got, want)
	}
	if got, want := Quote("a\"b"), `"a\"b"`; got != want {
		t.Errorf("Quote=%s, want %s", got, want)
	}
	a, b, c := errors.New("a"), errors.New("b"), errors.New("c")
	got := Flatten(errors.Join(a, errors.Join(b, nil, c)))
	if len(got) != 3 || got[0] != a || got[1] != b || got[2] != c {
		t.Errorf("Flatten=%v, want [a b c]", got)
	}
	if l := (&Line{Line: 4, Err: a}).Error(); l != "line 4: a" {
		t.Errorf("Line=%q", l)
	}
}
