package rendezvous_test

import (
	"crypto/tls"
	"io"
	"net/http"
	"sync/atomic"
	"testing"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/stretchr/testify/require"

	"github.com/agentnet/agentnet/addressing"
	"github.com/agentnet/agentnet/internal/certs"
	"github.com/agentnet/agentnet/internal/relayframe"
	"github.com/agentnet/agentnet/internal/tunnel"
	"github.com/agentnet/agentnet/rendezvous"
	"github.com/agentnet/agentnet/rendezvous/proto"
	"github.com/agentnet/agentnet/rendezvous/rendezvoustest"
	"github.com/agentnet/agentnet/trustdb"
)

// tunnelStranger is a client of the rendezvous's TCP side: a tunnel, and a
// raw QUIC connection to the server inside it.
type tunnelStranger struct {
	tc       *tunnel.Client
	raw      *rawClient
	relayIn  atomic.Int64 // relay frames the server sent it
	received chan []byte
}

func dialTunnelStranger(t *testing.T, srv *rendezvoustest.Server, id *trustdb.Identity) *tunnelStranger {
	t.Helper()
	s := &tunnelStranger{received: make(chan []byte, 16)}
	key := srv.PublicKey()
	tc, err := tunnel.NewClient(tunnel.ClientConfig{
		Addr:      srv.TCPAddr().String(),
		ServerKey: func() addressing.PublicKey { return key },
		RelayIn: func(f []byte) {
			s.relayIn.Add(1)
			select {
			case s.received <- append([]byte(nil), f...):
			default:
			}
		},
	})
	require.NoError(t, err)
	tc.Start()
	t.Cleanup(func() { tc.Close() })
	ctx := ctxT(t)
	require.NoError(t, tc.WaitUp(ctx))
	tr := &quic.Transport{Conn: tc.QUIC()}
	t.Cleanup(func() { tr.Close() })
	cert, err := certs.Certificate(id.PrivateKey())
	require.NoError(t, err)
	qc, err := tr.Dial(ctx, tunnel.ServerAddr, certs.ClientConfig(cert, rendezvous.ALPN, srv.PublicKey(), nil), &quic.Config{})
	require.NoError(t, err)
	t.Cleanup(func() { qc.CloseWithError(0, "") })
	s.tc, s.raw = tc, &rawClient{qc: qc}
	str, err := qc.OpenStreamSync(ctx) // register, as dialRaw does
	require.NoError(t, err)
	_, err = str.Write(frame(t, &proto.Register{}))
	require.NoError(t, err)
	str.SetReadDeadline(time.Now().Add(5 * time.Second))
	f, err := proto.ReadFrame(str, 0)
	require.NoError(t, err)
	require.Equal(t, proto.TypeRegistered, f.Type)
	str.SetReadDeadline(time.Time{})
	s.raw.session = str
	return s
}

