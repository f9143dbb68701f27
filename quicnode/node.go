package quicnode

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/agentnet/agentnet/addressing"
	"github.com/agentnet/agentnet/internal/certs"
	"github.com/agentnet/agentnet/internal/probe"
	"github.com/agentnet/agentnet/internal/vport"
	"github.com/agentnet/agentnet/rendezvous"
	"github.com/agentnet/agentnet/trustdb"
	"github.com/pion/stun/v3"
	"github.com/quic-go/quic-go"
)

// welcome is what the accepting side writes on a unidirectional stream once
// it has admitted the dialer: 'W' and the protocol version.
var welcome = []byte{'W', 1}

// Node is one agent's overlay endpoint. Create it with New, start it with
// Start, and Close it when done. Its methods are safe for concurrent use.
type Node struct {
	cfg   Config
	log   *slog.Logger
	store *trustdb.Store
	id    *trustdb.Identity
	addr  addressing.Addr
	cert  tls.Certificate
	knock *knocker
	qconf *quic.Config

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	// Set by Start, read-only afterwards.
	udp        *net.UDPConn
	tr         *quic.Transport
	ln         *quic.Listener
	rdv        *rendezvous.Client
	relay      *relayConn // nil without a rendezvous
	relayTr    *quic.Transport
	relayLn    *quic.Listener
	relayQconf *quic.Config

	unsubscribe func()
	outboxKick  chan struct{}
	flushing    chan struct{} // one-slot semaphore: one outbox flush at a time

	mu           sync.Mutex
	hostname     string // claimed at the rendezvous
	started      bool
	closed       bool
	peers        map[addressing.PublicKey]*peer // peers with at least one live link
	dialing      map[addressing.PublicKey]*dialCall
	peersChanged chan struct{} // closed and replaced on every change of peers
	listeners    map[uint16]*listener
	packetConns  map[uint16]*packetConn
	nextPort     uint16
	byNode       map[addressing.NodeID]addressing.PublicKey // trusted peers
	byHostname   map[string]addressing.PublicKey            // trusted peers with a known hostname
	hints        map[addressing.PublicKey]netip.AddrPort    // last address a peer connected from
	punches      map[[8]byte]*punchSession                  // by token ID
	birthdays    map[addressing.PublicKey]birthdayRole      // birthday attempts running (birthday.go)

	stats    nodeStats
	netStats netCounters // network.go

	stun        stunWaiters
	natMu       sync.Mutex
	nat         NATInfo
	natReported NATKind   // last kind reported to the rendezvous
	natReportAt time.Time // when
}

type nodeStats struct {
	datagramsDropped atomic.Uint64 // no listener, or queue full
	badStreams       atomic.Uint64 // malformed or late headers
	nonQUICPackets   atomic.Uint64
	knocksRefused    atomic.Uint64 // handshakes refused before key exchange
}

// pathKind says how a link reaches its peer.
type pathKind uint8

const (
	pathDirect pathKind = iota // over the node's own socket, possibly through punched NATs
	pathRelay                  // through the rendezvous relay
)

func (k pathKind) String() string {
	if k == pathRelay {
		return "relay"
	}
	return "direct"
}

// link is one live QUIC connection to a trusted agent.
type link struct {
	key      addressing.PublicKey
	addr     addressing.Addr
	conn     *quic.Conn
	path     pathKind
	outgoing bool
	since    time.Time
	lastPong atomic.Int64 // unix nanoseconds of the last heartbeat answer
	dgrams   atomic.Bool  // the datagram loop runs

	// Path liveness, touched only by maintainLoop.
	recvCount    uint64    // PacketsReceived at the last check
	sentAtHeard  uint64    // PacketsSent when we last heard the peer
	lastHeard    time.Time // when PacketsReceived last grew
	sendingSince time.Time // first check that saw sends unanswered since lastHeard
}

// alive reports whether the connection is still open.
func (l *link) alive() bool { return l.conn.Context().Err() == nil }

