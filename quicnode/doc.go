// Package quicnode is the per-agent endpoint of agentnet: a Node owns one UDP
// socket and one quic.Transport, keeps one QUIC connection per trusted peer,
// and carries virtual-port streams (net.Conn) and datagrams (net.PacketConn)
// over it.
//
// Reaching an agent takes, in order: the local trust store must mark the peer
// trusted (otherwise ErrNotTrusted, before any packet is sent); the
// rendezvous must answer the lookup (it answers only for mutually trusted
// pairs); the QUIC handshake must pass both trust gates (the listener's
// VerifyConnection admits only trusted keys, the dialer pins the expected
// key); and the accepting side must send its welcome. Only then does Dial
// return a connection. Session tickets are disabled so no handshake skips the
// gate. Revoking trust closes every live connection to that peer at once.
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
// is retried for up to three seconds while the peer learns of it.
//
// Streams begin with a virtual-port header (see internal/vport); the acceptor
// answers with one status byte, or resets the stream with StreamPortClosed.
// Datagrams carry a 4-byte port header and at most vport.MaxPayload bytes.
//
// When both sides dial each other at once, the connection dialled by the
// lower NodeID is kept and the other is closed with CodeDuplicate.
//
// Before the handshake, the knock (knock.go) filters strangers: the dialer
// puts an HMAC under the pair's X25519 secret in the ClientHello's server
// name, and the listener refuses unknown names before any key exchange.
//
// Paths (punch.go, relay.go, nat.go, control.go): a peer has at most one
// direct and one relayed link. A first contact dials the peer's known
// locators, then asks the rendezvous for an introduction: both sides send
// authenticated probes (internal/probe) and the dialling side starts QUIC
// towards whatever address a genuine probe came from; without a direct path
// the relay session the introduction opened carries an end-to-end QUIC
// connection over a second quic.Transport. New traffic uses the direct link
// while heartbeats say it is healthy, the relay link otherwise; a link that
// hears nothing while we send is closed after pathDead. Between a hard
// (symmetric) and an easy NAT, birthday punching (birthday.go) opens extra
// sockets on the hard side (Config.ListenUDP) while the easy side sprays
// probes at the hard side's ports.
//
// Goroutines: per node an accept loop per transport, a non-QUIC packet
// reader, an outbox sender, a maintenance loop and the rendezvous session;
// per link a stream-accept loop, plus a datagram loop once datagrams flow
// (and quic-go's own two); per incoming stream a short-lived header reader;
// per introduction a bounded probing loop. Close stops and waits for all of
// them.
//
// Log keys: peer, addr, port, err, remote, code, path, nat.
package quicnode
