package paths

import (
	"context"
	"net"
	"net/netip"
	"time"

	"github.com/agentnet/agentnet/internal/probe"
	"github.com/pion/stun/v3"
)

// Control payload kinds (the host carries them in datagrams to its
// control port).
const (
	CtlPing = 1
	CtlPong = 2
)

// Heartbeats run on a direct link while a relay link stands by: if the
// direct path stops answering for HeartbeatDead, new traffic moves to the
// relay until it answers again.
const (
	HeartbeatEvery = time.Second
	HeartbeatDead  = 3 * time.Second
)

// PathDead is how long a link may go unanswered while we send on it before
// it is declared dead and closed: a NAT rebinding behind address-dependent
// filtering, or a vanished peer, then costs seconds, not QUIC's 30 s idle
// timeout. Outages shorter than this are ridden out. Liveness is checked
// every livenessPeriod, so a dead path is closed PathDead ± livenessPeriod
// after the last packet heard.
const PathDead = 5 * time.Second

// RepairAfter is how long a direct link may go unanswered while we send on
// it before its path is re-punched in place (repair): the connection and
// its streams stay, and only if that fails too is the link closed at
// PathDead. A peer's NAT rebinding to a new port or address, or its host
// changing networks, costs a pause of about a second instead of the
// connection.
const RepairAfter = 500 * time.Millisecond

const (
	maintainPeriod = time.Second
	livenessPeriod = 250 * time.Millisecond
	repairEvery    = time.Second // re-punch a silent link at most this often
	// busyPackets heard in one livenessPeriod make a link busy: if it then
	// falls silent both ways (we only received: the peer's packets stopped
	// coming), we ask it with one heartbeat, so the receiving side of a
	// transfer notices a dead path as soon as the sending side.
	busyPackets = 16
)

// HandleControl answers heartbeats and records their answers.
func (m *Manager) HandleControl(l *Link, payload []byte) {
	if len(payload) < 1 {
		return
	}
	switch payload[0] {
	case CtlPing:
		m.host.SendControl(l, []byte{CtlPong})
	case CtlPong:
		l.lastPong.Store(time.Now().UnixNano())
	}
}

// nonQUICLoop reads the packets beside QUIC on the main socket: STUN
// answers and punch probes. Anything else is counted and dropped.
func (m *Manager) nonQUICLoop() {
	buf := make([]byte, 1500)
	for {
		k, from, err := m.tr.ReadNonQUICPacket(m.ctx, buf)
		if err != nil {
			return
		}
		m.stats.nonQUIC.Add(1)
		b := buf[:k]
		switch {
		case stun.IsMessage(b):
			m.handleSTUN(b)
		case len(b) > 0 && b[0] == probe.Type:
			if ua, ok := from.(*net.UDPAddr); ok {
				m.handleProbe(b, ua.AddrPort())
			}
		}
	}
}

// maintainLoop runs the periodic path work: heartbeats on direct links
// backed by a relay, dead-path checks, relay re-binds, re-punching for
// relayed peers, and the NAT check.
func (m *Manager) maintainLoop() {
	t := time.NewTicker(maintainPeriod)
	defer t.Stop()
	live := time.NewTicker(livenessPeriod)
	defer live.Stop()
	var lastUpgrade, lastNAT time.Time
	for {
		select {
		case <-m.ctx.Done():
			return
		case <-live.C:
			m.checkPaths()
			continue
		case <-t.C:
		}
		m.heartbeat()
		if m.cfg.TCP != nil {
			m.probeUDP()
		}
		if m.relay != nil {
			m.relay.rebindDue()
		}
		if time.Since(lastUpgrade) >= upgradeEvery {
			lastUpgrade = time.Now()
			m.upgradeRelayed()
		}
		if time.Since(lastNAT) >= time.Minute && m.rendezvous() != nil {
			lastNAT = time.Now()
			m.g.Go(func() {
				ctx, cancel := context.WithTimeout(m.ctx, 5*time.Second)
				defer cancel()
				m.CheckNAT(ctx)
			})
		}
	}
}

