package paths

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/agentnet/agentnet/addressing"
	"github.com/agentnet/agentnet/internal/certs"
	"github.com/agentnet/agentnet/internal/smallmap"
	"github.com/agentnet/agentnet/rendezvous"
	"github.com/quic-go/quic-go"
)

// Welcome is what the accepting side writes on a unidirectional stream
// once it has admitted the dialer: 'W' and the protocol version.
var Welcome = []byte{'W', 1}

// Host is what the manager needs from the node that owns it. Its methods
// are called from the manager's goroutines and must be safe for concurrent
// use.
type Host interface {
	// ClientTLS returns the TLS config to dial peer with (pinned, knocking).
	ClientTLS(peer addressing.PublicKey) *tls.Config
	// ServerTLS returns the listeners' TLS config (the trust gate).
	ServerTLS() *tls.Config
	// Admissible reports whether peer may hold a link: trusted, or a
	// fellow network member.
	Admissible(peer addressing.PublicKey) bool
	// ServeLink serves the link's streams until its connection ends. It
	// runs in the manager's goroutine group; when it returns, the manager
	// forgets the link.
	ServeLink(l *Link)
	// SendControl sends a control datagram (a heartbeat) on l.
	SendControl(l *Link, payload []byte) error
}

// Rendezvous is the part of the rendezvous client the manager uses
// (*rendezvous.Client implements it).
type Rendezvous interface {
	Lookup(ctx context.Context, t addressing.Target) (rendezvous.PeerInfo, error)
	Connect(ctx context.Context, target addressing.Addr, cands []netip.AddrPort, relay bool) (rendezvous.Introduce, error)
	STUNAddrs() (main, alt netip.AddrPort)
	Self() (addressing.Addr, netip.AddrPort)
	ReportNAT(ctx context.Context, kind string) error
}

// HintStore keeps the address a peer was last reached at across restarts.
// Implementations must be safe for concurrent use; SaveHint may block on
// disk (the manager calls it off the dial path).
type HintStore interface {
	LoadHint(peer addressing.PublicKey) (netip.AddrPort, bool)
	SaveHint(peer addressing.PublicKey, at netip.AddrPort) error
}

// Config configures a Manager.
type Config struct {
	Self addressing.PublicKey // the node's key (tie-breaks, probes)
	Host Host                 // required

	// Conn is the node's main socket; the manager takes ownership. A
	// *net.UDPConn keeps quic-go's fast path (GSO, batched I/O); any other
	// net.PacketConn (an in-memory network in tests) works too.
	Conn net.PacketConn
	// RelayConn is the socket for relayed traffic, separate from Conn; if
	// nil and relaying is enabled, one is opened on Conn's host address.
	// The manager takes ownership.
	RelayConn net.PacketConn
	// Relay enables the relay transport (a rendezvous is configured).
	Relay bool
	// ListenUDP opens the extra sockets of birthday punching; default
	// net.ListenUDP.
	ListenUDP func(network, laddr string) (net.PacketConn, error)

	// TCP, if set, is the fallback for networks that let no UDP out: the
	// rendezvous's TCP listener (see DialRendezvous).
	TCP *TCPConfig

	QUIC             *quic.Config // for peer connections; required
	HandshakeTimeout time.Duration
	// StatelessResetKey is set on every transport the manager opens (main,
	// relay, birthday, TCP tunnel). Derived from the identity, it stays the same
	// across restarts, so a restarted node answers packets of its previous
	// run's connections with a stateless reset and peers drop them at once
	// (RFC 9000 §10.3). Nil: no resets are sent (stale connections die on
	// PathDead or QUIC's idle timeout).
	StatelessResetKey *quic.StatelessResetKey
	Hints             HintStore // nil: hints live in memory only
	Logger            *slog.Logger
}

