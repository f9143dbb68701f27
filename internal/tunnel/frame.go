package tunnel

import (
	"encoding/binary"
	"errors"
	"net/netip"
)

// Frame kinds.
const (
	KindQUIC  byte = 1 // a QUIC packet to or from the rendezvous's control service
	KindRelay byte = 2 // a relay frame (internal/relayframe)
)

// Sizes.
const (
	MaxPayload = 2048     // largest datagram a frame carries
	MaxMessage = 64 << 10 // largest WebSocket message
	frameHead  = 3        // length u16 + kind
)

// Path is the HTTP path of the tunnel endpoint, Subprotocol its WebSocket
// subprotocol.
const (
	Path        = "/agentnet/tunnel/v1"
	Subprotocol = "agentnet-tunnel.v1"
)

// ErrMalformed is returned for a message that does not parse.
var ErrMalformed = errors.New("tunnel: malformed message")

// AppendFrame appends a frame of kind carrying payload to b. payload must
// be at most MaxPayload bytes.
func AppendFrame(b []byte, kind byte, payload []byte) []byte {
	b = binary.BigEndian.AppendUint16(b, uint16(1+len(payload)))
	b = append(b, kind)
	return append(b, payload...)
}

// FrameLen is the encoded size of a frame carrying n bytes.
func FrameLen(n int) int { return frameHead + n }

// NextFrame parses the first frame of msg and returns its kind, payload
// (aliasing msg) and the rest of msg.
func NextFrame(msg []byte) (kind byte, payload, rest []byte, err error) {
	if len(msg) < frameHead {
		return 0, nil, nil, ErrMalformed
	}
	n := int(binary.BigEndian.Uint16(msg))
	if n < 1 || n-1 > MaxPayload || len(msg)-2 < n {
		return 0, nil, nil, ErrMalformed
	}
	return msg[2], msg[3 : 2+n], msg[2+n:], nil
}

// discard is 100::/64 (RFC 6666), the prefix of tunnel addresses.
var discard = netip.MustParsePrefix("100::/64")

// Addr returns the address of tunnel number id.
func Addr(id uint64) netip.AddrPort {
	var a [16]byte
	a[0] = 0x01
	binary.BigEndian.PutUint64(a[8:], id)
	return netip.AddrPortFrom(netip.AddrFrom16(a), 1)
}

// IsTunnelAddr reports whether ap is a tunnel's address (in 100::/64).
func IsTunnelAddr(ap netip.AddrPort) bool { return discard.Contains(ap.Addr()) }
