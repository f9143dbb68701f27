package rendezvous

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/quic-go/quic-go"

	"github.com/agentnet/agentnet/addressing"
	"github.com/agentnet/agentnet/internal/certs"
	"github.com/agentnet/agentnet/internal/tunnel"
	"github.com/agentnet/agentnet/rendezvous/proto"
	"github.com/agentnet/agentnet/rendezvous/relay"
	"github.com/agentnet/agentnet/trustdb"
)

// Timeouts of the server.
const (
	// requestTimeout bounds reading a request frame and writing its answer.
	requestTimeout = 10 * time.Second
	// registerTimeout is how long a connection may stay unregistered.
	registerTimeout = 10 * time.Second
	// pruneInterval is how often expired replay-cache entries are deleted;
	// every maintainEvery-th time, also expired pending requests, mailbox
	// messages and idle registrations.
	pruneInterval = time.Minute
	maintainEvery = 60
	// mailBatch is how many mailbox messages a session reads per store read.
	mailBatch = 32
	// pushQueue is how many introductions may wait for a session stream;
	// more are dropped (counted).
	pushQueue = 16
)

// QUIC application error codes the server closes connections with.
const (
	closeShutdown     quic.ApplicationErrorCode = 0x100 // server shutting down
	closeReplaced     quic.ApplicationErrorCode = 0x101 // a newer connection registered the same key
	closeSessionEnded quic.ApplicationErrorCode = 0x102 // the session stream ended or broke
	closeNoRegister   quic.ApplicationErrorCode = 0x103 // no Register in time
	closeInternal     quic.ApplicationErrorCode = 0x104
)

// Stream error codes for CancelRead/CancelWrite.
const streamCodeDone quic.StreamErrorCode = 0

// Server is the rendezvous server: registry, trust mailbox, lookup and punch
// broker over QUIC, with a STUN responder beside QUIC on the same UDP port
// and on a second one, and a relay on a third. Create it with NewServer, run
// it with Start, stop it with Close or Shutdown. Its methods are safe for
// concurrent use.
type Server struct {
	cfg    ServerConfig
	limits Limits
	log    *slog.Logger

	keyLimit  *rateLimiter[addressing.PublicKey] // requests per key
	addrLimit *fairLimiter                       // requests per source address, shared fairly by its keys
	connLimit *rateLimiter[netip.Addr]           // new connections per source address
	stun      stunResponder

	// Set by Start, read-only afterwards.
	id       *trustdb.Identity
	store    Store
	ownStore bool
	snapshot string // where Close writes the store's last good copy; "" for none
	conn     *net.UDPConn
	ownConn  bool
	tr       *quic.Transport
	ln       *quic.Listener
	stunConn *net.UDPConn // second STUN address; nil if none
	ownSTUN  bool
	relayUDP *net.UDPConn // nil if no relay
	ownRelay bool
	relay    *relay.Server
	tun      *tunnel.Server // nil without TCP
	tcp      *tcpState      // nil without TCP
	cert     tls.Certificate
	// Service addresses announced in Registered (see proto.Registered).
	stunSvc, relaySvc netip.AddrPort

	ctx    context.Context // cancelled by Close
	cancel context.CancelFunc
	wg     sync.WaitGroup // every goroutine the server starts
	reqWG  sync.WaitGroup // in-flight request streams (Shutdown waits for them)

	mu       sync.Mutex
	started  bool
	draining bool // Shutdown: no new request streams
	closed   bool
	conns    map[*serverConn]struct{}
	connTab  connTable // conns by source prefix and key (limits.go)
	sessions map[addressing.PublicKey]*session

	nconns atomic.Int64
	stats  counters
	cl     *etcdCluster // nil unless the store is an EtcdStore (etcdhooks.go)

	closeOnce sync.Once
	closeErr  error
}

// counters are the server's event counters (per-request events are counted,
// not logged).
type counters struct {
	connsRefused       atomic.Uint64
	connsEvicted       atomic.Uint64
	rateLimited        atomic.Uint64
	badFrames          atomic.Uint64
	requestsDropped    atomic.Uint64
	requestsEvicted    atomic.Uint64
	mailboxDropped     atomic.Uint64
	delivered          atomic.Uint64
	acked              atomic.Uint64
	trustMessages      atomic.Uint64
	trustRefused       atomic.Uint64
	sessionsReplaced   atomic.Uint64
	storeErrors        atomic.Uint64
	prunedStoreEntries atomic.Uint64
	agentsExpired      atomic.Uint64
	introductions      atomic.Uint64
	introPushDropped   atomic.Uint64
	relayRefusedPerKey atomic.Uint64
	networkDocs        atomic.Uint64
	networkRefused     atomic.Uint64
	networkPushes      atomic.Uint64
	registrations      atomic.Uint64
	lookups            atomic.Uint64
}

// Stats is a snapshot of the server's counters.
type Stats struct {
	Conns            int    // open client connections
	Sessions         int    // registered (online) agents
	ConnsRefused     uint64 // connections refused (rate, MaxConns, MaxConnsPerKey)
	ConnsEvicted     uint64 // connections closed to make room for a source prefix holding fewer (MaxConns)
	RateLimited      uint64 // requests answered rate_limited
	BadFrames        uint64 // malformed, oversized or unexpected frames
	RequestsDropped  uint64 // trust requests dropped: no slot for them (pending limits) or the mailbox full
	RequestsEvicted  uint64 // pending trust requests that gave their slot to a fairer claim (pending.go)
	MailboxDropped   uint64 // other mailbox messages dropped because a mailbox was full
	Delivered        uint64 // mailbox messages written to sessions (including redeliveries)
	Acked            uint64 // mailbox messages acked and deleted
	TrustMessages    uint64 // trust messages accepted
	TrustRefused     uint64 // trust messages refused (malformed, forged, replayed, unexpected)
	SessionsReplaced uint64 // sessions closed because the key registered again elsewhere
	StoreErrors      uint64
	AgentsExpired    uint64 // registrations deleted after AgentTTL offline
	Introductions    uint64 // Connect requests answered with an introduction
	IntroPushDropped uint64 // introductions not pushed: the target's push queue was full
	RelayRefusedKey  uint64 // introductions without a relay grant: a side over MaxRelayPerKey
	NetworkDocs      uint64 // networks created, and Joins, Leaves and Removes accepted
	NetworkRefused   uint64 // network documents refused (malformed, forged, stale, over a limit)
	NetworkPushes    uint64 // NetworkState frames pushed on session streams
	Registrations    uint64 // Register requests answered Registered
	Lookups          uint64 // Lookup requests answered (found or not)
}

