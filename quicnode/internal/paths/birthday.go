package paths

import (
	"context"
	"math/rand/v2"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/agentnet/agentnet/addressing"
	"github.com/agentnet/agentnet/internal/probe"
)

// Birthday punching: a hard NAT (endpoint-dependent mapping, "symmetric")
// gives every destination a fresh random public port, so the easy peer
// cannot learn the port to answer to. The hard side H opens
// birthdaySockets extra sockets and probes the easy side E's reflexive
// address from each (birthdaySockets open mappings towards E); E sprays
// birthdaySprays probes from its main socket to random ports of H's public
// IP, each opening its own NAT's filter for that port. A spray probe that
// lands on one of H's mappings reaches that socket, and then both NATs
// pass the pair: H keeps the socket, runs a QUIC transport on it and dials
// E from it. With 256 mappings among ~64k ports and 2048 sprays, a miss has
// probability about (1-256/64512)^2048 ≈ 3e-4.
//
// Bounds: only for an introduction of a trusted pair (the rendezvous
// introduces only those), when the peer reported the complementary kind;
// one attempt per peer at a time, at most maxBirthdays at once. The spray is at most birthdaySprays
// probes of probe.Len bytes (~100 KB) to one IP over birthdaySprayFor
// (~1400 packets/s), and relayed peers are re-introduced at most every
// upgradeEvery. The hard side holds its extra sockets at most
// birthdayWindow and closes all but the winner at the first hit.
const (
	birthdaySockets    = 256
	birthdaySprays     = 2048
	birthdaySprayBatch = 64
	birthdaySprayFor   = 1500 * time.Millisecond
	birthdaySprayDelay = 100 * time.Millisecond // let the hard side's mappings exist first
	birthdayProbeEvery = 200 * time.Millisecond
	birthdayWindow     = 4 * time.Second
	birthdayRelayAfter = 3 * time.Second // relay fallback while a birthday attempt runs
	birthdayMinPort    = 1024
	maxBirthdays       = 4 // attempts running at once (each role): at most 1024 extra sockets
)

// birthdayRole says which part of a birthday attempt we play for an
// introduction, from our NAT kind and the peer's reported one.
type birthdayRole uint8

const (
	birthdayNone  birthdayRole = iota
	birthdayHard               // we open many sockets and dial
	birthdaySpray              // we spray the peer's IP from the main socket
)

func (m *Manager) birthdayRoleFor(peerNAT string) birthdayRole {
	own := m.NAT().Kind
	switch {
	case own == NATHard && peerNAT == string(NATEasy):
		return birthdayHard
	case own == NATEasy && peerNAT == string(NATHard):
		return birthdaySpray
	}
	return birthdayNone
}

// startBirthday runs the role's part of the attempt in the background,
// unless one for the same peer is running.
func (m *Manager) startBirthday(ps *punchSession, role birthdayRole) {
	ps.mu.Lock()
	var target netip.AddrPort
	if len(ps.cands) > 0 {
		target = ps.cands[0] // the server-observed reflexive address
	}
	ps.mu.Unlock()
	if !target.IsValid() {
		return
	}
	m.mu.Lock()
	running := 0
	for _, r := range m.birthdays {
		if r == role {
			running++
		}
	}
	if _, busy := m.birthdays[ps.key]; m.closed || busy || running >= maxBirthdays {
		m.mu.Unlock()
		return
	}
	m.birthdays[ps.key] = role
	m.mu.Unlock()
	m.stats.birthdays.Add(1)
	m.g.Go(func() {
		defer func() {
			m.mu.Lock()
			delete(m.birthdays, ps.key)
			m.mu.Unlock()
		}()
		if role == birthdayHard {
			m.birthdayDial(ps, target)
		} else {
			m.birthdaySprayIP(ps, target.Addr())
		}
	})
}

