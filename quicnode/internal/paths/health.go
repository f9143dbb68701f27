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

const (
	maintainPeriod = time.Second
	livenessPeriod = 250 * time.Millisecond
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
	for _, p := range m.peers {
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
	for _, p := range m.peers {
		links = append(links, p.all()...)
	}
	m.mu.Unlock()
	for _, l := range links {
		l.quietFor(now)
		st := l.Conn.ConnectionStats()
		switch {
		case l.lastHeard.IsZero() || st.PacketsReceived != l.recvCount:
			l.recvCount, l.sentAtHeard, l.lastHeard, l.sendingSince = st.PacketsReceived, st.PacketsSent, now, time.Time{}
		case st.PacketsSent == l.sentAtHeard:
			// Idle both ways: nothing to judge.
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
