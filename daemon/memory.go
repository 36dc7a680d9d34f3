package daemon

import (
	"fmt"
	"log/slog"
	"math"
	"os"
	"runtime/debug"
)

// DefaultMemoryLimit is the Go runtime's soft memory limit the daemon sets
// (memory_limit; 40 MiB). With it the garbage collector runs more often as the process
// nears the limit instead of letting the heap double (GOGC=100) under a burst; it never
// refuses memory. The limit counts what the runtime maps (heap, stacks, its metadata),
// which is about RssAnon; bbolt's file-backed pages and the binary's text come on top
// (docs/performance.md, "Memory").
const DefaultMemoryLimit = 40 << 20

// Bounds of memory_limit when set: below the low one the collector would run nearly
// all the time under load.
const (
	minMemoryLimit = 16 << 20
	maxMemoryLimit = 1 << 40
)

// memoryLimit is memory_limit with its default, in bytes; math.MaxInt64 (the runtime's
// "none") for -1.
func (c *Config) memoryLimit() int64 {
	switch {
	case c.MemoryLimit < 0:
		return math.MaxInt64
	case c.MemoryLimit == 0:
		return DefaultMemoryLimit
	}
	return c.MemoryLimit
}

// memoryLimitProblem says what is wrong with memory_limit ("" when nothing is).
func (c *Config) memoryLimitProblem() string {
	if v := c.MemoryLimit; v != 0 && v != -1 && (v < minMemoryLimit || v > maxMemoryLimit) {
		return fmt.Sprintf("must be -1 (none), 0 (default %d) or between %d (16 MiB) and %d (1 TiB) bytes",
			int64(DefaultMemoryLimit), int64(minMemoryLimit), int64(maxMemoryLimit))
	}
	return ""
}

// ApplyMemoryLimit sets the Go runtime's soft memory limit from memory_limit, unless
// the GOMEMLIMIT environment variable is set: the operator's environment wins over the
// file, as the runtime has already applied it. It returns the limit in effect
// (math.MaxInt64 for none). The limit is the process's, so only `run` calls it, not
// New: a test or benchmark that embeds the daemon keeps its own.
func ApplyMemoryLimit(c *Config, log *slog.Logger) int64 {
	if env := os.Getenv("GOMEMLIMIT"); env != "" {
		limit := debug.SetMemoryLimit(-1) // a negative input only reads it
		log.Info("memory limit from the environment; memory_limit not used", "gomemlimit", env, "memory_limit_bytes", limit)
		return limit
	}
	limit := c.memoryLimit()
	debug.SetMemoryLimit(limit)
	if limit == math.MaxInt64 {
		log.Info("no memory limit (memory_limit: -1): the heap grows by GOGC alone")
	}
	return limit
}
