package rendezvous_test

import (
	"bytes"
	"context"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/pion/stun/v3"
	"github.com/stretchr/testify/require"

	"github.com/agentnet/agentnet/addressing"
	"github.com/agentnet/agentnet/internal/relayframe"
	"github.com/agentnet/agentnet/rendezvous"
	"github.com/agentnet/agentnet/rendezvous/proto"
	"github.com/agentnet/agentnet/rendezvous/rendezvoustest"
	"github.com/agentnet/agentnet/trustdb"
)

// --- STUN ---

// padding makes a binding request at least as large as its answer.
const padding = "agentnet test binding request padding"

func bindingRequest(t *testing.T, setters ...stun.Setter) *stun.Message {
	t.Helper()
	m, err := stun.Build(append([]stun.Setter{stun.TransactionID, stun.BindingRequest}, setters...)...)
	require.NoError(t, err)
	return m
}

func udpListen(t *testing.T) *net.UDPConn {
	t.Helper()
	c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	require.NoError(t, err)
	t.Cleanup(func() { c.Close() })
	return c
}

func localAddrPort(c *net.UDPConn) netip.AddrPort {
	return c.LocalAddr().(*net.UDPAddr).AddrPort()
}

// stunAnswer reads the next datagram on c and decodes it as a binding
// success for req, returning the mapped address.
func stunAnswer(t *testing.T, c *net.UDPConn, from netip.AddrPort, req *stun.Message) netip.AddrPort {
	t.Helper()
	buf := make([]byte, 1500)
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	n, src, err := c.ReadFromUDPAddrPort(buf)
	require.NoError(t, err, "no STUN answer")
	require.Equal(t, from, src)
	require.LessOrEqual(t, n, len(req.Raw), "an answer is never larger than its request")
	return decodeAnswer(t, buf[:n], req)
}

func decodeAnswer(t *testing.T, b []byte, req *stun.Message) netip.AddrPort {
	t.Helper()
	resp := &stun.Message{Raw: append([]byte(nil), b...)}
	require.NoError(t, resp.Decode())
	require.Equal(t, stun.BindingSuccess, resp.Type)
	require.Equal(t, req.TransactionID, resp.TransactionID)
	if req.Contains(stun.AttrFingerprint) {
		require.NoError(t, stun.Fingerprint.Check(resp))
	}
	var xor stun.XORMappedAddress
	require.NoError(t, xor.GetFrom(resp))
	ip, ok := netip.AddrFromSlice(xor.IP)
	require.True(t, ok)
	return netip.AddrPortFrom(ip.Unmap(), uint16(xor.Port))
}

