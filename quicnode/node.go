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
	"github.com/agentnet/agentnet/internal/vport"
	"github.com/agentnet/agentnet/rendezvous"
	"github.com/agentnet/agentnet/trustdb"
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
	qconf *quic.Config

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	// Set by Start, read-only afterwards.
	udp *net.UDPConn
	tr  *quic.Transport
	ln  *quic.Listener
	rdv *rendezvous.Client

	unsubscribe func()
	outboxKick  chan struct{}

	mu           sync.Mutex
	started      bool
	closed       bool
	peers        map[addressing.PublicKey]*peer
	dialing      map[addressing.PublicKey]*dialCall
	peersChanged chan struct{} // closed and replaced on every change of peers
	listeners    map[uint16]*listener
	packetConns  map[uint16]*packetConn
	nextPort     uint16
	byNode       map[addressing.NodeID]addressing.PublicKey // trusted peers
	byHostname   map[string]addressing.PublicKey            // trusted peers with a known hostname
	hints        map[addressing.PublicKey]netip.AddrPort    // last address a peer connected from

	stats nodeStats
}

type nodeStats struct {
	datagramsDropped atomic.Uint64 // no listener, or queue full
	badStreams       atomic.Uint64 // malformed or late headers
	nonQUICPackets   atomic.Uint64
}

// peer is a live QUIC connection to a trusted agent.
type peer struct {
	key      addressing.PublicKey
	addr     addressing.Addr
	conn     *quic.Conn
	outgoing bool
	since    time.Time
}

