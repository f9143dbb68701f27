package addressing

import (
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// nodeIDDomain separates NodeID derivation from every other use of SHA-256
// over a public key.
const nodeIDDomain = "agentnet node id v1\x00"

// PublicKeySize is the size of an Ed25519 public key.
const PublicKeySize = ed25519.PublicKeySize

// PublicKey is an agent's Ed25519 public key as a comparable value, usable as
// a map key. The zero value is invalid.
type PublicKey [PublicKeySize]byte

// PublicKeyFrom copies an ed25519.PublicKey. It reports false if k has the
// wrong length.
func PublicKeyFrom(k ed25519.PublicKey) (PublicKey, bool) {
	var p PublicKey
	if len(k) != PublicKeySize {
		return p, false
	}
	copy(p[:], k)
	return p, true
}

// PublicKeyFromSlice is like PublicKeyFrom for raw bytes.
func PublicKeyFromSlice(b []byte) (PublicKey, bool) { return PublicKeyFrom(b) }

// IsZero reports whether k is the zero (invalid) key.
func (k PublicKey) IsZero() bool { return k == PublicKey{} }

// Ed25519 returns k as an ed25519.PublicKey (a fresh slice the caller owns).
func (k PublicKey) Ed25519() ed25519.PublicKey {
	b := make([]byte, PublicKeySize)
	copy(b, k[:])
	return b
}

// NodeID returns the NodeID derived from k.
func (k PublicKey) NodeID() NodeID { return NodeIDFromKey(k) }

// Verify reports whether sig is k's valid signature of msg.
func (k PublicKey) Verify(msg, sig []byte) bool {
	if k.IsZero() || len(sig) != ed25519.SignatureSize {
		return false
	}
	return ed25519.Verify(k[:], msg, sig)
}

// String returns the key as unpadded URL-safe base64 (43 characters).
func (k PublicKey) String() string { return base64.RawURLEncoding.EncodeToString(k[:]) }

// ParsePublicKey parses the String form of a key. It also accepts 64 hex digits.
func ParsePublicKey(s string) (PublicKey, error) {
	var k PublicKey
	var b []byte
	var err error
	switch len(s) {
	case 43:
		b, err = base64.RawURLEncoding.Strict().DecodeString(s)
	case 64:
		b, err = hex.DecodeString(s)
	default:
		return k, fmt.Errorf("addressing: public key %q: want 43 base64 characters", s)
	}
	if err != nil || len(b) != PublicKeySize {
		return k, fmt.Errorf("addressing: public key %q: malformed", s)
	}
	copy(k[:], b)
	if k.IsZero() {
		return k, fmt.Errorf("addressing: public key is zero")
	}
	return k, nil
}

// MarshalText implements encoding.TextMarshaler.
func (k PublicKey) MarshalText() ([]byte, error) { return []byte(k.String()), nil }

// UnmarshalText implements encoding.TextUnmarshaler.
func (k *PublicKey) UnmarshalText(b []byte) error {
	p, err := ParsePublicKey(string(b))
	if err != nil {
		return err
	}
	*k = p
	return nil
}

// NodeIDSize is the size of a NodeID in bytes (48 bits).
const NodeIDSize = 6

// NodeID identifies an agent in every network: the first 48 bits of a
// domain-separated SHA-256 of its public key. The zero value is invalid.
type NodeID [NodeIDSize]byte

// NodeIDFromKey derives the NodeID of a public key.
func NodeIDFromKey(k PublicKey) NodeID {
	h := sha256.New()
	h.Write([]byte(nodeIDDomain))
	h.Write(k[:])
	var sum [sha256.Size]byte
	h.Sum(sum[:0])
	var id NodeID
	copy(id[:], sum[:NodeIDSize])
	return id
}

// IsZero reports whether n is the zero (invalid) NodeID.
func (n NodeID) IsZero() bool { return n == NodeID{} }

// Uint64 returns n as an integer in [0, 2^48).
func (n NodeID) Uint64() uint64 {
	var v uint64
	for _, b := range n {
		v = v<<8 | uint64(b)
	}
	return v
}

// NodeIDFromUint64 returns the NodeID whose integer value is v (v must be below 2^48;
// higher bits are ignored).
func NodeIDFromUint64(v uint64) NodeID {
	var n NodeID
	for i := NodeIDSize - 1; i >= 0; i-- {
		n[i] = byte(v)
		v >>= 8
	}
	return n
}

// Compare returns -1, 0 or +1 as n sorts before, equal to or after m.
func (n NodeID) Compare(m NodeID) int {
	a, b := n.Uint64(), m.Uint64()
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// String returns "xxxx.xxxx.xxxx".
func (n NodeID) String() string { return string(n.appendTo(make([]byte, 0, 14))) }

func (n NodeID) appendTo(b []byte) []byte {
	const digits = "0123456789abcdef"
	for i, c := range n {
		if i == 2 || i == 4 {
			b = append(b, '.')
		}
		b = append(b, digits[c>>4], digits[c&0xf])
	}
	return b
}

// ParseNodeID parses "xxxx.xxxx.xxxx" (lower-case hex, exactly four digits per group).
func ParseNodeID(s string) (NodeID, error) {
	n, err := parseNodeID(s)
	if err != nil {
		return NodeID{}, fmt.Errorf("addressing: node ID %q: %w", s, err)
	}
	return n, nil
}

// Reasons a node ID does not parse.
var (
	errNodeIDForm = errors.New("want xxxx.xxxx.xxxx")
	errNodeIDHex  = errors.New("want lower-case hex digits")
	errNodeIDZero = errors.New("node ID is zero")
)

// parseNodeID is ParseNodeID with the bare reason as the error.
func parseNodeID(s string) (NodeID, error) {
	var n NodeID
	if len(s) != 14 || s[4] != '.' || s[9] != '.' {
		return n, errNodeIDForm
	}
	j := 0
	for i := 0; i < 14; i += 5 {
		for k := 0; k < 4; k += 2 {
			hi, ok1 := fromHex(s[i+k])
			lo, ok2 := fromHex(s[i+k+1])
			if !ok1 || !ok2 {
				return NodeID{}, errNodeIDHex
			}
			n[j] = hi<<4 | lo
			j++
		}
	}
	if n.IsZero() {
		return NodeID{}, errNodeIDZero
	}
	return n, nil
}

func fromHex(c byte) (byte, bool) {
	switch {
	case '0' <= c && c <= '9':
		return c - '0', true
	case 'a' <= c && c <= 'f':
		return c - 'a' + 10, true
	}
	return 0, false
}

// MarshalText implements encoding.TextMarshaler.
func (n NodeID) MarshalText() ([]byte, error) { return []byte(n.String()), nil }

// UnmarshalText implements encoding.TextUnmarshaler.
func (n *NodeID) UnmarshalText(b []byte) error {
	v, err := ParseNodeID(string(b))
	if err != nil {
		return err
	}
	*n = v
	return nil
}

// NetworkID identifies a network (group). Network 0 is the global space.
type NetworkID uint16

// Addr is a virtual address: network ID plus NodeID. It is a small comparable
// value, usable as a map key. The zero Addr is invalid.
type Addr struct {
	network NetworkID
	node    NodeID
}

// AddrSize is the size of the binary form of an Addr.
const AddrSize = 2 + NodeIDSize

// AddrFrom returns the address of node in network.
func AddrFrom(network NetworkID, node NodeID) Addr { return Addr{network, node} }

// Network returns a's network ID.
func (a Addr) Network() NetworkID { return a.network }

// Node returns a's NodeID.
func (a Addr) Node() NodeID { return a.node }

// IsValid reports whether a has a non-zero NodeID.
func (a Addr) IsValid() bool { return !a.node.IsZero() }

// WithNetwork returns the address of the same node in another network.
func (a Addr) WithNetwork(n NetworkID) Addr { return Addr{n, a.node} }

// String returns "N:xxxx.xxxx.xxxx", or "invalid Addr" for an invalid one.
func (a Addr) String() string {
	if !a.IsValid() {
		return "invalid Addr"
	}
	return string(a.AppendText(make([]byte, 0, 20)))
}

// AppendText appends the text form of a to b.
func (a Addr) AppendText(b []byte) []byte {
	b = strconv.AppendUint(b, uint64(a.network), 10)
	b = append(b, ':')
	return a.node.appendTo(b)
}

// ParseAddr parses "N:xxxx.xxxx.xxxx" strictly.
func ParseAddr(s string) (Addr, error) {
	a, err := parseAddr(s)
	if err != nil {
		return Addr{}, fmt.Errorf("addressing: address %q: %w", s, err)
	}
	return a, nil
}

var errAddrForm = errors.New("want N:xxxx.xxxx.xxxx")

// parseAddr is ParseAddr with the bare reason as the error.
func parseAddr(s string) (Addr, error) {
	i := strings.IndexByte(s, ':')
	if i < 0 {
		return Addr{}, errAddrForm
	}
	nw, err := parseNetwork(s[:i])
	if err != nil {
		return Addr{}, err
	}
	node, err := parseNodeID(s[i+1:])
	if err != nil {
		return Addr{}, err
	}
	return Addr{nw, node}, nil
}

// MustParseAddr is ParseAddr that panics on error; for tests and constants.
func MustParseAddr(s string) Addr {
	a, err := ParseAddr(s)
	if err != nil {
		panic(err)
	}
	return a
}

var errNetwork = errors.New("network must be decimal 0-65535 without leading zeros")

func parseNetwork(s string) (NetworkID, error) {
	if len(s) == 0 || len(s) > 5 || (len(s) > 1 && s[0] == '0') {
		return 0, errNetwork
	}
	var v uint32
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < '0' || c > '9' {
			return 0, errNetwork
		}
		v = v*10 + uint32(c-'0')
	}
	if v > 0xffff {
		return 0, errNetwork
	}
	return NetworkID(v), nil
}

// MarshalText implements encoding.TextMarshaler. The zero Addr marshals to "".
func (a Addr) MarshalText() ([]byte, error) {
	if !a.IsValid() {
		return []byte{}, nil
	}
	return a.AppendText(nil), nil
}

// UnmarshalText implements encoding.TextUnmarshaler; "" gives the zero Addr.
func (a *Addr) UnmarshalText(b []byte) error {
	if len(b) == 0 {
		*a = Addr{}
		return nil
	}
	v, err := ParseAddr(string(b))
	if err != nil {
		return err
	}
	*a = v
	return nil
}

// AppendBinary appends the 8-byte binary form of a.
func (a Addr) AppendBinary(b []byte) ([]byte, error) {
	b = append(b, byte(a.network>>8), byte(a.network))
	return append(b, a.node[:]...), nil
}

// AddrFromBinary decodes the 8-byte binary form. It reports false if b is
// short; extra bytes are ignored.
func AddrFromBinary(b []byte) (Addr, bool) {
	if len(b) < AddrSize {
		return Addr{}, false
	}
	var a Addr
	a.network = NetworkID(b[0])<<8 | NetworkID(b[1])
	copy(a.node[:], b[2:AddrSize])
	return a, true
}

// Port is a virtual port number.
type Port = uint16

// SockAddr is an Addr plus a virtual port. It implements net.Addr, so it can
// stand in the address slots of net.Conn and net.PacketConn.
type SockAddr struct {
	addr Addr
	port uint16
}

// SockAddrFrom returns the socket address of port on a.
func SockAddrFrom(a Addr, port uint16) SockAddr { return SockAddr{a, port} }

// Addr returns s's address.
func (s SockAddr) Addr() Addr { return s.addr }

// Port returns s's virtual port.
func (s SockAddr) Port() uint16 { return s.port }

// IsValid reports whether s's address is valid.
func (s SockAddr) IsValid() bool { return s.addr.IsValid() }

// Network implements net.Addr; it returns "agentnet".
func (s SockAddr) Network() string { return "agentnet" }

// String returns "N:xxxx.xxxx.xxxx:port", or "invalid SockAddr".
func (s SockAddr) String() string {
	if !s.IsValid() {
		return "invalid SockAddr"
	}
	return string(s.AppendText(make([]byte, 0, 26)))
}

// AppendText appends the text form of s to b.
func (s SockAddr) AppendText(b []byte) []byte {
	b = s.addr.AppendText(b)
	b = append(b, ':')
	return strconv.AppendUint(b, uint64(s.port), 10)
}

// ParseSockAddr parses "N:xxxx.xxxx.xxxx:port" strictly (port decimal 0-65535
// without leading zeros).
func ParseSockAddr(s string) (SockAddr, error) {
	i := strings.LastIndexByte(s, ':')
	if i < 0 {
		return SockAddr{}, fmt.Errorf("addressing: socket address %q: want N:xxxx.xxxx.xxxx:port", s)
	}
	a, err := parseAddr(s[:i])
	if err != nil {
		return SockAddr{}, fmt.Errorf("addressing: socket address %q: %w", s, err)
	}
	p, err := parseNetwork(s[i+1:])
	if err != nil {
		return SockAddr{}, fmt.Errorf("addressing: socket address %q: port must be decimal 0-65535 without leading zeros", s)
	}
	return SockAddr{a, uint16(p)}, nil
}

// MustParseSockAddr is ParseSockAddr that panics on error.
func MustParseSockAddr(s string) SockAddr {
	v, err := ParseSockAddr(s)
	if err != nil {
		panic(err)
	}
	return v
}

// MarshalText implements encoding.TextMarshaler.
func (s SockAddr) MarshalText() ([]byte, error) {
	if !s.IsValid() {
		return []byte{}, nil
	}
	return s.AppendText(nil), nil
}

// UnmarshalText implements encoding.TextUnmarshaler.
func (s *SockAddr) UnmarshalText(b []byte) error {
	if len(b) == 0 {
		*s = SockAddr{}
		return nil
	}
	v, err := ParseSockAddr(string(b))
	if err != nil {
		return err
	}
	*s = v
	return nil
}

// MaxHostnameLen is the longest valid hostname.
const MaxHostnameLen = 63

// ValidateHostname reports why h is not a valid hostname: 1 to 63 characters
// of [a-z0-9-], not starting or ending with '-'.
func ValidateHostname(h string) error {
	if len(h) == 0 || len(h) > MaxHostnameLen {
		return fmt.Errorf("addressing: hostname must be 1-%d characters", MaxHostnameLen)
	}
	for i := 0; i < len(h); i++ {
		c := h[i]
		if !('a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '-') {
			return fmt.Errorf("addressing: hostname %q: only a-z, 0-9 and '-' are allowed", h)
		}
	}
	if h[0] == '-' || h[len(h)-1] == '-' {
		return fmt.Errorf("addressing: hostname %q: must not start or end with '-'", h)
	}
	return nil
}

// Target is what a caller names to reach an agent: an address or a hostname.
// The zero Target is invalid.
type Target struct {
	addr     Addr
	hostname string
}

// TargetAddr returns a Target naming an address.
func TargetAddr(a Addr) Target { return Target{addr: a} }

// ParseTarget parses an address ("N:xxxx.xxxx.xxxx") or a hostname. A string
// with a ':' is parsed as an address, anything else as a hostname.
func ParseTarget(s string) (Target, error) {
	if strings.IndexByte(s, ':') >= 0 {
		a, err := ParseAddr(s)
		if err != nil {
			return Target{}, err
		}
		return Target{addr: a}, nil
	}
	if err := ValidateHostname(s); err != nil {
		return Target{}, err
	}
	return Target{hostname: s}, nil
}

// Addr returns the address named, if any.
func (t Target) Addr() (Addr, bool) { return t.addr, t.addr.IsValid() }

// Hostname returns the hostname named, if any.
func (t Target) Hostname() (string, bool) { return t.hostname, t.hostname != "" }

// IsValid reports whether t names something.
func (t Target) IsValid() bool { return t.addr.IsValid() || t.hostname != "" }

// String returns the address or hostname.
func (t Target) String() string {
	if t.hostname != "" {
		return t.hostname
	}
	return t.addr.String()
}
