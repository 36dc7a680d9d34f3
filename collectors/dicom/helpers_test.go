package dicom

import (
	"crypto/sha256"
	"encoding/hex"
	"testing"
	"time"

	"github.com/edgeaudit/edgeaudit/audit"
)

// testKey is the fixed data key of the test tokenizer, so golden tokens are stable.
var testKey = []byte("edgeaudit-dicom-golden-test-key-0123456789")

var (
	fixedRecv = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	fixedTime = time.Date(2026, 1, 2, 3, 4, 0, 0, time.UTC) // the syslog TIMESTAMP
)

func testTokenizer(tb testing.TB) *audit.Tokenizer {
	tb.Helper()
	tok, err := audit.NewTokenizer(testKey)
	if err != nil {
		tb.Fatal(err)
	}
	return tok
}

// baseEvent is what the syslog collector has filled before it calls Parse.
func baseEvent(raw []byte) audit.Event {
	sum := sha256.Sum256(raw)
	return audit.Event{
		ID:        "00000000000000000000000000000001",
		Time:      fixedTime,
		Received:  fixedRecv,
		Source:    audit.Source{Kind: audit.KindSyslog, Transport: "tls", IP: "192.0.2.10", Host: "pacs.example", App: "DCM4CHEE", MsgID: "IHE+RFC-3881", Facility: "authpriv", Severity: "notice"},
		Outcome:   audit.OutcomeUnknown,
		Message:   string(raw),
		RawSHA256: hex.EncodeToString(sum[:]),
	}
}
