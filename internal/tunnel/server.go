package tunnel

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coder/websocket"
)

// Server limits (ServerConfig's defaults).
const (
	DefaultMaxTunnels      = 10000
	DefaultMaxPerIP        = 64
	DefaultQUICRate        = 2000 // QUIC packets/s one tunnel may feed the control listener
	defaultSendQueue       = 1024 // datagrams waiting to be sent on one tunnel
	defaultQUICQueue       = 4096 // QUIC packets waiting for the control listener
	pingEvery              = 15 * time.Second
	pingTimeout            = 10 * time.Second
	writeTimeout           = 10 * time.Second
	serverHandshakeTimeout = 10 * time.Second
)

// ServerConfig configures a Server. Zero limits take their defaults.
type ServerConfig struct {
	// Relay receives every relay frame a tunnel carries, with the tunnel's
	// address as its source; it must not keep frame after it returns.
	Relay func(frame []byte, from netip.AddrPort)
	// MaxTunnels bounds the open tunnels, MaxPerIP those of one source IP
	// (IPv6: per /64).
	MaxTunnels, MaxPerIP int
	// QUICRate bounds the QUIC packets per second one tunnel feeds the
	// control listener (burst: a quarter second's worth).
	QUICRate int
	Logger   *slog.Logger
}

// Server is the rendezvous's end of tunnels: an http.Handler for Path and
// a net.PacketConn (QUIC) for the control service's second listener. Its
// methods are safe for concurrent use.
type Server struct {
	cfg  ServerConfig
	log  *slog.Logger
	quic *serverPacketConn

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu      sync.Mutex
	closed  bool
	nextID  uint64
	tunnels map[netip.AddrPort]*serverTunnel
	perIP   map[netip.Prefix]int

	stats serverCounters
}

type serverCounters struct {
	accepted, refused, closed, badMessages atomic.Uint64
	quicIn, quicDropped, relayIn           atomic.Uint64
	sent, sendDropped                      atomic.Uint64
	bytesIn, bytesOut                      atomic.Uint64
}

// ServerStats is a snapshot of a Server's counters.
type ServerStats struct {
	Tunnels     int    // open tunnels
	Accepted    uint64 // tunnels opened
	Refused     uint64 // upgrades refused (limits, bad requests)
	Closed      uint64
	BadMessages uint64 // messages that did not parse (the tunnel was closed)
	QUICIn      uint64 // QUIC packets handed to the control listener
	QUICDropped uint64 // QUIC packets dropped: over the tunnel's rate, or the listener's queue full
	RelayIn     uint64 // relay frames handed to the relay
	Sent        uint64 // datagrams sent into tunnels
	SendDropped uint64 // datagrams dropped: the tunnel's send queue full, or no such tunnel
	BytesIn     uint64 // WebSocket payload bytes received
	BytesOut    uint64 // WebSocket payload bytes sent
}

type serverTunnel struct {
	addr   netip.AddrPort
	remote netip.AddrPort // the TCP peer
	ws     *websocket.Conn
	out    chan []byte // encoded frames
	done   chan struct{}

	mu          sync.Mutex
	tokens      float64
	lastRefill  time.Time
	closeOnce   sync.Once
	closeReason string
}

