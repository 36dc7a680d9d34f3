// Package listenaddr validates listen addresses in configs, so that a typo fails when
// the config is loaded, naming the field, rather than when a listener binds.
package listenaddr

import (
	"errors"
	"net"
	"net/netip"
	"strconv"
	"strings"
)

// Check accepts host:port with a numeric port and a host that is empty, an IP
// address or a DNS name, so typos fail at config load rather than at bind time.
func Check(addr string) error {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		var ae *net.AddrError
		if errors.As(err, &ae) {
			return errors.New(ae.Err)
		}
		return err
	}
	if _, err := strconv.ParseUint(port, 10, 16); err != nil {
		return errors.New("port must be a number from 0 to 65535")
	}
	if host == "" {
		return nil
	}
	if _, err := netip.ParseAddr(host); err == nil {
		return nil
	}
	if len(host) > 253 || strings.Trim(host, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-") != "" {
		return errors.New("host must be an IP address or a DNS name")
	}
	return nil
}