// RelayStats is a snapshot of the relay's and the STUN responder's counters.
type RelayStats struct {
	Sessions              int    // open relay sessions
	ForwardedPackets      uint64 // Data frames forwarded
	ForwardedBytes        uint64 // their bytes (whole frames)
	DroppedUnknownSession uint64 // relay frames for a session that does not exist
	DroppedWrongSource    uint64 // Data not from a bound address of its session
	DroppedNoPeer         uint64 // Data while the other side is not bound
	DroppedOverLimit      uint64 // Data over the session's byte or packet rate
	DroppedMalformed      uint64 // not a Bind or Data frame, or malformed
	BindsAccepted         uint64
	BindsRefused          uint64 // bad MAC, or a counter not above the last accepted
	SessionsOpened        uint64
	SessionsRefused       uint64 // over MaxRelaySessions: the introduction had no grant
	SessionsExpired       uint64 // idle
	SessionsClosed        uint64 // trust revoked, or the oldest of a pair replaced

	STUNAnswered    uint64 // binding requests answered, on both STUN addresses
	STUNDropped     uint64 // packets not answered (not STUN, not a binding request, the two below)
	STUNDroppedSize uint64 // binding requests smaller than their answer (no amplification)
	STUNRateLimited uint64 // binding requests over their source's rate
}

// serverConn is one client connection.
type serverConn struct {
	qc         *quic.Conn
	key        addressing.PublicKey
	remote     netip.AddrPort // the reflexive address
	prefix     netip.Prefix   // sourcePrefix of remote
	registered atomic.Bool
	sessionOn  atomic.Bool // a Register stream was accepted (only one per connection)
}

// reflexive returns the address c's agent is reached at now. quic-go moves
// a connection to a client's new address once it has validated it (the
// client's NAT rebound, or its host changed networks), so this follows the
// agent where c.remote stays where it first connected from.
func (c *serverConn) reflexive() netip.AddrPort {
	if ua, ok := c.qc.RemoteAddr().(*net.UDPAddr); ok {
		ap := ua.AddrPort()
		return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	}
	return c.remote
}

// session is an online agent: its registered connection and locators.
type session struct {
	c        *serverConn
	locators []netip.AddrPort // reflexive first, then local
	wake     chan struct{}    // capacity 1: new mail
	wakeSoon chan struct{}    // capacity 1: new mail to read after a random delay (trust requests)
	push     chan []byte      // encoded frames (Introduce) for the session stream; capacity pushQueue
	net      *netPusher       // network frames for the session stream (network.go)
	nat      atomic.Uint32    // last reported proto.NATKind (NATReport)
}

// NewServer checks cfg and returns a server that is not yet serving. It does
// no I/O.
func NewServer(cfg ServerConfig) (*Server, error) {
	if err := cfg.Limits.validate(); err != nil {
		return nil, err
	}
	switch {
	case cfg.Conn != nil && cfg.Addr != "":
		return nil, errors.New("rendezvous: ServerConfig: set Addr or Conn, not both")
	case cfg.STUNConn != nil && cfg.STUNAddr != "":
		return nil, errors.New("rendezvous: ServerConfig: set STUNAddr or STUNConn, not both")
	case cfg.RelayConn != nil && cfg.RelayAddr != "":
		return nil, errors.New("rendezvous: ServerConfig: set RelayAddr or RelayConn, not both")
	}
	limits := cfg.Limits.withDefaults()
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	ctx, cancel := context.WithCancel(context.Background())
	return &Server{
		cfg:       cfg,
		limits:    limits,
		log:       log,
		keyLimit:  newRateLimiter[addressing.PublicKey](limits.KeyRate, limits.KeyBurst, limits.RateTableSize),
		addrLimit: newFairLimiter(limits.AddrRate, limits.AddrBurst, limits.RateTableSize),
		connLimit: newRateLimiter[netip.Addr](limits.AddrRate, limits.AddrBurst, limits.RateTableSize),
		// STUN has its own table: NAT checks do not spend request tokens.
		stun:     stunResponder{limit: newRateLimiter[netip.Addr](limits.AddrRate, limits.AddrBurst, limits.RateTableSize)},
		id:       cfg.Identity,
		ctx:      ctx,
		cancel:   cancel,
		conns:    make(map[*serverConn]struct{}),
		connTab:  newConnTable(),
		sessions: make(map[addressing.PublicKey]*session),
	}, nil
}

