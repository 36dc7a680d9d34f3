package central

// Log attribute keys, one spelling everywhere. Never log event bytes: sizes, seqs,
// hashes, names and peer addresses only.
const (
	attrComponent = "component"
	attrSite      = "site"
	attrDevice    = "device"
	attrReason    = "reason"
	attrKeyID     = "key_id"
	attrAddr      = "addr"
	attrPeer      = "peer"
	attrTopic     = "topic"
	attrFile      = "file"
	attrError     = "err"
)