// Manager owns every path to every peer: the transports (the main socket,
// the relay socket, birthday sockets), the links, dialling, hole punching,
// the relay, NAT checks, heartbeats, dead-path detection and upgrades. It
// has its own lock and goroutine group; Close stops and waits for all of
// them. Its methods are safe for concurrent use.
type Manager struct {
	cfg        Config
	host       Host
	log        *slog.Logger
	self       addressing.NodeID
	relayQconf *quic.Config

	ctx    context.Context // cancelled by Close
	cancel context.CancelFunc
	g      group

	// Set by Start, read-only afterwards.
	conn    net.PacketConn
	tr      *quic.Transport
	ln      *quic.Listener
	relay   *relayConn // nil without relaying
	relayTr *quic.Transport
	relayLn *quic.Listener

	rdv   atomic.Pointer[rdvHolder]
	reach reach     // how the rendezvous is reached (reach.go)
	redir redirects // where the main socket's writes to moved peers go (redirect.go)

	mu           sync.Mutex
	closed       bool
	peers        smallmap.Map[addressing.PublicKey, *peer] // peers with at least one live link
	dialing      smallmap.Map[addressing.PublicKey, *dialCall]
	peersChanged chan struct{} // closed and replaced on every change of peers
	hints        smallmap.Map[addressing.PublicKey, netip.AddrPort]
	punches      map[[8]byte]*punchSession // by the session ID of the peer's probes
	birthdays    map[addressing.PublicKey]birthdayRole

	stun        stunWaiters
	natMu       sync.Mutex
	nat         NATInfo
	natReported NATKind
	natReportAt time.Time

	stats counters
}

type rdvHolder struct{ r Rendezvous }

type counters struct {
	nonQUIC, dials, dialFailures, punches, punchedLinks, birthdays, birthdayLinks atomic.Uint64
	relayLinks, pathsDead, failovers, repairs, repaired, redirected               atomic.Uint64
}

// Stats are the manager's counters.
type Stats struct {
	NonQUICPackets uint64 // packets read beside QUIC (STUN, probes)
	Dials          uint64 // dials to peers (shared dials count once)
	DialFailures   uint64
	Punches        uint64 // introductions that started hole punching
	PunchedLinks   uint64 // direct links a punch made
	Birthdays      uint64 // birthday attempts
	BirthdayLinks  uint64 // direct links a birthday attempt made
	RelayLinks     uint64 // relayed links we dialled
	PathsDead      uint64 // links closed because the path went deaf
	Failovers      uint64 // direct paths marked failed by heartbeats
	Repairs        uint64 // re-punches of a silent direct link, keeping its connection
	Repaired       uint64 // silent direct links heard again after a re-punch
	Redirected     uint64 // links whose packets were sent to their peer's new address
	Unroutable     uint64 // datagrams lost because the host had no route or no source address for them (a network change under way)
}

type dialCall struct {
	done chan struct{}
	l    *Link
	err  error
}

// New checks cfg and returns a Manager. It does no I/O.
func New(cfg Config) (*Manager, error) {
	switch {
	case cfg.Host == nil:
		return nil, errors.New("paths: Config.Host is required")
	case cfg.Conn == nil:
		return nil, errors.New("paths: Config.Conn is required")
	case cfg.QUIC == nil:
		return nil, errors.New("paths: Config.QUIC is required")
	}
	if cfg.HandshakeTimeout <= 0 {
		cfg.HandshakeTimeout = 10 * time.Second
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	ctx, cancel := context.WithCancel(context.Background())
	rq := cfg.QUIC.Clone()
	// Relayed packets must fit the relay's frames.
	rq.InitialPacketSize = 1200
	rq.DisablePathMTUDiscovery = true
	return &Manager{
		cfg: cfg, host: cfg.Host, log: log, self: cfg.Self.NodeID(), relayQconf: rq,
		ctx: ctx, cancel: cancel,
		peersChanged: make(chan struct{}),
		punches:      make(map[[8]byte]*punchSession),
		birthdays:    make(map[addressing.PublicKey]birthdayRole),
	}, nil
}

// Start opens the transports and starts accepting and maintaining paths.
// On failure everything it opened is closed (Conn included).
func (m *Manager) Start() (err error) {
	m.conn = withRedirects(m.cfg.Conn, &m.redir)
	m.tr = m.transport(m.conn)
	defer func() {
		if err != nil {
			m.shutdownTransports()
		}
	}()
	// The non-QUIC reader must run from the start: quic-go buffers only a
	// few such packets and drops what arrives before the first read.
	m.g.Go(m.nonQUICLoop)
	if m.ln, err = m.tr.Listen(m.host.ServerTLS(), m.cfg.QUIC); err != nil {
		return fmt.Errorf("paths: quic listen: %w", err)
	}
	m.g.Go(func() { m.acceptLoop(m.ln, KindDirect) })
	if m.cfg.Relay {
		rc := m.cfg.RelayConn
		if rc == nil {
			la, _ := m.conn.LocalAddr().(*net.UDPAddr)
			if la == nil {
				return errors.New("paths: no relay socket given and the main socket is not UDP")
			}
			if rc, err = net.ListenUDP("udp", &net.UDPAddr{IP: la.IP}); err != nil {
				return fmt.Errorf("paths: relay socket: %w", err)
			}
		}
		m.relay = newRelayConn(rc)
		m.relayTr = m.transport(m.relay)
		if m.relayLn, err = m.relayTr.Listen(m.host.ServerTLS(), m.relayQconf); err != nil {
			return fmt.Errorf("paths: relay listen: %w", err)
		}
		m.g.Go(func() { m.acceptLoop(m.relayLn, KindRelay) })
	} else if m.cfg.RelayConn != nil {
		m.cfg.RelayConn.Close()
	}
	m.g.Go(m.maintainLoop)
	return nil
}

// transport returns a QUIC transport on c with the node's reset key.
func (m *Manager) transport(c net.PacketConn) *quic.Transport {
	return &quic.Transport{Conn: c, StatelessResetKey: m.cfg.StatelessResetKey}
}

// Transport returns the main QUIC transport (for the rendezvous client:
// dialling from the node's socket shows the server its NAT mapping).
func (m *Manager) Transport() *quic.Transport { return m.tr }

// LocalAddr returns the main socket's address.
func (m *Manager) LocalAddr() net.Addr { return m.conn.LocalAddr() }

// SetRendezvous gives the manager the rendezvous client (nil: none). Until
// it is set, only hints and incoming links work.
func (m *Manager) SetRendezvous(r Rendezvous) {
	if r == nil {
		m.rdv.Store(nil)
		return
	}
	m.rdv.Store(&rdvHolder{r})
}

func (m *Manager) rendezvous() Rendezvous {
	if h := m.rdv.Load(); h != nil {
		return h.r
	}
	return nil
}

// Close closes every link with code, the listeners, the transports and the
// sockets, and waits for every goroutine of the manager. Idempotent.
func (m *Manager) Close(code quic.ApplicationErrorCode, reason string) {
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return
	}
	m.closed = true
	var links []*Link
	for _, p := range m.peers.All() {
		links = append(links, p.all()...)
	}
	m.mu.Unlock()
	m.cancel()
	for _, l := range links {
		l.Conn.CloseWithError(code, reason)
	}
	m.shutdownTransports()
	m.closeTunnel()
	m.g.Close()
}