// birthdaySprayIP sends birthdaySprays probes from the main socket to
// random ports of ip, in batches, unless a direct path appears first.
func (m *Manager) birthdaySprayIP(ps *punchSession, ip netip.Addr) {
	ping := probe.Append(make([]byte, 0, probe.Len), ps.token, probe.KindPing, m.self, 0)
	batches := birthdaySprays / birthdaySprayBatch
	t := time.NewTicker(birthdaySprayFor / time.Duration(batches))
	defer t.Stop()
	select {
	case <-m.ctx.Done():
		return
	case <-time.After(birthdaySprayDelay):
	}
	for i := 0; i < batches; i++ {
		if m.hasDirect(ps.key) {
			return
		}
		for j := 0; j < birthdaySprayBatch; j++ {
			port := birthdayMinPort + rand.IntN(65536-birthdayMinPort)
			m.tr.WriteTo(ping, net.UDPAddrFromAddrPort(netip.AddrPortFrom(ip, uint16(port))))
		}
		select {
		case <-m.ctx.Done():
			return
		case <-t.C:
		}
	}
}

// birthdayHit is a genuine probe heard on one of the extra sockets.
type birthdayHit struct {
	sock int
	from netip.AddrPort
	ping bool
	seq  uint64
}

func (m *Manager) listenUDP(network, laddr string) (net.PacketConn, error) {
	if m.cfg.ListenUDP != nil {
		return m.cfg.ListenUDP(network, laddr)
	}
	ua, err := net.ResolveUDPAddr(network, laddr)
	if err != nil {
		return nil, err
	}
	return net.ListenUDP(network, ua)
}

// birthdayDial is the hard side: open the extra sockets, probe target from
// each until one hears the peer, then dial the peer from that socket.
func (m *Manager) birthdayDial(ps *punchSession, target netip.AddrPort) {
	ip := net.IPv4zero
	if la, ok := m.conn.LocalAddr().(*net.UDPAddr); ok {
		ip = la.IP
	}
	laddr := net.JoinHostPort(ip.String(), "0")
	socks := make([]net.PacketConn, 0, birthdaySockets)
	for len(socks) < birthdaySockets {
		c, err := m.listenUDP("udp", laddr)
		if err != nil {
			m.log.Debug("birthday: socket", "err", err)
			break
		}
		socks = append(socks, c)
	}
	if len(socks) == 0 {
		return
	}
	deadline := time.Now().Add(birthdayWindow)
	hits := make(chan birthdayHit, 1)
	var readers sync.WaitGroup
	for i, c := range socks {
		c.SetReadDeadline(deadline)
		readers.Add(1)
		go func() {
			defer readers.Done()
			m.birthdayRead(ps, c, i, hits)
		}()
	}
	to := net.UDPAddrFromAddrPort(target)
	send := func() {
		for i, c := range socks {
			if c != nil {
				c.WriteTo(probe.Append(make([]byte, 0, probe.Len), ps.token, probe.KindPing, m.self, uint64(i)), to)
			}
		}
	}
	send()
	t := time.NewTicker(birthdayProbeEvery)
	defer t.Stop()
	timeout := time.NewTimer(time.Until(deadline))
	defer timeout.Stop()
	var hit birthdayHit
	won := false
wait:
	for {
		select {
		case hit = <-hits:
			won = true
			break wait
		case <-t.C:
			if m.hasDirect(ps.key) {
				break wait
			}
			send()
		case <-timeout.C:
			break wait
		case <-m.ctx.Done():
			break wait
		}
	}
	var keep net.PacketConn
	for i, c := range socks {
		if won && i == hit.sock {
			keep = c
			continue
		}
		c.Close()
	}
	readers.Wait()
	if !won {
		m.log.Debug("birthday: no hit", "peer", ps.peerNode, "sockets", len(socks))
		return
	}
	keep.SetReadDeadline(time.Time{})
	ps.mu.Lock()
	mainDialed := len(ps.dialed) > 0
	ps.birthdayDialing = !mainDialed
	ps.mu.Unlock()
	if mainDialed {
		// The main socket heard the peer too and dials from there.
		keep.Close()
		return
	}
	if hit.ping {
		keep.WriteTo(probe.Append(make([]byte, 0, probe.Len), ps.token, probe.KindPong, m.self, hit.seq), net.UDPAddrFromAddrPort(hit.from))
	}
	m.birthdayLink(ps, keep, hit.from)
}

