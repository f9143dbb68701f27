package quicnode

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/agentnet/agentnet/addressing"
	"github.com/agentnet/agentnet/internal/probe"
	"github.com/agentnet/agentnet/internal/relayframe"
	"github.com/agentnet/agentnet/rendezvous"
	"github.com/quic-go/quic-go"
)

// NAT traversal timing.
const (
	probeEvery     = 50 * time.Millisecond // probe interval while punching
	punchWindow    = 10 * time.Second      // how long one introduction keeps probing
	relayAfter     = 1500 * time.Millisecond
	relayAfterHard = 500 * time.Millisecond
	upgradeEvery   = 15 * time.Second // re-punch interval for relayed peers
	maxCandidates  = 16
	maxPunchDials  = 4
	maintainPeriod = time.Second
)

// punchSession is one introduction: both agents probe each other's
// candidates with the shared token; the dialer (the initiator, or the hard
// side of a birthday attempt) dials QUIC to every address a genuine probe
// came from.
type punchSession struct {
	key      addressing.PublicKey
	peerNode addressing.NodeID
	token    [probe.TokenSize]byte
	id       [8]byte
	dialer   bool // we dial QUIC to where genuine probes come from
	deadline time.Time
	direct   chan *link // the first direct link this session made

	mu     sync.Mutex
	cands  []netip.AddrPort
	dialed map[netip.AddrPort]bool
	seq    uint64
	// birthdayDialing: the hard side dials from a birthday socket, so the
	// main socket does not (and vice versa, via dialed): two of our dials
	// landing at once would each be kept by a different side's tie-break.
	birthdayDialing bool
}

// traverse reaches key through the rendezvous: an introduction starts hole
// punching on both sides, and if no direct path appears within relayAfter
// (at once when both NATs map per destination), the relay carries the
// connection while punching goes on.
func (n *Node) traverse(ctx context.Context, key addressing.PublicKey) (*link, error) {
	// Refresh our reflexive address first: after a NAT rebinding the one
	// learnt at start-up is stale, and the peer would probe a dead mapping.
	sctx, scancel := context.WithTimeout(ctx, time.Second)
	n.checkNAT(sctx)
	scancel()
	intro, err := n.rdv.Connect(ctx, addressing.AddrFrom(0, key.NodeID()), n.ownCandidates(), true)
	if err != nil {
		if errors.Is(err, rendezvous.ErrNotFound) {
			// The lookup just succeeded, so the pair is trusted at the
			// rendezvous: the peer went offline (or revoked us since).
			return nil, fmt.Errorf("%w: the rendezvous cannot introduce us (peer offline?)", ErrUnreachable)
		}
		return nil, fmt.Errorf("%w: introduction: %w", ErrUnreachable, err)
	}
	if intro.Peer != key {
		return nil, fmt.Errorf("%w: introduction named another key", ErrUnreachable)
	}
	ps := n.startPunch(intro)
	var relayC <-chan time.Time
	relayRes := make(chan dialResult, 1)
	if intro.Relay != nil {
		delay := relayAfter
		switch {
		case n.birthdayRoleFor(intro.PeerNAT) != birthdayNone:
			delay = birthdayRelayAfter
		case n.NATInfo().Kind == NATHard:
			// Our NAT maps per destination: punching works only against
			// open peers, and those answer at once.
			delay = relayAfterHard
		}
		t := time.NewTimer(delay)
		defer t.Stop()
		relayC = t.C
	}
	var relayErr error
	for {
		n.mu.Lock()
		changed := n.peersChanged
		n.mu.Unlock()
		if l := n.directLink(key); l != nil {
			// The peer dialled us (it is the dialer of a birthday attempt).
			return l, nil
		}
		select {
		case l := <-ps.direct:
			return l, nil
		case <-changed:
		case <-relayC:
			relayC = nil
			go func() {
				l, err := n.dialRelay(ctx, key, intro.Relay)
				relayRes <- dialResult{l, err}
			}()
		case r := <-relayRes:
			if r.err == nil {
				return r.l, nil
			}
			relayErr = r.err
		case <-ctx.Done():
			if relayErr != nil {
				return nil, fmt.Errorf("%w: relay: %w", ErrUnreachable, relayErr)
			}
			return nil, fmt.Errorf("%w: no direct path and no relay within the handshake timeout", ErrUnreachable)
		}
	}
}

type dialResult struct {
	l   *link
	err error
}

// directLink returns key's live direct link, or nil.
func (n *Node) directLink(key addressing.PublicKey) *link {
	n.mu.Lock()
	defer n.mu.Unlock()
	if p := n.peers[key]; p != nil && p.links[pathDirect] != nil && p.links[pathDirect].alive() {
		return p.links[pathDirect]
	}
	return nil
}

