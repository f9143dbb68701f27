// Package quicnode is the per-agent endpoint of agentnet: a Node owns one UDP
// socket and one quic.Transport, keeps one QUIC connection per trusted peer,
// and carries virtual-port streams (net.Conn) and datagrams (net.PacketConn)
// over it.
//
// Reaching an agent takes, in order: the local trust store must mark the peer
// trusted or a fellow member (otherwise ErrNotTrusted, before any packet is
// sent to it; a node in networks first fetches their member lists from the
// rendezvous, at most once a second, in case the target joined a moment
// ago); the rendezvous must answer the lookup (it answers only for mutually
// trusted pairs); the QUIC handshake must pass both trust gates (the listener's
// VerifyConnection admits only trusted keys, the dialer pins the expected
// key). A TLS 1.3 client finishes its handshake before the server has judged
// its certificate, so the dialer cannot know yet that it was admitted; it
// does not wait to find out (the accepting side still sends a welcome, which
// only punched and relayed dials wait for). The acceptor serves no stream
// before its gate admitted the peer, so the first stream's answer proves
// admission, and a refusal closes the connection with a code that Dial (or
// the stream's first Read) returns as ErrNotTrusted. Session tickets are
// disabled so no handshake skips the gate. Revoking trust closes every live
// connection to that peer at once.
//
// Networks (network.go) are the other consent: members of a network the
// node is in reach each other without a trust request. An address N:x with
// N != 0 names a fellow member of network N and nothing else; 0:x and
// hostnames name a trusted peer or a fellow member of any network. The node
// keeps each network's owner key from its own creation or the invite it
// accepted, and admits a member only on a Join that verifies under that key:
// documents the rendezvous pushes are checked, never taken on its word.
// Leaving a network, or being removed, closes the links to every member that
// is no longer trusted or a fellow in another network. Memberships travel
// through the rendezvous, so a dial to a fellow member that the peer refuses
// is retried for up to three seconds while the peer learns of it; a node
// whose gate refuses a handshake fetches its member lists (at most once a
// second), so a member whose Join has not been pushed to it yet gets in on
// the retry. Documents pushed or fetched reach the gate before the call that
// applies them returns.
//
// Streams begin with a virtual-port header (see internal/vport). A dial on
// a link heard from a moment ago (pipelineFresh; a connection just made
// counts) pipelines (header version 2): Dial returns without a round trip,
// the header goes out in one piece with the first Write (alone with a Read,
// or after 1 ms without either), and the acceptor sends no status byte; a
// closed port resets the stream with StreamPortClosed, which the stream's
// first Read or Write returns as ErrPortClosed. A port that refused is
// remembered (per peer, bounded, kept across reconnects, forgotten when
// trust ends or when it answers again), and a dial to it asks for an answer
// (version 1): the acceptor writes one status byte or resets the stream,
// and Dial waits for it, so a port still closed is an error of Dial; so
// does a dial on a quiet link, whose answer also proves the link alive.
// DialStrict always waits (the daemon's connect and forward use it, so
// their errors stay the dial's). Until issue 10 the first dial to each
// port of a peer waited too, so that a closed port on first contact was an
// error of Dial; that cost every first contact one round trip, and the
// typed error on the first Read is the guarantee pipelined dials already
// gave. We chose a status byte that is sent only when asked for over one
// that rides with the acceptor's first write: that would hold the answer
// of a server that only reads. The acceptor reads each header in the
// link's stream loop when it is there at once (it nearly always is, since
// it travels in the stream's first frame) and gives a goroutine only to
// streams whose header is late or whose listener's queue is full.
// Datagrams carry a 4-byte port header and at most vport.MaxPayload bytes.
//
// When both sides dial each other at once, the connection dialled by the
// lower NodeID is kept and the other is closed with CodeDuplicate.
//
// Before the handshake, the knock (knock.go) filters strangers: for every
// connection the dialer puts a fresh nonce and a MAC bound to it, under a
// key derived from the pair's X25519 secret, the direction and the epoch,
// in the ClientHello's server name; the listener refuses a name that no
// admissible peer's key produced, or one it has accepted before (a replay),
// before any key exchange and before it shows its certificate. Knocks look
// random to anyone who does not know the listener's key, so they do not
// link a pair's connections.
//
// Paths belong to the path manager (package internal/paths): the
// sockets and transports, the links (at most one direct and one relayed
// QUIC connection per peer, plus spares), dialling phase by phase (last
// address, lookup, direct, hole punching with birthday punching between a
// hard and an easy NAT, relay), heartbeats, dead-path detection and
// upgrades. The Node keeps identity, trust, virtual ports and streams; it
// asks the manager for a peer's link and serves each link's streams
// through the manager's Host interface. Peers reports per connection how
// it was found and how long the dial took.
//
// Goroutines: per node a knock refresher, an outbox sender and the
// rendezvous session, plus the path manager's own (see its package doc);
// per link the stream-accept loop (run by the manager), plus a datagram
// loop once datagrams flow (and quic-go's own two); a short-lived header
// reader per incoming stream whose header is late or whose listener's queue
// is full. Close stops and waits for all of them.
//
// Log keys: peer, addr, port, err, remote, code, path, nat.
package quicnode
