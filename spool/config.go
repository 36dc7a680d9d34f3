package spool

import (
	"errors"
	"fmt"
	"time"
)

// Defaults for Config's zero values.
const (
	DefaultMaxEvents = 1000
	// DefaultMaxBytes seals a batch once its events reach 192 KiB, so that a batch with
	// its header and framing fits the uplink's default 256 KiB MQTT message limit.
	DefaultMaxBytes  = 192 << 10
	DefaultMaxAge    = 2 * time.Second
	DefaultHeartbeat = time.Minute
	DefaultRetention = 7 * 24 * time.Hour
	// DefaultQueueSize and DefaultCommitEvents bound the encoded events in memory: about
	// 700 bytes each, so 4096 queued (2.8 MiB, 20 ms of a full-speed connection) and 2048
	// in a transaction, whose value and page buffers hold them twice more. 32768 and 8192
	// kept 55-61 MB live under load (116 MiB anonymous RSS) for no throughput that could
	// be measured (docs/performance.md, "Memory").
	DefaultQueueSize    = 4096
	DefaultCommitEvents = 2048
	DefaultMinFreeBytes = 256 << 20
	DefaultOpenTimeout  = 2 * time.Second
	// DefaultEvidenceReserve is kept for the appliance's own events when the spool is
	// full: a few thousand start, stop, loss and quarantine events.
	DefaultEvidenceReserve = 8 << 20
	// DefaultCloseGrace is how long Close keeps retrying a commit that fails before it
	// counts the events as lost; the daemon's shutdown budget (8 s) has room for it.
	DefaultCloseGrace = 2 * time.Second
	// DefaultScrubInterval and DefaultScrubRate pace the background verification of the
	// whole chain: once an hour, at most 16 MiB of batches a second.
	DefaultScrubInterval = time.Hour
	DefaultScrubRate     = 16 << 20
)

// Config tunes batching and limits. The daemon fills it from the `batch:` and `spool:`
// sections of the config file.
type Config struct {
	// MaxEvents seals a batch when it holds this many events (batch.max_events; 1000).
	MaxEvents int `yaml:"max_events"`
	// MaxBytes seals a batch when its events' encoded size reaches this many bytes
	// (batch.max_bytes; 192 KiB), whichever of the two limits comes first. One event
	// larger than it is sealed alone.
	MaxBytes int64 `yaml:"max_bytes"`
	// MaxAge seals a non-empty batch this long after its first event (batch.max_age; 2s).
	MaxAge time.Duration `yaml:"max_age"`
	// Heartbeat seals an empty batch when nothing was sealed for this long, so that a
	// silent or truncated chain shows (batch.heartbeat; 1m, at most 1m).
	Heartbeat time.Duration `yaml:"heartbeat"`

	// MaxSizeBytes is the spool's size limit; above it Append refuses with ErrFull
	// (spool.max_size_bytes; 0 = no limit but the disk).
	MaxSizeBytes int64 `yaml:"max_size_bytes"`
	// MinFreeBytes keeps this much of the file system free; below it Append refuses with
	// ErrFull, long before bbolt meets ENOSPC (spool.min_free_bytes; 256 MiB).
	MinFreeBytes int64 `yaml:"min_free_bytes"`
	// Retention is how long acknowledged batches stay on the appliance (spool.retention; 7 days).
	Retention time.Duration `yaml:"retention"`

	// QueueSize is how many events may wait for the writer (spool.queue_size; 4096).
	QueueSize int `yaml:"queue_size"`
	// CommitEvents caps the events of one transaction (spool.commit_events; 2048).
	CommitEvents int `yaml:"commit_events"`

	// EvidenceReserveBytes is room only the appliance's own events may use, below the
	// limits that refuse collectors' events (spool.evidence_reserve_bytes; 8 MiB, or an
	// eighth of max_size_bytes if that is smaller).
	EvidenceReserveBytes int64 `yaml:"evidence_reserve_bytes"`
	// CloseGrace is how long Close retries a failing commit before counting its events as
	// lost (spool.close_grace; 2s).
	CloseGrace time.Duration `yaml:"close_grace"`
	// ScrubInterval is how often the whole chain is verified in the background
	// (spool.scrub_interval; 1h). ScrubRate caps how many bytes of batches a second the
	// scrub reads (spool.scrub_rate; 16 MiB), so it never slows ingest.
	ScrubInterval time.Duration `yaml:"scrub_interval"`
	ScrubRate     int64         `yaml:"scrub_rate"`
}