// TestTunnelStrangerLearnsNothingMore (issue 8, test 7): a stranger on the
// TCP/WebSocket side gets byte for byte the answers a stranger on UDP gets
// — the same as for agents that do not exist — and its relay frames cannot
// get into a session, whatever it knows of it.
func TestTunnelStrangerLearnsNothingMore(t *testing.T) {
	checkGoroutines(t)
	srv := rendezvoustest.NewWithConfig(t, rendezvous.ServerConfig{TCP: rendezvous.TCPConfig{Addr: "127.0.0.1:0"}})
	bob := newAgent(t, srv, nil, "bob")
	nobody := newID(t)
	overUDP := dialRaw(t, srv, newID(t), true)
	tcpID := newID(t)
	overTCP := dialTunnelStranger(t, srv, tcpID)

	requests := map[string][]byte{
		"lookup private by hostname":   frame(t, &proto.Lookup{Target: target(t, "bob")}),
		"lookup private by address":    frame(t, &proto.Lookup{Target: addressing.TargetAddr(bob.id.Addr())}),
		"lookup in another network":    frame(t, &proto.Lookup{Target: addressing.TargetAddr(bob.id.Addr().WithNetwork(7))}),
		"lookup nonexistent name":      frame(t, &proto.Lookup{Target: target(t, "nobody")}),
		"lookup nonexistent address":   frame(t, &proto.Lookup{Target: addressing.TargetAddr(nobody.Addr())}),
		"connect to a private agent":   frame(t, &proto.Connect{Target: bob.id.Addr()}),
		"connect to nobody":            frame(t, &proto.Connect{Target: nobody.Addr()}),
		"malformed":                    {proto.Version, 0xee, 0, 1, 0},
		"network members of network 7": frame(t, &proto.NetworkMembers{ID: 7}),
	}
	notFound := overUDP.request(t, requests["lookup nonexistent name"])
	require.Equal(t, []byte{proto.Version, byte(proto.TypeNotFound), 0, 0}, notFound)
	for name, req := range requests {
		udp := overUDP.request(t, req)
		tcp := overTCP.raw.request(t, req)
		require.Equal(t, udp, tcp, "%s: the TCP side answers as the UDP side does", name)
		if name[:6] == "lookup" || name[:7] == "connect" {
			require.Equal(t, notFound, tcp, "%s: as for an agent that does not exist", name)
		}
	}
	// Trust requests: the same OK to a private agent and to nobody, on
	// both sides (each from its own key: the signer must be the sender).
	for name, tg := range map[string]addressing.Target{"bob": target(t, "bob"), "nobody": target(t, "nobody")} {
		got := overTCP.raw.request(t, frame(t, &proto.TrustSend{Msg: msg(t, tcpID, trustdb.KindRequest, tg, noNonce)}))
		require.Equal(t, frame(t, &proto.OK{}), got, name)
	}

	// Plain HTTPS to the TCP port: a 404 for any other path, a refusal
	// without a WebSocket upgrade; nothing names agents or the software.
	hc := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}}
	for _, path := range []string{"/", "/agentnet", tunnel.Path} {
		resp, err := hc.Get("https://" + srv.TCPAddr().String() + path)
		require.NoError(t, err)
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		resp.Body.Close()
		require.GreaterOrEqual(t, resp.StatusCode, 400, path)
		require.NotContains(t, string(body), "bob", path)
		require.NotContains(t, string(body), bob.id.Addr().String(), path)
		require.Empty(t, resp.Header.Get("Server"), path)
	}
	hc.CloseIdleConnections()
}

// TestTunnelStrangerCannotInject: a relay session between two agents; a
// stranger on the TCP side knowing the session ID sends data and binds for
// it through its tunnel. Nothing it sends arrives, it cannot take a side,
// and it receives nothing of the session.
func TestTunnelStrangerCannotInject(t *testing.T) {
	checkGoroutines(t)
	srv := rendezvoustest.NewWithConfig(t, rendezvous.ServerConfig{TCP: rendezvous.TCPConfig{Addr: "127.0.0.1:0"}})
	alice := newNATAgent(t, srv, nil)
	bob := newNATAgent(t, srv, nil)
	trust(t, alice.agent, bob.agent)
	in, err := alice.c.Connect(ctxT(t), bob.id.Addr(), nil, true)
	require.NoError(t, err)
	out := bob.introduced(t)
	require.NotNil(t, in.Relay)
	a := &relayEnd{t: t, conn: udpListen(t), g: in.Relay}
	b := &relayEnd{t: t, conn: udpListen(t), g: out.Relay}
	counter := uint64(time.Now().UnixNano())
	a.bind(counter)
	b.bind(1)

	evil := dialTunnelStranger(t, srv, newID(t))
	sess := relayframe.Session(in.Relay.Session)
	var wrong [relayframe.SecretSize]byte
	aBind := relayframe.AppendBind(nil, sess, 0, counter, in.Relay.Secret) // a's Bind as an observer saw it
	before := srv.RelayStats()
	for _, f := range [][]byte{
		relayframe.AppendData(nil, sess, []byte("forged")),
		relayframe.AppendBind(nil, sess, 1, 1<<62, wrong), // bad MAC
		aBind, // replayed: its counter is used up
		relayframe.AppendData(nil, sess, []byte("forged again")),
		{0xff, 0xff, 0xff},
	} {
		require.True(t, evil.tc.WriteRelay(f))
	}
	// The genuine sides still talk, and only they.
	a.send(a.data("genuine"))
	require.Equal(t, a.data("genuine"), b.recv())
	b.send(b.data("genuine back"))
	require.Equal(t, b.data("genuine back"), a.recv())
	require.Eventually(t, func() bool {
		st := srv.RelayStats()
		return st.DroppedWrongSource+st.DroppedMalformed+st.BindsRefused+st.DroppedUnknownSession-
			(before.DroppedWrongSource+before.DroppedMalformed+before.BindsRefused+before.DroppedUnknownSession) == 5 // each of the five refused
	}, 5*time.Second, 5*time.Millisecond)
	require.Zero(t, evil.relayIn.Load(), "the stranger received nothing of the session")
	// a is still side 0: its data still arrives.
	a.send(a.data("still genuine"))
	require.Equal(t, a.data("still genuine"), b.recv())
}
