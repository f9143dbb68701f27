// Package addressing defines agentnet's virtual addresses: small immutable
// value types modelled on net/netip.
//
// Every agent has an Ed25519 identity key. Its NodeID is the first 48 bits of
// SHA-256("agentnet node id v1" ‖ 0x00 ‖ public key), so an address is
// self-certifying: anyone holding the key can check that an address belongs to
// it, and a registry cannot hand out another agent's address for its own key.
//
// An Addr is a 16-bit network ID and a NodeID; network 0 is the global space
// every agent is in. A SockAddr adds a 16-bit virtual port. Text forms:
//
//	Addr      N:XXXX.XXXX.XXXX         0:3f2a.91c0.0b17
//	SockAddr  N:XXXX.XXXX.XXXX:port    0:3f2a.91c0.0b17:80
//
// The network is decimal without leading zeros, the node three groups of four
// lower-case hex digits. Parsing is strict: every value has exactly one text
// form, and String and Parse round-trip.
//
// The 8-byte binary form of an Addr is the network (big endian) followed by the
// NodeID; a SockAddr appends the port (big endian), 10 bytes.
//
// Hostnames are optional human names an agent can claim at the rendezvous:
// 1 to 63 characters of [a-z0-9-], not starting or ending with '-'.
//
// This package imports only the standard library.
package addressing
