package relay

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/agentnet/agentnet/addressing"
	"github.com/agentnet/agentnet/internal/relayframe"
	"github.com/agentnet/agentnet/internal/tunnel"
)

// Defaults of Config.
const (
	DefaultRate        = 8 << 20 // bytes/s per session
	DefaultBurst       = 1 << 20 // bytes
	DefaultMaxSessions = 10000
	DefaultIdle        = 120 * time.Second
)

// DefaultPacketRate returns the default packets/s per session for a byte
// rate: rate/512 (16384 for 8 MiB/s), at least 1024. A bulk QUIC transfer
// at the full byte rate needs about rate/1200 data packets plus half as
// many ACKs, so the byte bucket, not this one, limits it; tiny packets
// meet this limit first.
func DefaultPacketRate(rate int) int { return max(rate/512, 1024) }

// MaxPerPair is the most sessions a pair of agents holds at once; opening
// another closes the pair's oldest.
const MaxPerPair = 4

// ErrFull is returned by Open when MaxSessions sessions exist.
var ErrFull = errors.New("relay: session limit reached")

// Config configures a Server. A zero field takes its default.
type Config struct {
	// Conn is the relay's socket. Required. The caller keeps ownership:
	// Close stops using it (it interrupts the read with a deadline, which it
	// clears afterwards) but does not close it.
	Conn *net.UDPConn
	// Tunnels, if set, carries frames to agents that reach the relay
	// through a TCP tunnel (package internal/tunnel): their addresses are
	// in 100::/64, they send with Inject, and frames for them go to
	// Tunnels.WriteRelay. UDP packets from that prefix are dropped, so no
	// one can speak for a tunnel over UDP.
	Tunnels interface {
		WriteRelay(to netip.AddrPort, frame []byte) bool
	}
	// Rate and Burst are each session's token bucket of bytes (whole
	// frames, both directions together): DefaultRate, DefaultBurst.
	Rate, Burst int
	// PacketRate is each session's packets per second (both directions),
	// DefaultPacketRate(Rate); its burst is an eighth of a second's worth,
	// at least 64 packets.
	PacketRate int
	// MaxSessions bounds the number of sessions (DefaultMaxSessions).
	MaxSessions int
	// Idle is how long a session lives without an accepted Bind or
	// forwarded Data (DefaultIdle).
	Idle time.Duration
	// Logger receives diagnostics (session open and close at debug level,
	// never per packet); nil discards them.
	Logger *slog.Logger
}

