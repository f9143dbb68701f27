package bench

import (
	"context"
	"errors"
	"fmt"
	"math"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/agentnet/agentnet/addressing"
	"github.com/agentnet/agentnet/quicnode"
	"github.com/agentnet/agentnet/rendezvous"
	"github.com/agentnet/agentnet/trustdb"
)

// Virtual ports of the agentnet Env.
const (
	benchPort      uint16 = 9000 // streams
	benchDgramPort uint16 = 9001 // datagrams
)

// agentnetALPN is quicnode's ALPN (unexported there); the refusal attacker
// needs it to reach quicnode's trust gate. A wrong value shows up as a
// refusal scenario error, never as a silently different measurement.
const agentnetALPN = "agentnet/1"

// benchLimits are the rendezvous limits of the bench: every agent comes from
// 127.0.0.1, so the per-address and per-key rates, which guard a real server
// against abuse, are lifted; everything else keeps its default.
func benchLimits() rendezvous.Limits {
	return rendezvous.Limits{
		KeyRate:             math.MaxInt32,
		KeyBurst:            math.MaxInt32,
		AddrRate:            math.MaxInt32,
		AddrBurst:           math.MaxInt32,
		MaxPendingPerTarget: 1 << 20,
		MaxMailbox:          1 << 20,
		MaxConns:            1 << 20,
		MaxAgents:           1 << 30,
	}
}

// agentnetEnv is agentnet as an application sees it: an in-process
// rendezvous, a server node (the hub) listening on benchPort and
// benchDgramPort, and client nodes that trust the hub and are trusted by it
// (established through the rendezvous: request, approval). The hub approves
// every request it receives. Streams are n.DialTarget / Listen, datagrams
// ListenPacket.
type agentnetEnv struct {
	dir    string
	rdv    *rendezvous.Server // in-process, or nil when at names another's
	at     rdvAt
	hub    *anode
	client *anode
	ln     net.Listener
	target addressing.Target // the hub

	ctx    context.Context // cancelled by Close
	cancel context.CancelFunc
	wg     sync.WaitGroup // auto-approvals
	unsub  func()
	seq    atomic.Int64 // store directory names

	mu        sync.Mutex
	closed    bool
	pool      []*trustdb.Store // trusted stores without a running node
	peers     map[*agentnetPeer]struct{}
	dgCli     net.PacketConn
	dgSrv     net.PacketConn
	closeOnce sync.Once
}

// anode is a running node and its store.
type anode struct {
	store *trustdb.Store
	node  *quicnode.Node
}

// rdvAt is where the nodes of an agentnetEnv find their rendezvous.
type rdvAt struct {
	addr string // UDP, "host:port"
	key  addressing.PublicKey
	tcp  string // its TCP (TLS + WebSocket) listener, "" if none
	// udp lists every UDP address of the server (main, STUN, relay): the
	// only ones a netRelayOnly node's main socket exchanges datagrams with.
	udp []netip.AddrPort
}

// nodeNet is the network a node of an agentnetEnv sits on.
type nodeNet int

const (
	// netOpen: its own UDP sockets, nothing in the way (the -rtt delay, if
	// any, on both the main and the relay socket).
	netOpen nodeNet = iota
	// netRelayOnly: its main (and birthday) sockets exchange datagrams with
	// the rendezvous's addresses only, as behind a firewall that lets no
	// peer in or out: no direct path can form, and the node reaches every
	// peer through the UDP relay (its relay socket is an ordinary one).
	netRelayOnly
	// netTCPOnly: no datagram gets in or out; the node falls back to the
	// rendezvous's TCP listener after the 1.5 s UDP probe and reaches every
	// peer through the relay, its side over the TCP tunnel.
	netTCPOnly
)

// NewAgentnetEnv starts agentnet: a rendezvous, the hub node and a client
// node, with trust established between them.
func NewAgentnetEnv(ctx context.Context) (Env, error) {
	return newAgentnetEnv(ctx, nil)
}