func TestSTUNBothPorts(t *testing.T) {
	checkGoroutines(t)
	srv := rendezvoustest.New(t)
	main := srv.AddrPort()
	alt := srv.STUNAddr().AddrPort()
	require.Equal(t, main.Addr(), alt.Addr(), "the second STUN address is on the main IP")
	c := udpListen(t)
	self := localAddrPort(c)

	for name, to := range map[string]netip.AddrPort{"main": main, "alt": alt} {
		t.Run(name, func(t *testing.T) {
			for _, tc := range []struct {
				name    string
				setters []stun.Setter
			}{
				{"software", []stun.Setter{stun.NewSoftware(padding)}},
				{"software+fingerprint", []stun.Setter{stun.NewSoftware(padding), stun.Fingerprint}},
			} {
				req := bindingRequest(t, tc.setters...)
				_, err := c.WriteToUDPAddrPort(req.Raw, to)
				require.NoError(t, err)
				require.Equal(t, self, stunAnswer(t, c, to, req), tc.name)
			}

			before := srv.RelayStats()
			// Not answered: a bare 20-byte request (its answer would be
			// larger), other STUN classes, a bad fingerprint, non-STUN
			// datagrams. The padded request after them is answered first.
			tiny := bindingRequest(t)
			require.Len(t, tiny.Raw, 20)
			badFP := bindingRequest(t, stun.NewSoftware(padding), stun.Fingerprint)
			badFP.Raw[len(badFP.Raw)-1] ^= 1
			for _, b := range [][]byte{
				tiny.Raw,
				bindingRequest(t, stun.NewSoftware(padding)).Raw[:30], // truncated
				mustBuild(t, stun.TransactionID, stun.BindingSuccess, stun.NewSoftware(padding)).Raw,
				mustBuild(t, stun.TransactionID, stun.NewType(stun.MethodBinding, stun.ClassIndication), stun.NewSoftware(padding)).Raw,
				mustBuild(t, stun.TransactionID, stun.NewType(stun.MethodAllocate, stun.ClassRequest), stun.NewSoftware(padding)).Raw,
				badFP.Raw,
				[]byte("\x00garbage that is not STUN at all........"),
				relayframe.AppendData(nil, relayframe.Session{1}, []byte("relay frame on the wrong port")),
			} {
				_, err := c.WriteToUDPAddrPort(b, to)
				require.NoError(t, err)
			}
			req := bindingRequest(t, stun.NewSoftware(padding))
			_, err := c.WriteToUDPAddrPort(req.Raw, to)
			require.NoError(t, err)
			require.Equal(t, self, stunAnswer(t, c, to, req))
			after := srv.RelayStats()
			require.EqualValues(t, 8, after.STUNDropped-before.STUNDropped)
			require.EqualValues(t, 1, after.STUNDroppedSize-before.STUNDroppedSize)
			require.EqualValues(t, 1, after.STUNAnswered-before.STUNAnswered)
		})
	}
}

func mustBuild(t *testing.T, setters ...stun.Setter) *stun.Message {
	t.Helper()
	m, err := stun.Build(setters...)
	require.NoError(t, err)
	return m
}

// TestSTUNBesideQUIC uses one transport the way a node does: registered over
// QUIC, and STUN from the same socket, answers read with ReadNonQUICPacket.
func TestSTUNBesideQUIC(t *testing.T) {
	checkGoroutines(t)
	srv := rendezvoustest.New(t)
	tr := rendezvoustest.NewTransport(t)
	id := newID(t)
	c, err := rendezvous.NewClient(srv.ClientConfig(id, tr))
	require.NoError(t, err)
	t.Cleanup(func() { c.Close() })
	c.Start()
	ctx := ctxT(t)
	require.NoError(t, c.WaitReady(ctx))

	main, alt := c.STUNAddrs()
	require.Equal(t, srv.AddrPort(), main)
	require.Equal(t, srv.STUNAddr().AddrPort(), alt)
	_, reflexive := c.Self()
	// quic-go drops non-QUIC packets until the first read: turn it on.
	done, cancel := context.WithCancel(ctx)
	cancel()
	tr.ReadNonQUICPacket(done, nil)

	for _, to := range []netip.AddrPort{main, alt} {
		req := bindingRequest(t, stun.NewSoftware(padding), stun.Fingerprint)
		_, err := tr.WriteTo(req.Raw, net.UDPAddrFromAddrPort(to))
		require.NoError(t, err)
		buf := make([]byte, 1500)
		n, from, err := tr.ReadNonQUICPacket(ctx, buf)
		require.NoError(t, err)
		require.Equal(t, to, from.(*net.UDPAddr).AddrPort())
		require.Equal(t, reflexive, decodeAnswer(t, buf[:n], req), "STUN sees the QUIC connection's mapping")
	}
	// QUIC is served as before.
	info, err := c.Lookup(ctx, addressing.TargetAddr(id.Addr()))
	require.NoError(t, err)
	require.Equal(t, id.PublicKey(), info.Key)
	require.EqualValues(t, 2, srv.RelayStats().STUNAnswered)
}

