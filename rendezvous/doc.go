// Package rendezvous is agentnet's meeting point: a server that agents
// register with, and the Client a node uses to talk to it.
//
// The server speaks QUIC with its own ALPN ("agentnet-rendezvous/1") on one
// UDP port. Agents authenticate with their identity key (the TLS client
// certificate); they pin the server's key, configured or trusted on first use.
// The wire format of the control messages is package proto.
//
// # Registry
//
// A key registers with its NodeID (derived from the key: addresses are
// self-certifying, and a second key with a taken NodeID is refused), an
// optional hostname (first come, first served, bound to the key), and its
// locators: the reflexive address (the connection's remote address as the
// server sees it) first, then the local candidates the node reports. An
// agent is online while its session stream is up.
//
// # Privacy (REQ-10, REQ-11)
//
// Lookup by address or hostname answers only when the asker may see the
// agent (canSee: the pair trusts each other, or both are members of a
// network; an address N:x with N != 0 needs both to be members of N). For
// anyone else the answer is the NotFound frame, byte for byte the one for an
// agent that does not exist. A trust request is answered OK whether its
// target exists or not, is online, or is over its limits, after the same
// store operations (a request to a name nobody holds waits under a key
// derived from the name, pending.go) and before the target's session is
// woken; the requester never learns the target's locator. A network
// document naming a network the server does not know, or knows under
// another name or owner, gets the NotFound frame.
//
// # Trust mailbox
//
// Trust request, approve, reject and revoke messages (trustdb.Message) are
// signed by their sender. The server verifies each (signature, sender is the
// connection's key, time window, replay cache), applies it to its own view
// (pending requests, trusted pairs with both signed messages) and queues it
// in the recipient's persistent mailbox. A mailbox is pushed on the
// recipient's session stream at once if it is online (a request 5-25 ms
// after its answer), or when it next connects, and a message is deleted only
// when the recipient acks it. A request to a hostname or address no agent
// holds is kept until an agent registers with that NodeID or claims that
// hostname (or the request is 30 days old). A target's pending slots are
// shared fairly between source prefixes (pending.go). The replay cache
// keeps a message for TrustReplayWindow. Recipients verify every message
// again themselves: the server cannot forge consent.
//
// # Networks
//
// An agent creates a network (NetworkCreate: the lowest free ID, a unique
// name, the agent as owner). Members join with a Join signed by them over an
// invite signed by the owner, and leave with a Leave; the owner removes them
// with a Remove (package network). The server applies the same rules as the
// nodes, refuses documents more than five minutes from its clock, and keeps
// each member's Join and each former member's last Leave or Remove. Every
// change is pushed to the network's online members (and to the former
// member) on their session streams; after each registration an agent gets
// the full list of every network it is in. A member can ask for the full
// list (NetworkMembers); anyone else gets the NotFound frame. Nodes verify
// every document against the owner key they learnt out of band, so a
// compromised server can withhold changes but not add a member. A Leave or
// Remove closes the relay sessions of pairs that no longer see each other.
//
// # NAT traversal
//
// STUN (RFC 5389 binding requests, answered with XOR-MAPPED-ADDRESS = the
// source address seen) is served beside QUIC on the main port (the QUIC
// transport's non-QUIC packets) and on a second address (ServerConfig
// STUNConn or STUNAddr; default the main port + 1): a node compares the two
// mappings to tell an endpoint-independent NAT from a symmetric one. The
// responder never amplifies: a request smaller than its answer (clients pad
// theirs) is dropped, like anything that is not a binding request, and
// every source address has a token bucket. Registered tells a client the
// second STUN address and the relay's; Client.STUNAddrs returns them.
// A client reports what it found with ReportNAT (NATReport); the server
// keeps the kind for the session and hands it to the other side of every
// introduction (Introduce.PeerNAT), so a hard/easy pair can pick birthday
// punching (package quicnode).
//
// Connect is the punch broker. If the target trusts the asker and is online,
// both get an introduction with a fresh 16-byte token and each other's
// candidates (server-observed reflexive address first, then the reported
// host addresses, then for the asker the candidates it sent; deduplicated,
// at most 8): the asker in the answer, the target pushed on its session
// stream (ClientConfig.Introduced). Otherwise the answer is the NotFound
// frame, the same bytes as a lookup miss. On request, the broker also opens
// a relay session for the pair (package relay, on its own UDP port: default
// the main port + 2) and gives each side its own grant: session ID, secret,
// side. A revoke that deletes a pair closes its relay sessions at once.
//
// # State and limits
//
// State lives behind Store, by default a bbolt file in DataDir: a restart
// loses no registration, pair, pending request or queued message, and the
// server's identity is kept there too, so pinned keys stay valid. A store
// file is checked before it is opened and a damaged one is refused, never
// replaced (boltcheck.go, ErrStoreDamaged); a clean Close leaves its last
// good copy. Clients reconnect by themselves, noticing a lost session
// within PingPeriod + SessionIdle. Every input is bounded (Limits), per key
// and per source, shared fairly (limits.go): frame size, requests per key
// and per source address (shared by its keys), pending requests per target,
// requester and source prefix, mailbox size, streams per connection,
// connections (per key, and max-min fair between prefixes when full),
// registrations per prefix (idle ones expire), STUN answers per source
// address, relay sessions (per key) and their bandwidth. Going over gets an Error frame with a stable code
// (proto.CodeRateLimited, ...) or a silent, counted drop where an error would
// be an oracle; never unbounded memory.
//
// # Several servers, one service
//
// Any number of servers can share one etcd cluster (EtcdStore; bbolt stays
// the one-process default). Durable state — registrations, the NodeID and
// hostname indexes, trust pairs, pending requests, mailboxes, the replay
// cache, networks and their documents — lives in etcd under one key
// prefix. Each server keeps a replica of that prefix in memory, loaded at
// start and kept current by an etcd watch, so every read (a lookup, a
// mailbox read, a visibility check) is served from memory with no etcd
// round trip. Every Update is one etcd transaction (the Updates that arrive
// while a server's commit is in flight share its next one): its compares require
// that each key the server read still has the revision it read (and that
// nothing appeared in the ranges it read), so two servers that write at
// once cannot both win — one hostname per key, one network per name and
// ID, one mailbox id per message — and the loser runs again on the newer
// replica (a server's losers one at a time). The counts a Store keeps
// (agents, per source prefix, pending requests, mailbox sizes) are keys
// read and written in the transactions that change them, so they stay
// exact and the limits that read them hold across servers; writes that
// change one count (new agents, trust requests) commit one after
// another. An Update returns once the replica has its own writes, so a
// server reads what it wrote. A prefix of records no server wrote (no
// layout record) or of another layout is refused (ErrStoreDamaged), and
// a prefix of another server key like any store (Server.Start).
//
// Soft state sits on etcd leases. Each server holds a lease (TTL 5 s by
// default) with its server record (S/) and its agents' session records
// (s/: server, locators, NAT kind) on it; the session record is written in
// the registration's own transaction. A server that dies takes its
// agents' sessions with it within the lease TTL. A server that cannot
// renew its lease stops answering when the lease may have expired: it
// closes its sessions, and refuses registrations, lookups and writes
// (proto.CodeInternal, "store unavailable") until etcd answers again; an
// Update that etcd did not commit is never reported done.
//
// Deliveries cross servers through the watch, with no server-to-server
// channel: a mailbox message queued by one server wakes the recipient's
// session on the server that holds it; a session record written by
// another server closes the stale local session (the agent moved); a
// deleted trust pair closes the relay sessions of the pair on every
// server; a network document committed elsewhere is pushed to the local
// members. An introduction for an agent on another server is written as a
// short-lived key (q/<server>/…, on a lease rotated every 15 s) that only
// its server acts on; the relay session stays on the server that opened
// it, and the grant names that server's address. The watch costs each
// server every write's event; the replica costs each server the whole
// keyspace in memory (see the README's Performance section for the
// figures).
//
// Nodes may know several servers (ClientConfig.ServerAddrs, or a name with
// several addresses). They share one server key: the key file
// ("agentnet rendezvous -identity") is the cluster key that nodes pin, and
// a server presenting any other key is refused. A node registers with the
// first server that answers (staggered by 250 ms), notices a dead one
// within 1.5 s (QUIC keepalives; its session's idle timeout), and
// registers with another: its direct connections are untouched, and its
// mailbox, in etcd, follows it.
//
// # Log keys
//
// addr, bytes, count, err, hostname, key, mailbox_id, op, reflexive, relay,
// retry_in, server, session, stun2, type.
package rendezvous