// newAgentnetEnv starts the hub and the client at the rendezvous at, or at
// an in-process one if at is nil.
func newAgentnetEnv(ctx context.Context, at *rdvAt) (*agentnetEnv, error) {
	dir, err := os.MkdirTemp("", "agentnet-bench-")
	if err != nil {
		return nil, err
	}
	ectx, cancel := context.WithCancel(context.Background())
	e := &agentnetEnv{dir: dir, ctx: ectx, cancel: cancel, peers: make(map[*agentnetPeer]struct{})}
	if at != nil {
		e.at = *at
	}
	if err := e.start(ctx); err != nil {
		e.Close()
		return nil, err
	}
	return e, nil
}

func (e *agentnetEnv) start(ctx context.Context) error {
	if e.at.addr == "" {
		rdv, err := rendezvous.NewServer(rendezvous.ServerConfig{
			Addr:    "127.0.0.1:0",
			DataDir: filepath.Join(e.dir, "rendezvous"),
			Limits:  benchLimits(),
		})
		if err != nil {
			return err
		}
		if err := rdv.Start(); err != nil {
			return err
		}
		e.rdv = rdv
		e.at = rdvAt{addr: rdv.Addr().String(), key: rdv.PublicKey()}
	}
	hubStore, err := trustdb.Open(filepath.Join(e.dir, "hub"))
	if err != nil {
		return err
	}
	// Approve every request, as an operator who trusts every bench agent.
	e.unsub = hubStore.Subscribe(func(ev trustdb.Event) {
		if ev.Record.State != trustdb.StatePendingIn || ev.Key.IsZero() {
			return
		}
		peer := addressing.AddrFrom(0, ev.Key.NodeID()).String()
		e.wg.Add(1)
		go func() {
			defer e.wg.Done()
			ctx, cancel := context.WithTimeout(e.ctx, 30*time.Second)
			defer cancel()
			e.hub.node.ApproveTrust(ctx, peer)
		}()
	})
	if e.hub, err = e.startNode(ctx, hubStore, netOpen); err != nil {
		hubStore.Close()
		return err
	}
	e.target = addressing.TargetAddr(e.hub.node.Addr())
	if e.ln, err = e.hub.node.Listen(benchPort); err != nil {
		return err
	}
	e.client, err = e.trustedNode(ctx, netOpen)
	return err
}

// startNode starts a node on st, on the network how, and waits until it is
// registered.
func (e *agentnetEnv) startNode(ctx context.Context, st *trustdb.Store, how nodeNet) (*anode, error) {
	cfg := quicnode.Config{
		Store:          st,
		RendezvousAddr: e.at.addr,
		RendezvousKey:  e.at.key,
	}
	var socks []net.PacketConn // closed if New fails
	listen := func(wrap func(*net.UDPConn) net.PacketConn) (net.PacketConn, error) {
		udp, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
		if err != nil {
			return nil, err
		}
		c := wrap(udp)
		socks = append(socks, c)
		return c, nil
	}
	var err error
	switch how {
	case netOpen:
		if cfg.Conn, err = listen(packetConn); err == nil {
			cfg.RelayConn, err = listen(packetConn)
		}
	case netRelayOnly:
		onlyRdv := func(udp *net.UDPConn) net.PacketConn { return newFilterConn(udp, e.at.udp) }
		if len(e.at.udp) == 0 {
			err = errors.New("bench: a relay-only node needs the rendezvous's UDP addresses")
		} else if cfg.Conn, err = listen(onlyRdv); err == nil {
			cfg.RelayConn, err = listen(packetConn)
		}
		cfg.ListenUDP = func(network, laddr string) (net.PacketConn, error) {
			ua, err := net.ResolveUDPAddr(network, laddr)
			if err != nil {
				return nil, err
			}
			udp, err := net.ListenUDP(network, ua)
			if err != nil {
				return nil, err
			}
			return onlyRdv(udp), nil
		}
	case netTCPOnly:
		cfg.RendezvousTCP = e.at.tcp
		if cfg.RendezvousTCP == "" {
			err = errors.New("bench: a TCP-only node needs the rendezvous's TCP listener")
		} else if cfg.Conn, err = listen(dropAll); err == nil {
			cfg.RelayConn, err = listen(dropAll)
		}
	}
	var n *quicnode.Node
	if err == nil {
		n, err = quicnode.New(cfg)
	}
	if err != nil {
		for _, c := range socks {
			c.Close()
		}
		return nil, err
	}
	if err := n.Start(ctx); err != nil {
		return nil, err
	}
	if err := n.WaitRendezvous(ctx); err != nil {
		n.Close()
		return nil, err
	}
	return &anode{store: st, node: n}, nil
}

