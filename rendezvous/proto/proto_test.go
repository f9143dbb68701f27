package proto

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/agentnet/agentnet/addressing"
)

var updateSeeds = flag.Bool("update-seeds", false, "rewrite testdata/fuzz seed corpora")

func testKey(b byte) addressing.PublicKey {
	var k addressing.PublicKey
	for i := range k {
		k[i] = b + byte(i)
	}
	return k
}

// sampleMessages is one valid value of every message type, several for some.
func sampleMessages() []Message {
	k := testKey(1)
	a := addressing.AddrFrom(0, k.NodeID())
	v4 := netip.MustParseAddrPort("198.18.0.7:4242")
	v6 := netip.MustParseAddrPort("[2001:db8::1]:65535")
	mapped := netip.AddrPortFrom(netip.AddrFrom16(netip.MustParseAddr("10.0.0.1").As16()), 1)
	return []Message{
		&Register{},
		&Register{Hostname: "alice", LocalAddrs: []netip.AddrPort{v4, v6, mapped}},
		&Registered{Addr: a, Reflexive: v4, Time: time.Unix(0, 1_700_000_000_123_456_789), Hostname: "alice"},
		&Registered{Addr: a, Reflexive: v6},
		&Lookup{Target: addressing.TargetAddr(a)},
		&Lookup{Target: mustTarget("bob-2")},
		&LookupResult{Key: k, Addr: a, Hostname: "bob", Online: true, Locators: []netip.AddrPort{v4, v6}},
		&LookupResult{Key: k, Addr: a},
		&NotFound{},
		&SetHostname{Hostname: "carol"},
		&SetHostname{},
		&TrustSend{Msg: []byte("signed trust message")},
		&Deliver{ID: 1<<64 - 1, Msg: bytes.Repeat([]byte{7}, MaxTrustMessage)},
		&Ack{ID: 42},
		&OK{},
		&Error{Code: CodeRateLimited, Text: "slow down"},
		&Error{Code: 999},
		&Registered{Addr: a, Reflexive: v4, STUN2: netip.AddrPortFrom(netip.Addr{}, 3479), Relay: netip.AddrPortFrom(netip.Addr{}, 3480)},
		&Registered{Addr: a, Reflexive: v6, STUN2: netip.MustParseAddrPort("[2001:db8::2]:3478"), Relay: v4},
		&Connect{Target: a},
		&Connect{Target: a.WithNetwork(3), Candidates: []netip.AddrPort{v4, v6, mapped}, Relay: true},
		&Introduce{Peer: k, PeerAddr: a, Token: [TokenSize]byte{1, 2, 3, 15: 16}},
		&Introduce{Peer: k, PeerAddr: a, Candidates: []netip.AddrPort{v4, v6}, Token: [TokenSize]byte{9}, Initiator: true,
			Relay: &RelayGrant{Addr: netip.AddrPortFrom(netip.Addr{}, 7422), Session: [8]byte{1, 7: 8}, Secret: [16]byte{2, 15: 3}, Side: 1}},
		&Introduce{Peer: k, PeerAddr: a, Relay: &RelayGrant{Addr: v6, Side: 0}},
		&NetworkCreate{Name: "builders"},
		&NetworkInfo{ID: 1, Name: "b", Owner: k},
		&NetworkSend{Doc: bytes.Repeat([]byte{3}, MaxNetworkDoc)},
		&NetworkMembers{ID: 65535},
		&NetworkState{ID: 9, Name: "builders", Owner: k, First: true, Last: true},
		&NetworkState{ID: 9, Name: "builders", Owner: k, Docs: [][]byte{[]byte("join"), []byte("leave")}},
		&NetworkState{ID: 9, Name: "builders", Owner: k, Last: true, Docs: [][]byte{bytes.Repeat([]byte{1}, MaxNetworkDoc)}},
		&Introduce{Peer: k, PeerAddr: a, Candidates: []netip.AddrPort{v4}, Token: [TokenSize]byte{5}, PeerNAT: NATHard},
		&Introduce{Peer: k, PeerAddr: a, Initiator: true, Relay: &RelayGrant{Addr: v4, Side: 0}, PeerNAT: NATEasy},
		&NATReport{Kind: NATHard},
		&NATReport{},
		&Ping{},
	}
}

func mustTarget(s string) addressing.Target {
	t, err := addressing.ParseTarget(s)
	if err != nil {
		panic(err)
	}
	return t
}