func (m *Manager) shutdownTransports() {
	for _, c := range []interface{ Close() error }{m.relayLn, m.relayTr, m.relay, m.ln, m.tr, m.conn} {
		if c != nil && !isNilCloser(c) {
			c.Close()
		}
	}
}

// isNilCloser reports whether c holds a typed nil pointer.
func isNilCloser(c interface{ Close() error }) bool {
	switch v := c.(type) {
	case *quic.Listener:
		return v == nil
	case *quic.Transport:
		return v == nil
	case *relayConn:
		return v == nil
	}
	return false
}

func (m *Manager) acceptLoop(ln *quic.Listener, kind Kind) {
	for {
		conn, err := ln.Accept(m.ctx)
		if err != nil {
			return
		}
		if !m.g.Go(func() { m.admit(conn, kind) }) {
			conn.CloseWithError(CodeClosing, "node closing")
		}
	}
}

// admit registers an accepted connection and sends the welcome.
func (m *Manager) admit(conn *quic.Conn, kind Kind) {
	key, err := certs.PeerKey(conn.ConnectionState().TLS)
	if err != nil || !m.host.Admissible(key) {
		conn.CloseWithError(CodeNotTrusted, "not trusted")
		return
	}
	m.settleStale(key, kind)
	l, err := m.addLink(conn, key, kind, false, PhaseIncoming, 0)
	if err != nil {
		return
	}
	s, err := conn.OpenUniStream()
	if err != nil {
		return
	}
	s.Write(Welcome)
	s.Close()
	if kind == KindDirect {
		m.setHint(key, conn.RemoteAddr())
	}
	m.log.Debug("peer connected", "peer", l.Addr, "path", kind, "remote", conn.RemoteAddr())
}

// setHint remembers at as the address key was last reached at, and
// persists it off the caller's path when it changed.
func (m *Manager) setHint(key addressing.PublicKey, at net.Addr) {
	ua, ok := at.(*net.UDPAddr)
	if !ok {
		return
	}
	ap := unmap(ua.AddrPort())
	m.mu.Lock()
	old, _ := m.hints.Get(key)
	m.hints.Set(key, ap)
	m.mu.Unlock()
	if old == ap || m.cfg.Hints == nil {
		return
	}
	m.g.Go(func() {
		if err := m.cfg.Hints.SaveHint(key, ap); err != nil {
			m.log.Debug("saving peer address failed", "peer", key.NodeID(), "err", err)
		}
	})
}