// NewServer returns a Server.
func NewServer(cfg ServerConfig) *Server {
	if cfg.MaxTunnels <= 0 {
		cfg.MaxTunnels = DefaultMaxTunnels
	}
	if cfg.MaxPerIP <= 0 {
		cfg.MaxPerIP = DefaultMaxPerIP
	}
	if cfg.QUICRate <= 0 {
		cfg.QUICRate = DefaultQUICRate
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	ctx, cancel := context.WithCancel(context.Background())
	s := &Server{cfg: cfg, log: log, ctx: ctx, cancel: cancel,
		tunnels: make(map[netip.AddrPort]*serverTunnel), perIP: make(map[netip.Prefix]int)}
	s.quic = &serverPacketConn{s: s, in: make(chan inPacket, defaultQUICQueue), closed: make(chan struct{})}
	s.quic.readDL.init()
	return s
}

// QUIC returns the net.PacketConn that carries the tunnels' QUIC packets,
// for a quic.Transport. Its addresses are tunnel addresses (*net.UDPAddr
// in 100::/64).
func (s *Server) QUIC() net.PacketConn { return s.quic }

// Source returns the TCP address a tunnel connects from (for per-source
// limits), or false if addr is no open tunnel.
func (s *Server) Source(addr netip.AddrPort) (netip.AddrPort, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	t := s.tunnels[addr]
	if t == nil {
		return netip.AddrPort{}, false
	}
	return t.remote, true
}

// WriteRelay sends a relay frame into the tunnel at to and reports whether
// it was queued.
func (s *Server) WriteRelay(to netip.AddrPort, frame []byte) bool {
	return s.send(to, KindRelay, frame)
}

func (s *Server) send(to netip.AddrPort, kind byte, payload []byte) bool {
	if len(payload) > MaxPayload {
		s.stats.sendDropped.Add(1)
		return false
	}
	s.mu.Lock()
	t := s.tunnels[to]
	s.mu.Unlock()
	if t == nil {
		s.stats.sendDropped.Add(1)
		return false
	}
	f := AppendFrame(getBuf(FrameLen(len(payload))), kind, payload)
	select {
	case t.out <- f:
		s.stats.sent.Add(1)
		return true
	default:
		putBuf(f)
		s.stats.sendDropped.Add(1)
		return false
	}
}

func prefixOf(ap netip.AddrPort) netip.Prefix {
	a := ap.Addr().Unmap()
	bits := 32
	if a.Is6() {
		bits = 64
	}
	p, _ := a.Prefix(bits)
	return p
}

// ServeHTTP accepts a tunnel on Path (anything else is 404) and serves it
// until it ends.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path != Path {
		http.NotFound(w, r)
		return
	}
	remote, err := netip.ParseAddrPort(r.RemoteAddr)
	if err != nil {
		s.stats.refused.Add(1)
		http.Error(w, "bad remote address", http.StatusBadRequest)
		return
	}
	remote = netip.AddrPortFrom(remote.Addr().Unmap(), remote.Port())
	pfx := prefixOf(remote)
	s.mu.Lock()
	if s.closed || len(s.tunnels) >= s.cfg.MaxTunnels || s.perIP[pfx] >= s.cfg.MaxPerIP {
		s.mu.Unlock()
		s.stats.refused.Add(1)
		http.Error(w, "busy", http.StatusServiceUnavailable)
		return
	}
	s.nextID++
	t := &serverTunnel{addr: Addr(s.nextID), remote: remote, out: make(chan []byte, defaultSendQueue),
		done: make(chan struct{}), tokens: float64(s.cfg.QUICRate) / 4, lastRefill: time.Now()}
	s.perIP[pfx]++
	s.wg.Add(1)
	s.mu.Unlock()
	defer s.wg.Done()
	registered := false
	defer func() {
		s.mu.Lock()
		if registered {
			delete(s.tunnels, t.addr)
		}
		if s.perIP[pfx]--; s.perIP[pfx] <= 0 {
			delete(s.perIP, pfx)
		}
		s.mu.Unlock()
	}()

	ws, err := websocket.Accept(w, r, &websocket.AcceptOptions{Subprotocols: []string{Subprotocol}})
	if err != nil {
		s.stats.refused.Add(1)
		return // Accept answered the client
	}
	if ws.Subprotocol() != Subprotocol {
		s.stats.refused.Add(1)
		ws.Close(websocket.StatusPolicyViolation, "subprotocol "+Subprotocol+" required")
		return
	}
	ws.SetReadLimit(MaxMessage)
	t.ws = ws
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		ws.Close(websocket.StatusGoingAway, "server closing")
		return
	}
	s.tunnels[t.addr] = t
	registered = true
	s.mu.Unlock()
	s.stats.accepted.Add(1)
	s.log.Debug("tunnel open", "addr", t.addr.String(), "remote", remote.String())

	ctx, cancel := context.WithCancel(s.ctx)
	defer cancel()
	var loops sync.WaitGroup
	loops.Add(2)
	go func() { defer loops.Done(); s.writeLoop(ctx, t) }()
	go func() { defer loops.Done(); keepalive(ctx, ws, func() { t.close(ws, "ping failed") }) }()
	reason := s.readLoop(ctx, t)
	t.close(ws, reason)
	cancel()
	loops.Wait()
	s.stats.closed.Add(1)
	s.log.Debug("tunnel closed", "addr", t.addr.String(), "remote", remote.String(), "err", reason)
}

func (t *serverTunnel) close(ws *websocket.Conn, reason string) {
	t.closeOnce.Do(func() {
		t.closeReason = reason
		close(t.done)
		ws.CloseNow()
	})
}

// allowQUIC spends one token of the tunnel's QUIC packet bucket.
func (t *serverTunnel) allowQUIC(rate float64, now time.Time) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	if dt := now.Sub(t.lastRefill).Seconds(); dt > 0 {
		t.tokens = min(rate/4, t.tokens+dt*rate)
		t.lastRefill = now
	}
	if t.tokens < 1 {
		return false
	}
	t.tokens--
	return true
}

