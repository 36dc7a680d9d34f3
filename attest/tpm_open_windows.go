//go:build windows

package attest

import (
	"github.com/google/go-tpm/tpm2/transport"
	"github.com/google/go-tpm/tpm2/transport/windowstpm"
)

func openDevice(string) (transport.TPMCloser, error) { return nil, errUnsupported }

func openUnix(string) (transport.TPMCloser, error) { return nil, errUnsupported }

// openTBS opens the TPM through TPM Base Services; compiled, never run in our tests.
func openTBS() (transport.TPMCloser, error) { return windowstpm.Open() }