func TestRoundTrip(t *testing.T) {
	for _, m := range sampleMessages() {
		t.Run(m.FrameType().String(), func(t *testing.T) {
			b, err := AppendMessage([]byte("prefix"), m)
			require.NoError(t, err)
			require.Equal(t, "prefix", string(b[:6]))
			f, n, err := ParseFrame(b[6:])
			require.NoError(t, err)
			require.Equal(t, len(b)-6, n)
			require.Equal(t, m.FrameType(), f.Type)
			got, err := ParseMessage(f)
			require.NoError(t, err)
			require.Equal(t, m, got)

			// Forward compatibility: trailing bytes in a body are ignored.
			body := append(append([]byte(nil), f.Body...), 0xde, 0xad)
			got2, err := ParseMessage(Frame{Type: f.Type, Body: body})
			require.NoError(t, err)
			require.Equal(t, m, got2)

			// Every strict prefix of a non-empty body fails, never panics.
			if _, empty := m.(*NotFound); !empty {
				for i := 0; i < len(f.Body); i++ {
					_, err := ParseMessage(Frame{Type: f.Type, Body: f.Body[:i]})
					if _, ok := m.(*OK); ok {
						continue
					}
					if in, ok := m.(*Introduce); ok && i == len(f.Body)-1 {
						// The peer's NAT kind is optional (older servers).
						require.NoError(t, err)
						old := *in
						old.PeerNAT = NATUnknown
						got, _ := ParseMessage(Frame{Type: f.Type, Body: f.Body[:i]})
						require.Equal(t, &old, got)
						continue
					}
					require.ErrorIs(t, err, ErrMalformed, "prefix %d", i)
				}
			}

			rf, err := ReadFrame(bytes.NewReader(b[6:]), 0)
			require.NoError(t, err)
			require.Equal(t, f, rf)
		})
	}
}

func TestPad(t *testing.T) {
	for _, m := range sampleMessages() {
		b, err := AppendMessage(nil, m)
		require.NoError(t, err)
		p := Pad(bytes.Clone(b), 100)
		require.GreaterOrEqual(t, len(p), 100)
		f, n, err := ParseFrame(p)
		require.NoError(t, err)
		require.Equal(t, len(p), n)
		got, err := ParseMessage(f)
		require.NoError(t, err)
		require.Equal(t, m, got)
	}
	require.Equal(t, []byte{1, 2}, Pad([]byte{1, 2}, 10))
	big := Pad([]byte{1, 1, 0, 0}, 1<<20)
	require.Len(t, big, HeaderSize+MaxBody)
}

func TestNotFoundBytes(t *testing.T) {
	b, err := AppendMessage(nil, &NotFound{})
	require.NoError(t, err)
	require.Equal(t, []byte{Version, byte(TypeNotFound), 0, 0}, b)
}

func TestMalformed(t *testing.T) {
	k := testKey(3)
	a := addressing.AddrFrom(0, k.NodeID())
	ab, _ := a.AppendBinary(nil)
	for _, tc := range []struct {
		name string
		typ  Type
		body []byte
	}{
		{"register bad hostname", TypeRegister, []byte{3, 'A', 'b', 'c', 0}},
		{"register hostname with dash", TypeRegister, []byte{2, 'a', '-', 0}},
		{"register too many addrs", TypeRegister, []byte{0, 9}},
		{"register bad family", TypeRegister, []byte{0, 1, 5, 1, 2, 3, 4, 0, 1}},
		{"register truncated addr", TypeRegister, []byte{0, 1, 4, 1, 2}},
		{"lookup bad kind", TypeLookup, []byte{3}},
		{"lookup zero addr", TypeLookup, append([]byte{1}, make([]byte, 8)...)},
		{"lookup empty hostname", TypeLookup, []byte{2, 0}},
		{"lookup short addr", TypeLookup, append([]byte{1}, ab[:7]...)},
		{"trust send empty", TypeTrustSend, []byte{0, 0}},
		{"trust send too long", TypeTrustSend, []byte{0x04, 0x01}},
		{"trust send short", TypeTrustSend, []byte{0, 5, 1, 2}},
		{"deliver short id", TypeDeliver, []byte{1, 2, 3}},
		{"ack short", TypeAck, []byte{1}},
		{"error short text", TypeError, []byte{0, 1, 5, 'a'}},
		{"connect zero target", TypeConnect, append(make([]byte, 8), 0, 0)},
		{"connect no flags", TypeConnect, append(ab, 0)},
		{"connect too many candidates", TypeConnect, append(ab, 9, 0)},
		{"introduce zero peer addr", TypeIntroduce, introduceBody(k, addressing.Addr{}, 0)},
		{"introduce grant bad side", TypeIntroduce, append(introduceBody(k, a, flagRelayGrant), append([]byte{0, 1, 2}, append(make([]byte, 24), 2)...)...)},
		{"introduce grant no port", TypeIntroduce, append(introduceBody(k, a, flagRelayGrant), append([]byte{0, 0, 0}, append(make([]byte, 24), 0)...)...)},
		{"introduce grant truncated", TypeIntroduce, append(introduceBody(k, a, flagRelayGrant), 0, 1, 2)},
		{"registered bad service family", TypeRegistered, append(registeredBody(a), 5, 0, 1, 0, 0, 0)},
		{"registered no relay", TypeRegistered, append(registeredBody(a), 0, 0, 1)},
		{"nat report empty", TypeNATReport, nil},
		{"unknown type", Type(0x7f), nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseMessage(Frame{Type: tc.typ, Body: tc.body})
			require.ErrorIs(t, err, ErrMalformed)
		})
	}
}