func TestSTUNRateLimit(t *testing.T) {
	checkGoroutines(t)
	srv := rendezvoustest.NewWithConfig(t, rendezvous.ServerConfig{Limits: rendezvous.Limits{AddrRate: 0.01, AddrBurst: 5}})
	c := udpListen(t)
	var last *stun.Message
	for range 8 {
		last = bindingRequest(t, stun.NewSoftware(padding))
		_, err := c.WriteToUDPAddrPort(last.Raw, srv.AddrPort())
		require.NoError(t, err)
	}
	buf := make([]byte, 1500)
	got := 0
	for {
		c.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
		if _, _, err := c.ReadFromUDPAddrPort(buf); err != nil {
			break
		}
		got++
	}
	require.Equal(t, 5, got)
	st := srv.RelayStats()
	require.EqualValues(t, 5, st.STUNAnswered)
	require.EqualValues(t, 3, st.STUNRateLimited)
}

func TestSideSockets(t *testing.T) {
	checkGoroutines(t)
	t.Run("none", func(t *testing.T) {
		srv := rendezvoustest.NewWithConfig(t, rendezvous.ServerConfig{STUNAddr: "-", RelayAddr: "-"})
		require.Nil(t, srv.STUNAddr())
		require.Nil(t, srv.RelayAddr())
		alice := newNATAgent(t, srv, nil)
		bob := newNATAgent(t, srv, nil)
		trust(t, alice.agent, bob.agent)
		main, alt := alice.c.STUNAddrs()
		require.Equal(t, srv.AddrPort(), main)
		require.False(t, alt.IsValid())
		intro, err := alice.c.Connect(ctxT(t), bob.id.Addr(), nil, true)
		require.NoError(t, err)
		require.Nil(t, intro.Relay, "no relay, no grant")
		require.Nil(t, bob.introduced(t).Relay)
		// The main port still answers STUN.
		c := udpListen(t)
		req := bindingRequest(t, stun.NewSoftware(padding))
		_, err = c.WriteToUDPAddrPort(req.Raw, main)
		require.NoError(t, err)
		require.Equal(t, localAddrPort(c), stunAnswer(t, c, main, req))
	})
	t.Run("given", func(t *testing.T) {
		stunConn, relayConn := udpListen(t), udpListen(t)
		srv := rendezvoustest.NewWithConfig(t, rendezvous.ServerConfig{STUNConn: stunConn, RelayConn: relayConn})
		require.Equal(t, localAddrPort(stunConn), srv.STUNAddr().AddrPort())
		require.Equal(t, localAddrPort(relayConn), srv.RelayAddr().AddrPort())
		alice := newNATAgent(t, srv, nil)
		_, alt := alice.c.STUNAddrs()
		require.Equal(t, localAddrPort(stunConn), alt)
		srv.Restart()
		require.NoError(t, srv.Close())
		// The caller's sockets stay open and usable.
		for _, conn := range []*net.UDPConn{stunConn, relayConn} {
			peer := udpListen(t)
			_, err := peer.WriteToUDPAddrPort([]byte("still open"), localAddrPort(conn))
			require.NoError(t, err)
			conn.SetReadDeadline(time.Now().Add(5 * time.Second))
			buf := make([]byte, 64)
			n, _, err := conn.ReadFromUDPAddrPort(buf)
			require.NoError(t, err)
			require.Equal(t, "still open", string(buf[:n]))
		}
	})
	t.Run("addresses", func(t *testing.T) {
		srv := rendezvoustest.NewWithConfig(t, rendezvous.ServerConfig{STUNAddr: "127.0.0.1:0", RelayAddr: "127.0.0.1:0"})
		stunAddr, relayAddr := srv.STUNAddr().AddrPort(), srv.RelayAddr().AddrPort()
		srv.Restart()
		require.Equal(t, stunAddr, srv.STUNAddr().AddrPort(), "a restart keeps the ports")
		require.Equal(t, relayAddr, srv.RelayAddr().AddrPort())
	})
	t.Run("bad config", func(t *testing.T) {
		for name, cfg := range map[string]rendezvous.ServerConfig{
			"stun both":   {STUNAddr: "127.0.0.1:0", STUNConn: udpListen(t)},
			"relay both":  {RelayAddr: "127.0.0.1:0", RelayConn: udpListen(t)},
			"small burst": {Limits: rendezvous.Limits{RelayBurst: 1000}},
			"negative":    {Limits: rendezvous.Limits{RelayIdle: -1}},
		} {
			_, err := rendezvous.NewServer(cfg)
			require.Error(t, err, name)
		}
		s, err := rendezvous.NewServer(rendezvous.ServerConfig{Addr: "127.0.0.1:0", STUNAddr: "bad address"})
		require.NoError(t, err)
		require.Error(t, s.Start())
		require.NoError(t, s.Close())
	})
}

