package quicnode

import (
	"context"
	"crypto/sha256"
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
	"github.com/agentnet/agentnet/internal/tunnel"
	"github.com/agentnet/agentnet/internal/vport"
	"github.com/agentnet/agentnet/quicnode/internal/paths"
	"github.com/agentnet/agentnet/rendezvous"
	"github.com/agentnet/agentnet/trustdb"
	"github.com/quic-go/quic-go"
)

// Node is one agent's overlay endpoint. Create it with New, start it with
// Start, and Close it when done. Its methods are safe for concurrent use.
//
// The Node keeps identity, trust, virtual ports and streams; every path to
// every peer (sockets, transports, links, dialling, punching, the relay,
// health) belongs to its path manager (package internal/paths), which
// calls back through the narrow Host interface the Node implements.
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
	paths *paths.Manager
	rdv   *rendezvous.Client

	unsubscribe func()
	outboxKick  chan struct{}
	flushing    chan struct{} // one-slot semaphore: one outbox flush at a time

	mu          sync.Mutex
	hostname    string // claimed at the rendezvous
	started     bool
	closed      bool
	listeners   map[uint16]*listener
	packetConns map[uint16]*packetConn
	nextPort    uint16
	byNode      map[addressing.NodeID]addressing.PublicKey // trusted peers
	byHostname  map[string]addressing.PublicKey            // trusted peers with a known hostname

	ports refusedPorts // virtual ports that refused a stream, per peer (their dials wait)

	stats      nodeStats
	netStats   netCounters  // network.go
	netRefresh netRefresher // network.go
}

type nodeStats struct {
	datagramsDropped atomic.Uint64 // no listener, or queue full
	badStreams       atomic.Uint64 // malformed or late headers
	knocksRefused    atomic.Uint64 // handshakes refused before key exchange
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
		cfg:         cfg,
		log:         log,
		store:       cfg.Store,
		id:          id,
		addr:        id.Addr(),
		cert:        cert,
		knock:       kn,
		qconf:       cfg.quicConfig(),
		ctx:         ctx,
		cancel:      cancel,
		outboxKick:  make(chan struct{}, 1),
		netRefresh:  netRefresher{kick: make(chan struct{}, 1)},
		flushing:    make(chan struct{}, 1),
		hostname:    cfg.Hostname,
		listeners:   make(map[uint16]*listener),
		packetConns: make(map[uint16]*packetConn),
		nextPort:    firstEphemeral,
	}
	return n, nil
}

// Addr returns the node's virtual address in the global network.
func (n *Node) Addr() addressing.Addr { return n.addr }

// PublicKey returns the node's identity key.
func (n *Node) PublicKey() addressing.PublicKey { return n.id.PublicKey() }

// Store returns the node's trust store.
func (n *Node) Store() *trustdb.Store { return n.store }