// Start loads the identity and the store, binds the socket and starts
// serving in the background. It may be called once.
func (s *Server) Start() (err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return fmt.Errorf("rendezvous: start: %w", net.ErrClosed)
	}
	if s.started {
		return errors.New("rendezvous: start: already started")
	}
	s.started = true
	defer func() {
		if err != nil {
			s.snapshot = "" // nothing served: the file is as it was
			s.releaseLocked()
		}
	}()

	if s.cfg.DataDir != "" {
		if err := os.MkdirAll(s.cfg.DataDir, 0o700); err != nil {
			return fmt.Errorf("rendezvous: data dir: %w", err)
		}
	}
	if err := s.openState(); err != nil {
		return err
	}
	if err := s.attachCluster(); err != nil {
		return err
	}

	if s.cfg.Conn != nil {
		s.conn = s.cfg.Conn
	} else {
		addr := s.cfg.Addr
		if addr == "" {
			addr = ":0"
		}
		ua, err := net.ResolveUDPAddr("udp", addr)
		if err != nil {
			return fmt.Errorf("rendezvous: listen address %q: %w", addr, err)
		}
		if s.conn, err = net.ListenUDP("udp", ua); err != nil {
			return fmt.Errorf("rendezvous: listen: %w", err)
		}
		s.ownConn = true
	}
	if s.stunConn, s.ownSTUN, err = s.sideSocket("STUN", s.cfg.STUNConn, s.cfg.STUNAddr, 1); err != nil {
		return err
	}
	if s.relayUDP, s.ownRelay, err = s.sideSocket("relay", s.cfg.RelayConn, s.cfg.RelayAddr, 2); err != nil {
		return err
	}
	mainAddr := s.conn.LocalAddr().(*net.UDPAddr)
	if s.stunConn != nil {
		s.stunSvc = serviceAddr(mainAddr, s.stunConn.LocalAddr().(*net.UDPAddr))
	}
	if s.relayUDP != nil {
		s.relaySvc = serviceAddr(mainAddr, s.relayUDP.LocalAddr().(*net.UDPAddr))
		rc := relay.Config{
			Conn:        s.relayUDP,
			Rate:        s.limits.RelayRate,
			Burst:       s.limits.RelayBurst,
			PacketRate:  s.limits.RelayPacketRate,
			MaxSessions: s.limits.MaxRelaySessions,
			Idle:        s.limits.RelayIdle,
			Logger:      s.log,
		}
		if s.cfg.TCP.enabled() {
			s.tun = s.newTunnelServer()
			rc.Tunnels = s.tun
		}
		s.relay, err = relay.New(rc)
		if err != nil {
			return fmt.Errorf("rendezvous: %w", err)
		}
	}

	cert, err := certs.Certificate(s.id.PrivateKey())
	if err != nil {
		return fmt.Errorf("rendezvous: server certificate: %w", err)
	}
	s.cert = cert
	// A reset key derived from the identity lets a restarted server reset the
	// connections of its previous run at once, so clients reconnect without
	// waiting for an idle timeout.
	resetKey := quic.StatelessResetKey(sha256.Sum256(append([]byte("agentnet rendezvous stateless reset v1\x00"), s.id.PrivateKey().Seed()...)))
	s.tr = &quic.Transport{
		Conn:              s.conn,
		StatelessResetKey: &resetKey,
		ConnContext:       s.admit,
	}
	// quic-go drops non-QUIC packets until the first ReadNonQUICPacket: this
	// call (with a context that is already done) turns their queue on before
	// anything is served; stunMainLoop reads it from then on.
	done, stop := context.WithCancel(s.ctx)
	stop()
	if n, addr, err := s.tr.ReadNonQUICPacket(done, make([]byte, 1)); err == nil {
		s.log.Debug("rendezvous: non-QUIC packet before start dropped", "addr", addr.String(), "bytes", n)
	}
	tlsConf := certs.ServerConfig(cert, ALPN, func(addressing.PublicKey) error { return nil })
	qconf := &quic.Config{
		MaxIncomingStreams:    int64(s.limits.MaxStreamsPerConn),
		MaxIncomingUniStreams: -1,
		MaxIdleTimeout:        30 * time.Second,
	}
	s.ln, err = s.tr.Listen(tlsConf, qconf)
	if err != nil {
		return fmt.Errorf("rendezvous: listen: %w", err)
	}
	if s.cfg.TCP.enabled() {
		if s.tun == nil { // no relay: the tunnels carry the control protocol only
			s.tun = s.newTunnelServer()
		}
		if err := s.startTCP(&resetKey, tlsConf, qconf); err != nil {
			return err
		}
	}

	if s.relay != nil {
		if err := s.relay.Start(); err != nil {
			return fmt.Errorf("rendezvous: %w", err)
		}
	}
	s.wg.Add(3)
	go s.acceptLoopOn(s.ln)
	go s.pruneLoop()
	go s.stunMainLoop(s.tr)
	if s.stunConn != nil {
		s.wg.Add(1)
		go s.stunAltLoop(s.stunConn)
	}
	s.log.Info("rendezvous serving", "addr", s.conn.LocalAddr().String(), "stun2", addrString(s.stunConn),
		"relay", addrString(s.relayUDP), "key", s.id.PublicKey().String())
	return nil
}

func addrString(c *net.UDPConn) string {
	if c == nil {
		return "none"
	}
	return c.LocalAddr().String()
}

// sideSocket returns the socket of a role beside the main one (second STUN
// address, relay): conn if given, none for addr "-", a socket on addr if
// given, else on the main socket's IP and port + delta, or any free port on
// that IP if that one is taken. own reports whether the server opened it.
func (s *Server) sideSocket(role string, conn *net.UDPConn, addr string, delta int) (c *net.UDPConn, own bool, err error) {
	switch {
	case conn != nil:
		return conn, false, nil
	case addr == "-":
		return nil, false, nil
	case addr != "":
		ua, err := net.ResolveUDPAddr("udp", addr)
		if err != nil {
			return nil, false, fmt.Errorf("rendezvous: %s address %q: %w", role, addr, err)
		}
		if c, err = net.ListenUDP("udp", ua); err != nil {
			return nil, false, fmt.Errorf("rendezvous: %s listen: %w", role, err)
		}
		return c, true, nil
	}
	main := s.conn.LocalAddr().(*net.UDPAddr)
	want := &net.UDPAddr{IP: main.IP, Port: main.Port + delta, Zone: main.Zone}
	if want.Port <= 0xffff {
		if c, err = net.ListenUDP("udp", want); err == nil {
			return c, true, nil
		}
	}
	want.Port = 0
	if c, err = net.ListenUDP("udp", want); err != nil {
		return nil, false, fmt.Errorf("rendezvous: %s listen: %w", role, err)
	}
	s.log.Warn("rendezvous: default port taken; using another", "op", role,
		"addr", c.LocalAddr().String())
	return c, true, nil
}

// serviceAddr returns the address of a side socket as announced to clients
// (proto.Registered): only the port when it shares the main socket's IP (or
// listens on every address), so clients use the host they dialled.
func serviceAddr(main, side *net.UDPAddr) netip.AddrPort {
	ap := side.AddrPort()
	ip := ap.Addr().Unmap()
	if ip.IsUnspecified() || ip == main.AddrPort().Addr().Unmap() {
		return netip.AddrPortFrom(netip.Addr{}, ap.Port())
	}
	return netip.AddrPortFrom(ip, ap.Port())
}

