// Package trustdb holds an agent's identity and its trust records: who it has
// consented to talk to, and the signed messages that carry that consent.
//
// # Identity
//
// An Identity is the agent's Ed25519 key pair. LoadOrCreateIdentity keeps it
// in a small versioned text file (mode 0600, written atomically); a file
// readable by group or others is refused. The private key is never printed.
//
// # Messages
//
// Consent travels as signed Messages: a request, an approve or reject that
// answers a request (ReplyTo = the request's nonce), and a revoke. Every
// receiver verifies the signature itself; the rendezvous that stores and
// forwards them cannot forge consent. The canonical encoding (big endian):
//
//	+---------+------+---------------+--------+-------------------+
//	| version | kind | from (32)     | to     | nonce (16)        |
//	|   0x01  |  1   | Ed25519 key   | type.. |                   |
//	+---------+------+---------------+--------+-------------------+
//	| reply to (16)  | time (8, int64 unix ns) | hostname len (1) |
//	+----------------+-------------------------+------------------+
//	| hostname (0-63)| note len (2)            | note (0-256)     |
//	+----------------+-------------------------+------------------+
//	| signature (64)                                              |
//	+-------------------------------------------------------------+
//
//	to:  0x01 | address (8: network 2, NodeID 6)
//	     0x02 | len (1) | hostname (1-63)    (requests only)
//
// The signature is Ed25519 by "from" over "agentnet trust v1\x00" followed by
// every byte before the signature. A message is at most 525 bytes (parsers
// refuse more than MaxMessageSize = 1024). Parsing is strict and, unlike
// agentnet's other codecs, refuses trailing bytes: the signature covers exact
// bytes, and every message has exactly one encoding, so re-encoding a parsed
// message reproduces its input.
//
// # Records and states
//
// The Store keeps one Record per peer key, plus the pending-out requests we
// sent to a peer whose key we do not know yet (we asked for an address, which
// names only a NodeID, or for a hostname). Those are keyed by the request's
// nonce until the approval reveals the key.
//
//	A (requester)                               B (addressee)
//	local Request ──────── request ────────► pending-in
//	pending-out                              local Approve / Reject
//	trusted / rejected ◄── approve / reject ── trusted / rejected
//	local Revoke ───────── revoke ─────────► revoked      (either way round)
//
// Every transition (anything else is refused with ErrUnexpected):
//
//	state          event                          next state
//	(none)         local Request                  pending-out (keyed by nonce)
//	pending-out    approve in, ReplyTo = nonce    trusted (re-keyed by peer key)
//	pending-out    reject in, ReplyTo = nonce     rejected (re-keyed by peer key)
//	(none)         request in                     pending-in
//	revoked        request in                     pending-in (fresh consent needed)
//	rejected       request in                     pending-in (fresh consent needed)
//	pending-in     request in                     pending-in (the newer request)
//	trusted        request in                     trusted, and an approve is queued
//	pending-in     local Approve                  trusted
//	pending-in     local Reject                   rejected
//	trusted        local Revoke                   revoked
//	pending-in     local Revoke                   revoked
//	any            revoke in                      revoked
//
// If the request named an address, the approver's key must hash to that
// address's NodeID. A trusted peer that sends a request has lost its record,
// so the queued approve tells it again. A repeated local Request to the same
// target replaces the earlier pending-out record (and its message, if not
// yet delivered): there is one pending-out record per target, and an answer
// to a superseded request is refused with ErrUnexpected.
//
// Anyone can make a record by sending a request, so the records of peers we
// never trusted (Record.EverTrusted false: a stranger's request waiting for
// our decision, rejected, or withdrawn with a revoke) are bounded and
// expire: at most MaxUntrusted are kept (the oldest closed ones go first,
// then the oldest requests), a request expires UntrustedPendingTTL and a
// closed record UntrustedClosedTTL after its last change. Forget deletes a
// record that is not trusted, ForgetRequests our own unanswered requests to
// a target.
//
// Incoming messages are accepted only if the signature verifies, the time is
// within MaxMessageAge in the past and MaxClockSkew in the future, it is
// strictly newer than the last message accepted from the same sender
// (Record.PeerTime), its (sender, nonce) pair was not seen before (a bounded
// set pruned by time), and To names us. A message that fails any check
// changes nothing.
//
// # Storage
//
// dir/identity.key holds the identity; dir/trust.db is a bbolt database
// (opened with a one-second lock timeout, so a second process gets a clear
// "in use" error rather than a hang); dir/trust.db.bak is its last good copy.
//
// Damaged state is never replaced by an empty store. A store is created
// only in a directory holding neither file (the database first, under a
// temporary name, then the key, then the database's real name, so a crash
// leaves no half store). Otherwise Open refuses, with a *DamagedError
// (errors.Is ErrDamaged) that names the file and says how to restore, and
// writes nothing: a missing or malformed key file, a key file others can
// read, a missing or empty database, one whose meta pages are damaged or
// point past the end of the file (bbolt would roll back silently, or fault
// with SIGBUS reading a truncated file), one failing bbolt's page check or
// holding a record that does not parse, and a database made for another
// key. A panic inside bbolt while opening is recovered and reported the
// same way. After verifying the database, Open writes the last good copy
// (Tx.WriteTo, atomically); Close and Backup refresh it when something
// changed. To restore: stop the process, keep the damaged file, copy
// trust.db.bak over trust.db.
//
// The buckets:
//
//	records    peer key (32)          -> Record (versioned binary, ParseRecord)
//	pending    our request nonce (16) -> pending-out Record whose key is unknown
//	outbox     sequence (8, BE)       -> encoded Message waiting for delivery
//	seen       from (32) ‖ nonce (16) -> message time      (replay guard)
//	seen_time  time (8) ‖ from ‖ nonce -> empty            (its prune index)
//	meta       caller's key           -> caller's value    (Meta, SetMeta)
//	info       schema version, identity key, time of our last message
//	networks   network ID (2)         -> Network (name, owner, our Join, members'
//	                                     Joins, former members' Leave/Remove)
//
// Pending-out requests live in their own bucket, keyed by nonce, because an
// address names only a NodeID; the approval that reveals the key moves the
// record to the records bucket in the same transaction that accepts it.
//
// Every local action commits the state change and queues its signed message
// in the outbox in one transaction; the node delivers the outbox to the
// rendezvous and acks each item, so a crash in between loses nothing. Our own
// message times strictly increase, even across restarts and clock steps,
// because peers refuse a message not newer than the last one from us.
//
// The keys the Store trusts are mirrored in memory (an immutable map behind
// an atomic pointer, replaced after each commit that changes it) so that
// IsTrusted, called in every TLS handshake, never touches the disk and sees a
// change as soon as the method making it returns.
//
// # Networks
//
// For every network the agent is in (REQ-2), the Store keeps the signed
// documents that prove its membership list (package network defines them).
// It does not judge them: the node verifies each against the owner key it
// learnt out of band and stores the outcome with UpdateNetwork, one
// read-modify-write transaction. The members of every network are mirrored
// in memory like the trusted keys (IsMember, MemberByNode), and members a
// change drops stop counting before the commit is visible. Every change
// publishes an Event whose Network field lists the keys that came and went.
//
// # Events
//
// Subscribers are told of every committed change by one delivery goroutine
// per Store, fed by a queue that writers append to in commit order. Trust
// changes are rare, so the queue is unbounded and nothing is ever dropped;
// because callbacks run on that goroutine, outside every Store lock, a
// callback may call back into the Store, writes included (an auto-approve
// policy). Delivery is asynchronous: Flush waits until every event committed
// so far has been handled, and Close delivers what is queued and returns only
// when no callback is running.
package trustdb