// heartbeat pings the direct link of every peer that also has a relay link
// and marks the direct path failed (or healthy again) from the answers.
func (m *Manager) heartbeat() {
	now := time.Now()
	m.mu.Lock()
	var ping []*Link
	for _, p := range m.peers.All() {
		d, r := p.links[KindDirect], p.links[KindRelay]
		if d == nil || r == nil || !r.Alive() {
			continue
		}
		last := time.Unix(0, d.lastPong.Load())
		if d.lastPong.Load() == 0 {
			last = d.Since
		}
		failed := now.Sub(last) > HeartbeatDead
		if failed != p.directFailed {
			p.directFailed = failed
			if failed {
				m.stats.failovers.Add(1)
			}
			m.log.Info("direct path health changed", "peer", d.Addr, "failed", failed)
		}
		ping = append(ping, d)
	}
	m.mu.Unlock()
	for _, d := range ping {
		m.host.SendControl(d, []byte{CtlPing})
	}
}

// checkPaths closes links that have gone deaf (see PathDead) and re-dials
// the peers of the ones we had dialled, so a new path is ready for the
// application's next stream.
func (m *Manager) checkPaths() {
	now := time.Now()
	m.mu.Lock()
	var links []*Link
	for _, p := range m.peers.All() {
		links = append(links, p.all()...)
	}
	m.mu.Unlock()
	for _, l := range links {
		l.quietFor(now)
		st := l.Conn.ConnectionStats()
		switch {
		case l.lastHeard.IsZero() || st.PacketsReceived != l.recvCount:
			// A check that heard only a few packets right after a busy one
			// is busy too: a path cut just after a check leaves one.
			got := st.PacketsReceived - l.recvCount
			l.busy = !l.lastHeard.IsZero() && (got >= busyPackets || l.lastGot >= busyPackets)
			l.lastGot = got
			l.recvCount, l.sentAtHeard, l.lastHeard, l.sendingSince = st.PacketsReceived, st.PacketsSent, now, time.Time{}
			m.repairHeard(l, now)
		case st.PacketsSent == l.sentAtHeard:
			// Idle both ways: nothing to judge, unless a busy link fell
			// silent at once: then one heartbeat asks the peer.
			// (A sender whose congestion window filled is idle too.)
			if l.busy && l.Kind == KindDirect && l.sendingSince.IsZero() {
				l.sendingSince = now
				m.host.SendControl(l, []byte{CtlPing})
			}
		case l.sendingSince.IsZero():
			l.sendingSince = now
		case now.Sub(l.lastHeard) >= PathDead:
			m.stats.pathsDead.Add(1)
			m.log.Info("path dead: closing link", "peer", l.Addr, "path", l.Kind, "silent_for", now.Sub(l.lastHeard).Round(time.Millisecond))
			l.Conn.CloseWithError(CodePathDead, "path dead")
			if l.Outgoing && m.host.Admissible(l.Key) {
				key := l.Key
				m.g.Go(func() {
					ctx, cancel := context.WithTimeout(m.ctx, m.cfg.HandshakeTimeout)
					defer cancel()
					if _, err := m.Link(ctx, key); err != nil {
						m.log.Debug("re-dial after dead path failed", "peer", key.NodeID(), "err", err)
					}
				})
			}
		}
		// Unanswered for RepairAfter since we last heard, and for at least
		// one whole check since the sends began, and 3 RTTs unless the link
		// was busy: a link that was idle both ways and has just sent is not
		// judged on its first packets, but one that carried a stream until
		// a moment ago is not given the round-trip time a queue inflated
		// (the sender of a rate-limited transfer may be the one that moved,
		// and only its own repair carries its new address).
		if !l.sendingSince.IsZero() && l.Kind == KindDirect && now.Sub(l.repairAt) >= repairEvery &&
			now.Sub(l.lastHeard) >= RepairAfter && now.Sub(l.lastHeard) < PathDead &&
			now.Sub(l.sendingSince) >= livenessPeriod/2 && (l.busy || now.Sub(l.sendingSince) >= 3*st.SmoothedRTT) {
			l.repairAt = now
			m.repair(l, now, "silent_for", now.Sub(l.lastHeard).Round(time.Millisecond))
		}
	}
}

