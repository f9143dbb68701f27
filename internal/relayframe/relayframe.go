// Package relayframe is the wire format of the rendezvous relay: the UDP
// datagrams agents exchange with the relay port to carry their end-to-end
// QUIC packets when no direct path exists. It imports only the standard
// library.
//
// Every frame starts with a type byte in 0x30–0x3F (never QUIC, never STUN)
// and the 8-byte session ID the rendezvous handed to both agents:
//
//	Bind    0x30 | session[8] | side u8 | counter u64 | MAC[16]
//	BindOK  0x31 | session[8] | side u8 | counter u64
//	Data    0x32 | session[8] | payload (an opaque QUIC packet)
//
// A Bind registers the sender's current UDP address as side 0 or 1 of the
// session. MAC = HMAC-SHA256(side secret, every preceding byte)[:16]; the
// counter must grow with every Bind the relay accepts for that side, so a
// replayed Bind cannot move the session to another address. The relay
// answers a Bind it accepted with BindOK, and forwards Data from the bound
// address of one side, unchanged, to the bound address of the other.
package relayframe

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/binary"
	"errors"
)

// Frame types.
const (
	TypeBind   = 0x30
	TypeBindOK = 0x31
	TypeData   = 0x32
)

// Sizes.
const (
	SessionSize  = 8
	SecretSize   = 16
	HeaderLen    = 1 + SessionSize // Data header
	BindLen      = 1 + SessionSize + 1 + 8 + 16
	BindOKLen    = 1 + SessionSize + 1 + 8
	MaxFrameSize = 1452 // fits a 1500-byte IPv4 MTU (20 IP + 8 UDP + 20 spare)
	MaxPayload   = MaxFrameSize - HeaderLen
)

// Session identifies a relay session.
type Session [SessionSize]byte

// Errors.
var (
	ErrMalformed = errors.New("relayframe: malformed frame")
	ErrBadMAC    = errors.New("relayframe: bad MAC")
)

// Bind is a decoded Bind or BindOK frame.
type Bind struct {
	Session Session
	Side    uint8
	Counter uint64
}

// AppendBind appends a Bind for side, authenticated with secret.
func AppendBind(b []byte, s Session, side uint8, counter uint64, secret [SecretSize]byte) []byte {
	start := len(b)
	b = append(b, TypeBind)
	b = append(b, s[:]...)
	b = append(b, side)
	b = binary.BigEndian.AppendUint64(b, counter)
	mac := hmac.New(sha256.New, secret[:])
	mac.Write(b[start:])
	return append(b, mac.Sum(nil)[:16]...)
}

// AppendBindOK appends a BindOK.
func AppendBindOK(b []byte, s Session, side uint8, counter uint64) []byte {
	b = append(b, TypeBindOK)
	b = append(b, s[:]...)
	b = append(b, side)
	return binary.BigEndian.AppendUint64(b, counter)
}

// AppendData appends a Data frame header and payload.
func AppendData(b []byte, s Session, payload []byte) []byte {
	b = append(b, TypeData)
	b = append(b, s[:]...)
	return append(b, payload...)
}

// ParseBind decodes a Bind (TypeBind, MAC not checked) or BindOK frame.
func ParseBind(b []byte) (Bind, error) {
	need := BindOKLen
	if len(b) > 0 && b[0] == TypeBind {
		need = BindLen
	}
	if len(b) < need || (b[0] != TypeBind && b[0] != TypeBindOK) || b[1+SessionSize] > 1 {
		return Bind{}, ErrMalformed
	}
	var f Bind
	copy(f.Session[:], b[1:])
	f.Side = b[1+SessionSize]
	f.Counter = binary.BigEndian.Uint64(b[2+SessionSize:])
	return f, nil
}

// VerifyBind checks a Bind frame's MAC under secret.
func VerifyBind(b []byte, secret [SecretSize]byte) error {
	if len(b) < BindLen || b[0] != TypeBind {
		return ErrMalformed
	}
	mac := hmac.New(sha256.New, secret[:])
	mac.Write(b[:BindLen-16])
	if !hmac.Equal(mac.Sum(nil)[:16], b[BindLen-16:BindLen]) {
		return ErrBadMAC
	}
	return nil
}

// ParseData splits a Data frame; the payload aliases b.
func ParseData(b []byte) (Session, []byte, error) {
	if len(b) < HeaderLen || b[0] != TypeData || len(b) > MaxFrameSize {
		return Session{}, nil, ErrMalformed
	}
	var s Session
	copy(s[:], b[1:])
	return s, b[HeaderLen:], nil
}

// SessionOf returns the session ID of any frame, or false.
func SessionOf(b []byte) (Session, bool) {
	var s Session
	if len(b) < HeaderLen || b[0] < TypeBind || b[0] > TypeData {
		return s, false
	}
	copy(s[:], b[1:])
	return s, true
}