// SetDefaults fills zero values.
func (c *Config) SetDefaults() {
	def := func(p *int, v int) {
		if *p == 0 {
			*p = v
		}
	}
	def(&c.MaxEvents, DefaultMaxEvents)
	if c.MaxBytes == 0 {
		c.MaxBytes = DefaultMaxBytes
	}
	def(&c.QueueSize, DefaultQueueSize)
	def(&c.CommitEvents, DefaultCommitEvents)
	if c.MaxAge == 0 {
		c.MaxAge = DefaultMaxAge
	}
	if c.Heartbeat == 0 {
		c.Heartbeat = DefaultHeartbeat
	}
	if c.Retention == 0 {
		c.Retention = DefaultRetention
	}
	if c.MinFreeBytes == 0 {
		c.MinFreeBytes = DefaultMinFreeBytes
	}
	if c.EvidenceReserveBytes == 0 {
		c.EvidenceReserveBytes = DefaultEvidenceReserve
		if c.MaxSizeBytes > 0 {
			c.EvidenceReserveBytes = min(c.EvidenceReserveBytes, c.MaxSizeBytes/8)
		}
	}
	if c.CloseGrace == 0 {
		c.CloseGrace = DefaultCloseGrace
	}
	if c.ScrubInterval == 0 {
		c.ScrubInterval = DefaultScrubInterval
	}
	if c.ScrubRate == 0 {
		c.ScrubRate = DefaultScrubRate
	}
}

// ConfigError names the bad field and its value.
type ConfigError struct {
	Field string
	Value any
	Msg   string
}

func (e *ConfigError) Error() string {
	return fmt.Sprintf("%s: %q: %s", e.Field, fmt.Sprint(e.Value), e.Msg)
}

// Validate checks a config after SetDefaults.
func (c *Config) Validate() error {
	var errs []error
	bad := func(field string, v any, msg string) { errs = append(errs, &ConfigError{field, v, msg}) }
	if c.MaxEvents < 1 || c.MaxEvents > 100000 {
		bad("batch.max_events", c.MaxEvents, "must be between 1 and 100000")
	}
	if c.MaxBytes < 16<<10 || c.MaxBytes > 64<<20 {
		bad("batch.max_bytes", c.MaxBytes, "must be between 16 KiB and 64 MiB")
	}
	if c.MaxAge < 10*time.Millisecond || c.MaxAge > time.Hour {
		bad("batch.max_age", c.MaxAge, "must be between 10ms and 1h")
	}
	if c.Heartbeat < time.Second || c.Heartbeat > time.Minute {
		bad("batch.heartbeat", c.Heartbeat, "must be between 1s and 1m")
	}
	if c.MaxSizeBytes < 0 || (c.MaxSizeBytes > 0 && c.MaxSizeBytes < 1<<20) {
		bad("spool.max_size_bytes", c.MaxSizeBytes, "must be 0 (no limit) or at least 1 MiB")
	}
	if c.MinFreeBytes < 0 {
		bad("spool.min_free_bytes", c.MinFreeBytes, "must not be negative")
	}
	if c.Retention < 0 {
		bad("spool.retention", c.Retention, "must not be negative")
	}
	if c.QueueSize < 1 {
		bad("spool.queue_size", c.QueueSize, "must be at least 1")
	}
	if c.CommitEvents < 1 {
		bad("spool.commit_events", c.CommitEvents, "must be at least 1")
	}
	if c.EvidenceReserveBytes < 64<<10 || (c.MaxSizeBytes > 0 && c.EvidenceReserveBytes > c.MaxSizeBytes/2) {
		bad("spool.evidence_reserve_bytes", c.EvidenceReserveBytes, "must be at least 64 KiB and at most half of max_size_bytes")
	}
	if c.CloseGrace < 0 || c.CloseGrace > time.Minute {
		bad("spool.close_grace", c.CloseGrace, "must be between 0 and 1m")
	}
	if c.ScrubInterval < time.Second {
		// scrub_rate bounds what a pass reads, so a short interval costs reads, not ingest.
		bad("spool.scrub_interval", c.ScrubInterval, "must be at least 1s")
	}
	if c.ScrubRate < 1<<20 {
		bad("spool.scrub_rate", c.ScrubRate, "must be at least 1 MiB (bytes per second)")
	}
	return errors.Join(errs...)
}
