package pgstore_test

import (
	"testing"
	"time"
)

// clientCPU is not measured on Windows.
func clientCPU(testing.TB) time.Duration { return 0 }
