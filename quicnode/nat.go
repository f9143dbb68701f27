package quicnode

import "github.com/agentnet/agentnet/quicnode/internal/paths"

// NATKind is what the node learnt about the NAT in front of it.
type NATKind = paths.NATKind

// NAT kinds, from STUN binding requests to two rendezvous addresses.
const (
	NATUnknown = paths.NATUnknown // no answer yet, or only one STUN address
	NATNone    = paths.NATNone    // the socket's own address is public
	NATEasy    = paths.NATEasy    // endpoint-independent mapping: hole punching works
	NATHard    = paths.NATHard    // endpoint-dependent mapping (symmetric): direct only against open peers
	NATBlocked = paths.NATBlocked // no UDP gets out: the rendezvous over TCP, peers through its relay
)

// NATInfo is the node's view of its NAT.
type NATInfo = paths.NATInfo

// NATInfo returns what the last STUN check found (zero before Start).
func (n *Node) NATInfo() NATInfo {
	if n.paths == nil {
		return NATInfo{}
	}
	return n.paths.NAT()
}
