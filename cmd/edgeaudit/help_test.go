package main

import (
	"errors"
	"flag"
	"strings"
	"testing"
)

// Every command's -h is help (exit 0), never a usage error (exit 2); extra arguments
// to version are a usage error.
func TestHelpIsNotAnError(t *testing.T) {
	for _, args := range []string{"token -h", "keys -h", "keys --help", "receipts -h", "devices -h", "version -h", "health -h",
		"verify -h", "export -h", "query -h", "demo -h", "receive -h",
		"install -h", "uninstall -h", "start -h", "stop -h", "status -h", "version -json -h"} {
		t.Run(args, func(t *testing.T) {
			err := run(t.Context(), strings.Fields(args), func() {})
			if !errors.Is(err, flag.ErrHelp) {
				t.Fatalf("run(%q) = %v, want flag.ErrHelp (exit 0)", args, err)
			}
		})
	}
	var ue *usageError
	if err := run(t.Context(), []string{"version", "x"}, func() {}); !errors.As(err, &ue) {
		t.Fatalf("version x: %v, want a usage error", err)
	}
}

// The errors a new admin meets name what they gave: the folder, not a key file in it;
// the export path, not a temporary file beside it.
func TestErrorsNameWhatWasGiven(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"verify", "-data", dir + "/nonexistent"}, "-data " + dir + "/nonexistent: not a data folder"},
		{[]string{"verify", "-data", dir}, "no spool.db there"},
		{[]string{"export", "-data", dir, "-out", dir + "/no/such/x.eab"}, ""},
	} {
		err := run(t.Context(), tc.args, func() {})
		if err == nil {
			t.Fatalf("%v: no error", tc.args)
		}
		if tc.want != "" && !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: %v, want it to say %q", tc.args, err, tc.want)
		}
		if strings.Contains(err.Error(), ".tmp") || strings.Contains(err.Error(), "signing.pub") {
			t.Errorf("%v: %v names an internal file", tc.args, err)
		}
	}
}
