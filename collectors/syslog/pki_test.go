package syslog

import (
	"testing"

	"github.com/edgeaudit/edgeaudit/internal/testpki"
)

type testPKI = testpki.PKI

func newTestPKI(t testing.TB) *testPKI { return testpki.New(t) }