// ownCandidates lists the addresses a peer may reach our main socket at.
func (n *Node) ownCandidates() []netip.AddrPort {
	var c []netip.AddrPort
	if nat := n.NATInfo(); nat.Mapped.IsValid() {
		c = append(c, nat.Mapped)
	}
	if n.rdv != nil {
		if _, refl := n.rdv.Self(); refl.IsValid() && !containsAddrPort(c, refl) {
			c = append(c, refl)
		}
	}
	for _, l := range localCandidates(n.udp) {
		if !containsAddrPort(c, l) && len(c) < 8 {
			c = append(c, l)
		}
	}
	return c
}

// introduced handles an introduction pushed by the rendezvous because a
// trusted peer wants to reach us: probe its candidates, and bind the relay
// session so its relayed dial can reach us. It must not block.
func (n *Node) introduced(intro rendezvous.Introduce) {
	if !n.admissible(intro.Peer) {
		return
	}
	n.startPunch(intro)
	if intro.Relay != nil && n.relay != nil {
		g := intro.Relay
		s := n.relay.add(relayframe.Session(g.Session), g.Addr, g.Side, g.Secret)
		n.goFunc(func() { // re-send the Bind until confirmed (packets get lost)
			ctx, cancel := context.WithTimeout(n.ctx, n.cfg.handshakeTimeout())
			defer cancel()
			n.relay.waitBound(ctx, s)
		})
	}
}

// startPunch registers a punch session and starts probing.
func (n *Node) startPunch(intro rendezvous.Introduce) *punchSession {
	ps := &punchSession{
		key:      intro.Peer,
		peerNode: intro.Peer.NodeID(),
		token:    intro.Token,
		id:       probe.TokenID(intro.Token),
		deadline: time.Now().Add(punchWindow),
		direct:   make(chan *link, 1),
		dialed:   make(map[netip.AddrPort]bool),
	}
	for _, c := range intro.Candidates {
		ps.addCandidate(c)
	}
	role := n.birthdayRoleFor(intro.PeerNAT)
	ps.dialer = intro.Initiator
	switch role {
	case birthdayHard:
		ps.dialer = true
	case birthdaySpray:
		ps.dialer = false // the hard side dials whatever we punched
	}
	n.mu.Lock()
	if n.closed {
		n.mu.Unlock()
		return ps
	}
	n.punches[ps.id] = ps
	n.mu.Unlock()
	n.goFunc(func() { n.punchLoop(ps) })
	if role != birthdayNone {
		n.startBirthday(ps, role)
	}
	return ps
}

func (ps *punchSession) addCandidate(c netip.AddrPort) bool {
	c = netip.AddrPortFrom(c.Addr().Unmap(), c.Port())
	ps.mu.Lock()
	defer ps.mu.Unlock()
	if !c.IsValid() || containsAddrPort(ps.cands, c) || len(ps.cands) >= maxCandidates {
		return false
	}
	ps.cands = append(ps.cands, c)
	return true
}

// punchLoop probes every candidate until a direct link to the peer exists
// or the window closes.
func (n *Node) punchLoop(ps *punchSession) {
	defer func() {
		n.mu.Lock()
		if n.punches[ps.id] == ps {
			delete(n.punches, ps.id)
		}
		n.mu.Unlock()
	}()
	t := time.NewTicker(probeEvery)
	defer t.Stop()
	self := n.addr.Node()
	for time.Now().Before(ps.deadline) {
		if n.hasDirect(ps.key) {
			return
		}
		ps.mu.Lock()
		cands := append([]netip.AddrPort(nil), ps.cands...)
		ps.seq++
		seq := ps.seq
		ps.mu.Unlock()
		b := probe.Append(make([]byte, 0, probe.Len), ps.token, probe.KindPing, self, seq)
		for _, c := range cands {
			n.tr.WriteTo(b, net.UDPAddrFromAddrPort(c))
		}
		select {
		case <-n.ctx.Done():
			return
		case <-t.C:
		}
	}
}

func (n *Node) hasDirect(key addressing.PublicKey) bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	p := n.peers[key]
	return p != nil && p.links[pathDirect] != nil && p.links[pathDirect].alive()
}

