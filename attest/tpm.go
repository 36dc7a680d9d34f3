package attest

import (
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"
	"github.com/google/go-tpm/tpm2/transport/tcp"
)

// Sentinel errors of the TPM keys. The daemon tells them apart: ErrNoTPM allows the
// keys.tpm "auto" fallback to software keys (when no TPM key folder exists); the others
// never do.
var (
	// ErrNoTPM means no TPM is reachable at the spec: no device file, not a device, nothing
	// listening, or no permission to open it (the cause is wrapped alongside).
	ErrNoTPM = errors.New("no TPM")
	// ErrKeyMissing means the TPM key folder exists but a blob in it is missing: keys were
	// made and used, and a new key would fork the chain's trust, so none is made.
	ErrKeyMissing = errors.New("TPM key blob missing")
	// ErrKeyRejected means the TPM refuses to load the blobs: the TPM was cleared (new
	// seeds), or the blobs were made on another TPM, or they were altered.
	ErrKeyRejected = errors.New("TPM refuses the key blobs")
	// ErrPolicy means the TPM refused to unseal the data key because its PCR policy does
	// not hold (the measured boot state changed).
	ErrPolicy = errors.New("TPM policy refuses unseal")
	// ErrTPM wraps every other TPM or transport failure at run time.
	ErrTPM = errors.New("TPM command failed")
	// ErrBundle wraps every reason an attestation bundle does not verify.
	ErrBundle = errors.New("attestation bundle does not verify")
)

// OpenTPM opens the TPM named by spec:
//
//	/dev/tpmrm0            a device (Linux; the kernel resource manager: use tpmrm*, not tpm*)
//	tcp://127.0.0.1:2321   swtpm's data port; its control port is the next port up, which
//	                       is dialled but never sent power commands
//	unix:///run/swtpm.sock swtpm --server type=unixio
//	tbs                    the Windows TPM Base Services (Windows builds only)
//
// The result serializes this package's operations (a sign, an unseal, an attestation)
// against each other, so pass the same value to every signer that shares the TPM. After
// a transport failure (swtpm restarted, socket closed) it reconnects on the next command.
// It checks that a TPM 2.0 answers before it returns.
func OpenTPM(spec string) (transport.TPMCloser, error) {
	open, err := opener(spec)
	if err != nil {
		return nil, err
	}
	tp, err := open()
	if err != nil {
		return nil, fmt.Errorf("open tpm %s: %w", spec, err)
	}
	c := &tpmConn{spec: spec, open: open, tp: tp}
	if _, err := (tpm2.GetCapability{Capability: tpm2.TPMCapTPMProperties, Property: uint32(tpm2.TPMPTFamilyIndicator), PropertyCount: 1}).Execute(c); err != nil {
		c.Close()
		return nil, fmt.Errorf("open tpm %s: %w: %w", spec, ErrTPM, err)
	}
	return c, nil
}

// opener parses spec into a function that opens a fresh connection; connection failures
// that mean "there is no TPM here" come back wrapping ErrNoTPM.
func opener(spec string) (func() (transport.TPMCloser, error), error) {
	switch {
	case strings.HasPrefix(spec, "tcp://"):
		addr := strings.TrimPrefix(spec, "tcp://")
		host, port, err := net.SplitHostPort(addr)
		if err != nil {
			return nil, fmt.Errorf("tpm spec %q: %w", spec, err)
		}
		p, err := strconv.Atoi(port)
		if err != nil || p < 1 || p > 65534 {
			return nil, fmt.Errorf("tpm spec %q: port must be 1-65534 (the control port is the next one)", spec)
		}
		cfg := tcp.Config{CommandAddress: addr, PlatformAddress: net.JoinHostPort(host, strconv.Itoa(p+1))}
		return func() (transport.TPMCloser, error) {
			tp, err := tcp.Open(cfg)
			if err != nil {
				if errors.Is(err, syscall.ECONNREFUSED) {
					return nil, fmt.Errorf("%w: %w", ErrNoTPM, err)
				}
				return nil, err
			}
			return tp, nil
		}, nil
	case strings.HasPrefix(spec, "unix://"):
		path := strings.TrimPrefix(spec, "unix://")
		if path == "" {
			return nil, fmt.Errorf("tpm spec %q: no socket path", spec)
		}
		return func() (transport.TPMCloser, error) { return noTPM(openUnix(path)) }, nil
	case spec == "tbs":
		return func() (transport.TPMCloser, error) { return noTPM(openTBS()) }, nil
	case strings.HasPrefix(spec, "/"):
		return func() (transport.TPMCloser, error) { return noTPM(openDevice(spec)) }, nil
	}
	return nil, fmt.Errorf("tpm spec %q: want a device path, tcp://host:port, unix:///path or tbs", spec)
}

