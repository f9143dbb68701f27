package bench

import (
	"net"
	"net/netip"
	"time"
)

// filterConn is a UDP socket behind a firewall that passes datagrams to and
// from the allowed addresses only: what it sends elsewhere vanishes (WriteTo
// reports success, as for any datagram lost on the way) and what arrives
// from elsewhere is discarded. It is a plain net.PacketConn (no GSO), which
// costs nothing here: the sockets it wraps carry only the rendezvous's
// control traffic, or nothing.
type filterConn struct {
	udp   *net.UDPConn
	allow []netip.AddrPort
}

func newFilterConn(udp *net.UDPConn, allow []netip.AddrPort) *filterConn {
	return &filterConn{udp: udp, allow: allow}
}

// dropAll is a socket on a network that lets no datagram in or out.
func dropAll(udp *net.UDPConn) net.PacketConn { return newFilterConn(udp, nil) }

func (c *filterConn) allowed(ap netip.AddrPort) bool {
	ap = netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	for _, a := range c.allow {
		if a == ap {
			return true
		}
	}
	return false
}

func (c *filterConn) ReadFrom(b []byte) (int, net.Addr, error) {
	for {
		n, ap, err := c.udp.ReadFromUDPAddrPort(b)
		if err != nil {
			return n, nil, err
		}
		if c.allowed(ap) {
			return n, net.UDPAddrFromAddrPort(ap), nil
		}
	}
}

func (c *filterConn) WriteTo(b []byte, addr net.Addr) (int, error) {
	ua, ok := addr.(*net.UDPAddr)
	if !ok || !c.allowed(ua.AddrPort()) {
		return len(b), nil
	}
	return c.udp.WriteTo(b, addr)
}

func (c *filterConn) Close() error                       { return c.udp.Close() }
func (c *filterConn) LocalAddr() net.Addr                { return c.udp.LocalAddr() }
func (c *filterConn) SetDeadline(t time.Time) error      { return c.udp.SetDeadline(t) }
func (c *filterConn) SetReadDeadline(t time.Time) error  { return c.udp.SetReadDeadline(t) }
func (c *filterConn) SetWriteDeadline(t time.Time) error { return c.udp.SetWriteDeadline(t) }

// SetReadBuffer and SetWriteBuffer let quic-go size the socket's buffers
// (and spare its warning that it cannot).
func (c *filterConn) SetReadBuffer(n int) error  { return c.udp.SetReadBuffer(n) }
func (c *filterConn) SetWriteBuffer(n int) error { return c.udp.SetWriteBuffer(n) }
