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