// --- introductions ---

// natAgent is an agent that records the introductions pushed to it.
type natAgent struct {
	*agent
	intros chan rendezvous.Introduce
}

func newNATAgent(t *testing.T, srv *rendezvoustest.Server, local []netip.AddrPort) *natAgent {
	t.Helper()
	a := &natAgent{
		agent:  &agent{id: newID(t), inbox: make(chan *trustdb.Message, 64)},
		intros: make(chan rendezvous.Introduce, 16),
	}
	a.c = srv.NewClient(a.id, func(cfg *rendezvous.ClientConfig) {
		cfg.Deliver = inboxFunc(a.inbox)
		cfg.LocalAddrs = local
		cfg.Introduced = func(in rendezvous.Introduce) {
			select {
			case a.intros <- in:
			default:
				t.Error("introduction channel full")
			}
		}
	})
	return a
}

func (a *natAgent) introduced(t *testing.T) rendezvous.Introduce {
	t.Helper()
	select {
	case in := <-a.intros:
		return in
	case <-time.After(10 * time.Second):
		t.Fatal("no introduction pushed")
		return rendezvous.Introduce{}
	}
}

func TestConnectIntroducesBoth(t *testing.T) {
	checkGoroutines(t)
	srv := rendezvoustest.New(t)
	aliceLAN := netip.MustParseAddrPort("10.0.0.1:4000")
	bobLAN := []netip.AddrPort{netip.MustParseAddrPort("10.0.0.2:5000"), netip.MustParseAddrPort("[fd00::2]:5000")}
	alice := newNATAgent(t, srv, []netip.AddrPort{aliceLAN})
	bob := newNATAgent(t, srv, bobLAN)
	trust(t, alice.agent, bob.agent)
	_, aliceRefl := alice.c.Self()
	_, bobRefl := bob.c.Self()
	ctx := ctxT(t)

	mapped := netip.MustParseAddrPort("198.51.100.7:61000")
	sent := []netip.AddrPort{
		mapped,
		aliceRefl,                              // a duplicate of what the server knows
		netip.MustParseAddrPort("0.0.0.0:1"),   // unusable
		netip.MustParseAddrPort("224.0.0.1:1"), // unusable
		netip.MustParseAddrPort("10.0.0.9:0"),  // unusable
		netip.AddrPortFrom(netip.AddrFrom16(netip.MustParseAddr("198.51.100.8").As16()), 2), // unmapped
	}
	in, err := alice.c.Connect(ctx, bob.id.Addr(), sent, false)
	require.NoError(t, err)
	require.Equal(t, bob.id.PublicKey(), in.Peer)
	require.Equal(t, bob.id.Addr(), in.PeerAddr)
	require.True(t, in.Initiator)
	require.Nil(t, in.Relay)
	require.Equal(t, append([]netip.AddrPort{bobRefl}, bobLAN...), in.Candidates, "the peer's reflexive first, then its own")

	out := bob.introduced(t)
	require.Equal(t, alice.id.PublicKey(), out.Peer)
	require.Equal(t, alice.id.Addr(), out.PeerAddr)
	require.False(t, out.Initiator)
	require.Nil(t, out.Relay)
	require.Equal(t, in.Token, out.Token, "both sides share the token")
	require.NotEqual(t, [16]byte{}, in.Token)
	require.Equal(t, []netip.AddrPort{aliceRefl, aliceLAN, mapped, netip.MustParseAddrPort("198.51.100.8:2")}, out.Candidates,
		"reflexive, registered, then sent; deduplicated, unusable ones dropped")

	// Every introduction has a fresh token; B may connect to A too.
	in2, err := bob.c.Connect(ctx, alice.id.Addr(), nil, false)
	require.NoError(t, err)
	require.NotEqual(t, in.Token, in2.Token)
	require.Equal(t, in2.Token, alice.introduced(t).Token)

	// At most 8 candidates, whatever is sent.
	many := make([]netip.AddrPort, 12)
	for i := range many {
		many[i] = netip.AddrPortFrom(netip.AddrFrom4([4]byte{192, 0, 2, byte(i + 1)}), 9)
	}
	_, err = alice.c.Connect(ctx, bob.id.Addr(), many, false)
	require.NoError(t, err)
	require.Len(t, bob.introduced(t).Candidates, proto.MaxLocators)
	require.EqualValues(t, 3, srv.Stats().Introductions)
}