// releaseLocked closes what Start opened (on a failed Start or on Close).
func (s *Server) releaseLocked() error {
	var errs []error
	if s.ln != nil {
		errs = append(errs, s.ln.Close())
	}
	if s.tr != nil {
		errs = append(errs, s.tr.Close())
	}
	if s.relay != nil {
		errs = append(errs, s.relay.Close())
	}
	for _, c := range []struct {
		own  bool
		conn *net.UDPConn
	}{{s.ownConn, s.conn}, {s.ownSTUN, s.stunConn}, {s.ownRelay, s.relayUDP}} {
		if c.own && c.conn != nil {
			if err := c.conn.Close(); err != nil && !errors.Is(err, net.ErrClosed) {
				errs = append(errs, err)
			}
		}
	}
	if s.cl != nil {
		s.cl.detach()
		s.cl = nil
	}
	if s.ownStore && s.store != nil {
		if bs, ok := s.store.(*BoltStore); ok && s.snapshot != "" {
			// The last good copy, for when the file is found damaged.
			errs = append(errs, bs.Snapshot(s.snapshot))
		}
		errs = append(errs, s.store.Close())
	}
	s.snapshot = ""
	s.ln, s.tr = nil, nil // s.relay stays, closed, for RelayStats
	s.ownConn, s.ownStore, s.ownSTUN, s.ownRelay = false, false, false, false
	return errors.Join(errs...)
}

// Addr returns the UDP address the server serves on (nil before Start).
func (s *Server) Addr() *net.UDPAddr {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.conn == nil {
		return nil
	}
	return s.conn.LocalAddr().(*net.UDPAddr)
}

// STUNAddr returns the second STUN address (nil before Start or if none).
func (s *Server) STUNAddr() *net.UDPAddr {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stunConn == nil {
		return nil
	}
	return s.stunConn.LocalAddr().(*net.UDPAddr)
}

// RelayAddr returns the relay's UDP address (nil before Start or if none).
func (s *Server) RelayAddr() *net.UDPAddr {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.relayUDP == nil {
		return nil
	}
	return s.relayUDP.LocalAddr().(*net.UDPAddr)
}

// PublicKey returns the server's key, the one clients pin. It is zero before
// Start unless ServerConfig.Identity was set.
func (s *Server) PublicKey() addressing.PublicKey {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.id == nil {
		return addressing.PublicKey{}
	}
	return s.id.PublicKey()
}

// Transport returns the QUIC transport the server listens on (nil before
// Start), for roles that share the socket: a STUN responder reads its
// packets with ReadNonQUICPacket and answers with WriteTo. The server owns
// the transport; callers must not close it.
func (s *Server) Transport() *quic.Transport {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.tr
}

// Stats returns a snapshot of the server's counters.
func (s *Server) Stats() Stats {
	s.mu.Lock()
	conns, sessions := len(s.conns), len(s.sessions)
	s.mu.Unlock()
	c := &s.stats
	return Stats{
		Conns: conns, Sessions: sessions,
		ConnsRefused: c.connsRefused.Load(), ConnsEvicted: c.connsEvicted.Load(), RateLimited: c.rateLimited.Load(), BadFrames: c.badFrames.Load(),
		RequestsDropped: c.requestsDropped.Load(), RequestsEvicted: c.requestsEvicted.Load(), MailboxDropped: c.mailboxDropped.Load(),
		Delivered: c.delivered.Load(), Acked: c.acked.Load(), TrustMessages: c.trustMessages.Load(), TrustRefused: c.trustRefused.Load(),
		SessionsReplaced: c.sessionsReplaced.Load(), StoreErrors: c.storeErrors.Load(), AgentsExpired: c.agentsExpired.Load(),
		Introductions: c.introductions.Load(), IntroPushDropped: c.introPushDropped.Load(), RelayRefusedKey: c.relayRefusedPerKey.Load(),
		NetworkDocs: c.networkDocs.Load(), NetworkRefused: c.networkRefused.Load(), NetworkPushes: c.networkPushes.Load(),
		Registrations: c.registrations.Load(), Lookups: c.lookups.Load(),
	}
}

// RelayStats returns a snapshot of the relay's and the STUN responder's
// counters (relay fields zero if the server has no relay). After Close it
// returns the final counts.
func (s *Server) RelayStats() RelayStats {
	s.mu.Lock()
	r := s.relay
	s.mu.Unlock()
	var rs relay.Stats
	if r != nil {
		rs = r.Stats()
	}
	return RelayStats{
		Sessions: rs.Sessions, ForwardedPackets: rs.ForwardedPackets, ForwardedBytes: rs.ForwardedBytes,
		DroppedUnknownSession: rs.DroppedUnknownSession, DroppedWrongSource: rs.DroppedWrongSource,
		DroppedNoPeer: rs.DroppedNoPeer, DroppedOverLimit: rs.DroppedOverLimit, DroppedMalformed: rs.DroppedMalformed,
		BindsAccepted: rs.BindsAccepted, BindsRefused: rs.BindsRefused,
		SessionsOpened: rs.SessionsOpened, SessionsRefused: rs.SessionsRefused,
		SessionsExpired: rs.SessionsExpired, SessionsClosed: rs.SessionsClosed,
		STUNAnswered: s.stun.answered.Load(), STUNDropped: s.stun.dropped.Load(),
		STUNDroppedSize: s.stun.droppedSize.Load(), STUNRateLimited: s.stun.droppedRated.Load(),
	}
}

// Shutdown stops accepting connections, waits for in-flight requests to be
// answered (or ctx to end), then closes like Close.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	ln := s.ln
	s.draining = true
	s.mu.Unlock()
	if ln != nil {
		ln.Close()
	}
	done := make(chan struct{})
	go func() { s.reqWG.Wait(); close(done) }()
	var err error
	select {
	case <-done:
	case <-ctx.Done():
		err = ctx.Err()
	}
	if cerr := s.Close(); cerr != nil && err == nil {
		err = cerr
	}
	<-done
	return err
}