func (c Config) withDefaults() Config {
	if c.Rate == 0 {
		c.Rate = DefaultRate
	}
	if c.Burst == 0 {
		c.Burst = DefaultBurst
	}
	if c.PacketRate == 0 {
		c.PacketRate = DefaultPacketRate(c.Rate)
	}
	if c.MaxSessions == 0 {
		c.MaxSessions = DefaultMaxSessions
	}
	if c.Idle == 0 {
		c.Idle = DefaultIdle
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return c
}

// Grant is a new session: its ID and the Bind secret of each side. Side 0
// belongs to the first agent given to Open, side 1 to the second. Each
// secret must reach only its own side's agent.
type Grant struct {
	Session relayframe.Session
	Secrets [2][relayframe.SecretSize]byte
}

// Stats is a snapshot of the relay's counters.
type Stats struct {
	Sessions              int    // open sessions
	ForwardedPackets      uint64 // Data frames forwarded
	ForwardedBytes        uint64 // their bytes (whole frames)
	DroppedUnknownSession uint64 // frames for a session that does not exist
	DroppedWrongSource    uint64 // Data not from a bound address of its session
	DroppedNoPeer         uint64 // Data while the other side is not bound
	DroppedOverLimit      uint64 // Data over the session's byte or packet rate
	DroppedMalformed      uint64 // not a Bind or Data frame, or malformed
	BindsAccepted         uint64
	BindsRefused          uint64 // bad MAC, or a counter not above the last accepted
	SessionsOpened        uint64
	SessionsRefused       uint64 // Open over MaxSessions
	SessionsExpired       uint64 // idle
	SessionsClosed        uint64 // ClosePair, or the oldest of a pair replaced
}

// Server is a relay on one UDP socket. Create it with New, run it with
// Start, stop it with Close. Its methods are safe for concurrent use.
type Server struct {
	cfg                     Config
	conn                    *net.UDPConn
	rate, burst             float64
	packetRate, packetBurst float64

	ctx    context.Context // cancelled by Close
	cancel context.CancelFunc
	wg     sync.WaitGroup
	closed atomic.Bool

	mu       sync.Mutex
	started  bool
	sessions map[relayframe.Session]*session
	byPair   map[pairKey][]*session // oldest first, at most MaxPerPair

	stats counters
}

type counters struct {
	forwardedPackets, forwardedBytes                    atomic.Uint64
	unknownSession, wrongSource, noPeer, overLimit, bad atomic.Uint64
	bindsAccepted, bindsRefused                         atomic.Uint64
	opened, refused, expired, closed                    atomic.Uint64
}

// pairKey names an unordered pair of agents.
type pairKey [2]addressing.PublicKey

func pairOf(a, b addressing.PublicKey) pairKey {
	if bytes.Compare(a[:], b[:]) > 0 {
		a, b = b, a
	}
	return pairKey{a, b}
}

// session is one relay session. Its fields are guarded by Server.mu.
type session struct {
	id      relayframe.Session
	pair    pairKey
	secrets [2][relayframe.SecretSize]byte
	bound   [2]netip.AddrPort
	counter [2]uint64 // last accepted Bind counter per side
	last    time.Time // last accepted Bind or forwarded Data
	bytes   bucket
	packets bucket
}

// bucket is a token bucket, refilled lazily.
type bucket struct {
	tokens float64
	last   time.Time
}

func (b *bucket) refill(rate, burst float64, now time.Time) {
	if dt := now.Sub(b.last).Seconds(); dt > 0 {
		b.tokens = min(burst, b.tokens+dt*rate)
	}
	b.last = now
}

// New checks cfg and returns a relay that is not yet serving. It does no I/O.
func New(cfg Config) (*Server, error) {
	switch {
	case cfg.Conn == nil:
		return nil, errors.New("relay: Config.Conn is required")
	case cfg.Rate < 0 || cfg.Burst < 0 || cfg.PacketRate < 0 || cfg.MaxSessions < 0 || cfg.Idle < 0:
		return nil, errors.New("relay: Config: limits must not be negative")
	}
	cfg = cfg.withDefaults()
	if cfg.Burst < relayframe.MaxFrameSize {
		return nil, fmt.Errorf("relay: Config.Burst %d is below one frame (%d bytes)", cfg.Burst, relayframe.MaxFrameSize)
	}
	ctx, cancel := context.WithCancel(context.Background())
	return &Server{
		cfg:         cfg,
		conn:        cfg.Conn,
		rate:        float64(cfg.Rate),
		burst:       float64(cfg.Burst),
		packetRate:  float64(cfg.PacketRate),
		packetBurst: max(float64(cfg.PacketRate)/8, 64),
		ctx:         ctx,
		cancel:      cancel,
		sessions:    make(map[relayframe.Session]*session),
		byPair:      make(map[pairKey][]*session),
	}, nil
}

// Start starts the reader and the idle sweeper. It may be called once.
func (s *Server) Start() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case s.closed.Load():
		return fmt.Errorf("relay: start: %w", net.ErrClosed)
	case s.started:
		return errors.New("relay: start: already started")
	}
	s.started = true
	s.wg.Add(2)
	go s.readLoop()
	go s.sweepLoop()
	return nil
}

// Close stops the relay, waits for its goroutines and forgets every
// session. It is idempotent; afterwards Open fails with an error wrapping
// net.ErrClosed. The socket stays open (the caller owns it).
func (s *Server) Close() error {
	if s.closed.Swap(true) {
		return nil
	}
	s.cancel()
	s.mu.Lock()
	started := s.started
	s.mu.Unlock()
	if started {
		// Interrupt the blocked read; the loop sees closed and returns.
		s.conn.SetReadDeadline(time.Unix(1, 0))
		s.wg.Wait()
		s.conn.SetReadDeadline(time.Time{})
	}
	s.mu.Lock()
	clear(s.sessions)
	clear(s.byPair)
	s.mu.Unlock()
	return nil
}

// Addr returns the relay socket's local address.
func (s *Server) Addr() netip.AddrPort {
	ap := s.conn.LocalAddr().(*net.UDPAddr).AddrPort()
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}

