package addressing

import (
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/json"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestNodeIDFromKey(t *testing.T) {
	pub, _, err := ed25519.GenerateKey(nil)
	require.NoError(t, err)
	k, ok := PublicKeyFrom(pub)
	require.True(t, ok)
	sum := sha256.Sum256(append([]byte("agentnet node id v1\x00"), pub...))
	var want NodeID
	copy(want[:], sum[:6])
	require.Equal(t, want, k.NodeID())
	require.False(t, k.NodeID().IsZero())

	_, ok = PublicKeyFrom(pub[:31])
	require.False(t, ok)
}

func TestPublicKeyText(t *testing.T) {
	pub, priv, err := ed25519.GenerateKey(nil)
	require.NoError(t, err)
	k, _ := PublicKeyFrom(pub)
	s := k.String()
	require.Len(t, s, 43)
	back, err := ParsePublicKey(s)
	require.NoError(t, err)
	require.Equal(t, k, back)
	msg := []byte("hello")
	require.True(t, k.Verify(msg, ed25519.Sign(priv, msg)))
	require.False(t, k.Verify([]byte("hellO"), ed25519.Sign(priv, msg)))
	require.False(t, PublicKey{}.Verify(msg, make([]byte, 64)))
	for _, bad := range []string{"", "x", s[:42], s + "A", "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"} {
		_, err := ParsePublicKey(bad)
		require.Error(t, err, bad)
	}
}

func TestParseAddr(t *testing.T) {
	tests := []struct {
		name, in string
		ok       bool
		network  NetworkID
		node     uint64
	}{
		{"global", "0:3f2a.91c0.0b17", true, 0, 0x3f2a91c00b17},
		{"max network", "65535:ffff.ffff.ffff", true, 65535, 0xffffffffffff},
		{"network 1", "1:0000.0000.0001", true, 1, 1},
		{"zero node", "0:0000.0000.0000", false, 0, 0},
		{"upper hex", "0:3F2A.91c0.0b17", false, 0, 0},
		{"leading zero network", "01:3f2a.91c0.0b17", false, 0, 0},
		{"network too big", "65536:3f2a.91c0.0b17", false, 0, 0},
		{"negative", "-1:3f2a.91c0.0b17", false, 0, 0},
		{"plus", "+1:3f2a.91c0.0b17", false, 0, 0},
		{"short group", "0:3f2a.91c0.0b1", false, 0, 0},
		{"long group", "0:3f2a.91c0.0b170", false, 0, 0},
		{"no network", ":3f2a.91c0.0b17", false, 0, 0},
		{"no colon", "3f2a.91c0.0b17", false, 0, 0},
		{"dash separator", "0:3f2a-91c0-0b17", false, 0, 0},
		{"space", " 0:3f2a.91c0.0b17", false, 0, 0},
		{"with port", "0:3f2a.91c0.0b17:80", false, 0, 0},
		{"empty", "", false, 0, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a, err := ParseAddr(tt.in)
			if !tt.ok {
				require.Error(t, err)
				require.False(t, a.IsValid())
				return
			}
			require.NoError(t, err)
			require.Equal(t, tt.network, a.Network())
			require.Equal(t, tt.node, a.Node().Uint64())
			require.Equal(t, tt.in, a.String())
		})
	}
}

func TestParseSockAddr(t *testing.T) {
	s, err := ParseSockAddr("7:3f2a.91c0.0b17:80")
	require.NoError(t, err)
	require.Equal(t, uint16(80), s.Port())
	require.Equal(t, NetworkID(7), s.Addr().Network())
	require.Equal(t, "7:3f2a.91c0.0b17:80", s.String())
	require.Equal(t, "agentnet", s.Network())
	for _, bad := range []string{"7:3f2a.91c0.0b17", "7:3f2a.91c0.0b17:", "7:3f2a.91c0.0b17:080", "7:3f2a.91c0.0b17:65536", "7:3f2a.91c0.0b17:-1", "7:0000.0000.0000:1"} {
		_, err := ParseSockAddr(bad)
		require.Error(t, err, bad)
	}
	require.Equal(t, "invalid SockAddr", SockAddr{}.String())
	require.Equal(t, "invalid Addr", Addr{}.String())
}

