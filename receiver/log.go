package receiver

// Log attribute keys, one spelling everywhere. Never log event bytes: sizes, seqs,
// hashes, names and peer addresses only.
const (
	attrComponent = "component"
	attrSite      = "site"
	attrDevice    = "device"
	attrSeq       = "seq"
	attrHeadSeq   = "head_seq"
	attrReason    = "reason"
	attrFile      = "file"
	attrBytes     = "bytes"
	attrTopic     = "topic"
	attrBroker    = "broker"
	attrError     = "err"
	attrFailures  = "failures"
	attrDuration  = "duration"
)
