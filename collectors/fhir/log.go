package fhir

// Log attribute keys, in one place so that log queries stay stable. No key ever carries
// request content: only sizes, reasons, counts and peer addresses.
const (
	attrAddr       = "addr"
	attrTLS        = "tls"
	attrPeer       = "peer"
	attrReason     = "reason"
	attrSize       = "size"
	attrErr        = "err"
	attrSuppressed = "suppressed"
	attrInflight   = "inflight_bytes"
	attrOpen       = "open"
)