// LocalAddr returns the address of the node's main socket (nil before
// Start): a *net.UDPAddr for a UDP socket.
func (n *Node) LocalAddr() *net.UDPAddr {
	if n.paths == nil {
		return nil
	}
	ua, _ := n.paths.LocalAddr().(*net.UDPAddr)
	return ua
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

	conn := n.cfg.Conn
	if conn == nil {
		ua, err := net.ResolveUDPAddr("udp", n.cfg.listenAddr())
		if err != nil {
			return fmt.Errorf("quicnode: listen address: %w", err)
		}
		udp, err := net.ListenUDP("udp", ua)
		if err != nil {
			return fmt.Errorf("quicnode: listen: %w", err)
		}
		conn = udp
	}
	var tcp *paths.TCPConfig
	if n.cfg.RendezvousTCP != "" {
		tcp = &paths.TCPConfig{Addr: n.cfg.RendezvousTCP, Tunnel: tunnel.ClientConfig{
			ServerKey:   n.pinnedRendezvousKey,
			Proxy:       n.cfg.Proxy,
			DialContext: n.cfg.DialTCP,
		}}
	}
	pm, err := paths.New(paths.Config{
		TCP:              tcp,
		Self:             n.id.PublicKey(),
		Host:             (*nodeHost)(n),
		Conn:             conn,
		RelayConn:        n.cfg.RelayConn,
		Relay:            n.cfg.RendezvousAddr != "",
		ListenUDP:        n.cfg.ListenUDP,
		QUIC:             n.qconf,
		HandshakeTimeout: n.cfg.handshakeTimeout(),
		// Derived from the identity: the same after a restart, so peers'
		// connections of our previous run are reset at once.
		StatelessResetKey: resetKey(n.id),
		Hints:             storeHints{n.store},
		Logger:            n.log.With("component", "paths"),
	})
	if err != nil {
		conn.Close()
		return fmt.Errorf("quicnode: %w", err)
	}
	n.rebuildIndex()
	if err := pm.Start(); err != nil {
		return fmt.Errorf("quicnode: %w", err)
	}
	n.paths = pm
	n.unsubscribe = n.store.Subscribe(n.onTrustEvent)

	if n.cfg.RendezvousAddr != "" {
		rdv, err := rendezvous.NewClient(rendezvous.ClientConfig{
			Identity:    n.id,
			Transport:   pm.Transport(),
			Dial:        pm.DialRendezvous,
			ServerAddr:  n.cfg.RendezvousAddr,
			ServerAddrs: n.cfg.RendezvousAddrs,
			ServerKey:   n.cfg.RendezvousKey,
			Pins:        storePins{s: n.store, legacy: "rendezvous-pin:" + n.cfg.RendezvousAddr},
			Hostname:    n.cfg.Hostname,
			LocalAddrs:  paths.LocalCandidates(conn),
			Deliver:     n.deliver,
			Introduced:  n.introduced,
			Network:     n.networkPushed,
			Logger:      n.log.With("component", "rendezvous-client"),
		})
		if err != nil {
			n.Close()
			return fmt.Errorf("quicnode: %w", err)
		}
		n.rdv = rdv
		pm.SetRendezvous(rdv)
		rdv.Start()
		n.goFunc(n.outboxLoop)
		n.goFunc(n.netRefreshLoop)
		n.goFunc(func() {
			if rdv.WaitReady(n.ctx) == nil {
				ctx, cancel := context.WithTimeout(n.ctx, 5*time.Second)
				defer cancel()
				if info, err := pm.CheckNAT(ctx); err == nil {
					n.log.Info("nat checked", "nat", info.Kind, "mapped", info.Mapped)
				}
			}
		})
	}
	n.goFunc(n.knockLoop)
	if !n.cfg.DisableEcho {
		if err := n.startEcho(); err != nil {
			n.Close()
			return err
		}
	}
	n.log.Info("node started", "addr", n.addr, "local", conn.LocalAddr())
	return nil
}

// resetKey derives the node's stateless reset key from its identity.
func resetKey(id *trustdb.Identity) *quic.StatelessResetKey {
	k := quic.StatelessResetKey(sha256.Sum256(append([]byte("agentnet node stateless reset v1\x00"), id.PrivateKey().Seed()...)))
	return &k
}

// WaitRendezvous blocks until the node is registered at the rendezvous.
func (n *Node) WaitRendezvous(ctx context.Context) error {
	if n.rdv == nil {
		return errors.New("quicnode: no rendezvous configured")
	}
	return n.rdv.WaitReady(ctx)
}

// RendezvousState returns the state of the node's rendezvous session
// (registered, connecting, refused or closed, since when, the last
// failure); ok is false if no rendezvous is configured.
func (n *Node) RendezvousState() (st rendezvous.SessionState, ok bool) {
	if n.rdv == nil {
		return rendezvous.SessionState{}, false
	}
	return n.rdv.State(), true
}

// Close closes every peer connection, listener and packet conn, stops every
// goroutine and waits for them. It is idempotent. The Store stays open.
// Like http.Server.Shutdown, it first stops new dials and streams, closes
// the listeners, and gives data already written to streams (and their
// FINs) up to CloseDrain to reach the peers: it waits until every live
// peer connection has sent nothing for about twice its probe timeout.
func (n *Node) Close() error {
	n.mu.Lock()
	if n.closed {
		n.mu.Unlock()
		return nil
	}
	n.closed = true
	lns := make([]*listener, 0, len(n.listeners))
	for _, l := range n.listeners {
		lns = append(lns, l)
	}
	pcs := make([]*packetConn, 0, len(n.packetConns))
	for _, pc := range n.packetConns {
		pcs = append(pcs, pc)
	}
	n.mu.Unlock()

	for _, l := range lns {
		l.Close()
	}
	n.drain(time.Now().Add(CloseDrain))
	n.cancel()
	if n.unsubscribe != nil {
		n.unsubscribe()
	}
	if n.rdv != nil {
		n.rdv.Close()
	}
	if n.paths != nil {
		n.paths.Close(CodeClosing, "node closing")
	}
	for _, pc := range pcs {
		pc.Close()
	}
	n.wg.Wait()
	return nil
}

func (n *Node) goFunc(f func()) {
	n.wg.Add(1)
	go func() {
		defer n.wg.Done()
		f()
	}()
}

// knockLoop moves the knock table to the next epoch in time.
func (n *Node) knockLoop() {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-n.ctx.Done():
			return
		case <-t.C:
			n.knock.refresh()
		}
	}
}