type dialCall struct {
	done chan struct{}
	p    *peer
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
		qconf:        cfg.quicConfig(),
		ctx:          ctx,
		cancel:       cancel,
		outboxKick:   make(chan struct{}, 1),
		peers:        make(map[addressing.PublicKey]*peer),
		dialing:      make(map[addressing.PublicKey]*dialCall),
		peersChanged: make(chan struct{}),
		listeners:    make(map[uint16]*listener),
		packetConns:  make(map[uint16]*packetConn),
		nextPort:     firstEphemeral,
		hints:        make(map[addressing.PublicKey]netip.AddrPort),
	}
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

	ln, err := n.tr.Listen(certs.ServerConfig(n.cert, alpn, n.gate), n.qconf)
	if err != nil {
		n.tr.Close()
		udp.Close()
		return fmt.Errorf("quicnode: quic listen: %w", err)
	}
	n.ln = ln

	n.rebuildIndex()
	n.unsubscribe = n.store.Subscribe(n.onTrustEvent)

	if n.cfg.RendezvousAddr != "" {
		rdv, err := rendezvous.NewClient(rendezvous.ClientConfig{
			Identity:   n.id,
			Transport:  n.tr,
			ServerAddr: n.cfg.RendezvousAddr,
			ServerKey:  n.cfg.RendezvousKey,
			Pins:       storePins{n.store},
			Hostname:   n.cfg.Hostname,
			LocalAddrs: localCandidates(udp),
			Deliver:    n.deliver,
			Logger:     n.log.With("component", "rendezvous-client"),
		})
		if err != nil {
			n.shutdownTransport()
			return fmt.Errorf("quicnode: %w", err)
		}
		n.rdv = rdv
		rdv.Start()
		n.goFunc(n.outboxLoop)
	}
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
	peers := make([]*peer, 0, len(n.peers))
	for _, p := range n.peers {
		peers = append(peers, p)
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
	for _, p := range peers {
		p.conn.CloseWithError(CodeClosing, "node closing")
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

func (n *Node) shutdownTransport() {
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
	if !n.store.IsTrusted(k) {
		return fmt.Errorf("quicnode: %s is not trusted", k.NodeID())
	}
	return nil
}

// nonQUICLoop drains non-QUIC packets (STUN, punch probes) from the socket.
func (n *Node) nonQUICLoop() {
	buf := make([]byte, 1500)
	for {
		_, _, err := n.tr.ReadNonQUICPacket(n.ctx, buf)
		if err != nil {
			return
		}
		n.stats.nonQUICPackets.Add(1)
	}
}

func (n *Node) acceptLoop() {
	for {
		conn, err := n.ln.Accept(n.ctx)
		if err != nil {
			return
		}
		n.goFunc(func() { n.admit(conn) })
	}
}

// admit registers an accepted connection and sends the welcome.
func (n *Node) admit(conn *quic.Conn) {
	key, err := certs.PeerKey(conn.ConnectionState().TLS)
	if err != nil || !n.store.IsTrusted(key) {
		conn.CloseWithError(CodeNotTrusted, "not trusted")
		return
	}
	p, err := n.addPeer(conn, key, false)
	if err != nil {
		return
	}
	s, err := conn.OpenUniStream()
	if err != nil {
		return
	}
	s.Write(welcome)
	s.Close()
	if ap, ok := netip.AddrFromSlice(conn.RemoteAddr().(*net.UDPAddr).IP); ok {
		n.mu.Lock()
		n.hints[key] = netip.AddrPortFrom(ap.Unmap(), uint16(conn.RemoteAddr().(*net.UDPAddr).Port))
		n.mu.Unlock()
	}
	n.log.Debug("peer connected", "peer", p.addr, "remote", conn.RemoteAddr())
}

// addPeer registers conn as the connection to key, applying the tie-break
// when a live connection exists already, and starts its loops.
func (n *Node) addPeer(conn *quic.Conn, key addressing.PublicKey, outgoing bool) (*peer, error) {
	p := &peer{key: key, addr: addressing.AddrFrom(0, key.NodeID()), conn: conn, outgoing: outgoing, since: time.Now()}
	n.mu.Lock()
	if n.closed {
		n.mu.Unlock()
		conn.CloseWithError(CodeClosing, "node closing")
		return nil, net.ErrClosed
	}
	var loser *quic.Conn
	if old := n.peers[key]; old != nil && old.conn.Context().Err() == nil {
		if old.outgoing != outgoing && n.keepOld(old) {
			n.mu.Unlock()
			conn.CloseWithError(CodeDuplicate, "duplicate connection")
			return nil, errDuplicate
		}
		loser = old.conn
	}
	n.peers[key] = p
	n.notifyPeersLocked()
	n.mu.Unlock()
	if loser != nil {
		loser.CloseWithError(CodeDuplicate, "duplicate connection")
	}
	n.goFunc(func() { n.streamLoop(p) })
	n.goFunc(func() { n.datagramLoop(p) })
	return p, nil
}

// keepOld reports whether old wins the tie-break against a connection in the
// other direction: the connection dialled by the lower NodeID is kept.
func (n *Node) keepOld(old *peer) bool {
	weAreLower := n.addr.Node().Compare(old.key.NodeID()) < 0
	return old.outgoing == weAreLower
}

func (n *Node) notifyPeersLocked() {
	close(n.peersChanged)
	n.peersChanged = make(chan struct{})
}

func (n *Node) removePeer(p *peer) {
	n.mu.Lock()
	if n.peers[p.key] == p {
		delete(n.peers, p.key)
		n.notifyPeersLocked()
	}
	n.mu.Unlock()
}

// closePeer closes every live connection to key with code.
func (n *Node) closePeer(key addressing.PublicKey, code quic.ApplicationErrorCode, reason string) {
	n.mu.Lock()
	p := n.peers[key]
	if p != nil {
		delete(n.peers, key)
		n.notifyPeersLocked()
	}
	n.mu.Unlock()
	if p != nil {
		p.conn.CloseWithError(code, reason)
		n.log.Info("peer connection closed", "peer", p.addr, "code", uint64(code))
	}
}

// streamLoop accepts the peer's streams until the connection ends.
func (n *Node) streamLoop(p *peer) {
	defer n.removePeer(p)
	for {
		s, err := p.conn.AcceptStream(n.ctx)
		if err != nil {
			return
		}
		n.goFunc(func() { n.dispatchStream(p, s) })
	}
}

// dispatchStream reads the port header and hands the stream to its listener.
func (n *Node) dispatchStream(p *peer, s *quic.Stream) {
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
	n.mu.Lock()
	l := n.listeners[h.Dst]
	n.mu.Unlock()
	if l == nil {
		s.CancelRead(StreamPortClosed)
		s.CancelWrite(StreamPortClosed)
		return
	}
	c := &streamConn{
		s:      s,
		local:  addressing.SockAddrFrom(n.addr, h.Dst),
		remote: addressing.SockAddrFrom(p.addr, h.Src),
	}
	if !l.enqueue(c) {
		s.CancelRead(StreamBusy)
		s.CancelWrite(StreamBusy)
		return
	}
	s.Write([]byte{vport.StatusOK})
}

// datagramLoop reads the peer's datagrams and queues them by port.
func (n *Node) datagramLoop(p *peer) {
	for {
		b, err := p.conn.ReceiveDatagram(n.ctx)
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
		if pc == nil || !pc.deliver(addressing.SockAddrFrom(p.addr, src), payload) {
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
