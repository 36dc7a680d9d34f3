package timesync

// Log attribute keys.
const (
	logComponent  = "component"
	logServer     = "server"
	logErr        = "err"
	logFailures   = "failures"
	logSuppressed = "suppressed"
	logAfter      = "after"
	logBackoff    = "backoff_intervals"
	logState      = "state"
	logOffset     = "offset"
	logStep       = "step"
)
