package main

import (
	"context"
	"flag"
	"fmt"
	"os"

	"github.com/edgeaudit/edgeaudit/daemon"
)

// ConfigCommand prints the sample config, or checks a config file.
type ConfigCommand struct{}

// Run implements the command.
func (c *ConfigCommand) Run(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("edgeaudit config", flag.ContinueOnError)
	check := fs.String("check", "", "validate this config file instead of printing the sample")
	fs.Usage = c.Usage
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *check == "" {
		fmt.Print(daemon.SampleConfig)
		return nil
	}
	cfg, err := daemon.LoadConfig(*check)
	if err != nil {
		return err
	}
	cfg.SetDefaults()
	if err := cfg.Validate(); err != nil {
		return err
	}
	fmt.Printf("%s: ok\n", *check)
	return nil
}

// Usage prints the man page.
func (c *ConfigCommand) Usage() {
	fmt.Fprint(os.Stderr, `The config command prints a commented sample config with every key and its default,
or, with -check, loads and validates a config file and names every bad field.

Usage:

	edgeaudit config [-check FILE]
`)
}