// noTPM marks the open errors that mean no usable TPM is there.
func noTPM(tp transport.TPMCloser, err error) (transport.TPMCloser, error) {
	if err == nil {
		return tp, nil
	}
	if errors.Is(err, os.ErrNotExist) || errors.Is(err, os.ErrPermission) || errors.Is(err, errNotDevice) ||
		errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, errUnsupported) {
		return nil, fmt.Errorf("%w: %w", ErrNoTPM, err)
	}
	return nil, err
}

var (
	// errNotDevice: the path exists but is no device or socket (linuxtpm's own check).
	errNotDevice = errors.New("not a TPM device")
	// errUnsupported: the spec's transport does not exist on this platform.
	errUnsupported = errors.New("TPM transport not supported on this platform")
	// errTransport marks failures of the connection, not of a TPM command, so that an
	// operation retries once on a fresh connection.
	errTransport = errors.New("tpm transport")
)

// tpmConn is the connection OpenTPM returns. op is held for a whole operation of this
// package (create primary, load, use, flush), because interleaved operations would run
// out of the TPM's few object slots; mu is held for one command.
type tpmConn struct {
	spec string
	open func() (transport.TPMCloser, error)

	op sync.Mutex

	mu     sync.Mutex
	tp     transport.TPMCloser // nil after a transport error, until the next command
	closed bool
}

// Send sends one command, reconnecting first when the last one broke the connection.
func (c *tpmConn) Send(cmd []byte) ([]byte, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return nil, fmt.Errorf("%w: closed", errTransport)
	}
	if c.tp == nil {
		if c.open == nil {
			return nil, fmt.Errorf("%w: connection lost", errTransport)
		}
		tp, err := c.open()
		if err != nil {
			// %v, not %w: a TPM that goes away at run time is a failure (ErrTPM),
			// never ErrNoTPM's fallback to software keys.
			return nil, fmt.Errorf("%w: reconnect %s: %v", errTransport, c.spec, err)
		}
		c.tp = tp
	}
	rsp, err := c.tp.Send(cmd)
	if err != nil {
		c.tp.Close()
		c.tp = nil
		return nil, fmt.Errorf("%w: %w", errTransport, err)
	}
	return rsp, nil
}

// Close closes the connection; later commands fail.
func (c *tpmConn) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.closed = true
	if c.tp == nil {
		return nil
	}
	err := c.tp.Close()
	c.tp = nil
	return err
}

// conn returns tp's operation lock holder: the tpmConn itself when tp came from OpenTPM,
// else a wrapper of its own (which serializes only the users of that wrapper and never
// reconnects).
func conn(tp transport.TPM) *tpmConn {
	if c, ok := tp.(*tpmConn); ok {
		return c
	}
	return &tpmConn{spec: "caller's transport", tp: foreign{tp}}
}

// foreign lets a caller's transport.TPM sit in a tpmConn; Close leaves it open, as the
// caller owns it.
type foreign struct{ transport.TPM }

func (foreign) Close() error { return nil }

// do runs f under the operation lock; when f failed on the connection (not in a TPM
// command), it runs f once more on a fresh connection. A TPM restart loses every loaded
// object, so starting the whole operation over leaks nothing.
func (c *tpmConn) do(f func(tp transport.TPM) error) error {
	c.op.Lock()
	defer c.op.Unlock()
	err := f(c)
	if err != nil && errors.Is(err, errTransport) && c.open != nil {
		err = f(c)
	}
	return err
}

// tpmErr wraps a TPM command's failure as ErrTPM with the operation's name.
func tpmErr(op string, err error) error {
	return fmt.Errorf("%s: %w: %w", op, ErrTPM, err)
}

// flush unloads a transient object or session; its error is ignored because the
// operation's own result matters more, and a restarted TPM has already forgotten it.
func flush(tp transport.TPM, h tpm2.TPMHandle) {
	tpm2.FlushContext{FlushHandle: h}.Execute(tp)
}