// Close closes every client connection, stops serving and waits for every
// goroutine of the server to exit. It is idempotent; afterwards Start fails
// with an error wrapping net.ErrClosed.
func (s *Server) Close() error {
	s.closeOnce.Do(func() {
		s.mu.Lock()
		s.closed = true
		conns := make([]*serverConn, 0, len(s.conns))
		for c := range s.conns {
			conns = append(conns, c)
		}
		s.mu.Unlock()
		s.cancel()
		for _, c := range conns {
			c.qc.CloseWithError(closeShutdown, "server shutting down")
		}
		s.mu.Lock()
		ln, tr, rl, stunConn := s.ln, s.tr, s.relay, s.stunConn
		s.mu.Unlock()
		// Stop the listener, transport, relay and STUN socket first so every
		// loop ends, then wait, then release the store the loops used.
		if ln != nil {
			ln.Close()
		}
		if tr != nil {
			tr.Close()
		}
		if rl != nil {
			rl.Close()
		}
		if stunConn != nil {
			stunConn.SetReadDeadline(time.Unix(1, 0))
		}
		s.closeTCP()
		s.wg.Wait()
		if stunConn != nil && !s.ownSTUN {
			stunConn.SetReadDeadline(time.Time{}) // the caller's socket, as it was
		}
		s.mu.Lock()
		s.closeErr = s.releaseLocked()
		s.mu.Unlock()
	})
	return s.closeErr
}

// admit runs for every new connection attempt before its handshake: it
// refuses over the source address's rate, and when the server is full, a
// source prefix that could not take a place (limits.go).
func (s *Server) admit(ctx context.Context, info *quic.ClientInfo) (context.Context, error) {
	if ua, ok := info.RemoteAddr.(*net.UDPAddr); ok && s.nconns.Load() >= int64(s.limits.MaxConns) && !s.admitFull(s.sourceOf(ua.AddrPort()).Addr()) {
		s.stats.connsRefused.Add(1)
		return nil, errServerFull
	}
	if ua, ok := info.RemoteAddr.(*net.UDPAddr); ok {
		if !s.connLimit.allow(addrKey(s.sourceOf(ua.AddrPort()).Addr()), time.Now()) {
			s.stats.connsRefused.Add(1)
			return nil, errors.New("rendezvous: rate limited")
		}
	}
	return ctx, nil
}

func (s *Server) acceptLoopOn(ln *quic.Listener) {
	defer s.wg.Done()
	for {
		qc, err := ln.Accept(s.ctx)
		if err != nil {
			if s.ctx.Err() == nil && !errors.Is(err, quic.ErrServerClosed) {
				s.log.Warn("rendezvous accept failed", "err", err)
			}
			return
		}
		key, err := certs.PeerKey(qc.ConnectionState().TLS)
		if err != nil {
			qc.CloseWithError(closeInternal, "no client key")
			continue
		}
		ua, _ := qc.RemoteAddr().(*net.UDPAddr)
		var remote netip.AddrPort
		if ua != nil {
			ap := ua.AddrPort()
			remote = netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
		}
		c := &serverConn{qc: qc, key: key, remote: remote, prefix: sourcePrefix(s.sourceOf(remote).Addr())}
		s.mu.Lock()
		if s.closed {
			s.mu.Unlock()
			qc.CloseWithError(closeShutdown, "server shutting down")
			return
		}
		victim, code, reason := s.admitConnLocked(c)
		if reason != "" {
			s.mu.Unlock()
			qc.CloseWithError(code, reason)
			continue
		}
		if victim != nil {
			// Out of the tables now, so the count stays within MaxConns; its
			// connLoop finds it gone.
			delete(s.conns, victim)
			s.connTab.remove(victim)
			s.nconns.Add(-1)
		}
		s.conns[c] = struct{}{}
		s.connTab.add(c)
		s.nconns.Add(1)
		s.wg.Add(1)
		s.mu.Unlock()
		if victim != nil {
			victim.qc.CloseWithError(closeEvicted, "server full: connection given to a source with fewer")
		}
		go s.connLoop(c)
	}
}

// connLoop accepts c's streams until the connection ends.
func (s *Server) connLoop(c *serverConn) {
	defer s.wg.Done()
	defer func() {
		s.mu.Lock()
		if _, ok := s.conns[c]; ok { // not if evicted (accept removed it)
			delete(s.conns, c)
			s.connTab.remove(c)
			s.nconns.Add(-1)
		}
		if sess := s.sessions[c.key]; sess != nil && sess.c == c {
			delete(s.sessions, c.key)
		}
		s.mu.Unlock()
		if s.cl != nil {
			s.cl.sessionDown(c.key, c)
		}
	}()
	ctx := c.qc.Context()
	unregistered := time.AfterFunc(registerTimeout, func() {
		if !c.registered.Load() {
			c.qc.CloseWithError(closeNoRegister, "no register in time")
		}
	})
	defer unregistered.Stop()
	for {
		str, err := c.qc.AcceptStream(ctx)
		if err != nil {
			return
		}
		s.mu.Lock()
		if s.closed || s.draining {
			s.mu.Unlock()
			str.CancelRead(streamCodeDone)
			str.CancelWrite(streamCodeDone)
			continue
		}
		s.wg.Add(1)
		s.reqWG.Add(1)
		s.mu.Unlock()
		go s.handleStream(c, str)
	}
}

