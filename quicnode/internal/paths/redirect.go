package paths

import (
	"errors"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
)

// redirects rewrites the destination of what the main socket sends: a link
// whose peer moved (its NAT rebound to a new port or a new address, or its
// host changed networks) keeps its QUIC connection, and its packets go to
// where the peer's genuine probes now come from (see repair in health.go).
//
// quic-go cannot do this itself: a client connection sends to the address
// it dialled for its whole life (Conn.AddPath keeps the remote address),
// and a server connection follows a new client address only once a packet
// from it gets through, which a NAT that filters by address and port drops
// until we have sent there. quic-go accepts packets of a connection from
// any address on the client side and validates new ones on the server
// side, so rewriting the destination of the writes is all that is missing.
//
// Lookups are one atomic load while nothing is redirected (the common
// case, so the bulk path is unchanged); the map is replaced, never
// modified, under mu.
type redirects struct {
	unroutable atomic.Uint64 // writes lost for want of a route or a source address (see unroutable)
	mu         sync.Mutex
	cur        atomic.Pointer[map[netip.AddrPort]redirect]
}

type redirect struct {
	to   *net.UDPAddr
	link *Link // the link the redirect repairs: dropped when it ends
}

// lookup returns where packets for a should go instead, or nil.
func (r *redirects) lookup(a *net.UDPAddr) *net.UDPAddr {
	p := r.cur.Load()
	if p == nil || a == nil {
		return nil
	}
	return lookupIn(*p, a.AddrPort())
}

// lookupAP is lookup for a netip.AddrPort.
func (r *redirects) lookupAP(a netip.AddrPort) *net.UDPAddr {
	p := r.cur.Load()
	if p == nil {
		return nil
	}
	return lookupIn(*p, a)
}

func lookupIn(m map[netip.AddrPort]redirect, a netip.AddrPort) *net.UDPAddr {
	if x, ok := m[unmap(a)]; ok {
		return x.to
	}
	return nil
}

// set sends what l's connection writes to from to to instead. It reports
// whether that changed anything.
func (r *redirects) set(l *Link, from, to netip.AddrPort) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	old := r.load()
	if x, ok := old[from]; ok && x.link == l && x.to.AddrPort() == to {
		return false
	}
	next := make(map[netip.AddrPort]redirect, len(old)+1)
	for k, v := range old {
		next[k] = v
	}
	next[from] = redirect{to: net.UDPAddrFromAddrPort(to), link: l}
	r.cur.Store(&next)
	return true
}

// drop removes the redirect of from (if it belongs to l), or with from
// invalid every redirect of l.
func (r *redirects) drop(l *Link, from netip.AddrPort) {
	r.mu.Lock()
	defer r.mu.Unlock()
	old := r.load()
	next := make(map[netip.AddrPort]redirect, len(old))
	for k, v := range old {
		if v.link == l && (!from.IsValid() || k == from) {
			continue
		}
		next[k] = v
	}
	if len(next) == len(old) {
		return
	}
	if len(next) == 0 {
		r.cur.Store(nil)
		return
	}
	r.cur.Store(&next)
}

// lost reports whether a write's error means the datagram is simply lost
// (see unroutable), and counts it.
func (r *redirects) lost(err error) bool {
	if err == nil || !unroutable(err) {
		return false
	}
	r.unroutable.Add(1)
	return true
}

// target returns where l's packets to from go now (from itself if not
// redirected).
func (r *redirects) target(l *Link, from netip.AddrPort) netip.AddrPort {
	if x, ok := r.load()[from]; ok && x.link == l {
		return x.to.AddrPort()
	}
	return from
}

func (r *redirects) load() map[netip.AddrPort]redirect {
	if p := r.cur.Load(); p != nil {
		return *p
	}
	return nil
}

// redirUDP is the main socket as quic-go sees it when it is a
// *net.UDPConn: every method is the socket's own (so quic-go keeps GSO,
// ECN and batched reads through SyscallConn), except the writes, which
// honour the redirects and survive the host changing address: a datagram
// the host has no route or source address for is reported sent and lost
// (see unroutable), not as the error that would end quic-go's connection.
type redirUDP struct {
	*net.UDPConn
	r    *redirects
	gone goneSources
}

