package paths

import (
	"context"
	"encoding/hex"
	"errors"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/agentnet/agentnet/internal/relayframe"
)

// relayRebind is how often a node re-binds its relay sessions: it keeps the
// NAT mapping towards the relay open and moves the session after a NAT
// rebinding.
const relayRebind = 10 * time.Second

// relayTunnel is the TCP tunnel's relay side (a *tunnel.Client).
type relayTunnel interface {
	WriteRelay(frame []byte) bool
}

// relayConn is the net.PacketConn under the node's second quic.Transport: it
// carries QUIC packets to peers through rendezvous relay sessions, adding
// and stripping the relay's Data header. Each session appears to quic-go as
// its own remote address (a relayAddr). It has its own UDP socket, so bulk
// relayed traffic never passes through the main socket's non-QUIC queue.
//
// A session's frames travel over the UDP socket or, for an agent whose
// network lets no UDP out, through the TCP tunnel to the rendezvous: the
// session's carrier. Moving a session to the other carrier binds it again
// from there; the QUIC connection over it sees the same relayAddr and
// never notices. Tunnel frames are queued by the tunnel's reader and
// interrupt the blocked UDP read with a read deadline (see ReadFrom).
//
// ReadFrom must be called by one goroutine at a time (quic-go's read loop).
type relayConn struct {
	pc   net.PacketConn
	udp  *net.UDPConn // pc, when it is a UDP socket (allocation-free I/O)
	rbuf []byte

	tun         atomic.Pointer[relayTunnelHolder]
	tunIn       chan []byte // frames from the tunnel, bounded
	interrupted atomic.Bool // a read deadline was set to wake ReadFrom for tunIn

	// dlMu orders changes of pc's read deadline; readDL is the one the
	// conn's user (quic-go) set, which an interrupt must not lose: quic-go's
	// Transport.Close wakes its read loop with a deadline.
	dlMu   sync.Mutex
	readDL time.Time

	mu       sync.Mutex
	sessions map[relayframe.Session]*relaySession

	dropped atomic.Uint64 // frames from unknown sessions or wrong sources, or the tunnel queue full
}

type relayTunnelHolder struct{ t relayTunnel }

// relaySession is one relay session this node takes part in.
type relaySession struct {
	id     relayframe.Session
	server netip.AddrPort // the relay's UDP address
	side   uint8
	secret [relayframe.SecretSize]byte

	mu       sync.Mutex
	tunnel   bool // frames travel through the TCP tunnel
	counter  uint64
	lastBind time.Time
	lastRecv time.Time     // last frame from the relay for this session
	bound    chan struct{} // closed at the first BindOK
}

// relayAddr is the net.Addr quic-go sees for a peer reached through a relay
// session.
type relayAddr struct{ id relayframe.Session }

func (a relayAddr) Network() string { return "agentnet-relay" }
func (a relayAddr) String() string  { return "relay-" + hex.EncodeToString(a.id[:]) }

const tunnelQueue = 1024

func newRelayConn(pc net.PacketConn) *relayConn {
	udp, _ := pc.(*net.UDPConn)
	return &relayConn{
		pc:       pc,
		udp:      udp,
		rbuf:     make([]byte, 2048),
		tunIn:    make(chan []byte, tunnelQueue),
		sessions: make(map[relayframe.Session]*relaySession),
	}
}

// setTunnel sets the tunnel that carries tunnel sessions (nil: none).
func (rc *relayConn) setTunnel(t relayTunnel) {
	if t == nil {
		rc.tun.Store(nil)
		return
	}
	rc.tun.Store(&relayTunnelHolder{t})
}

// add registers a session (idempotent) and sends its first Bind, over the
// tunnel if viaTunnel.
func (rc *relayConn) add(id relayframe.Session, server netip.AddrPort, side uint8, secret [relayframe.SecretSize]byte, viaTunnel bool) *relaySession {
	server = netip.AddrPortFrom(server.Addr().Unmap(), server.Port())
	rc.mu.Lock()
	s := rc.sessions[id]
	if s == nil {
		s = &relaySession{id: id, server: server, side: side, secret: secret, tunnel: viaTunnel, bound: make(chan struct{}), lastRecv: time.Now()}
		rc.sessions[id] = s
	}
	rc.mu.Unlock()
	rc.sendBind(s)
	return s
}

// moveAll moves every session to the tunnel (or off it) and binds it
// again from there at once.
func (rc *relayConn) moveAll(viaTunnel bool) int {
	rc.mu.Lock()
	var moved []*relaySession
	for _, s := range rc.sessions {
		s.mu.Lock()
		if s.tunnel != viaTunnel {
			s.tunnel = viaTunnel
			moved = append(moved, s)
		}
		s.mu.Unlock()
	}
	rc.mu.Unlock()
	for _, s := range moved {
		rc.sendBind(s)
	}
	return len(moved)
}