// handleStream serves one stream: a request, or the session stream.
func (s *Server) handleStream(c *serverConn, str *quic.Stream) {
	defer s.wg.Done()
	inFlight := true
	doneRequest := func() {
		if inFlight {
			inFlight = false
			s.reqWG.Done()
		}
	}
	defer doneRequest()

	str.SetReadDeadline(time.Now().Add(requestTimeout))
	f, err := proto.ReadFrame(str, s.limits.MaxFrameSize)
	if err != nil {
		switch {
		case errors.Is(err, proto.ErrTooLarge):
			s.stats.badFrames.Add(1)
			s.answer(str, &proto.Error{Code: proto.CodeTooLarge, Text: "frame too large"})
		case errors.Is(err, proto.ErrMalformed):
			s.stats.badFrames.Add(1)
			s.answer(str, &proto.Error{Code: proto.CodeBadRequest, Text: "malformed frame"})
		default: // timeout, reset, connection gone
			str.CancelRead(streamCodeDone)
			str.CancelWrite(streamCodeDone)
		}
		return
	}
	now := time.Now()
	// The key's own rate first: a key over it spends nothing of its
	// address's, which its co-located keys share fairly.
	if !s.keyLimit.allow(c.key, now) {
		s.stats.rateLimited.Add(1)
		s.answer(str, &proto.Error{Code: proto.CodeRateLimited, Text: "too many requests from this key"})
		return
	}
	if !s.addrLimit.allow(addrKey(s.sourceOf(c.remote).Addr()), c.key, now) {
		s.stats.rateLimited.Add(1)
		s.answer(str, &proto.Error{Code: proto.CodeRateLimited, Text: "too many requests from this key's share of its address"})
		return
	}
	msg, err := proto.ParseMessage(f)
	if err != nil {
		s.stats.badFrames.Add(1)
		s.answer(str, &proto.Error{Code: proto.CodeBadRequest, Text: "malformed " + f.Type.String()})
		return
	}
	if reg, ok := msg.(*proto.Register); ok {
		if !c.sessionOn.CompareAndSwap(false, true) {
			s.stats.badFrames.Add(1)
			s.answer(str, &proto.Error{Code: proto.CodeBadRequest, Text: "already registered"})
			return
		}
		doneRequest() // the session stream lives as long as the connection
		s.serveSession(c, str, reg)
		return
	}
	if !c.registered.Load() {
		s.answer(str, &proto.Error{Code: proto.CodeNotRegistered, Text: "register first"})
		return
	}
	var resp proto.Message
	switch m := msg.(type) {
	case *proto.Lookup:
		s.stats.lookups.Add(1)
		resp = s.lookup(c.key, m.Target)
	case *proto.SetHostname:
		resp = s.setHostname(c.key, m.Hostname)
	case *proto.TrustSend:
		var after func()
		resp, after = s.trustSend(c.key, c.prefix, m.Msg)
		if after != nil {
			s.answer(str, resp)
			after()
			return
		}
	case *proto.Connect:
		resp = s.connect(c, m)
	case *proto.NATReport:
		resp = s.natReport(c, m)
	case *proto.NetworkCreate:
		resp = s.createNetwork(c.key, m.Name)
	case *proto.NetworkSend:
		resp = s.networkSend(c.key, m.Doc)
	case *proto.NetworkMembers:
		s.answerAll(str, s.networkMembers(c.key, m.ID))
		return
	default:
		s.stats.badFrames.Add(1)
		resp = &proto.Error{Code: proto.CodeBadRequest, Text: "unexpected " + f.Type.String()}
	}
	s.answer(str, resp)
}

// answer writes resp as the only frame of a request stream and finishes the
// stream in both directions.
func (s *Server) answer(str *quic.Stream, resp proto.Message) {
	s.answerAll(str, []proto.Message{resp})
}

// answerAll writes the frames of resps as the answer of a request stream
// and finishes the stream in both directions.
func (s *Server) answerAll(str *quic.Stream, resps []proto.Message) {
	b := make([]byte, 0, 64)
	for _, resp := range resps {
		var err error
		if b, err = proto.AppendMessage(b, resp); err != nil {
			s.log.Error("rendezvous: encode answer", "type", resp.FrameType().String(), "err", err)
			b, _ = proto.AppendMessage(b[:0], &proto.Error{Code: proto.CodeInternal})
			break
		}
	}
	str.SetWriteDeadline(time.Now().Add(requestTimeout))
	if _, err := str.Write(b); err != nil {
		str.CancelWrite(streamCodeDone)
	} else {
		str.Close()
	}
	str.CancelRead(streamCodeDone)
}

// serveSession registers c's agent and runs its session: mailbox deliveries
// out (deliveryLoop), acks in (here), until the stream or connection ends.
func (s *Server) serveSession(c *serverConn, str *quic.Stream, reg *proto.Register) {
	resp, sess := s.register(c, reg)
	if sess == nil {
		s.answer(str, resp)
		c.sessionOn.Store(false) // the client may try again on this connection
		return
	}
	// The session is live before the client learns it is registered, so
	// its first request never finds it unregistered.
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return
	}
	old := s.sessions[c.key]
	s.sessions[c.key] = sess
	s.wg.Add(1)
	s.mu.Unlock()
	c.registered.Store(true)
	s.queueNetworkSync(sess)
	if old != nil && old.c != c {
		s.stats.sessionsReplaced.Add(1)
		old.c.qc.CloseWithError(closeReplaced, "replaced by a newer connection")
	}
	b, err := proto.AppendMessage(nil, resp)
	if err != nil {
		s.log.Error("rendezvous: encode registration", "err", err)
		c.qc.CloseWithError(closeInternal, "cannot encode registration")
		return
	}
	str.SetWriteDeadline(time.Now().Add(requestTimeout))
	if _, err := str.Write(b); err != nil {
		c.qc.CloseWithError(closeSessionEnded, "session write failed")
	}
	str.SetWriteDeadline(time.Time{})
	go s.deliveryLoop(sess, str)

	// Acks in.
	str.SetReadDeadline(time.Time{})
	for {
		f, err := proto.ReadFrame(str, 64)
		if err != nil {
			if !errors.Is(err, io.EOF) && c.qc.Context().Err() == nil {
				s.stats.badFrames.Add(1)
			}
			break
		}
		if f.Type == proto.TypePing {
			continue // a heartbeat: QUIC's ack is the answer
		}
		if f.Type != proto.TypeAck {
			s.stats.badFrames.Add(1)
			break
		}
		ack, err := proto.ParseAck(f.Body)
		if err != nil {
			s.stats.badFrames.Add(1)
			break
		}
		s.ack(c.key, ack.ID)
	}
	c.qc.CloseWithError(closeSessionEnded, "session stream ended")
}

