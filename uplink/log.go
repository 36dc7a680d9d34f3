package uplink

import (
	"encoding/hex"

	"github.com/edgeaudit/edgeaudit/ledger"
)

// Log attribute keys (STYLE 8): sizes, seqs, hashes and addresses, never batch bodies.
const (
	keyComponent  = "component"
	keyBroker     = "broker"
	keyErr        = "err"
	keySeq        = "seq"
	keySize       = "size"
	keyLimit      = "limit"
	keyFailures   = "failures"
	keyDownFor    = "down_for"
	keySuppressed = "suppressed"
)

func hexHash(h ledger.Hash) string { return hex.EncodeToString(h[:]) }
