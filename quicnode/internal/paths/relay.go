package paths

import (
	"context"
	"encoding/hex"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/agentnet/agentnet/internal/relayframe"
)

// relayRebind is how often a node re-binds its relay sessions: it keeps the
// NAT mapping towards the relay open and moves the session after a NAT
// rebinding.
const relayRebind = 10 * time.Second

// relayConn is the net.PacketConn under the node's second quic.Transport: it
// carries QUIC packets to peers through rendezvous relay sessions, adding
// and stripping the relay's Data header. Each session appears to quic-go as
// its own remote address (a relayAddr). It has its own UDP socket, so bulk
// relayed traffic never passes through the main socket's non-QUIC queue.
//
// ReadFrom must be called by one goroutine at a time (quic-go's read loop).
type relayConn struct {
	pc   net.PacketConn
	udp  *net.UDPConn // pc, when it is a UDP socket (allocation-free I/O)
	rbuf []byte

	mu       sync.Mutex
	sessions map[relayframe.Session]*relaySession

	dropped atomic.Uint64 // frames from unknown sessions or wrong sources
}

// relaySession is one relay session this node takes part in.
type relaySession struct {
	id     relayframe.Session
	server netip.AddrPort
	side   uint8
	secret [relayframe.SecretSize]byte

	mu       sync.Mutex
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

func newRelayConn(pc net.PacketConn) *relayConn {
	udp, _ := pc.(*net.UDPConn)
	return &relayConn{
		pc:       pc,
		udp:      udp,
		rbuf:     make([]byte, 2048),
		sessions: make(map[relayframe.Session]*relaySession),
	}
}

// add registers a session (idempotent) and sends its first Bind.
func (rc *relayConn) add(id relayframe.Session, server netip.AddrPort, side uint8, secret [relayframe.SecretSize]byte) *relaySession {
	server = netip.AddrPortFrom(server.Addr().Unmap(), server.Port())
	rc.mu.Lock()
	s := rc.sessions[id]
	if s == nil {
		s = &relaySession{id: id, server: server, side: side, secret: secret, bound: make(chan struct{}), lastRecv: time.Now()}
		rc.sessions[id] = s
	}
	rc.mu.Unlock()
	rc.sendBind(s)
	return s
}

// sendBind sends a Bind with a counter above every earlier one (wall-clock
// nanoseconds, so it keeps growing across restarts).
func (rc *relayConn) sendBind(s *relaySession) {
	s.mu.Lock()
	s.counter = max(s.counter+1, uint64(time.Now().UnixNano()))
	s.lastBind = time.Now()
	b := relayframe.AppendBind(make([]byte, 0, relayframe.BindLen), s.id, s.side, s.counter, s.secret)
	s.mu.Unlock()
	rc.write(b, s.server)
}

// write sends b to the relay at server.
func (rc *relayConn) write(b []byte, server netip.AddrPort) error {
	if rc.udp != nil {
		_, err := rc.udp.WriteToUDPAddrPort(b, server)
		return err
	}
	_, err := rc.pc.WriteTo(b, net.UDPAddrFromAddrPort(server))
	return err
}

// read reads the next frame into rc.rbuf.
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

// ReadFrom returns the next QUIC packet relayed from a peer. Bind
// confirmations are consumed here; frames that do not come from the relay
// of a known session are dropped and counted.
func (rc *relayConn) ReadFrom(p []byte) (int, net.Addr, error) {
	for {
		n, from, err := rc.read()
		if err != nil {
			return 0, nil, err
		}
		b := rc.rbuf[:n]
		from = netip.AddrPortFrom(from.Addr().Unmap(), from.Port())
		id, ok := relayframe.SessionOf(b)
		var s *relaySession
		if ok {
			s = rc.session(id)
		}
		if s == nil || from != s.server {
			rc.dropped.Add(1)
			continue
		}
		s.mu.Lock()
		s.lastRecv = time.Now()
		s.mu.Unlock()
		switch b[0] {
		case relayframe.TypeData:
			_, payload, err := relayframe.ParseData(b)
			if err != nil {
				rc.dropped.Add(1)
				continue
			}
			return copy(p, payload), relayAddr{id}, nil
		case relayframe.TypeBindOK:
			f, err := relayframe.ParseBind(b)
			if err != nil || f.Side != s.side {
				rc.dropped.Add(1)
				continue
			}
			select {
			case <-s.bound:
			default:
				close(s.bound)
			}
		default:
			rc.dropped.Add(1)
		}
	}
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
	bp := relayBufPool.Get().(*[]byte)
	b := relayframe.AppendData((*bp)[:0], ra.id, p)
	err := rc.write(b, s.server)
	*bp = b
	relayBufPool.Put(bp)
	if err != nil {
		return 0, err
	}
	return len(p), nil
}

func (rc *relayConn) Close() error                       { return rc.pc.Close() }
func (rc *relayConn) LocalAddr() net.Addr                { return rc.pc.LocalAddr() }
func (rc *relayConn) SetDeadline(t time.Time) error      { return rc.pc.SetDeadline(t) }
func (rc *relayConn) SetReadDeadline(t time.Time) error  { return rc.pc.SetReadDeadline(t) }
func (rc *relayConn) SetWriteDeadline(t time.Time) error { return rc.pc.SetWriteDeadline(t) }

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
