package syslog

// Log attribute keys, in one place so that log queries stay stable. No key ever carries
// message content: only sizes, reasons, counts and peer addresses.
const (
	attrTransport    = "transport"
	attrAddr         = "addr"
	attrPeer         = "peer"
	attrReason       = "reason"
	attrSize         = "size"
	attrErr          = "err"
	attrCount        = "count"
	attrDuration     = "duration"
	attrSuppressed   = "suppressed"
	attrRequested    = "requested"
	attrEffective    = "effective"
	attrConns        = "conns"
	attrUnreadFrames = "unread_frames"
	attrUnreadBytes  = "unread_bytes"
)