func TestConnectPeerNAT(t *testing.T) {
	checkGoroutines(t)
	srv := rendezvoustest.New(t)
	alice := newNATAgent(t, srv, nil)
	bob := newNATAgent(t, srv, nil)
	trust(t, alice.agent, bob.agent)
	ctx := ctxT(t)

	// Nothing reported yet: unknown both ways.
	in, err := alice.c.Connect(ctx, bob.id.Addr(), nil, false)
	require.NoError(t, err)
	require.Equal(t, "unknown", in.PeerNAT)
	require.Equal(t, "unknown", bob.introduced(t).PeerNAT)

	require.NoError(t, alice.c.ReportNAT(ctx, "hard"))
	require.NoError(t, bob.c.ReportNAT(ctx, "easy"))
	in, err = alice.c.Connect(ctx, bob.id.Addr(), nil, false)
	require.NoError(t, err)
	require.Equal(t, "easy", in.PeerNAT, "the answer carries the target's kind")
	require.Equal(t, "hard", bob.introduced(t).PeerNAT, "the push carries the requester's kind")

	// The last report wins; an unknown name reports unknown.
	require.NoError(t, bob.c.ReportNAT(ctx, "none"))
	in, err = alice.c.Connect(ctx, bob.id.Addr(), nil, false)
	require.NoError(t, err)
	require.Equal(t, "none", in.PeerNAT)
	bob.introduced(t)
	require.NoError(t, bob.c.ReportNAT(ctx, "bogus"))
	in, err = alice.c.Connect(ctx, bob.id.Addr(), nil, false)
	require.NoError(t, err)
	require.Equal(t, "unknown", in.PeerNAT)
	bob.introduced(t)
}

