package paths

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/agentnet/agentnet/addressing"
	"github.com/agentnet/agentnet/internal/probe"
	"github.com/agentnet/agentnet/internal/relayframe"
	"github.com/agentnet/agentnet/internal/tunnel"
	"github.com/agentnet/agentnet/rendezvous"
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
)

// punchSession is one introduction: both agents probe each other's
// candidates with the shared token; the dialer (the initiator, or the hard
// side of a birthday attempt) dials QUIC to every address a genuine probe
// came from.
type punchSession struct {
	key      addressing.PublicKey
	peerNode addressing.NodeID
	token    [probe.TokenSize]byte
	id       [8]byte // the session ID of the peer's probes
	dialer   bool    // we dial QUIC to where genuine probes come from
	deadline time.Time
	start    time.Time  // when the dial (or the introduction) began
	direct   chan *Link // the first direct link this session made
	// repair is the direct link to the peer that existed when the session
	// began: the session re-punches its path (see Manager.repair) instead
	// of making a new link, and ends once the link is heard again.
	repair *Link
	rx0    uint64 // repair's PacketsReceived when the session began
	// pathOK is when a genuine probe first came from the address repair
	// sends to (unix ns; 0: none yet): that path works (the peer did not
	// move; our own new mapping, if it changed, passes its NAT now). The
	// session ends one probe round later: the pong, and that round's pings
	// from our current address, reach a peer that must learn it.
	pathOK atomic.Int64

	mu     sync.Mutex
	cands  []netip.AddrPort
	dialed map[netip.AddrPort]bool
	seq    uint64
	// birthdayDialing: the hard side dials from a birthday socket, so the
	// main socket does not (and vice versa, via dialed): two of our dials
	// landing at once would each be kept by a different side's tie-break.
	birthdayDialing bool
}

