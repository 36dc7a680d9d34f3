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
		"verify -h", "export -h", "query -h", "demo -h", "receive -h"} {
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