func (c *redirUDP) WriteMsgUDP(b, oob []byte, addr *net.UDPAddr) (n, oobn int, err error) {
	if to := c.r.lookup(addr); to != nil {
		addr = to
	}
	if c.gone.any() {
		if k := leadingPktinfo(oob); k > 0 && c.gone.has(oob[:k]) {
			return c.UDPConn.WriteMsgUDP(b, oob[k:], addr)
		}
	}
	n, oobn, err = c.UDPConn.WriteMsgUDP(b, oob, addr)
	if err != nil && sourceGone(err) {
		// The host moved to another network (see sourceGone): let the
		// kernel pick the source address, as it does for the connections
		// we dialled, and remember that this one is gone.
		if k := leadingPktinfo(oob); k > 0 {
			var err2 error
			if n, oobn, err2 = c.UDPConn.WriteMsgUDP(b, oob[k:], addr); err2 == nil {
				c.gone.add(oob[:k])
				return n, oobn, nil
			}
			// Still refused without the pin: that error is the one that
			// says whether the datagram is simply lost (the host between
			// two networks has no route at all).
			err = err2
		}
	}
	if c.r.lost(err) {
		return len(b), len(oob), nil
	}
	return n, oobn, err
}

// goneSources are the source-address control messages (IP_PKTINFO) that
// failed because the address left the host; writes drop them. At most
// maxGone are kept (the oldest go first); lookups are one atomic load
// while there are none.
type goneSources struct {
	mu   sync.Mutex
	list atomic.Pointer[[]string]
}

const maxGone = 8

func (g *goneSources) any() bool { return g.list.Load() != nil }

func (g *goneSources) has(msg []byte) bool {
	p := g.list.Load()
	if p == nil {
		return false
	}
	for _, m := range *p {
		if m == string(msg) {
			return true
		}
	}
	return false
}

func (g *goneSources) add(msg []byte) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.has(msg) {
		return
	}
	var next []string
	if p := g.list.Load(); p != nil {
		next = append(next, *p...)
	}
	next = append(next, string(msg))
	if len(next) > maxGone {
		next = next[len(next)-maxGone:]
	}
	g.list.Store(&next)
}

func (c *redirUDP) WriteTo(b []byte, addr net.Addr) (int, error) {
	if ua, ok := addr.(*net.UDPAddr); ok {
		if to := c.r.lookup(ua); to != nil {
			addr = to
		}
	}
	n, err := c.UDPConn.WriteTo(b, addr)
	if c.r.lost(err) {
		return len(b), nil
	}
	return n, err
}

func (c *redirUDP) WriteToUDP(b []byte, addr *net.UDPAddr) (int, error) {
	if to := c.r.lookup(addr); to != nil {
		addr = to
	}
	n, err := c.UDPConn.WriteToUDP(b, addr)
	if c.r.lost(err) {
		return len(b), nil
	}
	return n, err
}

func (c *redirUDP) WriteToUDPAddrPort(b []byte, addr netip.AddrPort) (int, error) {
	if to := c.r.lookupAP(addr); to != nil {
		addr = to.AddrPort()
	}
	n, err := c.UDPConn.WriteToUDPAddrPort(b, addr)
	if c.r.lost(err) {
		return len(b), nil
	}
	return n, err
}

func (c *redirUDP) WriteMsgUDPAddrPort(b, oob []byte, addr netip.AddrPort) (n, oobn int, err error) {
	if to := c.r.lookupAP(addr); to != nil {
		addr = to.AddrPort()
	}
	n, oobn, err = c.UDPConn.WriteMsgUDPAddrPort(b, oob, addr)
	if c.r.lost(err) {
		return len(b), len(oob), nil
	}
	return n, oobn, err
}

// redirPacket is any other main socket (the in-memory network of tests).
type redirPacket struct {
	net.PacketConn
	r *redirects
}

func (c *redirPacket) WriteTo(b []byte, addr net.Addr) (int, error) {
	if ua, ok := addr.(*net.UDPAddr); ok {
		if to := c.r.lookup(ua); to != nil {
			addr = to
		}
	}
	n, err := c.PacketConn.WriteTo(b, addr)
	if c.r.lost(err) {
		return len(b), nil
	}
	return n, err
}

// SetReadBuffer and SetWriteBuffer pass quic-go's buffer sizing through to
// the socket, as if it were not wrapped.
func (c *redirPacket) SetReadBuffer(n int) error {
	if s, ok := c.PacketConn.(interface{ SetReadBuffer(int) error }); ok {
		return s.SetReadBuffer(n)
	}
	return errors.ErrUnsupported
}

func (c *redirPacket) SetWriteBuffer(n int) error {
	if s, ok := c.PacketConn.(interface{ SetWriteBuffer(int) error }); ok {
		return s.SetWriteBuffer(n)
	}
	return errors.ErrUnsupported
}

// withRedirects wraps the main socket so its writes honour r.
func withRedirects(c net.PacketConn, r *redirects) net.PacketConn {
	if uc, ok := c.(*net.UDPConn); ok {
		return &redirUDP{UDPConn: uc, r: r}
	}
	return &redirPacket{PacketConn: c, r: r}
}