// traverse reaches the dialer's peer through the rendezvous (phases 4 and
// 5 of a dial): an introduction starts hole punching on both sides, and if
// no direct path appears within relayAfter (sooner when our NAT maps per
// destination), the relay carries the connection while punching goes on.
func (m *Manager) traverse(d *dialer, rdv Rendezvous) (*Link, error) {
	ctx, key := d.ctx, d.key
	// Refresh our reflexive address first: after a NAT rebinding the one
	// learnt at start-up is stale, and the peer would probe a dead mapping.
	sctx, scancel := context.WithTimeout(ctx, time.Second)
	m.CheckNAT(sctx)
	scancel()
	d.phase(PhasePunch)
	intro, err := rdv.Connect(ctx, addressing.AddrFrom(0, key.NodeID()), m.ownCandidates(), true)
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
	ps := m.startPunch(intro, d.start)
	var relayC <-chan time.Time
	relayRes := make(chan dialResult, 1)
	if intro.Relay != nil {
		delay := relayAfter
		switch {
		case m.birthdayRoleFor(intro.PeerNAT) != birthdayNone:
			delay = birthdayRelayAfter
		case m.onTCP() || intro.PeerNAT == string(NATBlocked):
			// No UDP on one side: only the relay can carry the pair.
			delay = 0
		case m.NAT().Kind == NATHard:
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
		m.mu.Lock()
		changed := m.peersChanged
		m.mu.Unlock()
		if l := m.directLink(key); l != nil {
			// The peer dialled us (it is the dialer of a birthday attempt).
			return l, nil
		}
		select {
		case l := <-ps.direct:
			return l, nil
		case <-changed:
		case <-relayC:
			relayC = nil
			d.phase(PhaseRelay)
			if !m.g.Go(func() {
				l, err := m.dialRelay(ctx, key, intro.Relay, d.start)
				relayRes <- dialResult{l: l, err: err}
			}) {
				return nil, net.ErrClosed
			}
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

// ownCandidates lists the addresses a peer may reach our main socket at.
func (m *Manager) ownCandidates() []netip.AddrPort {
	var c []netip.AddrPort
	if nat := m.NAT(); nat.Mapped.IsValid() {
		c = append(c, nat.Mapped)
	}
	if rdv := m.rendezvous(); rdv != nil {
		if _, refl := rdv.Self(); refl.IsValid() && !tunnel.IsTunnelAddr(refl) && !containsAddrPort(c, refl) {
			c = append(c, refl)
		}
	}
	for _, l := range LocalCandidates(m.conn) {
		if !containsAddrPort(c, l) && len(c) < 8 {
			c = append(c, l)
		}
	}
	return c
}

func containsAddrPort(s []netip.AddrPort, a netip.AddrPort) bool {
	for _, x := range s {
		if x == a {
			return true
		}
	}
	return false
}

// Introduced handles an introduction pushed by the rendezvous because a
// trusted peer wants to reach us: probe its candidates, and bind the relay
// session so its relayed dial can reach us. It does not block.
func (m *Manager) Introduced(intro rendezvous.Introduce) {
	if !m.host.Admissible(intro.Peer) {
		return
	}
	m.startPunch(intro, time.Now())
	if intro.Relay != nil && m.relay != nil {
		g := intro.Relay
		s := m.relay.add(relayframe.Session(g.Session), m.relayServer(g.Addr), g.Side, g.Secret, m.onTCP())
		m.g.Go(func() { // re-send the Bind until confirmed (packets get lost)
			ctx, cancel := context.WithTimeout(m.ctx, m.cfg.HandshakeTimeout)
			defer cancel()
			m.relay.waitBound(ctx, s)
		})
	}
}

// startPunch registers a punch session and starts probing.
func (m *Manager) startPunch(intro rendezvous.Introduce, start time.Time) *punchSession {
	ps := &punchSession{
		key:      intro.Peer,
		peerNode: intro.Peer.NodeID(),
		token:    intro.Token,
		id:       probe.SessionID(intro.Token, intro.Peer.NodeID()),
		deadline: time.Now().Add(punchWindow),
		start:    start,
		direct:   make(chan *Link, 1),
		dialed:   make(map[netip.AddrPort]bool),
	}
	for _, c := range intro.Candidates {
		ps.addCandidate(c)
	}
	if l := m.directLink(intro.Peer); l != nil {
		// A direct link stands: the introduction repairs its path.
		ps.repair, ps.rx0 = l, l.Conn.ConnectionStats().PacketsReceived
	}
	role := m.birthdayRoleFor(intro.PeerNAT)
	if ps.repair != nil {
		role = birthdayNone
	}
	ps.dialer = intro.Initiator
	switch role {
	case birthdayHard:
		ps.dialer = true
	case birthdaySpray:
		ps.dialer = false // the hard side dials whatever we punched
	}
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return ps
	}
	m.punches[ps.id] = ps
	m.mu.Unlock()
	m.stats.punches.Add(1)
	m.g.Go(func() { m.punchLoop(ps) })
	if role != birthdayNone {
		m.startBirthday(ps, role)
	}
	return ps
}

// done reports whether the session has nothing left to do: a direct link
// exists (for a repair: the link it repairs was heard again, or ended).
func (ps *punchSession) done(m *Manager) bool {
	if l := ps.repair; l != nil {
		if at := ps.pathOK.Load(); at != 0 && time.Since(time.Unix(0, at)) >= probeEvery {
			return true
		}
		return !l.Alive() || l.Conn.ConnectionStats().PacketsReceived > ps.rx0
	}
	return m.hasDirect(ps.key)
}

func (ps *punchSession) addCandidate(c netip.AddrPort) bool {
	c = unmap(c)
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
func (m *Manager) punchLoop(ps *punchSession) {
	defer func() {
		m.mu.Lock()
		if m.punches[ps.id] == ps {
			delete(m.punches, ps.id)
		}
		m.mu.Unlock()
	}()
	t := time.NewTicker(probeEvery)
	defer t.Stop()
	for time.Now().Before(ps.deadline) {
		if ps.done(m) {
			return
		}
		ps.mu.Lock()
		cands := append([]netip.AddrPort(nil), ps.cands...)
		ps.seq++
		seq := ps.seq
		ps.mu.Unlock()
		b := probe.Append(make([]byte, 0, probe.Len), ps.token, probe.KindPing, m.self, seq)
		for _, c := range cands {
			m.tr.WriteTo(b, net.UDPAddrFromAddrPort(c))
		}
		select {
		case <-m.ctx.Done():
			return
		case <-t.C:
		}
	}
}

// handleProbe answers and learns from a genuine probe: its source is a
// working path from the peer to us (peer-reflexive candidate); the
// dialer dials QUIC there.
func (m *Manager) handleProbe(b []byte, from netip.AddrPort) {
	p, err := probe.Parse(b)
	if err != nil {
		return
	}
	m.mu.Lock()
	ps := m.punches[p.Session]
	m.mu.Unlock()
	if ps == nil || probe.Verify(b, ps.token, ps.peerNode) != nil {
		return
	}
	from = unmap(from)
	if p.Kind == probe.KindPing {
		pong := probe.Append(make([]byte, 0, probe.Len), ps.token, probe.KindPong, m.self, p.Seq)
		m.tr.WriteTo(pong, net.UDPAddrFromAddrPort(from))
	}
	ps.addCandidate(from)
	if ps.repair != nil {
		m.repairProbe(ps, from)
		return
	}
	if !ps.dialer {
		return
	}
	ps.mu.Lock()
	dial := !ps.dialed[from] && len(ps.dialed) < maxPunchDials && !ps.birthdayDialing
	if dial {
		ps.dialed[from] = true
	}
	ps.mu.Unlock()
	if !dial || m.hasDirect(ps.key) {
		return
	}
	m.g.Go(func() {
		ctx, cancel := context.WithTimeout(m.ctx, m.cfg.HandshakeTimeout)
		defer cancel()
		conn, err := m.dialOne(ctx, m.tr, ps.key, from, true)
		if err != nil {
			m.log.Debug("punched dial failed", "peer", ps.peerNode, "remote", from, "err", err)
			return
		}
		l, err := m.addLink(conn, ps.key, KindDirect, true, PhasePunch, time.Since(ps.start))
		if err != nil {
			return
		}
		m.stats.punchedLinks.Add(1)
		m.log.Info("direct path up", "peer", l.Addr, "remote", from, "found", PhasePunch.String())
		select {
		case ps.direct <- l:
		default:
		}
	})
}

// dialRelay binds our side of the relay session and dials the peer through
// it on the relay transport.
func (m *Manager) dialRelay(ctx context.Context, key addressing.PublicKey, g *rendezvous.RelayGrant, start time.Time) (*Link, error) {
	if m.relay == nil {
		return nil, errors.New("no relay transport")
	}
	s := m.relay.add(relayframe.Session(g.Session), m.relayServer(g.Addr), g.Side, g.Secret, m.onTCP())
	if err := m.relay.waitBound(ctx, s); err != nil {
		return nil, fmt.Errorf("relay bind: %w", err)
	}
	conn, err := m.relayTr.Dial(ctx, relayAddr{s.id}, m.host.ClientTLS(key), m.relayQconf)
	if err != nil {
		return nil, Classify(err)
	}
	if err := AwaitWelcome(ctx, conn); err != nil {
		conn.CloseWithError(CodeBadWelcome, "no welcome")
		return nil, err
	}
	l, err := m.addLink(conn, key, KindRelay, true, PhaseRelay, time.Since(start))
	if err == nil {
		m.stats.relayLinks.Add(1)
		m.log.Info("relay path up", "peer", l.Addr)
	}
	return l, err
}

// upgradeRelayed asks for a fresh introduction (without a new relay
// session) for every peer we reach only through a relay link we dialled.
func (m *Manager) upgradeRelayed() {
	rdv := m.rendezvous()
	if rdv == nil {
		return
	}
	m.mu.Lock()
	var keys []addressing.PublicKey
	for k, p := range m.peers.All() {
		if r := p.links[KindRelay]; r != nil && r.Outgoing && p.links[KindDirect] == nil {
			keys = append(keys, k)
		}
	}
	m.mu.Unlock()
	for _, k := range keys {
		m.g.Go(func() {
			ctx, cancel := context.WithTimeout(m.ctx, 5*time.Second)
			defer cancel()
			intro, err := rdv.Connect(ctx, addressing.AddrFrom(0, k.NodeID()), m.ownCandidates(), false)
			if err == nil && intro.Peer == k {
				m.startPunch(intro, time.Now())
			}
		})
	}
}

// Timing the node's tests and docs refer to.
const (
	UpgradeEvery       = upgradeEvery       // re-punch interval for relayed peers
	BirthdayRelayAfter = birthdayRelayAfter // relay fallback while a birthday attempt runs
	BirthdayWindow     = birthdayWindow     // how long the hard side holds its extra sockets
)
