package fhir

// withBudget sets fhir.max_inflight_bytes in a test config. It is the one place the
// budget tests touch the new key, so that they also build against a collector without it
// (to see them fail there).
func withBudget(cfg Config, n int64) Config {
	cfg.MaxInflightBytes = n
	return cfg
}

// withLimits sets fhir.max_connections and max_connections_per_ip, like withBudget.
func withLimits(cfg Config, max, perIP int) Config {
	cfg.MaxConnections, cfg.MaxConnectionsPerIP = max, perIP
	return cfg
}

// openConns is how many connections the collector tracks.
func openConns(c *Collector) int64 { return c.Stats().Connections }

// inflightBytes is how much of the budget requests hold.
func inflightBytes(c *Collector) int64 { return c.Stats().InflightBytes }