// repair re-punches the path of a direct link that went silent while we
// send on it, keeping the connection: a fresh introduction (our reflexive
// address checked first, since it may be what changed) makes both sides
// probe each other's current addresses; a genuine probe from a new address
// of the peer redirects the link's packets there (repairProbe), and the
// peer's packets, now let through our NAT by our probes, move quic-go's
// server side to the new address by itself.
//
// Either side may notice first, but only the one that moved can make the
// repair work: the rendezvous reaches it (and knows its new address) only
// once it has sent from there, so each side repairs on its own silence.
func (m *Manager) repair(l *Link, now time.Time, why ...any) {
	rdv := m.rendezvous()
	if rdv == nil || !l.Alive() || !m.host.Admissible(l.Key) {
		return
	}
	l.repairSince.CompareAndSwap(0, now.UnixNano())
	m.stats.repairs.Add(1)
	m.log.Info("path silent: re-punching", append([]any{"peer", l.Addr, "remote", l.Conn.RemoteAddr()}, why...)...)
	key := l.Key
	m.g.Go(func() {
		ctx, cancel := context.WithTimeout(m.ctx, repairEvery)
		defer cancel()
		sctx, scancel := context.WithTimeout(ctx, RepairAfter)
		m.CheckNAT(sctx)
		scancel()
		intro, err := rdv.Connect(ctx, l.Addr, m.ownCandidates(), false)
		if err != nil || intro.Peer != key {
			m.log.Debug("re-punch: no introduction", "peer", l.Addr, "err", err)
			return
		}
		m.startPunch(intro, time.Now())
	})
}

// repairHeard ends the repair of l, which was heard again.
func (m *Manager) repairHeard(l *Link, now time.Time) {
	since := l.repairSince.Swap(0)
	if since == 0 {
		return
	}
	m.stats.repaired.Add(1)
	remote := l.Conn.RemoteAddr()
	if ua, ok := remote.(*net.UDPAddr); ok {
		to := m.redir.target(l, unmap(ua.AddrPort()))
		remote = net.UDPAddrFromAddrPort(to)
		m.setHint(l.Key, remote)
	}
	m.log.Info("path repaired", "peer", l.Addr, "remote", remote, "took", now.Sub(time.Unix(0, since)).Round(time.Millisecond))
}

// repairProbe handles a genuine probe from the peer of ps.repair, the link
// the punch session repairs (whichever side began it): a probe from the
// address the connection sends to means that path works (any redirect of
// it is dropped, and the session ends a probe round later: a re-punch of
// a path that was only slow, not moved, costs a few probes, not a whole
// punch window); one from elsewhere, while nothing has come in on the link
// since the session began, means the peer moved there, and the link's
// packets follow. Both sides redirect: whichever has something to send
// first (data, or only an acknowledgement) gets a packet across, and the
// connection recovers from there (a sender that is congestion-limited after
// a second of silence would otherwise wait for its next probe timeout).
func (m *Manager) repairProbe(ps *punchSession, from netip.AddrPort) {
	l := ps.repair
	ua, ok := l.Conn.RemoteAddr().(*net.UDPAddr)
	if !ok || !l.Alive() {
		return
	}
	remote := unmap(ua.AddrPort())
	if from == remote {
		m.redir.drop(l, remote)
		ps.pathOK.CompareAndSwap(0, time.Now().UnixNano())
		return
	}
	if l.Conn.ConnectionStats().PacketsReceived > ps.rx0 {
		return // heard since: the path it has works
	}
	if m.redir.set(l, remote, from) {
		m.stats.redirected.Add(1)
		m.log.Info("peer moved: redirecting the link", "peer", l.Addr, "from", remote, "to", from)
	}
}

// LocalCandidates lists the host addresses a peer on the same LAN could
// reach the socket at.
func LocalCandidates(c net.PacketConn) []netip.AddrPort {
	la, ok := c.LocalAddr().(*net.UDPAddr)
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
