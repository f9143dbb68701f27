// Package proto is the wire codec of the rendezvous control protocol: the
// frames a Client and the rendezvous server exchange on QUIC streams (ALPN
// "agentnet-rendezvous/1"). It is a leaf package: standard library and
// addressing only, no reflection, no I/O beyond ReadFrame.
//
// # Streams
//
// Each request is one bidirectional QUIC stream: the client writes one frame
// and closes its side, the server answers one frame and closes its side.
// Request → answer:
//
//	Lookup       → LookupResult | NotFound | Error
//	SetHostname  → OK | Error
//	TrustSend    → OK | Error
//	Connect      → Introduce | NotFound | Error
//	NetworkCreate  → NetworkInfo | Error
//	NetworkSend    → NetworkInfo (a Join) | OK (a Leave or Remove) | NotFound | Error
//	NetworkMembers → NetworkState … NetworkState (Last set) | NotFound
//
// NetworkMembers is the one request answered by several frames: the pages
// of a full list, the last with its Last flag set.
//
// Besides these, every client keeps one long-lived "session" stream, opened
// right after the handshake. The client writes Register on it and the server
// answers Registered (or Error, and closes). After that the server pushes
// Deliver frames on it and the client answers each with an Ack frame once the
// message is safely handled. The server also pushes Introduce frames on it
// (never acked: an introduction is best effort), and NetworkState frames:
// after Register a full list of every network the agent is in (and the
// Leave or Remove that ended a membership of its own it may have missed),
// later each change of those networks. A client ignores pushed
// frame types it does not know. Besides its Acks, the client writes a
// padded Ping on the session stream every second and a half (unanswered:
// QUIC's acknowledgement is the answer), which keeps the connection's short
// idle timeout from expiring while the server is there and draws a
// stateless reset at once from a server that restarted. The session ends
// with the connection.
//
// # Frame
//
// All integers are big endian.
//
//	+---------+------+-------------+-----------------+
//	| version | type | length      | body            |
//	| 1 byte  | 1    | uint16      | length bytes    |
//	+---------+------+-------------+-----------------+
//
// version is 1. length is at most MaxBody (8 KiB); a reader may impose a
// smaller limit. A body is parsed strictly (every length is checked, every
// value validated), but bytes after the last field this version knows are
// ignored, so later versions can append fields.
//
// A client pads small request bodies with zero bytes (Pad) so that each
// request leaves in a packet large enough to draw a QUIC stateless reset
// from a restarted server that no longer knows the connection.
//
// # Field encodings
//
//	str      uint8 length | bytes                  (hostnames, error text)
//	bytes16  uint16 length | bytes                 (trust messages, ≤ 1 KiB)
//	addr     8 bytes: uint16 network | 6-byte NodeID  (addressing.Addr binary form)
//	key      32 bytes Ed25519 public key
//	ipport   uint8 family (4 or 6) | 4 or 16 address bytes | uint16 port
//	         (zones are not carried; an IPv4-mapped IPv6 address stays family 6)
//	ipports  uint8 count (≤ 8) | count × ipport
//	time     int64 Unix nanoseconds; 0 is the zero time
//	target   uint8 kind | kind 1: addr; kind 2: str (a valid hostname)
//	svcaddr  like ipport, but family 0 (no address bytes) means "the host of
//	         the server address the client dialled"; port 0 means "none"
//	grant    svcaddr relay | session[8] | secret[16] | uint8 side (0 or 1)
//
// # Bodies
//
//	type  name          body
//	0x01  Register      str hostname ("" = none) | ipports local candidates
//	0x02  Registered    addr | ipport reflexive | time server clock | str hostname bound to the key |
//	                    svcaddr second STUN address | svcaddr relay
//	0x03  Lookup        target
//	0x04  LookupResult  key | addr | uint8 flags (bit 0: online; others ignored) | str hostname | ipports locators
//	0x05  NotFound      (empty)
//	0x06  SetHostname   str hostname ("" releases the current one)
//	0x07  TrustSend     bytes16 encoded trustdb.Message
//	0x08  Deliver       uint64 mailbox id | bytes16 encoded trustdb.Message
//	0x09  Ack           uint64 mailbox id
//	0x0a  OK            (empty)
//	0x0b  Error         uint16 code | str text (≤ 255 bytes, informational)
//	0x0c  Connect       addr target | ipports the sender's candidates | uint8 flags (bit 0: relay)
//	0x0d  Introduce     key peer | addr peer | ipports the peer's candidates | token[16] |
//	                    uint8 flags (bit 0: initiator; bit 1: a grant follows) | [grant] |
//	                    [uint8 the peer's NAT kind (0 unknown, 1 none, 2 easy, 3 hard); absent: unknown]
//	0x0e  NetworkCreate    str name
//	0x0f  NetworkInfo      uint16 network (never 0) | str name | key owner
//	0x10  NetworkSend      doc
//	0x11  NetworkMembers   uint16 network
//	0x12  NetworkState     uint16 network | str name | key owner |
//	                       uint8 flags (bit 0: first page of a full list; bit 1: last page) |
//	                       uint16 count | count × doc
//	0x13  NATReport        uint8 the sender's NAT kind (as in Introduce)
//	0x14  Ping             (empty; session stream, client to server, padded)
//
// where doc is a uint16 length (1-1024) and a signed network document
// (package network: Join, Leave or Remove), opaque to this package.
//
// Error codes are stable; ErrorCode.String gives their names ("rate_limited",
// "hostname_taken", …), which clients and logs use.
//
// NotFound has an empty body on purpose: the answer for an agent that does
// not exist and for one the asker may not see is the same four bytes (and
// for Connect, also for one that is offline).
package proto
