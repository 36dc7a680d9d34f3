// Package configerr is the config validation error every collector returns: it names the
// YAML field and the bad value, so a site admin knows what to fix.
package configerr

import "strconv"

// Error is one invalid config value. Field is the YAML path, e.g. "hl7.tls_cert".
type Error struct {
	Field string
	Value string
	Err   error
}

func (e *Error) Error() string {
	if e.Value == "" {
		return e.Field + ": " + e.Err.Error()
	}
	return e.Field + ": " + strconv.Quote(e.Value) + ": " + e.Err.Error()
}

func (e *Error) Unwrap() error { return e.Err }
