//go:build !windows

package attest

import (
	"errors"

	"github.com/google/go-tpm/tpm2/transport"
	"github.com/google/go-tpm/tpm2/transport/linuxtpm"
	"github.com/google/go-tpm/tpm2/transport/linuxudstpm"
)

func openDevice(path string) (transport.TPMCloser, error) {
	tp, err := linuxtpm.Open(path)
	if errors.Is(err, linuxtpm.ErrFileIsNotDevice) {
		return nil, errors.Join(errNotDevice, err)
	}
	return tp, err
}

func openUnix(path string) (transport.TPMCloser, error) {
	tp, err := linuxudstpm.Open(path)
	if errors.Is(err, linuxudstpm.ErrFileIsNotSocket) {
		return nil, errors.Join(errNotDevice, err)
	}
	return tp, err
}

func openTBS() (transport.TPMCloser, error) { return nil, errUnsupported }