// trustedNode starts a node whose identity the hub trusts and which trusts
// the hub, registered at the rendezvous: on a store from the pool, or on a
// new identity for which trust is first established through the rendezvous
// (the node requests, the hub approves).
func (e *agentnetEnv) trustedNode(ctx context.Context, how nodeNet) (*anode, error) {
	e.mu.Lock()
	if e.closed {
		e.mu.Unlock()
		return nil, net.ErrClosed
	}
	if k := len(e.pool); k > 0 {
		st := e.pool[k-1]
		e.pool = e.pool[:k-1]
		e.mu.Unlock()
		n, err := e.startNode(ctx, st, how)
		if err != nil {
			e.release(st)
		}
		return n, err
	}
	e.mu.Unlock()
	st, err := trustdb.Open(filepath.Join(e.dir, fmt.Sprintf("peer-%d", e.seq.Add(1))))
	if err != nil {
		return nil, err
	}
	n, err := e.startNode(ctx, st, how)
	if err != nil {
		st.Close()
		return nil, err
	}
	// Subscribed after Start, so the node's own subscriber (which updates
	// its index of trusted peers) has seen the event when this one does.
	hubKey := e.hub.node.PublicKey()
	trusted := make(chan struct{})
	var once sync.Once
	unsub := st.Subscribe(func(ev trustdb.Event) {
		if ev.Key == hubKey && ev.Record.State == trustdb.StateTrusted {
			once.Do(func() { close(trusted) })
		}
	})
	defer unsub()
	err = n.node.RequestTrust(ctx, e.hub.node.Addr().String(), "bench")
	if err == nil {
		select {
		case <-trusted:
			return n, nil
		case <-ctx.Done():
			err = fmt.Errorf("bench: waiting for the hub's approval: %w", ctx.Err())
		}
	}
	n.node.Close()
	st.Close()
	return nil, err
}

func (e *agentnetEnv) System() System { return Agentnet }

func (e *agentnetEnv) Dial(ctx context.Context) (net.Conn, error) {
	return e.client.node.DialTarget(ctx, e.target, benchPort)
}

func (e *agentnetEnv) Accept() (net.Conn, error) { return e.ln.Accept() }

func (e *agentnetEnv) Datagrams(context.Context) (net.PacketConn, net.PacketConn, net.Addr, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.closed {
		return nil, nil, nil, net.ErrClosed
	}
	if e.dgCli == nil {
		srv, err := e.hub.node.ListenPacket(benchDgramPort)
		if err != nil {
			return nil, nil, nil, err
		}
		cli, err := e.client.node.ListenPacket(0)
		if err != nil {
			srv.Close()
			return nil, nil, nil, err
		}
		e.dgCli, e.dgSrv = cli, srv
	}
	return e.dgCli, e.dgSrv, addressing.SockAddrFrom(e.hub.node.Addr(), benchDgramPort), nil
}

// NewPeer starts a node on a trusted store (from the pool, or a new
// identity that gets trusted first) and waits until it is registered at
// the rendezvous. It has no connection to the hub yet.
func (e *agentnetEnv) NewPeer(ctx context.Context) (Peer, error) {
	return e.newPeer(ctx, netOpen)
}

