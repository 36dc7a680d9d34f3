package fhir

// withBudget sets fhir.max_inflight_bytes in a test config. It is the one place the
// budget tests touch the new key, so that they also build against a collector without it
// (to see them fail there).
func withBudget(cfg Config, n int64) Config {
	cfg.MaxInflightBytes = n
	return cfg
}
