//go:build !linux

package syslog

import "net"

// oobSize is zero: kernel drop counters (SO_RXQ_OVFL) exist on Linux only.
var oobSize = 0

func setupUDP(conn *net.UDPConn, size int) (int, error) {
	return size, conn.SetReadBuffer(size)
}

func kernelDrops([]byte) (uint32, bool) { return 0, false }