// newPeer is NewPeer on the network how.
func (e *agentnetEnv) newPeer(ctx context.Context, how nodeNet) (*agentnetPeer, error) {
	n, err := e.trustedNode(ctx, how)
	if err != nil {
		return nil, err
	}
	p := &agentnetPeer{env: e, n: n}
	e.mu.Lock()
	if e.closed {
		e.mu.Unlock()
		n.node.Close()
		n.store.Close()
		return nil, net.ErrClosed
	}
	e.peers[p] = struct{}{}
	e.mu.Unlock()
	return p, nil
}

// release returns a trusted store to the pool, without the hub's address
// its node kept: the next NewPeer on it must be a first contact, not a
// repeat one.
func (e *agentnetEnv) release(st *trustdb.Store) {
	err := quicnode.ForgetPeerAddress(st, e.hub.node.PublicKey())
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.closed || err != nil {
		st.Close()
		return
	}
	e.pool = append(e.pool, st)
}

func (e *agentnetEnv) Close() error {
	e.closeOnce.Do(func() {
		e.mu.Lock()
		e.closed = true
		peers := make([]*agentnetPeer, 0, len(e.peers))
		for p := range e.peers {
			peers = append(peers, p)
		}
		pool := e.pool
		e.pool = nil
		e.mu.Unlock()
		for _, p := range peers {
			p.n.node.Close()
			p.n.store.Close()
		}
		for _, st := range pool {
			st.Close()
		}
		e.cancel()
		if e.unsub != nil {
			e.unsub()
		}
		e.wg.Wait()
		for _, n := range []*anode{e.client, e.hub} {
			if n != nil {
				n.node.Close()
				n.store.Close()
			}
		}
		if e.rdv != nil {
			e.rdv.Close()
		}
		os.RemoveAll(e.dir)
	})
	return nil
}

// agentnetPeer is a client node.
type agentnetPeer struct {
	env  *agentnetEnv
	n    *anode
	once sync.Once
}

func (p *agentnetPeer) Dial(ctx context.Context) (net.Conn, error) {
	return p.n.node.DialTarget(ctx, p.env.target, benchPort)
}

// Disconnect drops the connection to the hub and keeps the node: the next
// Dial is a repeat contact (the hub's last address is known, the lookup
// runs beside the handshake).
func (p *agentnetPeer) Disconnect() error {
	return p.n.node.Disconnect(p.env.target.String())
}

// Close closes the node; its trusted store goes back to the pool for the
// next NewPeer.
func (p *agentnetPeer) Close() error {
	p.once.Do(func() {
		p.n.node.Close()
		p.env.mu.Lock()
		delete(p.env.peers, p)
		p.env.mu.Unlock()
		p.env.release(p.n.store)
	})
	return nil
}

// agentnetRefuser runs a node without rendezvous that trusts nobody: every
// handshake meets quicnode's gate and is refused.
func agentnetRefuser() (childServer, error) {
	dir, err := os.MkdirTemp("", "agentnet-bench-refuser-")
	if err != nil {
		return childServer{}, err
	}
	st, err := trustdb.Open(dir)
	if err != nil {
		os.RemoveAll(dir)
		return childServer{}, err
	}
	err = admitRefuserPeers(st)
	var n *quicnode.Node
	if err == nil {
		n, err = quicnode.New(quicnode.Config{Store: st, ListenAddr: "127.0.0.1:0"})
	}
	if err == nil {
		err = n.Start(context.Background())
	}
	if err != nil {
		st.Close()
		os.RemoveAll(dir)
		return childServer{}, err
	}
	return childServer{
		ready: []string{n.LocalAddr().String(), agentnetALPN},
		close: func() { n.Close(); st.Close(); os.RemoveAll(dir) },
	}, nil
}
