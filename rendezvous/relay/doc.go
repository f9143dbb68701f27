// Package relay is the rendezvous's UDP relay: the floor of connectivity
// when no direct path between two agents can be punched. It forwards opaque
// datagrams (end-to-end encrypted QUIC packets) between the two endpoints of
// a session that the rendezvous's broker opened for a trusted pair.
//
// The wire format is internal/relayframe:
//
//	Bind    0x30 | session[8] | side u8 | counter u64 | mac[16]   agent → relay
//	BindOK  0x31 | session[8] | side u8 | counter u64             relay → agent
//	Data    0x32 | session[8] | payload...                        agent → relay → agent
//
// mac = HMAC-SHA256(secret of the side, every preceding byte)[:16].
//
// # Rules
//
// A session has two sides, each with its own secret, handed only to that
// side's agent. A Bind with a valid MAC and a counter strictly greater than
// the last one accepted for its side binds the side to the Bind's source
// address (so a NAT rebinding is followed by the next Bind, and a replayed
// Bind cannot move the side anywhere); the relay answers it with BindOK.
// Data is forwarded, byte for byte, only when it comes from the address
// bound to one side and the other side is bound, and then only to that
// address. Everything else is dropped and counted, never answered: Data from
// any other address (DroppedWrongSource), frames for a session that does not
// exist (DroppedUnknownSession), Binds with a bad MAC or an old counter
// (BindsRefused), Data over the session's byte or packet rate
// (DroppedOverLimit).
//
// # Limits and memory
//
// Every session has a token bucket of bytes and one of packets (both
// directions together); the number of sessions is bounded (Open fails with
// ErrFull), a pair holds at most MaxPerPair (opening another closes the
// pair's oldest), and a session expires after Idle without an accepted Bind
// or forwarded Data. ClosePair ends a pair's sessions at once (the server
// calls it when the pair's trust is revoked). One goroutine reads the
// socket and one expires idle sessions; there is no goroutine per session.
package relay