// hint returns the address key was last reached at.
func (m *Manager) hint(key addressing.PublicKey) (netip.AddrPort, bool) {
	m.mu.Lock()
	ap, ok := m.hints.Get(key)
	m.mu.Unlock()
	if ok || m.cfg.Hints == nil {
		return ap, ok
	}
	if ap, ok = m.cfg.Hints.LoadHint(key); ok {
		m.mu.Lock()
		if _, had := m.hints.Get(key); !had {
			m.hints.Set(key, ap)
		}
		m.mu.Unlock()
	}
	return ap, ok
}

func unmap(ap netip.AddrPort) netip.AddrPort {
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}

// addLink registers conn as the link to key of kind, applying the
// tie-break when a live link of that kind exists already, and starts
// serving it. It returns the link new traffic should use.
func (m *Manager) addLink(conn *quic.Conn, key addressing.PublicKey, kind Kind, outgoing bool, found Phase, setup time.Duration) (*Link, error) {
	l := &Link{Key: key, Addr: addressing.AddrFrom(0, key.NodeID()), Conn: conn, Kind: kind, Outgoing: outgoing,
		Found: found, Setup: setup, Since: time.Now()}
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		conn.CloseWithError(CodeClosing, "node closing")
		return nil, net.ErrClosed
	}
	p, _ := m.peers.Get(key)
	if p == nil {
		p = &peer{}
		m.peers.Set(key, p)
	}
	var loser *quic.Conn
	if old := p.links[kind]; old != nil && old.Alive() {
		switch {
		case old.Outgoing && outgoing:
			// Two of our own dials (say a plain one and a punched one)
			// both got through: keep the first, which may be in use.
			m.mu.Unlock()
			conn.CloseWithError(CodeDuplicate, "duplicate connection")
			return old, nil
		case old.Outgoing != outgoing && m.keepOld(old):
			m.mu.Unlock()
			conn.CloseWithError(CodeDuplicate, "duplicate connection")
			return nil, ErrDuplicate
		case !old.Outgoing && !outgoing:
			// The peer dialled twice: it keeps one (which one depends on
			// the order its handshakes finished) and closes the other. The
			// new link carries our new traffic; the old waits as a spare.
			p.spares = append(p.spares, old)
		default:
			// Opposite directions, and the new link won the tie-break.
			loser = old.Conn
		}
	}
	p.links[kind] = l
	if kind == KindDirect {
		p.directFailed = false
	}
	m.notifyLocked()
	started := m.g.Go(func() {
		m.host.ServeLink(l)
		m.remove(l)
	})
	m.mu.Unlock()
	if !started {
		conn.CloseWithError(CodeClosing, "node closing")
		return nil, net.ErrClosed
	}
	if loser != nil {
		loser.CloseWithError(CodeDuplicate, "duplicate connection")
	}
	if outgoing && kind == KindDirect {
		m.setHint(key, conn.RemoteAddr())
	}
	return l, nil
}

// keepOld reports whether old wins the tie-break against a link of the
// same kind in the other direction: the one dialled by the lower NodeID is
// kept.
func (m *Manager) keepOld(old *Link) bool {
	weAreLower := m.self.Compare(old.Key.NodeID()) < 0
	return old.Outgoing == weAreLower
}

func (m *Manager) notifyLocked() {
	close(m.peersChanged)
	m.peersChanged = make(chan struct{})
}

// remove forgets a link whose connection has ended.
func (m *Manager) remove(l *Link) {
	m.mu.Lock()
	if p, _ := m.peers.Get(l.Key); p != nil {
		live := p.spares[:0]
		for _, s := range p.spares {
			if s != l && s.Alive() {
				live = append(live, s)
			}
		}
		p.spares = live
		if p.links[l.Kind] == l {
			p.links[l.Kind] = nil
			for i, s := range p.spares {
				if s.Kind == l.Kind {
					p.links[l.Kind] = s // a spare takes over
					p.spares = append(p.spares[:i], p.spares[i+1:]...)
					break
				}
			}
			if p.links[KindDirect] == nil && p.links[KindRelay] == nil && len(p.spares) == 0 {
				m.peers.Delete(l.Key)
			}
			m.notifyLocked()
		}
	}
	m.mu.Unlock()
	if l.Kind == KindRelay && m.relay != nil {
		m.relay.forget(l.Conn.RemoteAddr())
	}
	m.redir.drop(l, netip.AddrPort{})
}