func TestConnectNotFoundSameBytes(t *testing.T) {
	checkGoroutines(t)
	srv := rendezvoustest.New(t)
	bob := newNATAgent(t, srv, nil) // online, trusts no one
	carol := newNATAgent(t, srv, nil)
	xID := newID(t)
	x := dialRaw(t, srv, xID, true)
	notFound := x.request(t, frame(t, &proto.Lookup{Target: target(t, "nobody")}))
	require.Equal(t, []byte{proto.Version, byte(proto.TypeNotFound), 0, 0}, notFound)

	// x and carol trust each other.
	require.Equal(t, frame(t, &proto.OK{}), x.request(t, frame(t, &proto.TrustSend{Msg: msg(t, xID, trustdb.KindRequest, addressing.TargetAddr(carol.id.Addr()), noNonce)})))
	req := carol.recv(t)
	require.NoError(t, carol.c.Send(ctxT(t), msg(t, carol.id, trustdb.KindApprove, addressing.TargetAddr(xID.Addr()), req.Nonce)))
	connect := func(a addressing.Addr) []byte {
		return x.request(t, frame(t, &proto.Connect{Target: a, Relay: true}))
	}
	f, _, err := proto.ParseFrame(connect(carol.id.Addr()))
	require.NoError(t, err)
	require.Equal(t, proto.TypeIntroduce, f.Type, "a trusted online peer is introduced")
	carol.introduced(t)

	require.Equal(t, notFound, connect(bob.id.Addr()), "untrusted")
	require.Equal(t, notFound, connect(newID(t).Addr()), "unknown address")
	require.Equal(t, notFound, connect(xID.Addr()), "self")
	require.NoError(t, carol.c.Close())
	require.Eventually(t, func() bool { return srv.Stats().Sessions == 2 }, 5*time.Second, 10*time.Millisecond)
	require.Equal(t, notFound, connect(carol.id.Addr()), "trusted but offline")
	select {
	case in := <-bob.intros:
		t.Fatalf("bob was introduced to a stranger: %+v", in)
	default:
	}
	require.EqualValues(t, 1, srv.RelayStats().SessionsOpened, "only the trusted pair got a relay session")

	_, err = bob.c.Connect(ctxT(t), xID.Addr(), nil, false)
	require.ErrorIs(t, err, rendezvous.ErrNotFound)
}

// --- relay through the server ---

// relayEnd is a raw UDP endpoint using a relay grant.
type relayEnd struct {
	t    *testing.T
	conn *net.UDPConn
	g    *rendezvous.RelayGrant
}

func (e *relayEnd) send(b []byte) {
	e.t.Helper()
	_, err := e.conn.WriteToUDPAddrPort(b, e.g.Addr)
	require.NoError(e.t, err)
}

func (e *relayEnd) recv() []byte {
	e.t.Helper()
	buf := make([]byte, 2048)
	e.conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	n, from, err := e.conn.ReadFromUDPAddrPort(buf)
	require.NoError(e.t, err)
	require.Equal(e.t, e.g.Addr, from)
	return buf[:n]
}

func (e *relayEnd) bind(counter uint64) {
	e.t.Helper()
	s := relayframe.Session(e.g.Session)
	e.send(relayframe.AppendBind(nil, s, e.g.Side, counter, e.g.Secret))
	require.Equal(e.t, relayframe.AppendBindOK(nil, s, e.g.Side, counter), e.recv())
}

func (e *relayEnd) data(p string) []byte {
	return relayframe.AppendData(nil, relayframe.Session(e.g.Session), []byte(p))
}