// register records c's agent and returns the answer, with the new session
// if registration succeeded.
func (s *Server) register(c *serverConn, reg *proto.Register) (proto.Message, *session) {
	locators := make([]netip.AddrPort, 0, 1+len(reg.LocalAddrs))
	reflexive := c.remote
	if tunnel.IsTunnelAddr(reflexive) {
		reflexive = netip.AddrPort{} // over TCP: no UDP mapping to offer peers
	}
	if reflexive.IsValid() {
		locators = append(locators, reflexive)
	}
	for _, ap := range reg.LocalAddrs {
		ap = netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
		if ap.IsValid() && ap != c.remote {
			locators = append(locators, ap)
		}
	}
	now := time.Now()
	var rec AgentRecord
	update := s.store.Update
	if b, ok := s.store.(interface{ Batch(func(Tx) error) error }); ok {
		update = b.Batch // registrations commit together under load
	}
	err := update(func(tx Tx) error {
		old, had, err := tx.Agent(c.key)
		if err != nil {
			return err
		}
		if had {
			rec = old
		} else {
			n, err := tx.AgentCount()
			if err != nil {
				return err
			}
			if n >= s.limits.MaxAgents {
				return fmt.Errorf("%w: %d agents registered", ErrLimit, n)
			}
			src := c.prefix
			if n, err := tx.AgentsFrom(src); err != nil {
				return err
			} else if n >= s.limits.MaxAgentsPerPrefix {
				return fmt.Errorf("%w: %d agents registered from %s", ErrLimit, n, src)
			}
			rec = AgentRecord{Key: c.key, Created: now, Source: src}
		}
		if reg.Hostname != "" {
			rec.Hostname = reg.Hostname
		}
		rec.Locators = locators
		rec.LastSeen = now
		if s.cl != nil { // the session record, in the same etcd transaction
			if err := s.cl.stageSession(tx, c, c.key, locators); err != nil {
				return err
			}
		}
		if err := tx.PutAgent(rec); err != nil {
			return err
		}
		// Requests that waited for this NodeID or hostname arrive now (the
		// session reads its mailbox from the start).
		_, err = s.claimHeld(tx, c.key, heldKeysOf(c.key.NodeID(), rec.Hostname), now)
		return err
	})
	if err != nil {
		return s.errorAnswer("register", err), nil
	}
	s.stats.registrations.Add(1)
	return &proto.Registered{
			Addr:      addressing.AddrFrom(0, c.key.NodeID()),
			Reflexive: c.remote, // a tunnel's address over TCP (clients know it is none)
			Time:      now,
			Hostname:  rec.Hostname,
			STUN2:     s.stunSvc,
			Relay:     s.relaySvc,
		}, &session{
			c: c, locators: locators,
			wake:     make(chan struct{}, 1),
			wakeSoon: make(chan struct{}, 1),
			push:     make(chan []byte, pushQueue),
			net:      newNetPusher(),
		}
}

// errorAnswer maps a store or logic error to an Error frame.
func (s *Server) errorAnswer(op string, err error) *proto.Error {
	switch {
	case errors.Is(err, ErrHostnameTaken):
		return &proto.Error{Code: proto.CodeHostnameTaken}
	case errors.Is(err, ErrNodeIDTaken):
		return &proto.Error{Code: proto.CodeNodeIDTaken}
	case errors.Is(err, ErrLimit):
		// Which limit, for the operator ("server limit reached: 2 agents
		// registered"); a limit of the asker's own or of a peer it knows.
		return &proto.Error{Code: proto.CodeLimit, Text: strings.TrimPrefix(err.Error(), "rendezvous: ")}
	case errors.Is(err, ErrReplay):
		return &proto.Error{Code: proto.CodeReplay}
	case errors.Is(err, ErrNoRequest):
		return &proto.Error{Code: proto.CodeNoRequest}
	case errors.Is(err, ErrBadMessage):
		return &proto.Error{Code: proto.CodeBadMessage, Text: err.Error()}
	case errors.Is(err, ErrNetworkTaken):
		return &proto.Error{Code: proto.CodeNetworkTaken}
	case storeUnavailable(err):
		s.stats.storeErrors.Add(1)
		s.log.Warn("rendezvous: store unavailable", "op", op, "err", err)
		return &proto.Error{Code: proto.CodeInternal, Text: "store unavailable"}
	}
	s.stats.storeErrors.Add(1)
	s.log.Error("rendezvous: store", "op", op, "err", err)
	return &proto.Error{Code: proto.CodeInternal}
}

// deliveryLoop is the only writer of sess's session stream. It writes the
// mailbox: everything queued now, then each message as it arrives (messages
// stay in the store until acked; a new session starts again from the
// oldest), and the frames pushed on sess.push (introductions).
func (s *Server) deliveryLoop(sess *session, str *quic.Stream) {
	defer s.wg.Done()
	ctx := sess.c.qc.Context()
	var last uint64
	var buf []byte
	soon := time.NewTimer(time.Hour)
	soon.Stop()
	defer soon.Stop()
	var soonC <-chan time.Time // soon's channel while it runs
	for {
		var items []MailItem
		err := s.store.View(func(tx Tx) (err error) {
			items, err = tx.Mail(sess.c.key, last, mailBatch)
			return err
		})
		if err != nil {
			s.stats.storeErrors.Add(1)
			s.log.Error("rendezvous: read mailbox", "err", err)
			sess.c.qc.CloseWithError(closeInternal, "mailbox unavailable")
			return
		}
		for _, it := range items {
			buf, err = proto.AppendMessage(buf[:0], &proto.Deliver{ID: it.ID, Msg: it.Msg})
			if err != nil { // cannot happen for a stored message; skip it
				last = it.ID
				continue
			}
			str.SetWriteDeadline(time.Now().Add(requestTimeout))
			if _, err := str.Write(buf); err != nil {
				sess.c.qc.CloseWithError(closeSessionEnded, "session write failed")
				return
			}
			s.stats.delivered.Add(1)
			last = it.ID
		}
		if len(items) == mailBatch {
			continue
		}
	wait: // for new mail; pushed frames are written meanwhile
		for {
			select {
			case <-sess.wake:
				break wait
			case <-sess.wakeSoon:
				if soonC == nil {
					soon.Reset(requestDeliveryDelay())
					soonC = soon.C
				}
			case <-soonC:
				soonC = nil
				break wait
			case <-sess.net.wake:
				var ok bool
				if buf, ok = s.writeNetworkPushes(sess, str, buf); !ok {
					sess.c.qc.CloseWithError(closeSessionEnded, "session write failed")
					return
				}
			case b := <-sess.push:
				str.SetWriteDeadline(time.Now().Add(requestTimeout))
				if _, err := str.Write(b); err != nil {
					sess.c.qc.CloseWithError(closeSessionEnded, "session write failed")
					return
				}
			case <-ctx.Done():
				return
			case <-s.ctx.Done():
				return
			}
		}
	}
}

