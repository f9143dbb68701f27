package quicnode

import (
	"fmt"
	"net"
	"time"

	"github.com/agentnet/agentnet/addressing"
	"github.com/agentnet/agentnet/quicnode/internal/paths"
)

// PeerStatus describes a live connection (link) to a peer. A peer with both
// a direct and a relayed connection appears twice; the one not carrying new
// traffic has Standby set.
type PeerStatus struct {
	Addr addressing.Addr
	Key  addressing.PublicKey
	Path string // "direct" or "relay"
	// Transport is what carries the connection: "udp", or "tcp" for a
	// relayed one through the TCP tunnel to the rendezvous.
	Transport string
	Standby   bool     // kept as a fallback; new streams use the other link
	Remote    net.Addr // the UDP address in use
	Outgoing  bool     // we dialled it
	// Found says how the connection was found: "incoming" (the peer
	// dialled us), or the dial phase that made it: "last-address",
	// "direct" (a locator from the rendezvous), "punch", "birthday",
	// "relay".
	Found string
	// Setup is how long the dial took, from its start to this connection
	// (0 for incoming ones).
	Setup         time.Duration
	Since         time.Time
	RTT           time.Duration
	BytesSent     uint64
	BytesReceived uint64
}

// Peers reports every live peer connection, sorted by address.
func (n *Node) Peers() []PeerStatus {
	if n.paths == nil {
		return nil
	}
	ls := n.paths.Links()
	out := make([]PeerStatus, 0, len(ls))
	for _, l := range ls {
		out = append(out, PeerStatus{
			Addr: l.Addr, Key: l.Key, Path: l.Kind.String(), Transport: string(l.Transport), Standby: l.Standby, Remote: l.Remote,
			Outgoing: l.Outgoing, Found: l.Found.String(), Setup: l.Setup, Since: l.Since, RTT: l.RTT,
			BytesSent: l.BytesSent, BytesReceived: l.BytesReceived,
		})
	}
	return out
}

// Stats are node-wide counters.
type Stats struct {
	DatagramsDropped uint64 // no listener on the port, queue full, or malformed
	BadStreams       uint64 // streams reset for a malformed or late header
	NonQUICPackets   uint64 // packets read beside QUIC (STUN, probes)
	KnocksRefused    uint64 // handshakes refused before key exchange (no valid knock)
	// KnocksReplayed counts the refused knocks that were valid but seen
	// before (a replay), or over their peer's quota (maxKnocksPerEpoch).
	KnocksReplayed uint64
	// NetworkDocsRefused counts network documents from the rendezvous that
	// did not verify against the owner key we know (or did not fit).
	NetworkDocsRefused uint64
	// Paths are the path manager's counters: dials, punches, birthday
	// attempts, relayed links, dead paths, failovers.
	Paths PathStats
}

// PathStats are the path manager's counters (see Stats.Paths).
type PathStats = paths.Stats

// Stats returns the node's counters.
func (n *Node) Stats() Stats {
	var ps paths.Stats
	if n.paths != nil {
		ps = n.paths.Stats()
	}
	return Stats{
		Paths:              ps,
		DatagramsDropped:   n.stats.datagramsDropped.Load(),
		BadStreams:         n.stats.badStreams.Load(),
		NonQUICPackets:     ps.NonQUICPackets,
		KnocksRefused:      n.stats.knocksRefused.Load(),
		KnocksReplayed:     n.knock.replays.Load(),
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
	n.paths.ClosePeer(k, CodeClosing, "disconnect")
	return nil
}

// RendezvousReach says how the node reaches the rendezvous.
type RendezvousReach struct {
	// Transport is "udp", "tcp" (the TLS/WebSocket tunnel, for networks
	// that let no UDP out) or "" (not connected yet).
	Transport string
	Reason    string    // why: what was tried and what answered
	Since     time.Time // of the last change
	// Err is the last failure to reach the rendezvous at all, naming the
	// addresses tried and what to check; nil once a connection succeeded.
	Err error
	// Tunnel describes the TCP tunnel while one is open.
	TunnelUp    bool
	TunnelVia   string // "direct" or the HTTP proxy (password redacted)
	TunnelError error  // why the tunnel's last attempt failed or it ended
}

// Reach reports how the node reaches the rendezvous (zero before Start).
func (n *Node) Reach() RendezvousReach {
	if n.paths == nil {
		return RendezvousReach{}
	}
	r := n.paths.Reach()
	out := RendezvousReach{Transport: string(r.Transport), Reason: r.Reason, Since: r.Since, Err: r.Err}
	if r.Tunnel != nil {
		out.TunnelUp, out.TunnelVia, out.TunnelError = r.Tunnel.Up, r.Tunnel.Via, r.Tunnel.Err
	}
	return out
}
