package daemon

import (
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/edgeaudit/edgeaudit/internal/configerr"
	"github.com/edgeaudit/edgeaudit/internal/tlsconf"
)

// Check reads the files the config names, as the daemon will load them before it opens
// the spool (call it after SetDefaults): each listener's TLS certificate and key (a
// valid pair) and client CAs, fhir.bearer_tokens_file, the uplink's CA and client
// certificate, uplink.central_key; and it checks that data_dir, when it exists, is a
// folder, and that keys.tpm: require has a TPM device to open. Every problem is
// reported, joined, each naming its key (and line, for a loaded file). Ports are not
// bound here: whether one is free is only known at start (probePorts).
func (c *Config) Check() error {
	var errs []error
	errs = append(errs, c.Syslog.Check())
	if c.HL7.Enabled() {
		errs = append(errs, c.HL7.Check())
	}
	if c.FHIR.Enabled() {
		errs = append(errs, c.FHIR.Check())
	}
	if c.uplinkEnabled() {
		uc := c.UplinkConfig()
		uc.ApplyDefaults()
		errs = append(errs, uc.Check())
		// An explicit central key is read at start and must be there (newUplink); the
		// default one in data_dir may appear later, by enrolment.
		if c.Uplink.CentralKey != "" {
			if _, err := ReadCentralKey(c.Uplink.CentralKey); err != nil {
				errs = append(errs, &configerr.Error{Field: "uplink.central_key", Value: c.Uplink.CentralKey, Err: centralKeyError(err)})
			}
		}
	}
	if c.DataDir != "" {
		if fi, err := os.Stat(c.DataDir); err == nil && !fi.IsDir() {
			errs = append(errs, &configerr.Error{Field: "data_dir", Value: c.DataDir, Err: errors.New("is a file, not a folder")})
		}
	}
	if c.Keys.TPM == TPMRequire && strings.HasPrefix(c.Keys.TPMDevice, "/") {
		if _, err := os.Stat(c.Keys.TPMDevice); err != nil {
			errs = append(errs, &configerr.Error{Field: "keys.tpm_device", Value: c.Keys.TPMDevice,
				Err: fmt.Errorf("%v, and keys.tpm is require: the daemon would not start (keys.tpm: auto falls back to software keys)", tlsconf.FileError(err))})
		}
	}
	return c.locate(errors.Join(errs...))
}

// centralKeyError is ReadCentralKey's error in words: a missing file, or what is wrong
// with its content.
func centralKeyError(err error) error {
	if errors.Is(err, os.ErrNotExist) || errors.Is(err, os.ErrPermission) {
		return fmt.Errorf("%v (central's receipt key, central.pub from `edgeaudit receive`)", tlsconf.FileError(err))
	}
	return errors.New(strings.TrimPrefix(err.Error(), "read central key: "))
}
