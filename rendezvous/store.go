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
// only keeps records, their indexes and their counts consistent.
//
// Every operation the server runs while answering a request is bounded: a
// point read or write, a count kept by the store (never computed by a scan),
// or a range read with a max. Only Prune and the maintenance calls
// (IdleAgents) walk larger ranges, from the server's hourly maintenance loop.
//
// Implementations are safe for concurrent use. A Tx must not be used after
// its function returns.
//
// Changes in this version (for implementers of other engines):
//   - ServerKey/PutServerKey: the store remembers which server key it
//     belongs to (Server.Start refuses a store of another key, or a missing
//     or empty one when the identity exists).
//   - AgentRecord.Source, AgentsFrom, DeleteAgent, IdleAgents: per-prefix
//     agent counts and the expiry of idle registrations (Limits.AgentTTL).
//   - PendingRequest.Source, Member, MailID; Pendings (bounded) replaces
//     PendingCount; PendingQuota gives the per-requester, per-prefix and
//     total counts of pending requests, which PutPending and DeletePending
//     keep.
//   - MailCount is a kept count, not a scan (it runs on every request).
//   - SeeNonce is keyed by the message time too, and Prune takes two
//     cutoffs: the replay cache is kept only for the freshness window.
//   - Requests to a target that does not exist are kept under a derived
//     key (heldKey) with the same operations as any other pending request,
//     so a Store needs nothing for them.
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
	// AgentCount returns the number of registered agents (a kept count).
	AgentCount() (int, error)
	// AgentsFrom returns the number of registered agents whose Source is
	// src (a kept count; 0 for an invalid src).
	AgentsFrom(src netip.Prefix) (int, error)
	// PutAgent creates or replaces the registration of r.Key and keeps the
	// NodeID and hostname indexes, the counts and the expiry index: it fails
	// with ErrNodeIDTaken or ErrHostnameTaken if another key holds r.Key's
	// NodeID or r.Hostname, and releases a hostname the key held before and
	// no longer names.
	PutAgent(r AgentRecord) error
	// DeleteAgent deletes k's registration and releases its NodeID and
	// hostname (no-op if none). Pairs, pending requests and mail stay.
	DeleteAgent(k addressing.PublicKey) error
	// IdleAgents returns up to max keys whose LastSeen is before before,
	// least recently seen first.
	IdleAgents(before time.Time, max int) ([]addressing.PublicKey, error)

	// ServerKey returns the key of the server the store belongs to, as
	// PutServerKey recorded it (false for a new, empty store). The server
	// refuses to start on a store of another key, and, when its identity
	// already existed, on a store without one (see Server.Start).
	ServerKey() (addressing.PublicKey, bool, error)
	// PutServerKey records k as the store's server key.
	PutServerKey(k addressing.PublicKey) error

	// SeeNonce records that from sent a message with nonce and time t and
	// reports whether that (from, nonce, t) was recorded before. Entries
	// live until Prune's nonces cutoff passes t.
	SeeNonce(from addressing.PublicKey, nonce [trustdb.NonceSize]byte, t time.Time) (seen bool, err error)

	// Pending returns requester's pending request to target.
	Pending(target, requester addressing.PublicKey) (PendingRequest, bool, error)
	// Pendings returns up to max pending requests to target, in any order.
	Pendings(target addressing.PublicKey, max int) ([]PendingRequest, error)
	// PendingQuota returns the kept counts of pending requests: those by
	// requester, those whose Source is src, and all.
	PendingQuota(requester addressing.PublicKey, src netip.Prefix) (PendingQuota, error)
	// PutPending stores p, replacing an earlier request of the same pair,
	// and keeps the counts.
	PutPending(p PendingRequest) error
	// DeletePending deletes requester's pending request to target, if any,
	// and keeps the counts. It does not touch the mailbox.
	DeletePending(target, requester addressing.PublicKey) error

	// Pair returns the trust pair of a and b (in either order).
	Pair(a, b addressing.PublicKey) (TrustPair, bool, error)
	// PutPair stores p (its keys in either order).
	PutPair(p TrustPair) error
	// DeletePair deletes the pair of a and b, if any.
	DeletePair(a, b addressing.PublicKey) error

	// Enqueue appends msg to to's mailbox and returns its id; ids grow and
	// never repeat for a recipient.
	Enqueue(to addressing.PublicKey, msg []byte, t time.Time) (id uint64, err error)
	// MailCount returns the number of messages in to's mailbox (a kept
	// count).
	MailCount(to addressing.PublicKey) (int, error)
	// Mail returns up to max messages of to's mailbox with ids above after,
	// in id order.
	Mail(to addressing.PublicKey, after uint64, max int) ([]MailItem, error)
	// Ack deletes message id from to's mailbox and reports whether it was there.
	Ack(to addressing.PublicKey, id uint64) (bool, error)

	// Prune deletes replay-cache entries whose message time is before
	// nonces, and pending requests (by their Time) and mailbox messages (by
	// the time they were queued) before records, and returns how many. A
	// zero cutoff prunes nothing of its kind. The replay cache is pruned
	// every minute, so deleting its old entries must cost what it deletes,
	// not what it keeps.
	Prune(nonces, records time.Time) (int, error)

	NetworkTx // networks (netstore.go)
}

// AgentRecord is a registration.
type AgentRecord struct {
	Key      addressing.PublicKey
	Hostname string           // "" if none
	Locators []netip.AddrPort // as last registered: reflexive first, then local
	Created  time.Time
	LastSeen time.Time // last registration, or last seen online by the maintenance loop
	// Source is the source prefix the key first registered from (see
	// sourcePrefix); invalid for records from before it was kept.
	Source netip.Prefix
}

// PendingRequest is a trust request the target has not answered yet.
// Target is the target's key, or for a target that does not exist (yet) the
// key heldKey derives from the name the request used.
type PendingRequest struct {
	Target    addressing.PublicKey
	Requester addressing.PublicKey
	Nonce     [trustdb.NonceSize]byte
	Time      time.Time // the request's Time
	Msg       []byte    // the encoded, verified request
	// Source is the requester's source prefix when it asked (sourcePrefix).
	Source netip.Prefix
	// Member: the requester shared a network with the target when it asked
	// (such requests are never evicted for strangers').
	Member bool
	// MailID is the id of the request in the target's mailbox (0: none).
	MailID uint64
}

// PendingQuota is the counts PendingQuota returns.
type PendingQuota struct {
	ByRequester int // pending requests made by the requester
	BySource    int // pending requests made from the source prefix
	Total       int // all pending requests
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
