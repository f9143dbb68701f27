// Package tunnel carries agentnet's UDP traffic to the rendezvous over one
// TCP connection that looks like ordinary HTTPS to middleboxes: TLS 1.3,
// then an HTTP/1.1 upgrade to WebSocket (github.com/coder/websocket) on
// Path, optionally through an HTTP CONNECT proxy. It is the path for
// agents whose network lets no UDP out.
//
// Two kinds of datagrams travel inside: QUIC packets of the node's
// connection to the rendezvous's control service (KindQUIC), and relay
// frames for the rendezvous relay (KindRelay, package internal/relayframe).
// Nothing above the path layer changes: the node's rendezvous client runs
// its usual QUIC connection over Client.QUIC, its relayed peer connections
// (end-to-end QUIC, same trust gate, knock and revocation) run over relay
// sessions carried by Client.Relay, and the server sees ciphertext only.
// On the server, Server.QUIC is a net.PacketConn under a second QUIC
// listener of the rendezvous, and relay frames are handed to the relay
// with a source address of the tunnel's own (see Addr).
//
// # Wire format
//
// Every WebSocket message is binary and holds one or more frames, packed
// by the sender to save per-message overhead:
//
//	frame = length u16 (big endian, of what follows) | kind u8 | payload
//
// length is 1 + len(payload), payload at most MaxPayload bytes, a message
// at most MaxMessage bytes. A message that does not parse ends the tunnel.
// Unknown kinds are skipped (forward compatibility).
//
// # Addresses
//
// The server gives each tunnel an address in 100::/64, the IPv6 discard
// prefix (RFC 6666): QUIC and the relay see it as the tunnel's source and
// destination. Real UDP from that prefix is never accepted as a tunnel's
// (IsTunnelAddr lets UDP readers drop it), so a spoofed UDP packet cannot
// speak for a tunnel.
//
// # Limits
//
// The server bounds tunnels in total and per source IP, the message size,
// each tunnel's queue of datagrams to send (drops counted) and the rate of
// QUIC packets a tunnel may feed the shared QUIC listener; relay frames are
// bounded by the relay's per-session budgets, exactly as on UDP. Clients
// redial a broken connection with backoff and keep it alive with
// WebSocket pings and TCP keepalives; datagrams sent while it is down are
// dropped and counted, as UDP would lose them, and QUIC retransmits.
package tunnel