// ack deletes a delivered message from k's mailbox.
func (s *Server) ack(k addressing.PublicKey, id uint64) {
	// A read first, so that a flood of bogus acks costs no disk writes.
	var exists bool
	_ = s.store.View(func(tx Tx) error {
		items, err := tx.Mail(k, id-1, 1)
		exists = err == nil && len(items) == 1 && items[0].ID == id
		return err
	})
	if !exists {
		return
	}
	var deleted bool
	err := s.store.Update(func(tx Tx) (err error) {
		deleted, err = tx.Ack(k, id)
		return err
	})
	if err != nil {
		s.stats.storeErrors.Add(1)
		s.log.Error("rendezvous: ack", "err", err)
		return
	}
	if deleted {
		s.stats.acked.Add(1)
	}
}

// wake tells k's session, if online, that it has new mail.
func (s *Server) wake(k addressing.PublicKey) {
	s.mu.Lock()
	sess := s.sessions[k]
	s.mu.Unlock()
	if sess != nil {
		select {
		case sess.wake <- struct{}{}:
		default:
		}
	}
}

// wakeSoon is wake for a trust request: k's session reads its mail after
// requestDeliveryDelay, so the delivery's work does not overlap the
// requester's answer (which would let the answer's timing tell an online
// target from a name nobody holds).
func (s *Server) wakeSoon(k addressing.PublicKey) {
	s.mu.Lock()
	sess := s.sessions[k]
	s.mu.Unlock()
	if sess != nil {
		select {
		case sess.wakeSoon <- struct{}{}:
		default:
		}
	}
}

// requestDeliveryDelay is a random 5-25 ms.
func requestDeliveryDelay() time.Duration {
	return 5*time.Millisecond + rand.N(20*time.Millisecond)
}

// targetNetwork returns the network an address target names (0 for a
// hostname).
func targetNetwork(t addressing.Target) addressing.NetworkID {
	if a, ok := t.Addr(); ok {
		return a.Network()
	}
	return 0
}

// resolve returns the key a target names. The network part of an address is
// ignored: an agent has the same NodeID in every network, and who may see
// whom is canSeeIn's decision.
func resolve(tx Tx, t addressing.Target) (addressing.PublicKey, bool, error) {
	if h, ok := t.Hostname(); ok {
		return tx.AgentByHostname(h)
	}
	if a, ok := t.Addr(); ok {
		return tx.AgentByNode(a.Node())
	}
	return addressing.PublicKey{}, false, nil
}

// canSee reports whether agent a may learn agent b's record (existence,
// hostname, locators): b itself, a peer b trusts, or a fellow member of a
// network (canSeeIn narrows this to one network).
func (s *Server) canSee(tx Tx, a, b addressing.PublicKey) (bool, error) {
	if a == b {
		return true, nil
	}
	if _, ok, err := tx.Pair(a, b); err != nil || ok {
		return ok, err
	}
	return shareNetwork(tx, a, b)
}

// lookup answers a Lookup from key from. For an agent that does not exist
// and for one from may not see the answer is the same NotFound.
func (s *Server) lookup(from addressing.PublicKey, t addressing.Target) proto.Message {
	var rec AgentRecord
	var found bool
	err := s.store.View(func(tx Tx) error {
		k, ok, err := resolve(tx, t)
		if err != nil || !ok {
			return err
		}
		if ok, err = s.canSeeIn(tx, targetNetwork(t), from, k); err != nil || !ok {
			return err
		}
		rec, found, err = tx.Agent(k)
		return err
	})
	if err != nil {
		return s.errorAnswer("lookup", err)
	}
	if !found {
		return &proto.NotFound{}
	}
	s.mu.Lock()
	sess := s.sessions[rec.Key]
	s.mu.Unlock()
	locators := rec.Locators
	online := sess != nil
	if sess != nil {
		locators = sess.locators
	} else if rs, ok := s.remoteSession(rec.Key); ok { // online on another server
		online, locators = true, rs.Locators
	}
	if len(locators) > proto.MaxLocators {
		locators = locators[:proto.MaxLocators]
	}
	return &proto.LookupResult{
		Key:      rec.Key,
		Addr:     addressing.AddrFrom(targetNetwork(t), rec.Key.NodeID()),
		Hostname: rec.Hostname,
		Online:   online,
		Locators: locators,
	}
}

// setHostname binds (or with "" releases) k's hostname.
func (s *Server) setHostname(k addressing.PublicKey, name string) proto.Message {
	var moved bool
	err := s.store.Update(func(tx Tx) error {
		rec, ok, err := tx.Agent(k)
		if err != nil {
			return err
		}
		if !ok {
			return errors.New("registered agent has no record")
		}
		rec.Hostname = name
		if err := tx.PutAgent(rec); err != nil {
			return err
		}
		if name == "" {
			return nil
		}
		moved, err = s.claimHeld(tx, k, heldKeysOf(k.NodeID(), name)[1:], time.Now())
		return err
	})
	if err != nil {
		return s.errorAnswer("set hostname", err)
	}
	if moved {
		s.wake(k)
	}
	return &proto.OK{}
}

func (s *Server) pruneLoop() {
	defer s.wg.Done()
	t := time.NewTicker(pruneInterval)
	defer t.Stop()
	for i := 0; ; i++ {
		s.prune(time.Now(), i%maintainEvery == 0)
		select {
		case <-t.C:
		case <-s.ctx.Done():
			return
		}
	}
}

// prune deletes replay-cache entries older than TrustReplayWindow, and with
// all, pending requests and mail older than any trust message may be.
func (s *Server) prune(now time.Time, all bool) {
	nonces := now.Add(-TrustReplayWindow - trustdb.MaxClockSkew)
	var records time.Time
	if all {
		records = now.Add(-trustdb.MaxMessageAge - trustdb.MaxClockSkew)
	}
	var n int
	err := s.store.Update(func(tx Tx) (err error) {
		n, err = tx.Prune(nonces, records)
		return err
	})
	if err != nil {
		s.stats.storeErrors.Add(1)
		s.log.Error("rendezvous: prune", "err", err)
		return
	}
	s.stats.prunedStoreEntries.Add(uint64(n))
	if !all {
		return
	}
	n, err = s.expireIdle(now)
	s.stats.agentsExpired.Add(uint64(n))
	if err != nil {
		s.stats.storeErrors.Add(1)
		s.log.Error("rendezvous: expire idle registrations", "err", err)
	}
}