func TestRelayGrantAndRevoke(t *testing.T) {
	checkGoroutines(t)
	srv := rendezvoustest.NewWithConfig(t, rendezvous.ServerConfig{Limits: rendezvous.Limits{MaxRelaySessions: 1}})
	alice := newNATAgent(t, srv, nil)
	bob := newNATAgent(t, srv, nil)
	carol := newNATAgent(t, srv, nil)
	trust(t, alice.agent, bob.agent)
	trust(t, alice.agent, carol.agent)
	ctx := ctxT(t)

	in, err := alice.c.Connect(ctx, bob.id.Addr(), nil, true)
	require.NoError(t, err)
	out := bob.introduced(t)
	require.NotNil(t, in.Relay)
	require.NotNil(t, out.Relay)
	relayAddr := srv.RelayAddr().AddrPort()
	require.Equal(t, relayAddr, in.Relay.Addr, "the relay on the host the client dialled")
	require.Equal(t, relayAddr, out.Relay.Addr)
	require.Equal(t, in.Relay.Session, out.Relay.Session)
	require.NotEqual(t, in.Relay.Secret, out.Relay.Secret, "per-side secrets")
	require.EqualValues(t, 0, in.Relay.Side)
	require.EqualValues(t, 1, out.Relay.Side)

	// Over MaxRelaySessions: introduced, without a grant.
	in2, err := alice.c.Connect(ctx, carol.id.Addr(), nil, true)
	require.NoError(t, err)
	require.Nil(t, in2.Relay)
	require.Nil(t, carol.introduced(t).Relay)

	a := &relayEnd{t: t, conn: udpListen(t), g: in.Relay}
	b := &relayEnd{t: t, conn: udpListen(t), g: out.Relay}
	a.bind(uint64(time.Now().UnixNano()))
	b.bind(1)
	for _, p := range []string{"hello bob", string(bytes.Repeat([]byte{0xee}, relayframe.MaxPayload))} {
		a.send(a.data(p))
		require.Equal(t, a.data(p), b.recv())
		b.send(b.data(p))
		require.Equal(t, b.data(p), a.recv())
	}

	// A third party knowing the session ID cannot inject or take a side.
	evil := &relayEnd{t: t, conn: udpListen(t), g: &rendezvous.RelayGrant{Addr: relayAddr, Session: in.Relay.Session, Side: 1}}
	evil.send(evil.data("forged"))
	evil.send(relayframe.AppendBind(nil, relayframe.Session(in.Relay.Session), 1, 1<<62, [16]byte{}))
	a.send(a.data("genuine"))
	require.Equal(t, a.data("genuine"), b.recv())
	st := srv.RelayStats()
	require.EqualValues(t, 1, st.DroppedWrongSource)
	require.EqualValues(t, 1, st.BindsRefused)
	require.EqualValues(t, 1, st.SessionsRefused)
	require.Equal(t, 1, st.Sessions)

	// Bob revokes alice: the session closes at once.
	require.NoError(t, bob.c.Send(ctx, msg(t, bob.id, trustdb.KindRevoke, addressing.TargetAddr(alice.id.Addr()), noNonce)))
	require.Equal(t, 0, srv.RelayStats().Sessions)
	a.send(a.data("after revoke"))
	b.send(b.data("after revoke"))
	require.Eventually(t, func() bool { return srv.RelayStats().DroppedUnknownSession == 2 }, 5*time.Second, 5*time.Millisecond)
	for _, e := range []*relayEnd{a, b} {
		e.conn.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
		_, _, err := e.conn.ReadFromUDPAddrPort(make([]byte, 2048))
		require.Error(t, err, "nothing forwarded after the revoke")
	}
	require.EqualValues(t, 1, srv.RelayStats().SessionsClosed)
	_, err = alice.c.Connect(ctx, bob.id.Addr(), nil, true)
	require.ErrorIs(t, err, rendezvous.ErrNotFound)

	// The freed slot serves the next pair.
	in3, err := alice.c.Connect(ctx, carol.id.Addr(), nil, true)
	require.NoError(t, err)
	require.NotNil(t, in3.Relay)
	require.NotNil(t, carol.introduced(t).Relay)
}

func TestPushWithoutIntroducedFunc(t *testing.T) {
	// A client without Introduced ignores pushes and keeps its session.
	checkGoroutines(t)
	srv := rendezvoustest.New(t)
	alice := newNATAgent(t, srv, nil)
	bob := newAgent(t, srv, nil, "")
	trust(t, alice.agent, bob)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for range 3 {
		_, err := alice.c.Connect(ctx, bob.id.Addr(), nil, false)
		require.NoError(t, err)
	}
	// bob's session still works: a mailbox message reaches it.
	require.NoError(t, alice.c.Send(ctx, msg(t, alice.id, trustdb.KindRevoke, addressing.TargetAddr(bob.id.Addr()), noNonce)))
	require.Equal(t, trustdb.KindRevoke, bob.recv(t).Kind)
}
