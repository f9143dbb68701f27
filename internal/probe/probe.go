// Package probe is the wire format of hole-punching probes: small
// authenticated UDP packets that two agents send to each other's candidate
// addresses, on the same socket as their QUIC traffic, to open their NATs.
// It imports only the standard library.
//
// The rendezvous gives both agents of a trusted pair the same fresh 16-byte
// token. A probe proves knowledge of the token without revealing it, and
// carries nothing that outlives the introduction: no NodeID, no key, no
// counter shared with other introductions. An observer who sees probes
// learns only that the two addresses punch each other, never who they are,
// and cannot link one introduction's probes to another's.
//
//	+------+------+-------------+----------+----------+
//	| 0x21 | kind | session ID  | sequence | MAC      |
//	|  1   |  1   |      8      |  8 (BE)  |   16     |
//	+------+------+-------------+----------+----------+
//
// kind is 1 (ping) or 2 (pong, the answer to a ping, sent to the ping's
// source address). The session ID is per introduction and per sender:
// SHA-256("agentnet punch id v2\0" ‖ token ‖ sender NodeID)[:8], so a
// receiver finds the session by the ID its peer's probes carry (its own
// probes, reflected back, carry another). MAC = HMAC-SHA256(token,
// "agentnet punch v2\0" ‖ sender NodeID ‖ every preceding byte)[:16]: the
// sender's NodeID is bound into the MAC but never sent. The first byte lies
// in the range QUIC leaves for other protocols (0x00–0x3F) and is not
// STUN's; version 1 (0x20) carried the sender's NodeID in clear and is no
// longer sent or accepted.
package probe

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/binary"
	"errors"
)

// Type is the first byte of every probe.
const Type = 0x21

// Len is the length of a probe.
const Len = 1 + 1 + 8 + 8 + 16

// Kinds of probe.
const (
	KindPing = 1
	KindPong = 2
)

// TokenSize is the size of a punch token.
const TokenSize = 16

// NodeSize is the size of a NodeID (bound into probes, never sent).
const NodeSize = 6

// Probe is a decoded probe.
type Probe struct {
	Kind    byte
	Session [8]byte // SessionID(token, sender)
	Seq     uint64
}

// SessionID returns the session ID of the probes sender sends for token.
func SessionID(token [TokenSize]byte, sender [NodeSize]byte) [8]byte {
	h := sha256.New()
	h.Write([]byte("agentnet punch id v2\x00"))
	h.Write(token[:])
	h.Write(sender[:])
	var id [8]byte
	copy(id[:], h.Sum(nil))
	return id
}

func mac(token [TokenSize]byte, sender [NodeSize]byte, hdr []byte) []byte {
	m := hmac.New(sha256.New, token[:])
	m.Write([]byte("agentnet punch v2\x00"))
	m.Write(sender[:])
	m.Write(hdr)
	return m.Sum(nil)[:16]
}

// Append appends a probe from sender authenticated with token to b.
func Append(b []byte, token [TokenSize]byte, kind byte, sender [NodeSize]byte, seq uint64) []byte {
	start := len(b)
	id := SessionID(token, sender)
	b = append(b, Type, kind)
	b = append(b, id[:]...)
	b = binary.BigEndian.AppendUint64(b, seq)
	return append(b, mac(token, sender, b[start:])...)
}

// Errors from Parse and Verify.
var (
	ErrMalformed = errors.New("probe: malformed")
	ErrBadMAC    = errors.New("probe: bad MAC")
)

// Parse decodes a probe without checking its MAC (the caller looks the
// session up by its ID, then calls Verify). Bytes after Len are ignored.
func Parse(b []byte) (Probe, error) {
	if len(b) < Len || b[0] != Type || (b[1] != KindPing && b[1] != KindPong) {
		return Probe{}, ErrMalformed
	}
	var p Probe
	p.Kind = b[1]
	copy(p.Session[:], b[2:10])
	p.Seq = binary.BigEndian.Uint64(b[10:18])
	return p, nil
}

// Verify checks that b is a probe sender made with token: its session ID
// and its MAC.
func Verify(b []byte, token [TokenSize]byte, sender [NodeSize]byte) error {
	if len(b) < Len || b[0] != Type {
		return ErrMalformed
	}
	id := SessionID(token, sender)
	if !hmac.Equal(b[2:10], id[:]) {
		return ErrBadMAC
	}
	if !hmac.Equal(mac(token, sender, b[:18]), b[18:Len]) {
		return ErrBadMAC
	}
	return nil
}