// readLoop reads the tunnel's messages and dispatches their frames; it
// returns why the tunnel ended.
func (s *Server) readLoop(ctx context.Context, t *serverTunnel) string {
	buf := make([]byte, MaxMessage)
	rate := float64(s.cfg.QUICRate)
	ua := net.UDPAddrFromAddrPort(t.addr)
	for {
		msg, err := readMessage(ctx, t.ws, buf)
		if err != nil {
			return err.Error()
		}
		s.stats.bytesIn.Add(uint64(len(msg)))
		for len(msg) > 0 {
			kind, p, rest, err := NextFrame(msg)
			if err != nil {
				s.stats.badMessages.Add(1)
				return "malformed message"
			}
			msg = rest
			switch kind {
			case KindQUIC:
				if !t.allowQUIC(rate, time.Now()) {
					s.stats.quicDropped.Add(1)
					continue
				}
				if s.quic.deliver(p, ua) {
					s.stats.quicIn.Add(1)
				} else {
					s.stats.quicDropped.Add(1)
				}
			case KindRelay:
				if s.cfg.Relay != nil {
					s.stats.relayIn.Add(1)
					s.cfg.Relay(p, t.addr)
				}
			}
		}
	}
}

func (s *Server) writeLoop(ctx context.Context, t *serverTunnel) {
	batch := make([]byte, 0, MaxMessage)
	for {
		var f []byte
		select {
		case f = <-t.out:
		case <-t.done:
			return
		case <-ctx.Done():
			return
		}
		batch = packBatch(batch[:0], f, t.out)
		if err := writeMessage(ctx, t.ws, batch); err != nil {
			t.close(t.ws, "write failed: "+err.Error())
			return
		}
		s.stats.bytesOut.Add(uint64(len(batch)))
	}
}

// Stats returns a snapshot of the server's counters.
func (s *Server) Stats() ServerStats {
	s.mu.Lock()
	n := len(s.tunnels)
	s.mu.Unlock()
	c := &s.stats
	return ServerStats{Tunnels: n, Accepted: c.accepted.Load(), Refused: c.refused.Load(), Closed: c.closed.Load(),
		BadMessages: c.badMessages.Load(), QUICIn: c.quicIn.Load(), QUICDropped: c.quicDropped.Load(),
		RelayIn: c.relayIn.Load(), Sent: c.sent.Load(), SendDropped: c.sendDropped.Load(),
		BytesIn: c.bytesIn.Load(), BytesOut: c.bytesOut.Load()}
}

// Close ends every tunnel and waits for their goroutines; the QUIC
// PacketConn's reads fail with net.ErrClosed afterwards.
func (s *Server) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	ts := make([]*serverTunnel, 0, len(s.tunnels))
	for _, t := range s.tunnels {
		ts = append(ts, t)
	}
	s.mu.Unlock()
	s.cancel()
	for _, t := range ts {
		t.close(t.ws, "server closing")
	}
	s.wg.Wait()
	s.quic.Close()
	return nil
}

// serverPacketConn is the QUIC side of the tunnels.
type serverPacketConn struct {
	s      *Server
	in     chan inPacket
	once   sync.Once
	closed chan struct{}
	readDL deadline
}

type inPacket struct {
	b    []byte
	from *net.UDPAddr
}

func (c *serverPacketConn) deliver(p []byte, from *net.UDPAddr) bool {
	b := append(getBuf(len(p)), p...)
	select {
	case c.in <- inPacket{b, from}:
		return true
	default:
		putBuf(b)
		return false
	}
}

func (c *serverPacketConn) ReadFrom(p []byte) (int, net.Addr, error) {
	select {
	case pk := <-c.in:
		n := copy(p, pk.b)
		putBuf(pk.b)
		return n, pk.from, nil
	case <-c.closed:
		return 0, nil, net.ErrClosed
	case <-c.readDL.wait():
		return 0, nil, os.ErrDeadlineExceeded
	}
}

func (c *serverPacketConn) WriteTo(p []byte, addr net.Addr) (int, error) {
	ua, ok := addr.(*net.UDPAddr)
	if !ok {
		return 0, errors.New("tunnel: not a tunnel address")
	}
	c.s.send(ua.AddrPort(), KindQUIC, p) // a full queue drops, as UDP would
	return len(p), nil
}

func (c *serverPacketConn) Close() error {
	c.once.Do(func() { close(c.closed) })
	return nil
}

func (c *serverPacketConn) LocalAddr() net.Addr {
	return net.UDPAddrFromAddrPort(Addr(0))
}
func (c *serverPacketConn) SetDeadline(t time.Time) error     { c.readDL.set(t); return nil }
func (c *serverPacketConn) SetReadDeadline(t time.Time) error { c.readDL.set(t); return nil }
func (c *serverPacketConn) SetWriteDeadline(time.Time) error  { return nil }

// SetReadBuffer and SetWriteBuffer do nothing: the packets wait in the
// conn's bounded queue and the tunnel's, there is no socket buffer to
// size. They spare the log quic-go writes for a conn without them.
func (c *serverPacketConn) SetReadBuffer(int) error  { return nil }
func (c *serverPacketConn) SetWriteBuffer(int) error { return nil }