// An Introduce from a server that predates PeerNAT parses as NATUnknown.
func TestIntroduceWithoutPeerNAT(t *testing.T) {
	k := testKey(1)
	m, err := ParseIntroduce(introduceBody(k, addressing.AddrFrom(0, k.NodeID()), flagInitiator))
	require.NoError(t, err)
	require.Equal(t, NATUnknown, m.PeerNAT)
	require.True(t, m.Initiator)
}

// introduceBody is an Introduce body up to and including its flags byte.
func introduceBody(k addressing.PublicKey, a addressing.Addr, flags byte) []byte {
	b := append([]byte(nil), k[:]...)
	b, _ = a.AppendBinary(b)
	b = append(b, 0)                          // no candidates
	b = append(b, make([]byte, TokenSize)...) // token
	return append(b, flags)
}

// registeredBody is a Registered body up to its hostname.
func registeredBody(a addressing.Addr) []byte {
	b, _ := a.AppendBinary(nil)
	b = append(b, 4, 10, 0, 0, 1, 0, 1) // reflexive 10.0.0.1:1
	b = append(b, make([]byte, 8)...)   // time
	return append(b, 0)                 // no hostname
}

func TestFrameLimits(t *testing.T) {
	_, _, err := ParseFrame([]byte{2, 1, 0, 0})
	require.ErrorIs(t, err, ErrMalformed)
	_, _, err = ParseFrame([]byte{1, 1, 0xff, 0xff})
	require.ErrorIs(t, err, ErrTooLarge)
	_, _, err = ParseFrame([]byte{1, 1, 0, 2, 0})
	require.ErrorIs(t, err, ErrMalformed)
	_, err = AppendFrame(nil, TypeOK, make([]byte, MaxBody+1))
	require.ErrorIs(t, err, ErrTooLarge)

	big, err := AppendFrame(nil, TypeTrustSend, make([]byte, 2000))
	require.NoError(t, err)
	_, err = ReadFrame(bytes.NewReader(big), 1024)
	require.ErrorIs(t, err, ErrTooLarge)
	_, err = ReadFrame(bytes.NewReader(big[:10]), 0)
	require.ErrorIs(t, err, ErrMalformed)
	_, err = ReadFrame(bytes.NewReader(big[:2]), 0)
	require.ErrorIs(t, err, ErrMalformed)

	_, err = AppendMessage(nil, &Register{LocalAddrs: make([]netip.AddrPort, 9)})
	require.Error(t, err)
	_, err = AppendMessage(nil, &Register{Hostname: "Bad"})
	require.Error(t, err)
	_, err = AppendMessage(nil, &TrustSend{Msg: make([]byte, MaxTrustMessage+1)})
	require.Error(t, err)
	_, err = AppendMessage(nil, &Lookup{})
	require.Error(t, err)
	_, err = AppendMessage(nil, &Connect{})
	require.Error(t, err)
	_, err = AppendMessage(nil, &Connect{Target: addressing.AddrFrom(0, testKey(1).NodeID()), Candidates: make([]netip.AddrPort, 9)})
	require.Error(t, err)
	_, err = AppendMessage(nil, &Introduce{})
	require.Error(t, err)
	a := addressing.AddrFrom(0, testKey(1).NodeID())
	_, err = AppendMessage(nil, &Introduce{PeerAddr: a, Relay: &RelayGrant{Side: 2, Addr: netip.AddrPortFrom(netip.Addr{}, 1)}})
	require.Error(t, err)
	_, err = AppendMessage(nil, &Introduce{PeerAddr: a, Relay: &RelayGrant{}})
	require.Error(t, err)
	_, err = AppendMessage(nil, &NetworkCreate{Name: "Bad"})
	require.Error(t, err)
	_, err = AppendMessage(nil, &NetworkInfo{Name: "x"})
	require.Error(t, err, "network 0")
	_, err = AppendMessage(nil, &NetworkSend{})
	require.Error(t, err)
	_, err = AppendMessage(nil, &NetworkMembers{})
	require.Error(t, err)
	_, err = AppendMessage(nil, &NetworkState{ID: 1, Name: "x", Docs: [][]byte{make([]byte, MaxNetworkDoc+1)}})
	require.Error(t, err)
	_, err = AppendMessage(nil, &NetworkState{ID: 1, Name: "x", Docs: make([][]byte, 9)})
	require.Error(t, err, "empty documents")
	// A full page of large documents stays under MaxBody only up to 7.
	page := make([][]byte, 7)
	for i := range page {
		page[i] = make([]byte, MaxNetworkDoc)
	}
	_, err = AppendMessage(nil, &NetworkState{ID: 1, Name: "x", Docs: page})
	require.NoError(t, err)
}