// birthdayRead reads probes on one extra socket until a genuine one from
// the peer arrives (reported on hits, first one wins) or the socket closes.
func (m *Manager) birthdayRead(ps *punchSession, c net.PacketConn, i int, hits chan<- birthdayHit) {
	buf := make([]byte, 1500)
	for {
		k, fromAddr, err := c.ReadFrom(buf)
		if err != nil {
			return
		}
		ua, ok := fromAddr.(*net.UDPAddr)
		if !ok {
			continue
		}
		from := ua.AddrPort()
		b := buf[:k]
		p, err := probe.Parse(b)
		if err != nil || p.Session != ps.id || probe.Verify(b, ps.token, ps.peerNode) != nil {
			continue
		}
		select {
		case hits <- birthdayHit{sock: i, from: netip.AddrPortFrom(from.Addr().Unmap(), from.Port()), ping: p.Kind == probe.KindPing, seq: p.Seq}:
			return // the winner: stop reading, the QUIC transport takes over
		default:
			// another socket won already; ours is about to be closed
		}
	}
}

// birthdayLink runs a QUIC transport (with our listener, so either side
// may dial) on the winning socket, dials the peer from it, and keeps the
// transport as long as a direct link of the peer uses it.
func (m *Manager) birthdayLink(ps *punchSession, udp net.PacketConn, to netip.AddrPort) {
	tr := m.transport(udp)
	defer func() {
		tr.Close()
		udp.Close()
	}()
	ln, err := tr.Listen(m.host.ServerTLS(), m.cfg.QUIC)
	if err != nil {
		return
	}
	var accepting sync.WaitGroup
	defer accepting.Wait()
	defer ln.Close() // (runs first) ends the accept loop
	accepting.Add(1)
	go func() {
		defer accepting.Done()
		for {
			conn, err := ln.Accept(m.ctx)
			if err != nil {
				return
			}
			m.g.Go(func() { m.admit(conn, KindDirect) })
		}
	}()
	ctx, cancel := context.WithTimeout(m.ctx, min(m.cfg.HandshakeTimeout, birthdayWindow))
	conn, err := tr.Dial(ctx, net.UDPAddrFromAddrPort(to), m.host.ClientTLS(ps.key), m.cfg.QUIC)
	if err == nil {
		if err = AwaitWelcome(ctx, conn); err != nil {
			conn.CloseWithError(CodeBadWelcome, "no welcome")
		}
	}
	cancel()
	if err != nil {
		m.log.Debug("birthday: dial failed", "peer", ps.peerNode, "remote", to, "err", err)
		return
	}
	l, err := m.addLink(conn, ps.key, KindDirect, true, PhaseBirthday, time.Since(ps.start))
	if err != nil {
		return
	}
	m.stats.birthdayLinks.Add(1)
	m.log.Info("direct path up (birthday)", "peer", l.Addr, "remote", to, "local", udp.LocalAddr())
	select {
	case ps.direct <- l:
	default:
	}
	// Keep the transport while the peer's direct link runs on it.
	local := udp.LocalAddr().String()
	for {
		cur := m.directOn(ps.key, local)
		if cur == nil {
			return
		}
		select {
		case <-cur.Conn.Context().Done():
		case <-m.ctx.Done():
			return
		}
	}
}

// directOn returns key's live direct link if it runs on the socket bound
// to local, else nil.
func (m *Manager) directOn(key addressing.PublicKey, local string) *Link {
	m.mu.Lock()
	defer m.mu.Unlock()
	p, _ := m.peers.Get(key)
	if p == nil {
		return nil
	}
	l := p.links[KindDirect]
	if l == nil || !l.Alive() || l.Conn.LocalAddr().String() != local {
		return nil
	}
	return l
}