// rebindTunnel binds every tunnel session again (the tunnel reconnected:
// the relay knows it by a new address).
func (rc *relayConn) rebindTunnel() {
	rc.mu.Lock()
	var due []*relaySession
	for _, s := range rc.sessions {
		s.mu.Lock()
		if s.tunnel {
			due = append(due, s)
		}
		s.mu.Unlock()
	}
	rc.mu.Unlock()
	for _, s := range due {
		rc.sendBind(s)
	}
}

// onTunnel reports whether the session behind a, if any, travels through
// the tunnel.
func (rc *relayConn) onTunnel(a net.Addr) bool {
	ra, ok := a.(relayAddr)
	if !ok {
		return false
	}
	s := rc.session(ra.id)
	if s == nil {
		return false
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.tunnel
}

// sendBind sends a Bind with a counter above every earlier one (wall-clock
// nanoseconds, so it keeps growing across restarts).
func (rc *relayConn) sendBind(s *relaySession) {
	s.mu.Lock()
	s.counter = max(s.counter+1, uint64(time.Now().UnixNano()))
	s.lastBind = time.Now()
	b := relayframe.AppendBind(make([]byte, 0, relayframe.BindLen), s.id, s.side, s.counter, s.secret)
	tun := s.tunnel
	s.mu.Unlock()
	rc.write(b, s.server, tun)
}

// write sends a frame for a session: into the tunnel, or to the relay at
// server over UDP.
func (rc *relayConn) write(b []byte, server netip.AddrPort, viaTunnel bool) error {
	if viaTunnel {
		if h := rc.tun.Load(); h != nil {
			h.t.WriteRelay(b) // a full or down tunnel drops, as UDP would
		}
		return nil
	}
	if rc.udp != nil {
		_, err := rc.udp.WriteToUDPAddrPort(b, server)
		return err
	}
	_, err := rc.pc.WriteTo(b, net.UDPAddrFromAddrPort(server))
	return err
}

// tunnelFrame queues a frame that arrived through the tunnel and wakes
// ReadFrom. Called by the tunnel's reader; frame is not kept.
func (rc *relayConn) tunnelFrame(frame []byte) {
	b := append(make([]byte, 0, len(frame)), frame...)
	select {
	case rc.tunIn <- b:
	default:
		rc.dropped.Add(1)
		return
	}
	rc.dlMu.Lock()
	if rc.interrupted.CompareAndSwap(false, true) {
		rc.pc.SetReadDeadline(time.Unix(1, 0))
	}
	rc.dlMu.Unlock()
}

// read reads the next UDP datagram into rc.rbuf.
func (rc *relayConn) read() (int, netip.AddrPort, error) {
	if rc.udp != nil {
		return rc.udp.ReadFromUDPAddrPort(rc.rbuf)
	}
	n, from, err := rc.pc.ReadFrom(rc.rbuf)
	if err != nil {
		return 0, netip.AddrPort{}, err
	}
	ua, ok := from.(*net.UDPAddr)
	if !ok {
		return n, netip.AddrPort{}, nil
	}
	return n, ua.AddrPort(), nil
}

// relayIdle is how long a session may carry nothing before the node
// forgets it (a live relayed connection sends keepalives every 15 s).
const relayIdle = 90 * time.Second

// rebindDue re-binds sessions whose last Bind is older than relayRebind and
// forgets sessions idle for relayIdle (granted but never used, or whose
// connection is gone).
func (rc *relayConn) rebindDue() {
	rc.mu.Lock()
	var due []*relaySession
	for id, s := range rc.sessions {
		s.mu.Lock()
		switch {
		case time.Since(s.lastRecv) >= relayIdle:
			delete(rc.sessions, id)
		case time.Since(s.lastBind) >= relayRebind:
			due = append(due, s)
		}
		s.mu.Unlock()
	}
	rc.mu.Unlock()
	for _, s := range due {
		rc.sendBind(s)
	}
}

// waitBound re-sends the Bind until the relay confirms it.
func (rc *relayConn) waitBound(ctx context.Context, s *relaySession) error {
	t := time.NewTicker(200 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-s.bound:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
			rc.sendBind(s)
		}
	}
}

// forget drops the session behind a relayed connection's remote address.
func (rc *relayConn) forget(a net.Addr) {
	ra, ok := a.(relayAddr)
	if !ok {
		return
	}
	rc.mu.Lock()
	delete(rc.sessions, ra.id)
	rc.mu.Unlock()
}

func (rc *relayConn) session(id relayframe.Session) *relaySession {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	return rc.sessions[id]
}

