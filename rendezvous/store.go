package rendezvous

import (
	"net/netip"
	"time"

	"github.com/agentnet/agentnet/addressing"
	"github.com/agentnet/agentnet/trustdb"
)

// Store is the server's persistent state: registrations, pending trust
// requests, trust pairs, the replay cache and the mailboxes. All access goes
// through transactions, so a store backed by a distributed engine can serve
// several rendezvous servers. The server's logic lives in the server; a Store
// only keeps records and their indexes consistent.
//
// Implementations are safe for concurrent use. A Tx must not be used after
// its function returns.
type Store interface {
	// View runs fn in a read-only transaction.
	View(fn func(Tx) error) error
	// Update runs fn in a read-write transaction, committed durably if fn
	// returns nil and rolled back otherwise.
	Update(fn func(Tx) error) error
	// Close releases the store. Later calls fail.
	Close() error
}

// Tx is one transaction of a Store. Writes on a read-only Tx fail. Returned
// records and slices are owned by the caller.
type Tx interface {
	// Agent returns the registration of k.
	Agent(k addressing.PublicKey) (AgentRecord, bool, error)
	// AgentByNode returns the key that holds NodeID n.
	AgentByNode(n addressing.NodeID) (addressing.PublicKey, bool, error)
	// AgentByHostname returns the key that holds hostname h.
	AgentByHostname(h string) (addressing.PublicKey, bool, error)
	// AgentCount returns the number of registered agents.
	AgentCount() (int, error)
	// PutAgent creates or replaces the registration of r.Key and keeps the
	// NodeID and hostname indexes: it fails with ErrNodeIDTaken or
	// ErrHostnameTaken if another key holds r.Key's NodeID or r.Hostname, and
	// releases a hostname the key held before and no longer names.
	PutAgent(r AgentRecord) error

	// ServerKey returns the key of the server the store belongs to, as
	// PutServerKey recorded it (false for a new, empty store). The server
	// refuses to start on a store of another key, and, when its identity
	// already existed, on a store without one (see Server.Start).
	ServerKey() (addressing.PublicKey, bool, error)
	// PutServerKey records k as the store's server key.
	PutServerKey(k addressing.PublicKey) error

	// SeeNonce records that from sent a message with nonce at time t and
	// reports whether that (from, nonce) was recorded before.
	SeeNonce(from addressing.PublicKey, nonce [trustdb.NonceSize]byte, t time.Time) (seen bool, err error)

	// Pending returns requester's pending request to target.
	Pending(target, requester addressing.PublicKey) (PendingRequest, bool, error)
	// PendingCount returns the number of pending requests to target.
	PendingCount(target addressing.PublicKey) (int, error)
	// PutPending stores p, replacing an earlier request of the same pair.
	PutPending(p PendingRequest) error
	// DeletePending deletes requester's pending request to target, if any.
	DeletePending(target, requester addressing.PublicKey) error

	// Pair returns the trust pair of a and b (in either order).
	Pair(a, b addressing.PublicKey) (TrustPair, bool, error)
	// PutPair stores p (its keys in either order).
	PutPair(p TrustPair) error
	// DeletePair deletes the pair of a and b, if any.
	DeletePair(a, b addressing.PublicKey) error

	// Enqueue appends msg to to's mailbox and returns its id; ids grow.
	Enqueue(to addressing.PublicKey, msg []byte, t time.Time) (id uint64, err error)
	// MailCount returns the number of messages in to's mailbox.
	MailCount(to addressing.PublicKey) (int, error)
	// Mail returns up to max messages of to's mailbox with ids above after,
	// in id order.
	Mail(to addressing.PublicKey, after uint64, max int) ([]MailItem, error)
	// Ack deletes message id from to's mailbox and reports whether it was there.
	Ack(to addressing.PublicKey, id uint64) (bool, error)

	// Prune deletes replay-cache entries, pending requests and mailbox
	// messages whose time is before cutoff, and returns how many.
	Prune(cutoff time.Time) (int, error)

	NetworkTx // networks (netstore.go)
}

// AgentRecord is a registration.
type AgentRecord struct {
	Key      addressing.PublicKey
	Hostname string           // "" if none
	Locators []netip.AddrPort // as last registered: reflexive first, then local
	Created  time.Time
	LastSeen time.Time // last registration
}

// PendingRequest is a trust request the target has not answered yet.
type PendingRequest struct {
	Target    addressing.PublicKey
	Requester addressing.PublicKey
	Nonce     [trustdb.NonceSize]byte
	Time      time.Time // the request's Time
	Msg       []byte    // the encoded, verified request
}

// TrustPair is a pair of agents that trust each other, with the consent that
// established it: the request and the approval, both signed.
type TrustPair struct {
	A, B    addressing.PublicKey // A requested, B approved
	Request []byte
	Approve []byte
	Created time.Time
}

// MailItem is one message in a mailbox.
type MailItem struct {
	ID   uint64
	Time time.Time // when it was queued
	Msg  []byte
}