// Open creates a session for agents a (side 0) and b (side 1), with a fresh
// random ID and two fresh secrets. If the pair already holds MaxPerPair
// sessions, its oldest is closed. It fails with ErrFull over MaxSessions.
func (s *Server) Open(a, b addressing.PublicKey) (Grant, error) {
	var g Grant
	rand.Read(g.Secrets[0][:])
	rand.Read(g.Secrets[1][:])
	now := time.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed.Load() {
		return Grant{}, fmt.Errorf("relay: open: %w", net.ErrClosed)
	}
	p := pairOf(a, b)
	old := s.byPair[p]
	if len(old) >= MaxPerPair {
		s.removeLocked(old[0])
		s.stats.closed.Add(1)
		old = s.byPair[p]
	}
	if len(s.sessions) >= s.cfg.MaxSessions {
		s.stats.refused.Add(1)
		return Grant{}, ErrFull
	}
	for {
		rand.Read(g.Session[:])
		if s.sessions[g.Session] == nil {
			break
		}
	}
	ss := &session{
		id: g.Session, pair: p, secrets: g.Secrets, last: now,
		bytes:   bucket{tokens: s.burst, last: now},
		packets: bucket{tokens: s.packetBurst, last: now},
	}
	s.sessions[ss.id] = ss
	s.byPair[p] = append(old, ss)
	s.stats.opened.Add(1)
	s.cfg.Logger.Debug("relay session opened", "session", fmt.Sprintf("%x", ss.id))
	return g, nil
}

// SessionsOf returns the number of open sessions agent k is a side of (the
// server's per-key limit, rendezvous.Limits.MaxRelayPerKey). It walks the
// pairs: call it when opening a session, not per packet.
func (s *Server) SessionsOf(k addressing.PublicKey) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for p, list := range s.byPair {
		if p[0] == k || p[1] == k {
			n += len(list)
		}
	}
	return n
}

// ClosePair closes every session of the pair a, b (in either order) at once
// and returns how many there were. Frames for them are dropped from now on.
func (s *Server) ClosePair(a, b addressing.PublicKey) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	list := s.byPair[pairOf(a, b)]
	n := len(list)
	for _, ss := range list {
		delete(s.sessions, ss.id)
	}
	delete(s.byPair, pairOf(a, b))
	s.stats.closed.Add(uint64(n))
	if n > 0 {
		s.cfg.Logger.Debug("relay sessions closed", "count", n)
	}
	return n
}

// removeLocked forgets ss.
func (s *Server) removeLocked(ss *session) {
	delete(s.sessions, ss.id)
	list := s.byPair[ss.pair]
	for i, x := range list {
		if x == ss {
			list = append(list[:i], list[i+1:]...)
			break
		}
	}
	if len(list) == 0 {
		delete(s.byPair, ss.pair)
	} else {
		s.byPair[ss.pair] = list
	}
}

// Stats returns a snapshot of the counters.
func (s *Server) Stats() Stats {
	s.mu.Lock()
	n := len(s.sessions)
	s.mu.Unlock()
	c := &s.stats
	return Stats{
		Sessions:              n,
		ForwardedPackets:      c.forwardedPackets.Load(),
		ForwardedBytes:        c.forwardedBytes.Load(),
		DroppedUnknownSession: c.unknownSession.Load(),
		DroppedWrongSource:    c.wrongSource.Load(),
		DroppedNoPeer:         c.noPeer.Load(),
		DroppedOverLimit:      c.overLimit.Load(),
		DroppedMalformed:      c.bad.Load(),
		BindsAccepted:         c.bindsAccepted.Load(),
		BindsRefused:          c.bindsRefused.Load(),
		SessionsOpened:        c.opened.Load(),
		SessionsRefused:       c.refused.Load(),
		SessionsExpired:       c.expired.Load(),
		SessionsClosed:        c.closed.Load(),
	}
}

// readLoop is the relay's only reader: it handles each datagram in turn and
// writes at most one datagram per datagram read.
func (s *Server) readLoop() {
	defer s.wg.Done()
	buf := make([]byte, relayframe.MaxFrameSize+1) // one more, to see oversized frames
	out := make([]byte, 0, relayframe.BindOKLen)
	for {
		n, from, err := s.conn.ReadFromUDPAddrPort(buf)
		if err != nil {
			if s.closed.Load() || errors.Is(err, net.ErrClosed) {
				return
			}
			// A transient error (ICMP feedback, buffer pressure): go on,
			// without spinning if it persists.
			time.Sleep(time.Millisecond)
			continue
		}
		from = netip.AddrPortFrom(from.Addr().Unmap(), from.Port())
		if tunnel.IsTunnelAddr(from) {
			s.stats.wrongSource.Add(1)
			continue
		}
		pkt, to := s.handle(buf[:n], from, time.Now(), out[:0])
		if pkt != nil {
			s.send(pkt, to)
		}
	}
}

// send writes a frame to to: into its tunnel, or as a UDP datagram.
func (s *Server) send(pkt []byte, to netip.AddrPort) {
	if tunnel.IsTunnelAddr(to) {
		if s.cfg.Tunnels != nil {
			s.cfg.Tunnels.WriteRelay(to, pkt)
		}
		return
	}
	s.conn.WriteToUDPAddrPort(pkt, to)
}