// ReadFrom returns the next QUIC packet relayed from a peer, from the UDP
// socket or the tunnel. Bind confirmations are consumed here; frames that
// do not come from the relay of a known session are dropped and counted.
func (rc *relayConn) ReadFrom(p []byte) (int, net.Addr, error) {
	for {
		select {
		case f := <-rc.tunIn:
			if n, a, ok := rc.handle(f, netip.AddrPort{}, true, p); ok {
				return n, a, nil
			}
			continue
		default:
		}
		n, from, err := rc.read()
		if err != nil {
			if rc.interrupted.Load() && errors.Is(err, os.ErrDeadlineExceeded) {
				// Woken for tunnel frames: put back the user's deadline,
				// then clear the flag (a frame queued after this wakes us
				// again), then drain at the top of the loop — unless the
				// user's own deadline has passed meanwhile.
				rc.dlMu.Lock()
				dl := rc.readDL
				rc.pc.SetReadDeadline(dl)
				rc.interrupted.Store(false)
				rc.dlMu.Unlock()
				if dl.IsZero() || time.Now().Before(dl) {
					continue
				}
			}
			return 0, nil, err
		}
		if n, a, ok := rc.handle(rc.rbuf[:n], netip.AddrPortFrom(from.Addr().Unmap(), from.Port()), false, p); ok {
			return n, a, nil
		}
	}
}

// handle processes one frame from the relay (over UDP from from, or from
// the tunnel) and returns the QUIC packet it carries, if any, copied to p.
func (rc *relayConn) handle(b []byte, from netip.AddrPort, viaTunnel bool, p []byte) (int, net.Addr, bool) {
	id, ok := relayframe.SessionOf(b)
	var s *relaySession
	if ok {
		s = rc.session(id)
	}
	// Tunnel frames come from the rendezvous over its pinned connection;
	// UDP frames must come from the session's relay.
	if s == nil || (!viaTunnel && from != s.server) {
		rc.dropped.Add(1)
		return 0, nil, false
	}
	s.mu.Lock()
	s.lastRecv = time.Now()
	s.mu.Unlock()
	switch b[0] {
	case relayframe.TypeData:
		_, payload, err := relayframe.ParseData(b)
		if err != nil {
			rc.dropped.Add(1)
			return 0, nil, false
		}
		return copy(p, payload), relayAddr{id}, true
	case relayframe.TypeBindOK:
		f, err := relayframe.ParseBind(b)
		if err != nil || f.Side != s.side {
			rc.dropped.Add(1)
			return 0, nil, false
		}
		select {
		case <-s.bound:
		default:
			close(s.bound)
		}
	default:
		rc.dropped.Add(1)
	}
	return 0, nil, false
}

var relayBufPool = sync.Pool{New: func() any {
	b := make([]byte, 0, relayframe.MaxFrameSize+64)
	return &b
}}

// WriteTo sends a QUIC packet to the peer behind a relayAddr.
func (rc *relayConn) WriteTo(p []byte, addr net.Addr) (int, error) {
	ra, ok := addr.(relayAddr)
	if !ok {
		return 0, &net.OpError{Op: "write", Net: "agentnet-relay", Err: net.UnknownNetworkError(addr.Network())}
	}
	s := rc.session(ra.id)
	if s == nil {
		// The session is gone (link closed): the packet has nowhere to go.
		return len(p), nil
	}
	s.mu.Lock()
	tun := s.tunnel
	s.mu.Unlock()
	bp := relayBufPool.Get().(*[]byte)
	b := relayframe.AppendData((*bp)[:0], ra.id, p)
	err := rc.write(b, s.server, tun)
	*bp = b
	relayBufPool.Put(bp)
	if err != nil {
		return 0, err
	}
	return len(p), nil
}

func (rc *relayConn) Close() error                       { return rc.pc.Close() }
func (rc *relayConn) LocalAddr() net.Addr                { return rc.pc.LocalAddr() }
func (rc *relayConn) SetWriteDeadline(t time.Time) error { return rc.pc.SetWriteDeadline(t) }

func (rc *relayConn) SetDeadline(t time.Time) error {
	rc.SetReadDeadline(t)
	return rc.pc.SetWriteDeadline(t)
}

// SetReadDeadline sets the read deadline; while a tunnel interrupt is
// pending it is applied when ReadFrom takes the interrupt.
func (rc *relayConn) SetReadDeadline(t time.Time) error {
	rc.dlMu.Lock()
	defer rc.dlMu.Unlock()
	rc.readDL = t
	if rc.interrupted.Load() {
		return nil
	}
	return rc.pc.SetReadDeadline(t)
}

// SetReadBuffer and SetWriteBuffer let quic-go size the relay socket's
// buffers as it does the main socket's.
func (rc *relayConn) SetReadBuffer(n int) error {
	if b, ok := rc.pc.(interface{ SetReadBuffer(int) error }); ok {
		return b.SetReadBuffer(n)
	}
	return nil
}

func (rc *relayConn) SetWriteBuffer(n int) error {
	if b, ok := rc.pc.(interface{ SetWriteBuffer(int) error }); ok {
		return b.SetWriteBuffer(n)
	}
	return nil
}

// RelaySessions lists the relay sessions the node takes part in (for
// diagnostics and tests).
func (m *Manager) RelaySessions() []relayframe.Session {
	if m.relay == nil {
		return nil
	}
	m.relay.mu.Lock()
	defer m.relay.mu.Unlock()
	out := make([]relayframe.Session, 0, len(m.relay.sessions))
	for id := range m.relay.sessions {
		out = append(out, id)
	}
	return out
}
