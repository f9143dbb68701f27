// Package probe is the wire format of hole-punching probes: small
// authenticated UDP packets that two agents send to each other's candidate
// addresses, on the same socket as their QUIC traffic, to open their NATs.
// It imports only the standard library.
//
// The rendezvous gives both agents of a trusted pair the same fresh 16-byte
// token. A probe proves knowledge of the token without revealing it:
//
//	+------+------+----------+-------------+----------+----------+
//	| 0x20 | kind | token ID | sender node | sequence | MAC      |
//	|  1   |  1   |    8     |      6      |  8 (BE)  |   16     |
//	+------+------+----------+-------------+----------+----------+
//
// kind is 1 (ping) or 2 (pong, the answer to a ping, sent to the ping's
// source address); token ID = SHA-256("agentnet punch id v1" ‖ token)[:8]
// lets a receiver find the session without trying every token; MAC =
// HMAC-SHA256(token, every preceding byte)[:16]. The first byte lies in the
// range QUIC leaves for other protocols (0x00–0x3F) and is not STUN's.
package probe

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/binary"
	"errors"
)

// Type is the first byte of every probe.
const Type = 0x20

// Len is the length of a probe.
const Len = 1 + 1 + 8 + 6 + 8 + 16

// Kinds of probe.
const (
	KindPing = 1
	KindPong = 2
)

// TokenSize is the size of a punch token.
const TokenSize = 16

// Probe is a decoded probe.
type Probe struct {
	Kind    byte
	TokenID [8]byte
	Sender  [6]byte // the sender's NodeID
	Seq     uint64
}

// TokenID returns the public identifier of a token.
func TokenID(token [TokenSize]byte) [8]byte {
	h := sha256.New()
	h.Write([]byte("agentnet punch id v1"))
	h.Write(token[:])
	var id [8]byte
	copy(id[:], h.Sum(nil))
	return id
}

// Append appends a probe authenticated with token to b.
func Append(b []byte, token [TokenSize]byte, kind byte, sender [6]byte, seq uint64) []byte {
	start := len(b)
	id := TokenID(token)
	b = append(b, Type, kind)
	b = append(b, id[:]...)
	b = append(b, sender[:]...)
	b = binary.BigEndian.AppendUint64(b, seq)
	mac := hmac.New(sha256.New, token[:])
	mac.Write(b[start:])
	return append(b, mac.Sum(nil)[:16]...)
}

// Errors from Parse and Verify.
var (
	ErrMalformed = errors.New("probe: malformed")
	ErrBadMAC    = errors.New("probe: bad MAC")
)

// Parse decodes a probe without checking its MAC (the caller looks the
// token up by TokenID, then calls Verify).
func Parse(b []byte) (Probe, error) {
	if len(b) < Len || b[0] != Type || (b[1] != KindPing && b[1] != KindPong) {
		return Probe{}, ErrMalformed
	}
	var p Probe
	p.Kind = b[1]
	copy(p.TokenID[:], b[2:10])
	copy(p.Sender[:], b[10:16])
	p.Seq = binary.BigEndian.Uint64(b[16:24])
	return p, nil
}

// Verify checks b's MAC under token and that its token ID matches.
func Verify(b []byte, token [TokenSize]byte) error {
	if len(b) < Len {
		return ErrMalformed
	}
	id := TokenID(token)
	if !hmac.Equal(b[2:10], id[:]) {
		return ErrBadMAC
	}
	mac := hmac.New(sha256.New, token[:])
	mac.Write(b[:24])
	if !hmac.Equal(mac.Sum(nil)[:16], b[24:Len]) {
		return ErrBadMAC
	}
	return nil
}