// gate is the listener's trust gate, run in VerifyConnection of every
// incoming handshake.
func (n *Node) gate(k addressing.PublicKey) error {
	if !n.admissible(k) {
		n.kickNetRefresh() // a member whose Join we have not heard of yet?
		return fmt.Errorf("quicnode: %s is not trusted", k.NodeID())
	}
	return nil
}

// nodeHost is the Node as the path manager's Host.
type nodeHost Node

func (h *nodeHost) ClientTLS(peer addressing.PublicKey) *tls.Config {
	return (*Node)(h).clientTLS(peer)
}
func (h *nodeHost) ServerTLS() *tls.Config { return (*Node)(h).serverTLS() }
func (h *nodeHost) Admissible(peer addressing.PublicKey) bool {
	return (*Node)(h).admissible(peer)
}
func (h *nodeHost) ServeLink(l *paths.Link) { (*Node)(h).streamLoop(l) }
func (h *nodeHost) SendControl(l *paths.Link, payload []byte) error {
	b := vport.AppendDatagram(make([]byte, 0, 16), portControl, portControl, payload)
	return (*Node)(h).sendDatagram(l, b)
}

// portControl is the virtual port of the node's own control datagrams
// (path heartbeats). Applications never get port 0.
const portControl uint16 = 0

// streamLoop accepts the link's streams until the connection ends. It
// reads each stream's port header itself when the header is there at once
// (the opener sends it in the stream's first frame, so it nearly always
// is) and hands the stream to its listener; a stream whose header is late,
// or whose listener's queue is full, gets a goroutine of its own, so one
// slow stream holds up the link's other streams for at most
// inlineHeaderWait.
func (n *Node) streamLoop(l *paths.Link) {
	for {
		s, err := l.Conn.AcceptStream(n.ctx)
		if err != nil {
			return
		}
		var hdr [vport.StreamHeaderLen]byte
		s.SetReadDeadline(time.Now().Add(inlineHeaderWait))
		k, err := io.ReadFull(s, hdr[:])
		if err == nil {
			s.SetReadDeadline(time.Time{})
			n.dispatchStream(l, s, hdr, true)
			continue
		}
		if ne, ok := err.(net.Error); !ok || !ne.Timeout() {
			n.badStream(s, err)
			continue
		}
		n.goFunc(func() {
			s.SetReadDeadline(time.Now().Add(headerTimeout))
			_, err := io.ReadFull(s, hdr[k:])
			s.SetReadDeadline(time.Time{})
			if err != nil {
				n.badStream(s, err)
				return
			}
			n.dispatchStream(l, s, hdr, false)
		})
	}
}

// badStream refuses a stream whose header did not arrive whole. A stream
// the opener reset before its header (an aborted dial) is not counted.
func (n *Node) badStream(s *quic.Stream, err error) {
	var se *quic.StreamError
	if !errors.As(err, &se) || !se.Remote {
		n.stats.badStreams.Add(1)
	}
	s.CancelRead(StreamBadHeader)
	s.CancelWrite(StreamBadHeader)
}

