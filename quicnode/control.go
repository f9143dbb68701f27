package quicnode

import (
	"context"
	"time"

	"github.com/agentnet/agentnet/internal/vport"
)

// portControl is the virtual port of the node's own control datagrams
// (path heartbeats). Applications never get port 0.
const portControl uint16 = 0

// Control datagram kinds.
const (
	ctlPing = 1
	ctlPong = 2
)

// Heartbeats run on a direct link while a relay link stands by: if the
// direct path stops answering for heartbeatDead, new traffic moves to the
// relay until it answers again.
const (
	heartbeatEvery = time.Second
	heartbeatDead  = 3 * time.Second
)

// handleControl answers heartbeats and records their answers.
func (n *Node) handleControl(l *link, _ uint16, payload []byte) {
	if len(payload) < 1 {
		return
	}
	switch payload[0] {
	case ctlPing:
		b := vport.AppendDatagram(make([]byte, 0, 16), portControl, portControl, []byte{ctlPong})
		n.sendDatagram(l, b)
	case ctlPong:
		l.lastPong.Store(time.Now().UnixNano())
	}
}

// heartbeat pings the direct link of every peer that also has a relay link
// and marks the direct path failed (or healthy again) from the answers.
func (n *Node) heartbeat() {
	now := time.Now()
	ping := vport.AppendDatagram(nil, portControl, portControl, []byte{ctlPing})
	n.mu.Lock()
	var probe []*link
	for _, p := range n.peers {
		d, r := p.links[pathDirect], p.links[pathRelay]
		if d == nil || r == nil || !r.alive() {
			continue
		}
		last := time.Unix(0, d.lastPong.Load())
		if d.lastPong.Load() == 0 {
			last = d.since
		}
		failed := now.Sub(last) > heartbeatDead
		if failed != p.directFailed {
			p.directFailed = failed
			n.log.Info("direct path health changed", "peer", d.addr, "failed", failed)
		}
		probe = append(probe, d)
	}
	n.mu.Unlock()
	for _, d := range probe {
		n.sendDatagram(d, ping)
	}
}

// pathDead is how long a link may go unanswered while we send on it before
// it is declared dead and closed: a NAT rebinding behind address-dependent
// filtering, or a vanished peer, then costs seconds, not QUIC's 30 s idle
// timeout. Outages shorter than this are ridden out.
const pathDead = 5 * time.Second

// checkPaths closes links that have gone deaf (see pathDead) and re-dials
// the peers of the ones we had dialled, so a new path is ready for the
// application's next stream.
func (n *Node) checkPaths() {
	now := time.Now()
	n.mu.Lock()
	var links []*link
	for _, p := range n.peers {
		links = append(links, p.all()...)
	}
	n.mu.Unlock()
	for _, l := range links {
		st := l.conn.ConnectionStats()
		switch {
		case l.lastHeard.IsZero() || st.PacketsReceived != l.recvCount:
			l.recvCount, l.sentAtHeard, l.lastHeard, l.sendingSince = st.PacketsReceived, st.PacketsSent, now, time.Time{}
		case st.PacketsSent == l.sentAtHeard:
			// Idle both ways: nothing to judge.
		case l.sendingSince.IsZero():
			l.sendingSince = now
		case now.Sub(l.sendingSince) >= pathDead:
			n.log.Info("path dead: closing link", "peer", l.addr, "path", l.path, "silent_for", now.Sub(l.lastHeard).Round(time.Millisecond))
			l.conn.CloseWithError(CodePathDead, "path dead")
			if l.outgoing && n.admissible(l.key) {
				key := l.key
				n.goFunc(func() {
					ctx, cancel := context.WithTimeout(n.ctx, n.cfg.handshakeTimeout())
					defer cancel()
					if _, err := n.getLink(ctx, key); err != nil {
						n.log.Debug("re-dial after dead path failed", "peer", key.NodeID(), "err", err)
					}
				})
			}
		}
	}
}
