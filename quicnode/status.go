package quicnode

import (
	"net"
	"sort"
	"time"

	"github.com/agentnet/agentnet/addressing"
)

// PeerStatus describes a live connection to a peer.
type PeerStatus struct {
	Addr          addressing.Addr
	Key           addressing.PublicKey
	Path          string   // "direct" (relayed paths come with NAT traversal)
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
	ps := make([]*peer, 0, len(n.peers))
	for _, p := range n.peers {
		ps = append(ps, p)
	}
	n.mu.Unlock()
	out := make([]PeerStatus, 0, len(ps))
	for _, p := range ps {
		st := p.conn.ConnectionStats()
		out = append(out, PeerStatus{
			Addr: p.addr, Key: p.key, Path: "direct", Remote: p.conn.RemoteAddr(),
			Outgoing: p.outgoing, Since: p.since, RTT: st.SmoothedRTT,
			BytesSent: st.BytesSent, BytesReceived: st.BytesReceived,
		})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Addr.Node().Compare(out[j].Addr.Node()) < 0 })
	return out
}

// Stats are node-wide counters.
type Stats struct {
	DatagramsDropped uint64 // no listener on the port, queue full, or malformed
	BadStreams       uint64 // streams reset for a malformed or late header
	NonQUICPackets   uint64 // packets read beside QUIC (STUN, probes)
}

// Stats returns the node's counters.
func (n *Node) Stats() Stats {
	return Stats{
		DatagramsDropped: n.stats.datagramsDropped.Load(),
		BadStreams:       n.stats.badStreams.Load(),
		NonQUICPackets:   n.stats.nonQUICPackets.Load(),
	}
}
