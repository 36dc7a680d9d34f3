//go:build !linux

package uplink

import "net"

func quickAck(*net.TCPConn) {}