func TestErrorCodeNames(t *testing.T) {
	require.Equal(t, "rate_limited", CodeRateLimited.String())
	require.Equal(t, "hostname_taken", CodeHostnameTaken.String())
	require.Equal(t, "code_999", ErrorCode(999).String())
	e := &Error{Code: CodeReplay, Text: "seen"}
	require.Equal(t, "rendezvous: replay: seen", e.Error())
	var pe *Error
	require.True(t, errors.As(fmt.Errorf("wrap: %w", e), &pe))
	long := &Error{Code: CodeInternal, Text: strings.Repeat("x", 400)}
	b, err := AppendMessage(nil, long)
	require.NoError(t, err)
	f, _, err := ParseFrame(b)
	require.NoError(t, err)
	got, err := ParseError(f.Body)
	require.NoError(t, err)
	require.Len(t, got.Text, MaxText)
}

// TestWriteFuzzSeeds rewrites testdata/fuzz from sampleMessages when run with
// -update-seeds.
func TestWriteFuzzSeeds(t *testing.T) {
	if !*updateSeeds {
		t.Skip("run with -update-seeds to rewrite the seed corpora")
	}
	write := func(target, name string, data []byte) {
		dir := filepath.Join("testdata", "fuzz", target)
		require.NoError(t, os.MkdirAll(dir, 0o755))
		content := fmt.Sprintf("go test fuzz v1\n[]byte(%q)\n", data)
		require.NoError(t, os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644))
	}
	for i, m := range sampleMessages() {
		b, err := AppendMessage(nil, m)
		require.NoError(t, err)
		name := fmt.Sprintf("seed-%02d-%s", i, m.FrameType())
		write("FuzzParseFrame", name, b)
		write("FuzzReadFrame", name, b)
		if fz, ok := bodyFuzzers[m.FrameType()]; ok {
			write(fz, name, b[HeaderSize:])
		}
	}
}

var bodyFuzzers = map[Type]string{
	TypeRegister:     "FuzzParseRegister",
	TypeRegistered:   "FuzzParseRegistered",
	TypeLookup:       "FuzzParseLookup",
	TypeLookupResult: "FuzzParseLookupResult",
	TypeSetHostname:  "FuzzParseSetHostname",
	TypeTrustSend:    "FuzzParseTrustSend",
	TypeDeliver:      "FuzzParseDeliver",
	TypeAck:          "FuzzParseAck",
	TypeError:        "FuzzParseError",
	TypeConnect:      "FuzzParseConnect",
	TypeIntroduce:    "FuzzParseIntroduce",
	TypeNATReport:    "FuzzParseNATReport",

	TypeNetworkCreate:  "FuzzParseNetworkCreate",
	TypeNetworkInfo:    "FuzzParseNetworkInfo",
	TypeNetworkSend:    "FuzzParseNetworkSend",
	TypeNetworkMembers: "FuzzParseNetworkMembers",
	TypeNetworkState:   "FuzzParseNetworkState",
}
