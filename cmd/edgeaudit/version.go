package main

import (
	"context"
	"crypto/fips140"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"runtime"
	"runtime/debug"
	"strings"
)

// Set by the release build (scripts/build.sh):
//
//	-ldflags "-X main.version=0.3.0 -X main.commit=<sha> -X main.date=<RFC 3339>"
//
// Without them the module version and the VCS stamp of the build (vcs.revision,
// vcs.time; go build -buildvcs) are used.
var (
	version = ""
	commit  = ""
	date    = ""
)

// VersionCommand prints what this binary is: release, commit, build time, toolchain,
// platform and FIPS 140-3 state.
type VersionCommand struct {
	// Out is where it goes (default stdout).
	Out io.Writer
}

// versionInfo is `version -json`.
type versionInfo struct {
	Version   string   `json:"version"`
	Commit    string   `json:"commit"`
	Modified  bool     `json:"modified,omitempty"` // built from a tree with uncommitted changes
	BuildTime string   `json:"build_time"`
	GoVersion string   `json:"go_version"`
	Platform  string   `json:"platform"` // GOOS/GOARCH
	FIPS      fipsInfo `json:"fips"`
}

// fipsInfo is the FIPS 140-3 state: whether the Go Cryptographic Module is in FIPS
// mode now (fips140.Enabled: GODEBUG=fips140=on|only, or the build's default), and
// which module the binary was built with (GOFIPS140; "" = the toolchain's own).
type fipsInfo struct {
	Enabled  bool   `json:"enabled"`
	Enforced bool   `json:"enforced"` // GODEBUG=fips140=only: non-approved algorithms fail
	Module   string `json:"module"`   // GOFIPS140 at build time, e.g. v1.0.0-c2097c7c; "" if not selected
	Default  string `json:"default"`  // fips140 in the build's DefaultGODEBUG: "on" for the packaged binaries
}

// Run implements the command.
func (c *VersionCommand) Run(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("edgeaudit version", flag.ContinueOnError)
	asJSON := fs.Bool("json", false, "print the same as one JSON object")
	fs.Usage = c.Usage
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return &usageError{"version takes no arguments"}
	}
	out := c.Out
	if out == nil {
		out = os.Stdout
	}
	v := readVersion()
	if *asJSON {
		b, _ := json.MarshalIndent(v, "", "  ")
		_, err := fmt.Fprintf(out, "%s\n", b)
		return err
	}
	rev := v.Commit
	if v.Modified {
		rev += " (modified)"
	}
	_, err := fmt.Fprintf(out, "edgeaudit %s\n  commit:     %s\n  built:      %s\n  go:         %s %s\n  fips 140-3: %s\n",
		v.Version, orUnknown(rev), orUnknown(v.BuildTime), v.GoVersion, v.Platform, v.FIPS)
	return err
}

func (f fipsInfo) String() string {
	state := "off"
	switch {
	case f.Enforced:
		state = "on, enforced (fips140=only)"
	case f.Enabled:
		state = "on"
	}
	if f.Module == "" {
		return state + "; built without a FIPS module selected (GOFIPS140 unset)"
	}
	s := fmt.Sprintf("%s; module %s", state, f.Module)
	if f.Default != "" {
		s += ", fips140=" + f.Default + " by default"
	}
	return s
}

func orUnknown(s string) string {
	if s == "" {
		return "unknown"
	}
	return s
}

// readVersion gathers the version from the ldflags variables, falling back to the
// build info the toolchain stamps into every binary.
func readVersion() versionInfo {
	v := versionInfo{
		Version: buildVersion(), Commit: commit, BuildTime: date,
		GoVersion: runtime.Version(), Platform: runtime.GOOS + "/" + runtime.GOARCH,
		FIPS: fipsInfo{Enabled: fips140.Enabled(), Enforced: fips140.Enforced()},
	}
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return v
	}
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			if v.Commit == "" {
				v.Commit = s.Value
			}
		case "vcs.time":
			if v.BuildTime == "" {
				v.BuildTime = s.Value
			}
		case "vcs.modified":
			v.Modified = s.Value == "true"
		case "GOFIPS140":
			v.FIPS.Module = s.Value
		case "DefaultGODEBUG":
			for _, kv := range strings.Split(s.Value, ",") {
				if val, ok := strings.CutPrefix(kv, "fips140="); ok {
					v.FIPS.Default = val
				}
			}
		}
	}
	return v
}

// buildVersion is the release: -X main.version, else the module version, else (devel).
func buildVersion() string {
	if version != "" {
		return version
	}
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" {
		return bi.Main.Version
	}
	return "(devel)"
}

// Usage prints the man page.
func (c *VersionCommand) Usage() {
	fmt.Fprint(os.Stderr, `The version command prints what this binary is: the release, the commit and build
time it was built from, the Go toolchain and platform, and the FIPS 140-3 state (whether
the Go Cryptographic Module runs in FIPS mode now, and which module the binary was built
with). Packaged binaries are built with GOFIPS140=v1.0.0, so FIPS mode is their default;
GODEBUG=fips140=off turns it off, GODEBUG=fips140=only also makes non-approved
algorithms fail.

Usage:

	edgeaudit version [-json]

Arguments:

	-json
	    Print one JSON object (version, commit, modified, build_time, go_version,
	    platform, fips {enabled, enforced, module, default}).
`)
}