// Forget closes l (it died under its user) and forgets it at once, so the
// next Link call dials afresh.
func (m *Manager) Forget(l *Link) {
	l.Conn.CloseWithError(CodeClosing, "connection lost")
	m.remove(l)
}

// ClosePeer closes every live link to key with code.
func (m *Manager) ClosePeer(key addressing.PublicKey, code quic.ApplicationErrorCode, reason string) {
	m.mu.Lock()
	p, _ := m.peers.Get(key)
	m.peers.Delete(key)
	if p != nil {
		m.notifyLocked()
	}
	m.mu.Unlock()
	if p == nil {
		return
	}
	for _, l := range p.all() {
		l.Conn.CloseWithError(code, reason)
		m.log.Info("peer connection closed", "peer", l.Addr, "path", l.Kind, "code", uint64(code))
	}
}

// Best returns the link new traffic to key should use, or nil.
func (m *Manager) Best(key addressing.PublicKey) *Link {
	m.mu.Lock()
	defer m.mu.Unlock()
	if p, _ := m.peers.Get(key); p != nil {
		return p.best()
	}
	return nil
}

func (m *Manager) directLink(key addressing.PublicKey) *Link {
	m.mu.Lock()
	defer m.mu.Unlock()
	if p, _ := m.peers.Get(key); p != nil {
		return p.direct()
	}
	return nil
}

func (m *Manager) hasDirect(key addressing.PublicKey) bool { return m.directLink(key) != nil }

// Connected lists the peers with at least one link.
func (m *Manager) Connected() []addressing.PublicKey {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make([]addressing.PublicKey, 0, m.peers.Len())
	for k := range m.peers.All() {
		out = append(out, k)
	}
	return out
}

// LinkStatus describes one live link.
type LinkStatus struct {
	Addr          addressing.Addr
	Key           addressing.PublicKey
	Kind          Kind
	Transport     Transport // what carries it: UDP, or the TCP tunnel (relayed links)
	Standby       bool      // kept as a fallback; new streams use the other link
	Remote        net.Addr  // the UDP address in use (a relay session for relayed links)
	Outgoing      bool
	Found         Phase
	Setup         time.Duration
	Since         time.Time
	RTT           time.Duration
	BytesSent     uint64
	BytesReceived uint64
}

// Links reports every live link (not spares), sorted by peer address,
// then kind.
func (m *Manager) Links() []LinkStatus {
	m.mu.Lock()
	ls := make([]*Link, 0, m.peers.Len())
	standby := make(map[*Link]bool)
	for _, p := range m.peers.All() {
		best := p.best()
		for _, l := range p.links {
			if l != nil {
				ls = append(ls, l)
				standby[l] = l != best
			}
		}
	}
	m.mu.Unlock()
	out := make([]LinkStatus, 0, len(ls))
	for _, l := range ls {
		st := l.Conn.ConnectionStats()
		out = append(out, LinkStatus{
			Addr: l.Addr, Key: l.Key, Kind: l.Kind, Transport: m.transportOf(l), Standby: standby[l], Remote: l.Conn.RemoteAddr(),
			Outgoing: l.Outgoing, Found: l.Found, Setup: l.Setup, Since: l.Since, RTT: st.SmoothedRTT,
			BytesSent: st.BytesSent, BytesReceived: st.BytesReceived,
		})
	}
	sort.Slice(out, func(i, j int) bool {
		if c := out[i].Addr.Node().Compare(out[j].Addr.Node()); c != 0 {
			return c < 0
		}
		return out[i].Kind < out[j].Kind
	})
	return out
}

// Stats returns the manager's counters.
func (m *Manager) Stats() Stats {
	c := &m.stats
	return Stats{
		NonQUICPackets: c.nonQUIC.Load(), Dials: c.dials.Load(), DialFailures: c.dialFailures.Load(),
		Punches: c.punches.Load(), PunchedLinks: c.punchedLinks.Load(),
		Birthdays: c.birthdays.Load(), BirthdayLinks: c.birthdayLinks.Load(),
		RelayLinks: c.relayLinks.Load(), PathsDead: c.pathsDead.Load(), Failovers: c.failovers.Load(),
		Repairs: c.repairs.Load(), Repaired: c.repaired.Load(), Redirected: c.redirected.Load(),
		Unroutable: m.redir.unroutable.Load(),
	}
}