// peer holds a trusted agent's links: at most one per path. New streams
// and datagrams use the direct link when it is healthy, the relay link
// otherwise. Fields are guarded by Node.mu.
type peer struct {
	links        [2]*link // indexed by pathKind
	directFailed bool     // the direct link stopped answering heartbeats
	// spares are live links the peer dialled while another of its dials was
	// up: the peer's dialer keeps one and closes the others, so we keep
	// them all until it does (closing one ourselves could close the one it
	// kept). A spare takes over when the link on its path ends.
	spares []*link
}

// all returns the links and the spares.
func (p *peer) all() []*link {
	out := append([]*link(nil), p.spares...)
	for _, l := range p.links {
		if l != nil {
			out = append(out, l)
		}
	}
	return out
}

// best returns the link new traffic should use, or nil.
func (p *peer) best() *link {
	d, r := p.links[pathDirect], p.links[pathRelay]
	switch {
	case d != nil && d.alive() && (!p.directFailed || r == nil || !r.alive()):
		return d
	case r != nil && r.alive():
		return r
	}
	return nil
}

type dialCall struct {
	done chan struct{}
	l    *link
	err  error
}

// New checks cfg and returns a Node. It does no I/O.
func New(cfg Config) (*Node, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	id := cfg.Store.Identity()
	cert, err := certs.Certificate(id.PrivateKey())
	if err != nil {
		return nil, fmt.Errorf("quicnode: %w", err)
	}
	kn, err := newKnocker(id.PublicKey(), id.PrivateKey())
	if err != nil {
		return nil, fmt.Errorf("quicnode: %w", err)
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	ctx, cancel := context.WithCancel(context.Background())
	n := &Node{
		cfg:          cfg,
		log:          log,
		store:        cfg.Store,
		id:           id,
		addr:         id.Addr(),
		cert:         cert,
		knock:        kn,
		qconf:        cfg.quicConfig(),
		ctx:          ctx,
		cancel:       cancel,
		outboxKick:   make(chan struct{}, 1),
		flushing:     make(chan struct{}, 1),
		hostname:     cfg.Hostname,
		peers:        make(map[addressing.PublicKey]*peer),
		dialing:      make(map[addressing.PublicKey]*dialCall),
		peersChanged: make(chan struct{}),
		listeners:    make(map[uint16]*listener),
		packetConns:  make(map[uint16]*packetConn),
		nextPort:     firstEphemeral,
		hints:        make(map[addressing.PublicKey]netip.AddrPort),
		punches:      make(map[[8]byte]*punchSession),
		birthdays:    make(map[addressing.PublicKey]birthdayRole),
	}
	n.relayQconf = relayQUICConfig(n.qconf)
	return n, nil
}

// Addr returns the node's virtual address in the global network.
func (n *Node) Addr() addressing.Addr { return n.addr }

// PublicKey returns the node's identity key.
func (n *Node) PublicKey() addressing.PublicKey { return n.id.PublicKey() }

// Store returns the node's trust store.
func (n *Node) Store() *trustdb.Store { return n.store }

// LocalAddr returns the UDP address of the node's socket (nil before Start).
func (n *Node) LocalAddr() *net.UDPAddr {
	if n.udp == nil {
		return nil
	}
	return n.udp.LocalAddr().(*net.UDPAddr)
}

// Start opens the socket, starts accepting peers and connects to the
// rendezvous in the background (see WaitRendezvous). It returns once the
// node can accept connections.
func (n *Node) Start(ctx context.Context) error {
	n.mu.Lock()
	if n.closed {
		n.mu.Unlock()
		return net.ErrClosed
	}
	if n.started {
		n.mu.Unlock()
		return errors.New("quicnode: already started")
	}
	n.started = true
	n.mu.Unlock()

	udp := n.cfg.Conn
	if udp == nil {
		ua, err := net.ResolveUDPAddr("udp", n.cfg.listenAddr())
		if err != nil {
			return fmt.Errorf("quicnode: listen address: %w", err)
		}
		if udp, err = net.ListenUDP("udp", ua); err != nil {
			return fmt.Errorf("quicnode: listen: %w", err)
		}
	}
	n.udp = udp
	n.tr = &quic.Transport{Conn: udp}
	// The non-QUIC reader must run from the start: quic-go buffers only a
	// few such packets and drops what arrives before the first read.
	n.goFunc(n.nonQUICLoop)

	ln, err := n.tr.Listen(n.serverTLS(), n.qconf)
	if err != nil {
		n.tr.Close()
		udp.Close()
		return fmt.Errorf("quicnode: quic listen: %w", err)
	}
	n.ln = ln

	n.rebuildIndex()
	n.unsubscribe = n.store.Subscribe(n.onTrustEvent)

	if n.cfg.RendezvousAddr != "" {
		if err := n.startRelayTransport(); err != nil {
			n.shutdownTransport()
			return err
		}
		rdv, err := rendezvous.NewClient(rendezvous.ClientConfig{
			Identity:   n.id,
			Transport:  n.tr,
			ServerAddr: n.cfg.RendezvousAddr,
			ServerKey:  n.cfg.RendezvousKey,
			Pins:       storePins{n.store},
			Hostname:   n.cfg.Hostname,
			LocalAddrs: localCandidates(udp),
			Deliver:    n.deliver,
			Introduced: n.introduced,
			Network:    n.networkPushed,
			Logger:     n.log.With("component", "rendezvous-client"),
		})
		if err != nil {
			n.shutdownTransport()
			return fmt.Errorf("quicnode: %w", err)
		}
		n.rdv = rdv
		rdv.Start()
		n.goFunc(n.outboxLoop)
		n.goFunc(func() {
			if rdv.WaitReady(n.ctx) == nil {
				ctx, cancel := context.WithTimeout(n.ctx, 5*time.Second)
				defer cancel()
				if info, err := n.checkNAT(ctx); err == nil {
					n.log.Info("nat checked", "nat", info.Kind, "mapped", info.Mapped)
				}
			}
		})
	}
	n.goFunc(n.maintainLoop)
	n.goFunc(n.acceptLoop)
	if !n.cfg.DisableEcho {
		if err := n.startEcho(); err != nil {
			n.Close()
			return err
		}
	}
	n.log.Info("node started", "addr", n.addr, "local", udp.LocalAddr())
	return nil
}

// WaitRendezvous blocks until the node is registered at the rendezvous.
func (n *Node) WaitRendezvous(ctx context.Context) error {
	if n.rdv == nil {
		return errors.New("quicnode: no rendezvous configured")
	}
	return n.rdv.WaitReady(ctx)
}

// Close closes every peer connection, listener and packet conn, stops every
// goroutine and waits for them. It is idempotent. The Store stays open.
func (n *Node) Close() error {
	n.mu.Lock()
	if n.closed {
		n.mu.Unlock()
		return nil
	}
	n.closed = true
	var links []*link
	for _, p := range n.peers {
		links = append(links, p.all()...)
	}
	lns := make([]*listener, 0, len(n.listeners))
	for _, l := range n.listeners {
		lns = append(lns, l)
	}
	pcs := make([]*packetConn, 0, len(n.packetConns))
	for _, pc := range n.packetConns {
		pcs = append(pcs, pc)
	}
	n.mu.Unlock()

	n.cancel()
	if n.unsubscribe != nil {
		n.unsubscribe()
	}
	if n.rdv != nil {
		n.rdv.Close()
	}
	for _, l := range links {
		l.conn.CloseWithError(CodeClosing, "node closing")
	}
	for _, l := range lns {
		l.Close()
	}
	for _, pc := range pcs {
		pc.Close()
	}
	n.shutdownTransport()
	n.wg.Wait()
	return nil
}

// startRelayTransport opens the relay socket (beside the main one, on the
// same host address) and its QUIC transport and listener.
func (n *Node) startRelayTransport() error {
	udp := n.cfg.RelayConn
	if udp == nil {
		la := n.udp.LocalAddr().(*net.UDPAddr)
		var err error
		if udp, err = net.ListenUDP("udp", &net.UDPAddr{IP: la.IP}); err != nil {
			return fmt.Errorf("quicnode: relay socket: %w", err)
		}
	}
	n.relay = newRelayConn(udp)
	n.relayTr = &quic.Transport{Conn: n.relay}
	ln, err := n.relayTr.Listen(n.serverTLS(), n.relayQconf)
	if err != nil {
		return fmt.Errorf("quicnode: relay listen: %w", err)
	}
	n.relayLn = ln
	n.goFunc(func() {
		for {
			conn, err := ln.Accept(n.ctx)
			if err != nil {
				return
			}
			n.goFunc(func() { n.admit(conn, pathRelay) })
		}
	})
	return nil
}

func (n *Node) shutdownTransport() {
	if n.relayLn != nil {
		n.relayLn.Close()
	}
	if n.relayTr != nil {
		n.relayTr.Close()
	}
	if n.relay != nil {
		n.relay.Close()
	}
	if n.ln != nil {
		n.ln.Close()
	}
	if n.tr != nil {
		n.tr.Close()
	}
	if n.udp != nil {
		n.udp.Close()
	}
}

func (n *Node) goFunc(f func()) {
	n.wg.Add(1)
	go func() {
		defer n.wg.Done()
		f()
	}()
}

// gate is the listener's trust gate, run in VerifyConnection of every
// incoming handshake.
func (n *Node) gate(k addressing.PublicKey) error {
	if !n.admissible(k) {
		return fmt.Errorf("quicnode: %s is not trusted", k.NodeID())
	}
	return nil
}

// nonQUICLoop reads the packets beside QUIC on the main socket: STUN
// answers and punch probes. Anything else is counted and dropped.
func (n *Node) nonQUICLoop() {
	buf := make([]byte, 1500)
	for {
		m, from, err := n.tr.ReadNonQUICPacket(n.ctx, buf)
		if err != nil {
			return
		}
		n.stats.nonQUICPackets.Add(1)
		b := buf[:m]
		switch {
		case stun.IsMessage(b):
			n.handleSTUN(b)
		case len(b) > 0 && b[0] == probe.Type:
			if ua, ok := from.(*net.UDPAddr); ok {
				n.handleProbe(b, ua.AddrPort())
			}
		}
	}
}

func (n *Node) acceptLoop() {
	for {
		conn, err := n.ln.Accept(n.ctx)
		if err != nil {
			return
		}
		n.goFunc(func() { n.admit(conn, pathDirect) })
	}
}

// admit registers an accepted connection and sends the welcome.
func (n *Node) admit(conn *quic.Conn, path pathKind) {
	key, err := certs.PeerKey(conn.ConnectionState().TLS)
	if err != nil || !n.admissible(key) {
		conn.CloseWithError(CodeNotTrusted, "not trusted")
		return
	}
	l, err := n.addLink(conn, key, path, false)
	if err != nil {
		return
	}
	s, err := conn.OpenUniStream()
	if err != nil {
		return
	}
	s.Write(welcome)
	s.Close()
	if ua, ok := conn.RemoteAddr().(*net.UDPAddr); ok && path == pathDirect {
		n.mu.Lock()
		n.hints[key] = ua.AddrPort()
		n.mu.Unlock()
	}
	n.log.Debug("peer connected", "peer", l.addr, "path", path, "remote", conn.RemoteAddr())
}

// addLink registers conn as the link to key on path, applying the
// tie-break when a live link on that path exists already, and starts its
// loops.
func (n *Node) addLink(conn *quic.Conn, key addressing.PublicKey, path pathKind, outgoing bool) (*link, error) {
	l := &link{key: key, addr: addressing.AddrFrom(0, key.NodeID()), conn: conn, path: path, outgoing: outgoing, since: time.Now()}
	n.mu.Lock()
	if n.closed {
		n.mu.Unlock()
		conn.CloseWithError(CodeClosing, "node closing")
		return nil, net.ErrClosed
	}
	p := n.peers[key]
	if p == nil {
		p = &peer{}
		n.peers[key] = p
	}
	var loser *quic.Conn
	if old := p.links[path]; old != nil && old.alive() {
		switch {
		case old.outgoing && outgoing:
			// Two of our own dials (say a plain one and a punched one)
			// both got through: keep the first, which may be in use.
			n.mu.Unlock()
			conn.CloseWithError(CodeDuplicate, "duplicate connection")
			return old, nil
		case old.outgoing != outgoing && n.keepOld(old):
			n.mu.Unlock()
			conn.CloseWithError(CodeDuplicate, "duplicate connection")
			return nil, errDuplicate
		case !old.outgoing && !outgoing:
			// The peer dialled twice: it keeps one (which one depends on
			// the order its handshakes finished) and closes the other. The
			// new link carries our new traffic; the old waits as a spare.
			p.spares = append(p.spares, old)
		default:
			// Opposite directions, and the new link won the tie-break.
			loser = old.conn
		}
	}
	p.links[path] = l
	if path == pathDirect {
		p.directFailed = false
	}
	n.notifyPeersLocked()
	n.mu.Unlock()
	if loser != nil {
		loser.CloseWithError(CodeDuplicate, "duplicate connection")
	}
	n.goFunc(func() { n.streamLoop(l) })
	// The datagram loop starts only once datagrams flow on the link (see
	// startDatagrams): an idle link costs one goroutine of ours.
	return l, nil
}

// keepOld reports whether old wins the tie-break against a link on the same
// path in the other direction: the one dialled by the lower NodeID is kept.
func (n *Node) keepOld(old *link) bool {
	weAreLower := n.addr.Node().Compare(old.key.NodeID()) < 0
	return old.outgoing == weAreLower
}

func (n *Node) notifyPeersLocked() {
	close(n.peersChanged)
	n.peersChanged = make(chan struct{})
}

// removeLink forgets a link whose connection has ended.
func (n *Node) removeLink(l *link) {
	n.mu.Lock()
	if p := n.peers[l.key]; p != nil {
		live := p.spares[:0]
		for _, s := range p.spares {
			if s != l && s.alive() {
				live = append(live, s)
			}
		}
		p.spares = live
		if p.links[l.path] == l {
			p.links[l.path] = nil
			for i, s := range p.spares {
				if s.path == l.path {
					p.links[l.path] = s // a spare takes over
					p.spares = append(p.spares[:i], p.spares[i+1:]...)
					break
				}
			}
			if p.links[pathDirect] == nil && p.links[pathRelay] == nil && len(p.spares) == 0 {
				delete(n.peers, l.key)
			}
			n.notifyPeersLocked()
		}
	}
	n.mu.Unlock()
	if l.path == pathRelay && n.relay != nil {
		n.relay.forget(l.conn.RemoteAddr())
	}
}

// closePeer closes every live link to key with code.
func (n *Node) closePeer(key addressing.PublicKey, code quic.ApplicationErrorCode, reason string) {
	n.mu.Lock()
	p := n.peers[key]
	delete(n.peers, key)
	if p != nil {
		n.notifyPeersLocked()
	}
	n.mu.Unlock()
	if p == nil {
		return
	}
	for _, l := range p.all() {
		l.conn.CloseWithError(code, reason)
		n.log.Info("peer connection closed", "peer", l.addr, "path", l.path, "code", uint64(code))
	}
}

// streamLoop accepts the link's streams until the connection ends.
func (n *Node) streamLoop(l *link) {
	defer n.removeLink(l)
	for {
		s, err := l.conn.AcceptStream(n.ctx)
		if err != nil {
			return
		}
		n.goFunc(func() { n.dispatchStream(l, s) })
	}
}

// dispatchStream reads the port header and hands the stream to its listener.
func (n *Node) dispatchStream(l *link, s *quic.Stream) {
	var hdr [vport.StreamHeaderLen]byte
	s.SetReadDeadline(time.Now().Add(headerTimeout))
	_, err := io.ReadFull(s, hdr[:])
	s.SetReadDeadline(time.Time{})
	h, perr := vport.ParseStreamHeader(hdr[:])
	if err != nil || perr != nil {
		n.stats.badStreams.Add(1)
		s.CancelRead(StreamBadHeader)
		s.CancelWrite(StreamBadHeader)
		return
	}
	if h.Dst == portControl {
		// The peer is about to send datagrams: read them from now on.
		n.startDatagrams(l)
		s.CancelRead(StreamClosed)
		s.Close()
		return
	}
	n.mu.Lock()
	ln := n.listeners[h.Dst]
	n.mu.Unlock()
	if ln == nil {
		s.CancelRead(StreamPortClosed)
		s.CancelWrite(StreamPortClosed)
		return
	}
	c := &streamConn{
		s:      s,
		local:  addressing.SockAddrFrom(n.addr, h.Dst),
		remote: addressing.SockAddrFrom(l.addr, h.Src),
	}
	if !ln.enqueue(c) {
		s.CancelRead(StreamBusy)
		s.CancelWrite(StreamBusy)
		return
	}
	s.Write([]byte{vport.StatusOK})
}

// startDatagrams starts the link's datagram loop once; it reports whether
// this call started it.
func (n *Node) startDatagrams(l *link) bool {
	if !l.dgrams.CompareAndSwap(false, true) {
		return false
	}
	n.goFunc(func() { n.datagramLoop(l) })
	return true
}

// sendDatagram sends b on l. The first datagram we send on a link starts
// our datagram loop (answers will come) and tells the peer to start its own
// with a stream to the control port; datagrams that arrive before the peer
// reads them wait in quic-go's queue.
func (n *Node) sendDatagram(l *link, b []byte) error {
	if n.startDatagrams(l) {
		if s, err := l.conn.OpenStream(); err == nil {
			var hdr [vport.StreamHeaderLen]byte
			s.Write(vport.AppendStreamHeader(hdr[:0], vport.StreamHeader{Dst: portControl, Src: portControl}))
			s.Close()
			s.CancelRead(StreamClosed)
		}
	}
	return l.conn.SendDatagram(b)
}

// datagramLoop reads the peer's datagrams and queues them by port.
func (n *Node) datagramLoop(l *link) {
	for {
		b, err := l.conn.ReceiveDatagram(n.ctx)
		if err != nil {
			return
		}
		dst, src, payload, err := vport.ParseDatagram(b)
		if err != nil {
			n.stats.datagramsDropped.Add(1)
			continue
		}
		n.mu.Lock()
		pc := n.packetConns[dst]
		n.mu.Unlock()
		if dst == portControl {
			n.handleControl(l, src, payload)
			continue
		}
		if pc == nil || !pc.deliver(addressing.SockAddrFrom(l.addr, src), payload) {
			n.stats.datagramsDropped.Add(1)
		}
	}
}

// localCandidates lists the host addresses a peer on the same LAN could
// reach our socket at.
func localCandidates(udp *net.UDPConn) []netip.AddrPort {
	la, ok := udp.LocalAddr().(*net.UDPAddr)
	if !ok {
		return nil
	}
	port := uint16(la.Port)
	if ip, ok := netip.AddrFromSlice(la.IP); ok && !ip.Unmap().IsUnspecified() {
		return []netip.AddrPort{netip.AddrPortFrom(ip.Unmap(), port)}
	}
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return nil
	}
	var out []netip.AddrPort
	for _, a := range addrs {
		pfx, err := netip.ParsePrefix(a.String())
		if err != nil {
			continue
		}
		ip := pfx.Addr().Unmap()
		if !ip.Is4() || ip.IsLinkLocalUnicast() {
			continue
		}
		out = append(out, netip.AddrPortFrom(ip, port))
		if len(out) == 8 {
			break
		}
	}
	return out
}

// storePins keeps the rendezvous pin in the trust store's metadata.
type storePins struct{ s *trustdb.Store }

func (p storePins) Pin(server string) (addressing.PublicKey, bool) {
	b, ok := p.s.Meta("rendezvous-pin:" + server)
	if !ok {
		return addressing.PublicKey{}, false
	}
	k, ok := addressing.PublicKeyFromSlice(b)
	return k, ok
}

func (p storePins) SetPin(server string, k addressing.PublicKey) error {
	return p.s.SetMeta("rendezvous-pin:"+server, k[:])
}
