package quicnode

import (
	"fmt"
	"net"
	"sort"
	"time"

	"github.com/agentnet/agentnet/addressing"
)

// PeerStatus describes a live connection (link) to a peer. A peer with both
// a direct and a relayed connection appears twice; the one not carrying new
// traffic has Standby set.
type PeerStatus struct {
	Addr          addressing.Addr
	Key           addressing.PublicKey
	Path          string   // "direct" or "relay"
	Standby       bool     // kept as a fallback; new streams use the other link
	Remote        net.Addr // the UDP address in use
	Outgoing      bool     // we dialled it
	Since         time.Time
	RTT           time.Duration
	BytesSent     uint64
	BytesReceived uint64
}

// Peers reports every live peer connection, sorted by address.
func (n *Node) Peers() []PeerStatus {
	n.mu.Lock()
	ls := make([]*link, 0, len(n.peers))
	standby := make(map[*link]bool)
	for _, p := range n.peers {
		best := p.best()
		for _, l := range p.links {
			if l != nil {
				ls = append(ls, l)
				standby[l] = l != best
			}
		}
	}
	n.mu.Unlock()
	out := make([]PeerStatus, 0, len(ls))
	for _, l := range ls {
		st := l.conn.ConnectionStats()
		out = append(out, PeerStatus{
			Addr: l.addr, Key: l.key, Path: l.path.String(), Standby: standby[l], Remote: l.conn.RemoteAddr(),
			Outgoing: l.outgoing, Since: l.since, RTT: st.SmoothedRTT,
			BytesSent: st.BytesSent, BytesReceived: st.BytesReceived,
		})
	}
	sort.Slice(out, func(i, j int) bool {
		if c := out[i].Addr.Node().Compare(out[j].Addr.Node()); c != 0 {
			return c < 0
		}
		return out[i].Path < out[j].Path
	})
	return out
}

// Stats are node-wide counters.
type Stats struct {
	DatagramsDropped uint64 // no listener on the port, queue full, or malformed
	BadStreams       uint64 // streams reset for a malformed or late header
	NonQUICPackets   uint64 // packets read beside QUIC (STUN, probes)
	KnocksRefused    uint64 // handshakes refused before key exchange (no valid knock)
	// NetworkDocsRefused counts network documents from the rendezvous that
	// did not verify against the owner key we know (or did not fit).
	NetworkDocsRefused uint64
}

// Stats returns the node's counters.
func (n *Node) Stats() Stats {
	return Stats{
		DatagramsDropped:   n.stats.datagramsDropped.Load(),
		BadStreams:         n.stats.badStreams.Load(),
		NonQUICPackets:     n.stats.nonQUICPackets.Load(),
		KnocksRefused:      n.stats.knocksRefused.Load(),
		NetworkDocsRefused: n.netStats.docsRefused.Load(),
	}
}

// Disconnect closes every connection to peer (an address or hostname of a
// trusted peer) without touching trust: the next Dial connects afresh.
func (n *Node) Disconnect(peer string) error {
	t, err := addressing.ParseTarget(peer)
	if err != nil {
		return fmt.Errorf("quicnode: disconnect: %w", err)
	}
	k, err := n.resolve(n.ctx, t)
	if err != nil {
		return fmt.Errorf("quicnode: disconnect %s: %w", peer, err)
	}
	n.closePeer(k, CodeClosing, "disconnect")
	return nil
}