// Inject handles a frame that arrived through the tunnel at from (a tunnel
// address), exactly as if it had come over UDP: the same sessions, Binds,
// budgets and counters. It is safe for concurrent use and does not keep
// frame.
func (s *Server) Inject(frame []byte, from netip.AddrPort) {
	if s.closed.Load() || !tunnel.IsTunnelAddr(from) {
		return
	}
	var out [relayframe.BindOKLen]byte
	pkt, to := s.handle(frame, from, time.Now(), out[:0])
	if pkt != nil {
		s.send(pkt, to)
	}
}

// handle applies the rules to one datagram b from from and returns the
// datagram to send (b itself for forwarded Data, a BindOK in out) and its
// destination, or nil.
func (s *Server) handle(b []byte, from netip.AddrPort, now time.Time, out []byte) ([]byte, netip.AddrPort) {
	if len(b) > relayframe.MaxFrameSize {
		s.stats.bad.Add(1)
		return nil, netip.AddrPort{}
	}
	id, ok := relayframe.SessionOf(b)
	if !ok || b[0] == relayframe.TypeBindOK {
		s.stats.bad.Add(1)
		return nil, netip.AddrPort{}
	}
	switch b[0] {
	case relayframe.TypeData:
		return s.handleData(b, id, from, now)
	case relayframe.TypeBind:
		return s.handleBind(b, from, now, out)
	}
	s.stats.bad.Add(1)
	return nil, netip.AddrPort{}
}

func (s *Server) handleData(b []byte, id relayframe.Session, from netip.AddrPort, now time.Time) ([]byte, netip.AddrPort) {
	s.mu.Lock()
	defer s.mu.Unlock()
	ss := s.sessions[id]
	if ss == nil {
		s.stats.unknownSession.Add(1)
		return nil, netip.AddrPort{}
	}
	var to netip.AddrPort
	switch from {
	case ss.bound[0]:
		to = ss.bound[1]
	case ss.bound[1]:
		to = ss.bound[0]
	default: // includes an unbound side's zero address, never a source
		s.stats.wrongSource.Add(1)
		return nil, netip.AddrPort{}
	}
	if !to.IsValid() {
		s.stats.noPeer.Add(1)
		return nil, netip.AddrPort{}
	}
	ss.bytes.refill(s.rate, s.burst, now)
	ss.packets.refill(s.packetRate, s.packetBurst, now)
	size := float64(len(b))
	if ss.bytes.tokens < size || ss.packets.tokens < 1 {
		s.stats.overLimit.Add(1)
		return nil, netip.AddrPort{}
	}
	ss.bytes.tokens -= size
	ss.packets.tokens--
	ss.last = now
	s.stats.forwardedPackets.Add(1)
	s.stats.forwardedBytes.Add(uint64(len(b)))
	return b, to
}

func (s *Server) handleBind(b []byte, from netip.AddrPort, now time.Time, out []byte) ([]byte, netip.AddrPort) {
	f, err := relayframe.ParseBind(b)
	if err != nil {
		s.stats.bad.Add(1)
		return nil, netip.AddrPort{}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	ss := s.sessions[f.Session]
	if ss == nil {
		s.stats.unknownSession.Add(1)
		return nil, netip.AddrPort{}
	}
	if relayframe.VerifyBind(b, ss.secrets[f.Side]) != nil || f.Counter <= ss.counter[f.Side] {
		s.stats.bindsRefused.Add(1)
		return nil, netip.AddrPort{}
	}
	ss.counter[f.Side] = f.Counter
	ss.bound[f.Side] = from
	if other := 1 - f.Side; ss.bound[other] == from {
		// The address moved to this side (NAT port reuse): the newer Bind
		// wins until the other side binds again.
		ss.bound[other] = netip.AddrPort{}
	}
	ss.last = now
	s.stats.bindsAccepted.Add(1)
	return relayframe.AppendBindOK(out, f.Session, f.Side, f.Counter), from
}

func (s *Server) sweepLoop() {
	defer s.wg.Done()
	t := time.NewTicker(min(max(s.cfg.Idle/4, 10*time.Millisecond), 5*time.Second))
	defer t.Stop()
	for {
		select {
		case now := <-t.C:
			s.expire(now)
		case <-s.ctx.Done():
			return
		}
	}
}

// expire closes the sessions idle for longer than Idle at now.
func (s *Server) expire(now time.Time) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, ss := range s.sessions {
		if now.Sub(ss.last) > s.cfg.Idle {
			s.removeLocked(ss)
			n++
		}
	}
	s.stats.expired.Add(uint64(n))
	return n
}
