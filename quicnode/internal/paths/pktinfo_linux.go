package paths

import (
	"encoding/binary"
	"errors"
	"syscall"

	"golang.org/x/sys/unix"
)

// leadingPktinfo returns the length of oob's first control message if it
// is an IP_PKTINFO or IPV6_PKTINFO (where quic-go puts the source address
// it pins an accepted connection to), else 0. The messages after it start
// at that offset, aligned, so oob[n:] is oob without it.
func leadingPktinfo(oob []byte) int {
	if len(oob) < unix.SizeofCmsghdr {
		return 0
	}
	var msgLen int
	if unix.SizeofCmsghdr == 16 {
		msgLen = int(binary.NativeEndian.Uint64(oob))
	} else {
		msgLen = int(binary.NativeEndian.Uint32(oob))
	}
	off := unix.SizeofCmsghdr - 8
	level := int32(binary.NativeEndian.Uint32(oob[off:]))
	typ := int32(binary.NativeEndian.Uint32(oob[off+4:]))
	if !((level == unix.IPPROTO_IP && typ == unix.IP_PKTINFO) || (level == unix.IPPROTO_IPV6 && typ == unix.IPV6_PKTINFO)) {
		return 0
	}
	n := unix.CmsgSpace(msgLen - unix.CmsgLen(0))
	if msgLen < unix.CmsgLen(0) || n > len(oob) {
		return 0
	}
	return n
}

// sourceGone reports whether a write may have failed because of its source
// address: quic-go pins an accepted connection's packets to the local
// address and interface its first packet arrived at (IP_PKTINFO, on a
// socket bound to the unspecified address), and once the host has moved to
// another network that address is gone (EINVAL, EADDRNOTAVAIL,
// ENETUNREACH) or its interface is (ENODEV: the interface index in the pin
// names a link that was deleted, as when a laptop's Wi-Fi or a VM's
// virtual interface goes away).
func sourceGone(err error) bool {
	return errors.Is(err, syscall.EINVAL) || errors.Is(err, syscall.EADDRNOTAVAIL) ||
		errors.Is(err, syscall.ENETUNREACH) || errors.Is(err, syscall.ENODEV)
}

// unroutable reports whether a write failed because the host has, for the
// moment, no way to send it: no route (a network change under way, an
// interface down), or a source address it no longer has. Such a datagram
// is lost, as one dropped on the way would be; quic-go would otherwise
// close the connection at the first such error.
func unroutable(err error) bool {
	return errors.Is(err, syscall.ENETUNREACH) || errors.Is(err, syscall.EHOSTUNREACH) ||
		errors.Is(err, syscall.ENETDOWN) || errors.Is(err, syscall.EADDRNOTAVAIL) ||
		errors.Is(err, syscall.ENODEV)
}