func TestTextMarshalling(t *testing.T) {
	type doc struct {
		A Addr      `json:"a"`
		S SockAddr  `json:"s"`
		N NodeID    `json:"n"`
		K PublicKey `json:"k"`
		Z Addr      `json:"z"`
	}
	pub, _, _ := ed25519.GenerateKey(nil)
	k, _ := PublicKeyFrom(pub)
	in := doc{A: MustParseAddr("3:0001.0002.0003"), S: MustParseSockAddr("0:aaaa.bbbb.cccc:7"), N: k.NodeID(), K: k}
	b, err := json.Marshal(in)
	require.NoError(t, err)
	var out doc
	require.NoError(t, json.Unmarshal(b, &out))
	require.Equal(t, in, out)
	require.Error(t, json.Unmarshal([]byte(`{"a":"bogus"}`), &out))
}

func TestBinary(t *testing.T) {
	a := MustParseAddr("513:0102.0304.0506")
	b, err := a.AppendBinary(nil)
	require.NoError(t, err)
	require.Equal(t, []byte{2, 1, 1, 2, 3, 4, 5, 6}, b)
	back, ok := AddrFromBinary(b)
	require.True(t, ok)
	require.Equal(t, a, back)
	_, ok = AddrFromBinary(b[:7])
	require.False(t, ok)
}

func TestHostname(t *testing.T) {
	good := []string{"a", "alice", "agent-7", "0", "a1-b2", string(make63('x'))}
	for _, h := range good {
		require.NoError(t, ValidateHostname(h), h)
	}
	bad := []string{"", "-a", "a-", "Alice", "a.b", "a_b", "a b", "ä", string(make63('x')) + "x", "a:b"}
	for _, h := range bad {
		require.Error(t, ValidateHostname(h), h)
	}
}

func make63(c byte) []byte {
	b := make([]byte, 63)
	for i := range b {
		b[i] = c
	}
	return b
}

func TestParseTarget(t *testing.T) {
	tg, err := ParseTarget("alice")
	require.NoError(t, err)
	h, ok := tg.Hostname()
	require.True(t, ok)
	require.Equal(t, "alice", h)
	_, ok = tg.Addr()
	require.False(t, ok)

	tg, err = ParseTarget("0:3f2a.91c0.0b17")
	require.NoError(t, err)
	a, ok := tg.Addr()
	require.True(t, ok)
	require.Equal(t, "0:3f2a.91c0.0b17", a.String())
	require.Equal(t, "0:3f2a.91c0.0b17", tg.String())

	for _, bad := range []string{"", "Alice", "0:zz", "a.b"} {
		_, err := ParseTarget(bad)
		require.Error(t, err, bad)
	}
	require.False(t, Target{}.IsValid())
}

func TestNodeIDCompare(t *testing.T) {
	a := NodeIDFromUint64(1)
	b := NodeIDFromUint64(2)
	require.Equal(t, -1, a.Compare(b))
	require.Equal(t, 1, b.Compare(a))
	require.Equal(t, 0, a.Compare(a))
	require.Equal(t, uint64(0xffffffffffff), NodeIDFromUint64(1<<63-1).Uint64())
}

// TestParseErrorsReadWell: every parse error names the input and says why,
// with no formatting noise. Before the fix a bad node ID inside an address
// printed "%!w(<nil>)" (errors.Unwrap of an error made without %w).
func TestParseErrorsReadWell(t *testing.T) {
	for _, tc := range []struct {
		in, want string
		parse    func(string) error
	}{
		{"0:zzzz.0000.0001", `addressing: address "0:zzzz.0000.0001": want lower-case hex digits`, func(s string) error { _, err := ParseAddr(s); return err }},
		{"0:0000.0000.0000", `addressing: address "0:0000.0000.0000": node ID is zero`, func(s string) error { _, err := ParseAddr(s); return err }},
		{"0:3f2a", `addressing: address "0:3f2a": want xxxx.xxxx.xxxx`, func(s string) error { _, err := ParseAddr(s); return err }},
		{"x:3f2a.91c0.0b17", `addressing: address "x:3f2a.91c0.0b17": network must be decimal 0-65535 without leading zeros`, func(s string) error { _, err := ParseAddr(s); return err }},
		{"0:3F2A.91c0.0b17:80", `addressing: socket address "0:3F2A.91c0.0b17:80": want lower-case hex digits`, func(s string) error { _, err := ParseSockAddr(s); return err }},
		{"3f2a.91c0.0b1", `addressing: node ID "3f2a.91c0.0b1": want xxxx.xxxx.xxxx`, func(s string) error { _, err := ParseNodeID(s); return err }},
	} {
		err := tc.parse(tc.in)
		if err == nil || err.Error() != tc.want {
			t.Errorf("parse %q: got %v, want %s", tc.in, err, tc.want)
		}
	}
}
