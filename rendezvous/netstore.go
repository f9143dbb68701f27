package rendezvous

import (
	"time"

	"github.com/agentnet/agentnet/addressing"
)

// NetworkTx is the part of a Tx that keeps networks: each network's record,
// its members' signed documents, and an index of the networks each agent is
// in. Like the rest of a Store it keeps records and indexes consistent and
// leaves every judgement to the server.
type NetworkTx interface {
	// Network returns network id.
	Network(id addressing.NetworkID) (NetworkRecord, bool, error)
	// NetworkByName returns the network named name.
	NetworkByName(name string) (NetworkRecord, bool, error)
	// CreateNetwork stores a network named name owned by owner under the
	// lowest free ID (1-65535) and indexes the owner as a member. It fails
	// with ErrNetworkTaken if the name is taken and ErrLimit if no ID is
	// free.
	CreateNetwork(name string, owner addressing.PublicKey, t time.Time) (NetworkRecord, error)
	// NetworkMember returns k's record in network id: its Join if it is a
	// member, its last Leave or Remove if it was one. The owner has none.
	NetworkMember(id addressing.NetworkID, k addressing.PublicKey) (MemberRecord, bool, error)
	// PutNetworkMember stores m, replacing k's earlier record, and keeps
	// the agent index.
	PutNetworkMember(m MemberRecord) error
	// DeleteNetworkMember deletes k's record in network id and its index
	// entry (never the owner's).
	DeleteNetworkMember(id addressing.NetworkID, k addressing.PublicKey) error
	// NetworkMembers returns every member record of network id, current
	// and former, by key.
	NetworkMembers(id addressing.NetworkID) ([]MemberRecord, error)
	// AgentNetworks returns the networks k owns or is or was a member of,
	// by ID.
	AgentNetworks(k addressing.PublicKey) ([]AgentNetwork, error)
	// IsNetworkMember reports whether k owns network id or is a member now.
	IsNetworkMember(id addressing.NetworkID, k addressing.PublicKey) (bool, error)
}

// NetworkRecord is a network.
type NetworkRecord struct {
	ID      addressing.NetworkID
	Name    string
	Owner   addressing.PublicKey
	Created time.Time
}

// MemberRecord is an agent's membership of a network, with the signed
// documents that make it: Join is set while it is a member, Exit (its last
// Leave or Remove) once it was one; after a rejoin both are. Time is the
// time of the newest of the two.
type MemberRecord struct {
	Network addressing.NetworkID
	Key     addressing.PublicKey
	Join    []byte // encoded network.Join; nil if not a member now
	Exit    []byte // encoded network.Exit; nil if none
	Time    time.Time
}

// Member reports whether the record is a current membership.
func (m MemberRecord) Member() bool { return m.Join != nil }

// AgentNetwork is one entry of the agent index.
type AgentNetwork struct {
	ID     addressing.NetworkID
	Member bool // owner or member now; false: a former member
}
