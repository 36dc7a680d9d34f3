package syslog

import (
	"encoding/binary"
	"net"

	"golang.org/x/sys/unix"
)

// oobSize fits the one control message we ask for: SO_RXQ_OVFL's uint32.
var oobSize = unix.CmsgSpace(4)

// setupUDP sizes the receive buffer and turns on SO_RXQ_OVFL, so that each recvmsg
// carries the socket's cumulative count of datagrams the kernel dropped. It returns the
// buffer size in effect (the kernel reports double what it grants, for its bookkeeping).
func setupUDP(conn *net.UDPConn, size int) (int, error) {
	rc, err := conn.SyscallConn()
	if err != nil {
		return 0, err
	}
	var effective int
	var serr error
	err = rc.Control(func(fd uintptr) {
		s := int(fd)
		// SO_RCVBUFFORCE goes past net.core.rmem_max when we have CAP_NET_ADMIN;
		// without it, SO_RCVBUF is silently capped.
		if unix.SetsockoptInt(s, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, size) != nil {
			if serr = unix.SetsockoptInt(s, unix.SOL_SOCKET, unix.SO_RCVBUF, size); serr != nil {
				return
			}
		}
		if serr = unix.SetsockoptInt(s, unix.SOL_SOCKET, unix.SO_RXQ_OVFL, 1); serr != nil {
			return
		}
		got, gerr := unix.GetsockoptInt(s, unix.SOL_SOCKET, unix.SO_RCVBUF)
		if gerr == nil {
			effective = got / 2
		} else {
			effective = size
		}
	})
	if err == nil {
		err = serr
	}
	return effective, err
}

// kernelDrops finds the SO_RXQ_OVFL counter in a control message buffer. It parses by
// hand because unix.ParseSocketControlMessage allocates, and once the kernel has
// dropped anything, every datagram carries the counter.
func kernelDrops(oob []byte) (uint32, bool) {
	hdr := unix.SizeofCmsghdr
	lenSize := hdr - 8 // Len is a size_t, then Level and Type are int32
	for len(oob) >= hdr {
		var l int
		if lenSize == 8 {
			l = int(binary.NativeEndian.Uint64(oob))
		} else {
			l = int(binary.NativeEndian.Uint32(oob))
		}
		if l < hdr || l > len(oob) {
			return 0, false
		}
		level := int32(binary.NativeEndian.Uint32(oob[lenSize:]))
		typ := int32(binary.NativeEndian.Uint32(oob[lenSize+4:]))
		if level == unix.SOL_SOCKET && typ == unix.SO_RXQ_OVFL && l >= unix.CmsgLen(4) {
			return binary.NativeEndian.Uint32(oob[unix.CmsgLen(0):]), true
		}
		next := unix.CmsgSpace(l - unix.CmsgLen(0))
		if next > len(oob) {
			return 0, false
		}
		oob = oob[next:]
	}
	return 0, false
}