// handleProbe answers and learns from a genuine probe: its source is a
// working path from the peer to us (peer-reflexive candidate); the
// dialer dials QUIC there.
func (n *Node) handleProbe(b []byte, from netip.AddrPort) {
	p, err := probe.Parse(b)
	if err != nil {
		return
	}
	n.mu.Lock()
	ps := n.punches[p.TokenID]
	n.mu.Unlock()
	if ps == nil || probe.Verify(b, ps.token) != nil || p.Sender != ps.peerNode {
		return
	}
	from = netip.AddrPortFrom(from.Addr().Unmap(), from.Port())
	if p.Kind == probe.KindPing {
		pong := probe.Append(make([]byte, 0, probe.Len), ps.token, probe.KindPong, n.addr.Node(), p.Seq)
		n.tr.WriteTo(pong, net.UDPAddrFromAddrPort(from))
	}
	ps.addCandidate(from)
	if !ps.dialer {
		return
	}
	ps.mu.Lock()
	dial := !ps.dialed[from] && len(ps.dialed) < maxPunchDials && !ps.birthdayDialing
	if dial {
		ps.dialed[from] = true
	}
	ps.mu.Unlock()
	if !dial || n.hasDirect(ps.key) {
		return
	}
	n.goFunc(func() {
		ctx, cancel := context.WithTimeout(n.ctx, n.cfg.handshakeTimeout())
		defer cancel()
		conn, err := n.dialOne(ctx, ps.key, from)
		if err != nil {
			n.log.Debug("punched dial failed", "peer", ps.peerNode, "remote", from, "err", err)
			return
		}
		l, err := n.addLink(conn, ps.key, pathDirect, true)
		if err != nil {
			return
		}
		n.log.Info("direct path up", "peer", l.addr, "remote", from)
		select {
		case ps.direct <- l:
		default:
		}
	})
}

// dialRelay binds our side of the relay session and dials the peer through
// it on the relay transport.
func (n *Node) dialRelay(ctx context.Context, key addressing.PublicKey, g *rendezvous.RelayGrant) (*link, error) {
	if n.relay == nil {
		return nil, errors.New("no relay transport")
	}
	s := n.relay.add(relayframe.Session(g.Session), g.Addr, g.Side, g.Secret)
	if err := n.relay.waitBound(ctx, s); err != nil {
		return nil, fmt.Errorf("relay bind: %w", err)
	}
	tlsConf := n.clientTLS(key)
	conn, err := n.relayTr.Dial(ctx, relayAddr{s.id}, tlsConf, n.relayQconf)
	if err != nil {
		return nil, classify(err)
	}
	if err := awaitWelcome(ctx, conn); err != nil {
		conn.CloseWithError(CodeBadWelcome, "no welcome")
		return nil, err
	}
	l, err := n.addLink(conn, key, pathRelay, true)
	if err == nil {
		n.log.Info("relay path up", "peer", l.addr)
	}
	return l, err
}

// maintainLoop runs the node's periodic path work: heartbeats on direct
// links backed by a relay, relay re-binds, re-punching for relayed peers,
// and the NAT check.
func (n *Node) maintainLoop() {
	t := time.NewTicker(maintainPeriod)
	defer t.Stop()
	var lastUpgrade, lastNAT time.Time
	for {
		select {
		case <-n.ctx.Done():
			return
		case <-t.C:
		}
		n.heartbeat()
		n.checkPaths()
		n.knock.refresh()
		if n.relay != nil {
			n.relay.rebindDue()
		}
		if time.Since(lastUpgrade) >= upgradeEvery {
			lastUpgrade = time.Now()
			n.upgradeRelayed()
		}
		if time.Since(lastNAT) >= time.Minute && n.rdv != nil {
			lastNAT = time.Now()
			n.goFunc(func() {
				ctx, cancel := context.WithTimeout(n.ctx, 5*time.Second)
				defer cancel()
				n.checkNAT(ctx)
			})
		}
	}
}

// upgradeRelayed asks for a fresh introduction (without a new relay
// session) for every peer we reach only through a relay link we dialled.
func (n *Node) upgradeRelayed() {
	if n.rdv == nil {
		return
	}
	n.mu.Lock()
	var keys []addressing.PublicKey
	for k, p := range n.peers {
		if r := p.links[pathRelay]; r != nil && r.outgoing && p.links[pathDirect] == nil {
			keys = append(keys, k)
		}
	}
	n.mu.Unlock()
	for _, k := range keys {
		n.goFunc(func() {
			ctx, cancel := context.WithTimeout(n.ctx, 5*time.Second)
			defer cancel()
			intro, err := n.rdv.Connect(ctx, addressing.AddrFrom(0, k.NodeID()), n.ownCandidates(), false)
			if err == nil && intro.Peer == k {
				n.startPunch(intro)
			}
		})
	}
}

// relayQUICConfig keeps relayed packets within the relay's frame size.
func relayQUICConfig(base *quic.Config) *quic.Config {
	c := base.Clone()
	c.InitialPacketSize = 1200
	c.DisablePathMTUDiscovery = true
	return c
}