// dispatchStream hands a stream whose header hdr has been read to its
// listener, and answers with the status byte unless the opener pipelined.
// inline says the caller is the link's stream loop: then a full listener
// queue is waited for in a goroutine of its own.
func (n *Node) dispatchStream(l *paths.Link, s *quic.Stream, hdr [vport.StreamHeaderLen]byte, inline bool) {
	h, err := vport.ParseStreamHeader(hdr[:])
	if err != nil {
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
	l.MarkHeard(time.Now())
	c := &streamConn{
		s:      s,
		local:  addressing.SockAddrFrom(n.addr, h.Dst),
		remote: addressing.SockAddrFrom(l.Addr, h.Src),
		link:   l,
	}
	if !h.Pipelined {
		// The status byte goes out once the listener has taken the stream
		// (a full queue is StreamBusy instead); the application's writes
		// wait for it (streamConn.ready).
		c.ready = make(chan struct{})
	}
	if ln.tryEnqueue(c) {
		c.answer()
		return
	}
	if inline {
		n.goFunc(func() { n.enqueueOrRefuse(ln, c) })
		return
	}
	n.enqueueOrRefuse(ln, c)
}

// enqueueOrRefuse waits for room in the listener's queue, or resets the
// stream with StreamBusy.
func (n *Node) enqueueOrRefuse(ln *listener, c *streamConn) {
	if !ln.enqueue(c) {
		c.s.CancelRead(StreamBusy)
		c.s.CancelWrite(StreamBusy)
		return
	}
	c.answer()
}

// startDatagrams starts the link's datagram loop once; it reports whether
// this call started it.
func (n *Node) startDatagrams(l *paths.Link) bool {
	if !l.StartDatagrams() {
		return false
	}
	n.goFunc(func() { n.datagramLoop(l) })
	return true
}

// sendDatagram sends b on l. The first datagram we send on a link starts
// our datagram loop (answers will come) and tells the peer to start its own
// with a stream to the control port; datagrams that arrive before the peer
// reads them wait in quic-go's queue.
func (n *Node) sendDatagram(l *paths.Link, b []byte) error {
	if n.startDatagrams(l) {
		if s, err := l.Conn.OpenStream(); err == nil {
			var hdr [vport.StreamHeaderLen]byte
			s.Write(vport.AppendStreamHeader(hdr[:0], vport.StreamHeader{Dst: portControl, Src: portControl}))
			s.Close()
			s.CancelRead(StreamClosed)
		}
	}
	return l.Conn.SendDatagram(b)
}

// datagramLoop reads the peer's datagrams and queues them by port.
func (n *Node) datagramLoop(l *paths.Link) {
	for {
		b, err := l.Conn.ReceiveDatagram(n.ctx)
		if err != nil {
			return
		}
		dst, src, payload, err := vport.ParseDatagram(b)
		if err != nil {
			n.stats.datagramsDropped.Add(1)
			continue
		}
		if dst == portControl {
			n.paths.HandleControl(l, payload)
			continue
		}
		n.mu.Lock()
		pc := n.packetConns[dst]
		n.mu.Unlock()
		if pc == nil || !pc.deliver(addressing.SockAddrFrom(l.Addr, src), payload) {
			n.stats.datagramsDropped.Add(1)
		}
	}
}

// storeHints keeps the address each peer was last reached at in the trust
// store's metadata, so a restarted node reaches its peers without the
// rendezvous.
type storeHints struct{ s *trustdb.Store }

// ForgetPeerAddress deletes the address st keeps for peer (where a node on
// st last reached it), so that the next node on st reaches peer as a first
// contact does, through the rendezvous. For tools and benchmarks that reuse
// a store; st must not be in use by a running node.
func ForgetPeerAddress(st *trustdb.Store, peer addressing.PublicKey) error {
	return storeHints{st}.saveHintBytes(peer, nil)
}

// saveHintBytes stores b (nil deletes) as peer's hint.
func (h storeHints) saveHintBytes(k addressing.PublicKey, b []byte) error {
	return h.s.SetMeta("peer-addr:"+k.String(), b)
}

func (h storeHints) LoadHint(k addressing.PublicKey) (netip.AddrPort, bool) {
	b, ok := h.s.Meta("peer-addr:" + k.String())
	if !ok {
		return netip.AddrPort{}, false
	}
	var ap netip.AddrPort
	if ap.UnmarshalBinary(b) != nil || !ap.IsValid() {
		return netip.AddrPort{}, false
	}
	return ap, true
}

func (h storeHints) SaveHint(k addressing.PublicKey, ap netip.AddrPort) error {
	b, err := ap.MarshalBinary()
	if err != nil {
		return err
	}
	return h.saveHintBytes(k, b)
}

// pinnedRendezvousKey returns the rendezvous key the node pins: the
// configured one, or the one trusted on first use (zero before that).
func (n *Node) pinnedRendezvousKey() addressing.PublicKey {
	if !n.cfg.RendezvousKey.IsZero() {
		return n.cfg.RendezvousKey
	}
	k, _ := storePins{s: n.store, legacy: "rendezvous-pin:" + n.cfg.RendezvousAddr}.Pin()
	return k
}

// storePins keeps the node's one rendezvous pin in the trust store's
// metadata ("rendezvous-pin"). Earlier versions kept a pin per server
// address ("rendezvous-pin:<addr>"); the one of the configured address is
// adopted the first time.
type storePins struct {
	s      *trustdb.Store
	legacy string // "rendezvous-pin:" + the configured server address
}

const pinMeta = "rendezvous-pin"

func (p storePins) Pin() (addressing.PublicKey, bool) {
	b, ok := p.s.Meta(pinMeta)
	if !ok && p.legacy != "" {
		if b, ok = p.s.Meta(p.legacy); ok {
			_ = p.s.SetMeta(pinMeta, b) // best effort: the legacy pin stays too
		}
	}
	if !ok {
		return addressing.PublicKey{}, false
	}
	return addressing.PublicKeyFromSlice(b)
}

// SetPin also writes the configured address's legacy entry, for readers of
// the earlier layout.
func (p storePins) SetPin(k addressing.PublicKey) error {
	if err := p.s.SetMeta(pinMeta, k[:]); err != nil {
		return err
	}
	if p.legacy == "" {
		return nil
	}
	return p.s.SetMeta(p.legacy, k[:])
}
