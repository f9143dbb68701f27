package rendezvous_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/stretchr/testify/require"

	"github.com/agentnet/agentnet/addressing"
	"github.com/agentnet/agentnet/internal/certs"
	"github.com/agentnet/agentnet/internal/etcdtest"
	"github.com/agentnet/agentnet/network"
	"github.com/agentnet/agentnet/rendezvous"
	"github.com/agentnet/agentnet/rendezvous/proto"
	"github.com/agentnet/agentnet/rendezvous/rendezvoustest"
	"github.com/agentnet/agentnet/trustdb"
)

// Several servers, one service: servers in this process, each with its own
// EtcdStore on one embedded three-member etcd cluster, sharing one server
// key (the cluster key agents pin).

type testCluster struct {
	etcd    *etcdtest.Cluster
	id      *trustdb.Identity
	prefix  string
	servers []*clusterServer
}

type clusterServer struct {
	*rendezvoustest.Server
	store *rendezvous.EtcdStore
	proxy *etcdtest.Proxy // nil unless started through one
}

const clusterTTL = 2 * time.Second

// newTestCluster starts n servers; those listed in viaProxy reach etcd
// through a proxy the test can cut.
func newTestCluster(t *testing.T, n int, viaProxy ...int) *testCluster {
	t.Helper()
	var salt [6]byte
	rand.Read(salt[:]) // a fresh keyspace for every run of the test
	tc := &testCluster{etcd: sharedEtcd, id: newID(t), prefix: "/c/" + hex.EncodeToString(salt[:]) + "/"}
	for i := range n {
		cs := &clusterServer{}
		endpoints := tc.etcd.Endpoints()
		for _, j := range viaProxy {
			if j == i {
				cs.proxy = tc.etcd.Proxy(t)
				endpoints = cs.proxy.Endpoints()
			}
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		s, err := rendezvous.OpenEtcdStore(ctx, rendezvous.EtcdConfig{Endpoints: endpoints, Prefix: tc.prefix, LeaseTTL: clusterTTL})
		cancel()
		require.NoError(t, err)
		t.Cleanup(func() { s.Close() })
		cs.store = s
		cs.Server = rendezvoustest.NewWithConfig(t, rendezvous.ServerConfig{Store: s, Identity: tc.id})
		tc.servers = append(tc.servers, cs)
	}
	return tc
}

func TestClusterTrustAcrossServers(t *testing.T) {
	checkGoroutines(t)
	tc := newTestCluster(t, 2)
	s0, s1 := tc.servers[0], tc.servers[1]
	alice := newAgent(t, s0.Server, nil, "alice")
	bob := newAgent(t, s1.Server, nil, "bob")
	ctx := ctxT(t)

	_, err := alice.c.Lookup(ctx, target(t, "bob"))
	require.ErrorIs(t, err, rendezvous.ErrNotFound)

	// A request by hostname reaches bob on the other server at once.
	start := time.Now()
	require.NoError(t, alice.c.Send(ctx, msg(t, alice.id, trustdb.KindRequest, target(t, "bob"), noNonce)))
	req := bob.recv(t)
	t.Logf("request delivered across servers in %v", time.Since(start).Round(time.Microsecond))
	require.Equal(t, alice.id.PublicKey(), req.From)
	require.NoError(t, bob.c.Send(ctx, msg(t, bob.id, trustdb.KindApprove, addressing.TargetAddr(alice.id.Addr()), req.Nonce)))
	require.Equal(t, trustdb.KindApprove, alice.recv(t).Kind)

	// Each sees the other online, with the locators the other's server saw.
	info, err := alice.c.Lookup(ctx, target(t, "bob"))
	require.NoError(t, err)
	require.True(t, info.Online)
	_, bobRefl := bob.c.Self()
	require.Equal(t, bobRefl, info.Locators[0])
	info, err = bob.c.Lookup(ctx, addressing.TargetAddr(alice.id.Addr()))
	require.NoError(t, err)
	require.True(t, info.Online)

	// Bob goes offline: the other server sees it; a request queued for him
	// reaches him when he comes back on the first server.
	bobID := bob.id
	require.NoError(t, bob.c.Close())
	require.Eventually(t, func() bool {
		info, err := alice.c.Lookup(ctx, target(t, "bob"))
		return err == nil && !info.Online
	}, 5*time.Second, 10*time.Millisecond)
	carol := newAgent(t, s0.Server, nil, "carol")
	require.NoError(t, carol.c.Send(ctx, msg(t, carol.id, trustdb.KindRequest, target(t, "bob"), noNonce)))
	bob2 := newAgent(t, s0.Server, bobID, "")
	require.Equal(t, carol.id.PublicKey(), bob2.recv(t).From)

	// A revoke from the first server reaches alice, and the pair is gone
	// on both servers.
	require.NoError(t, bob2.c.Send(ctx, msg(t, bobID, trustdb.KindRevoke, addressing.TargetAddr(alice.id.Addr()), noNonce)))
	require.Equal(t, trustdb.KindRevoke, alice.recv(t).Kind)
	_, err = alice.c.Lookup(ctx, target(t, "bob"))
	require.ErrorIs(t, err, rendezvous.ErrNotFound)
	require.Zero(t, s0.Stats().StoreErrors+s1.Stats().StoreErrors)
}

func TestClusterConnectAcrossServers(t *testing.T) {
	checkGoroutines(t)
	tc := newTestCluster(t, 2)
	s0, s1 := tc.servers[0], tc.servers[1]
	alice := newNATAgent(t, s0.Server, nil)
	bob := newNATAgent(t, s1.Server, nil)
	trust(t, alice.agent, bob.agent)
	ctx := ctxT(t)
	require.NoError(t, bob.c.ReportNAT(ctx, "easy"))
	require.NoError(t, alice.c.ReportNAT(ctx, "hard"))
	_, aliceRefl := alice.c.Self()
	_, bobRefl := bob.c.Self()

	// Alice's server introduces her to bob on the other server, with a
	// relay session on its own relay.
	require.Eventually(t, func() bool {
		in, err := alice.c.Connect(ctx, bob.id.Addr(), nil, false)
		return err == nil && in.PeerNAT == "easy"
	}, 5*time.Second, 20*time.Millisecond, "bob's NAT report reaches the other server")
	bob.introduced(t)
	in, err := alice.c.Connect(ctx, bob.id.Addr(), nil, true)
	require.NoError(t, err)
	require.Equal(t, bobRefl, in.Candidates[0])
	out := bob.introduced(t)
	require.Equal(t, in.Token, out.Token)
	require.Equal(t, aliceRefl, out.Candidates[0])
	require.Equal(t, "hard", out.PeerNAT)
	require.NotNil(t, in.Relay)
	require.NotNil(t, out.Relay)
	relayAddr := s0.RelayAddr().AddrPort()
	require.Equal(t, relayAddr, in.Relay.Addr)
	require.Equal(t, relayAddr, out.Relay.Addr, "the grant names the relay of the server that opened it")

	a := &relayEnd{t: t, conn: udpListen(t), g: in.Relay}
	b := &relayEnd{t: t, conn: udpListen(t), g: out.Relay}
	a.bind(1)
	b.bind(1)
	a.send(a.data("hello bob"))
	require.Equal(t, a.data("hello bob"), b.recv())
	b.send(b.data("hello alice"))
	require.Equal(t, b.data("hello alice"), a.recv())

	// Bob revokes alice on his server: the relay session on hers closes.
	require.NoError(t, bob.c.Send(ctx, msg(t, bob.id, trustdb.KindRevoke, addressing.TargetAddr(alice.id.Addr()), noNonce)))
	require.Eventually(t, func() bool { return s0.RelayStats().Sessions == 0 }, 5*time.Second, 5*time.Millisecond)
	require.EqualValues(t, 1, s0.RelayStats().SessionsClosed)
	_, err = alice.c.Connect(ctx, bob.id.Addr(), nil, true)
	require.ErrorIs(t, err, rendezvous.ErrNotFound)
}

func TestClusterNetworkAcrossServers(t *testing.T) {
	checkGoroutines(t)
	tc := newTestCluster(t, 2)
	ctx := ctxT(t)
	owner := newNetAgent(t, tc.servers[0].Server, nil)
	alice := newNetAgent(t, tc.servers[1].Server, nil)
	info, err := owner.c.CreateNetwork(ctx, "builders")
	require.NoError(t, err)
	_, err = alice.c.CreateNetwork(ctx, "builders")
	require.ErrorIs(t, err, rendezvous.ErrNetworkTaken)

	now := time.Now()
	join := joinDoc(t, alice.id, invite(t, owner.id, info, alice.id.PublicKey(), now, time.Hour), now)
	_, err = alice.c.JoinNetwork(ctx, join)
	require.NoError(t, err)
	owner.push(t, info.ID, hasDoc(join)) // through the other server
	pi, err := owner.c.Lookup(ctx, addressing.TargetAddr(alice.id.Addr().WithNetwork(info.ID)))
	require.NoError(t, err)
	require.True(t, pi.Online)

	leave, err := network.NewLeave(alice.id, network.Info{ID: info.ID, Name: info.Name, Owner: info.Owner}, time.Now())
	require.NoError(t, err)
	leaveB := encodeDoc(t, leave)
	require.NoError(t, alice.c.SendExit(ctx, leaveB))
	owner.push(t, info.ID, hasDoc(leaveB))
	alice.push(t, info.ID, hasDoc(leaveB))
	_, err = owner.c.Lookup(ctx, addressing.TargetAddr(alice.id.Addr()))
	require.ErrorIs(t, err, rendezvous.ErrNotFound)
}

// rawRegister opens a connection to srv as id without registering.
func rawConn(t *testing.T, srv *rendezvoustest.Server, id *trustdb.Identity) *quic.Conn {
	t.Helper()
	tr := rendezvoustest.NewTransport(t)
	cert, err := certs.Certificate(id.PrivateKey())
	require.NoError(t, err)
	qc, err := tr.Dial(ctxT(t), srv.Addr(), certs.ClientConfig(cert, rendezvous.ALPN, srv.PublicKey(), nil), &quic.Config{})
	require.NoError(t, err)
	t.Cleanup(func() { qc.CloseWithError(0, "") })
	return qc
}

// roundTrip writes req on a fresh stream of qc and returns the first frame
// of the answer (the stream stays open: a Register's is the session).
func roundTrip(t *testing.T, qc *quic.Conn, req []byte) proto.Frame {
	t.Helper()
	str, err := qc.OpenStreamSync(ctxT(t))
	require.NoError(t, err)
	str.SetDeadline(time.Now().Add(10 * time.Second))
	_, err = str.Write(req)
	require.NoError(t, err)
	f, err := proto.ReadFrame(str, 0)
	require.NoError(t, err)
	return f
}

func TestClusterHostnameAndNetworkRaces(t *testing.T) {
	checkGoroutines(t)
	tc := newTestCluster(t, 2)
	var ids []addressing.NetworkID
	for round := range 10 {
		// Two keys claim one hostname at the same moment, on two servers.
		name := "race-" + string(rune('a'+round))
		conns := []*quic.Conn{rawConn(t, tc.servers[0].Server, newID(t)), rawConn(t, tc.servers[1].Server, newID(t))}
		var wg sync.WaitGroup
		answers := make([]proto.Frame, 2)
		for i, qc := range conns {
			wg.Add(1)
			go func() {
				defer wg.Done()
				answers[i] = roundTrip(t, qc, frame(t, &proto.Register{Hostname: name}))
			}()
		}
		wg.Wait()
		types := []proto.Type{answers[0].Type, answers[1].Type}
		sort.Slice(types, func(i, j int) bool { return types[i] < types[j] })
		require.ElementsMatch(t, []proto.Type{proto.TypeRegistered, proto.TypeError}, types, "round %d: exactly one wins", round)
		for _, f := range answers {
			if f.Type == proto.TypeError {
				e, err := proto.ParseError(f.Body)
				require.NoError(t, err)
				require.Equal(t, proto.CodeHostnameTaken, e.Code)
			}
		}

		// Two registered agents create networks at the same moment: one
		// name for both (one wins), or two names (two distinct IDs).
		a := dialRaw(t, tc.servers[0].Server, newID(t), true)
		b := dialRaw(t, tc.servers[1].Server, newID(t), true)
		nets := []string{"net-" + name, "net-" + name}
		if round%2 == 1 {
			nets[1] = "other-" + name
		}
		resps := make([][]byte, 2)
		for i, r := range []*rawClient{a, b} {
			wg.Add(1)
			go func() {
				defer wg.Done()
				resps[i] = r.request(t, frame(t, &proto.NetworkCreate{Name: nets[i]}))
			}()
		}
		wg.Wait()
		won := 0
		for _, resp := range resps {
			f, _, err := proto.ParseFrame(resp)
			require.NoError(t, err)
			switch f.Type {
			case proto.TypeNetworkInfo:
				won++
				m, err := proto.ParseMessage(f)
				require.NoError(t, err)
				ids = append(ids, m.(*proto.NetworkInfo).ID)
			case proto.TypeError:
				e, err := proto.ParseError(f.Body)
				require.NoError(t, err)
				require.Equal(t, proto.CodeNetworkTaken, e.Code)
			default:
				t.Fatalf("unexpected answer %v", f.Type)
			}
		}
		if round%2 == 0 {
			require.Equal(t, 1, won, "round %d: one name, one winner", round)
		} else {
			require.Equal(t, 2, won, "round %d: two names, two networks", round)
		}
	}
	seen := map[addressing.NetworkID]bool{}
	for _, id := range ids {
		require.False(t, seen[id], "network ID %d given twice", id)
		seen[id] = true
	}
	require.Len(t, ids, 15)
}

func TestClusterPrivacySameBytes(t *testing.T) {
	checkGoroutines(t)
	tc := newTestCluster(t, 2)
	bob := newNATAgent(t, tc.servers[1].Server, nil) // on the other server, private
	strangerID := newID(t)
	stranger := dialRaw(t, tc.servers[0].Server, strangerID, true)
	nobody := newID(t)
	notFound := stranger.request(t, frame(t, &proto.Lookup{Target: target(t, "nobody")}))
	require.Equal(t, []byte{proto.Version, byte(proto.TypeNotFound), 0, 0}, notFound)
	require.NoError(t, bob.c.SetHostname(ctxT(t), "bob"))
	for name, m := range map[string]proto.Message{
		"lookup by hostname":        &proto.Lookup{Target: target(t, "bob")},
		"lookup by address":         &proto.Lookup{Target: addressing.TargetAddr(bob.id.Addr())},
		"lookup in another network": &proto.Lookup{Target: addressing.TargetAddr(bob.id.Addr().WithNetwork(7))},
		"lookup nonexistent":        &proto.Lookup{Target: addressing.TargetAddr(nobody.Addr())},
		"connect private":           &proto.Connect{Target: bob.id.Addr(), Relay: true},
		"connect nonexistent":       &proto.Connect{Target: nobody.Addr(), Relay: true},
		"members":                   &proto.NetworkMembers{ID: 1},
	} {
		require.Equal(t, notFound, stranger.request(t, frame(t, m)), name)
	}
	ok := frame(t, &proto.OK{})
	for name, tg := range map[string]addressing.Target{
		"private by hostname": target(t, "bob"),
		"nonexistent name":    target(t, "nobody"),
		"nonexistent address": addressing.TargetAddr(nobody.Addr()),
	} {
		require.Equal(t, ok, stranger.request(t, frame(t, &proto.TrustSend{Msg: msg(t, strangerID, trustdb.KindRequest, tg, noNonce)})), name)
	}
	require.Equal(t, strangerID.PublicKey(), bob.recv(t).From)
	require.Equal(t, notFound, stranger.request(t, frame(t, &proto.Lookup{Target: target(t, "bob")})), "a request reveals nothing")
	select {
	case in := <-bob.intros:
		t.Fatalf("bob was introduced to a stranger: %+v", in)
	default:
	}
	require.Zero(t, tc.servers[0].RelayStats().SessionsOpened)
}

func TestClusterSessionMovesServer(t *testing.T) {
	checkGoroutines(t)
	tc := newTestCluster(t, 2)
	id := newID(t)
	first := dialRaw(t, tc.servers[0].Server, id, true)
	// The same key registers on the other server: the first server closes
	// its session.
	bob := newAgent(t, tc.servers[1].Server, id, "bob")
	select {
	case <-first.qc.Context().Done():
	case <-time.After(5 * time.Second):
		t.Fatal("the first server kept the session of a key that registered elsewhere")
	}
	var ae *quic.ApplicationError
	require.True(t, errors.As(context.Cause(first.qc.Context()), &ae))
	require.Contains(t, ae.ErrorMessage, "another server")
	require.EqualValues(t, 1, tc.servers[0].Stats().SessionsReplaced)

	// Messages go to the new session; its record is not deleted by the
	// old one's end.
	alice := newAgent(t, tc.servers[0].Server, nil, "")
	require.NoError(t, alice.c.Send(ctxT(t), msg(t, alice.id, trustdb.KindRequest, target(t, "bob"), noNonce)))
	req := bob.recv(t)
	require.NoError(t, bob.c.Send(ctxT(t), msg(t, id, trustdb.KindApprove, addressing.TargetAddr(alice.id.Addr()), req.Nonce)))
	alice.recv(t)
	info, err := alice.c.Lookup(ctxT(t), target(t, "bob"))
	require.NoError(t, err)
	require.True(t, info.Online)
}

// TestClusterCutOffFromEtcd: a server that loses etcd answers within its
// lease, then closes its sessions and refuses registrations (so lookups and
// writes) with a clear error, having written nothing; the other server sees
// its agents go offline within the lease TTL; healed, it serves again.
func TestClusterCutOffFromEtcd(t *testing.T) {
	checkGoroutines(t)
	tc := newTestCluster(t, 2, 1)
	s0, s1 := tc.servers[0], tc.servers[1]
	alice := newAgent(t, s0.Server, nil, "alice")
	bob := newAgent(t, s1.Server, nil, "bob")
	trust(t, alice, bob)
	x := dialRaw(t, s1.Server, newID(t), true)
	ctx := ctxT(t)
	online := func() bool {
		info, err := alice.c.Lookup(ctx, target(t, "bob"))
		require.NoError(t, err)
		return info.Online
	}
	require.True(t, online())

	cut := time.Now()
	s1.proxy.Cut()
	select {
	case <-x.qc.Context().Done():
		t.Logf("cut off: sessions closed after %v (lease TTL %v)", time.Since(cut).Round(time.Millisecond), clusterTTL)
	case <-time.After(clusterTTL + 3*time.Second):
		t.Fatal("a server cut off from etcd kept its sessions past its lease")
	}
	var ae *quic.ApplicationError
	require.True(t, errors.As(context.Cause(x.qc.Context()), &ae))
	require.Contains(t, ae.ErrorMessage, "store unavailable")
	require.Error(t, s1.Ready())
	require.Eventually(t, func() bool { return !online() }, clusterTTL+3*time.Second, 20*time.Millisecond,
		"the other server sees the cut-off server's agents go offline within the lease")

	// A registration is refused, saying why, and nothing is written.
	newcomer := newID(t)
	f := roundTrip(t, rawConn(t, s1.Server, newcomer), frame(t, &proto.Register{Hostname: "newcomer"}))
	require.Equal(t, proto.TypeError, f.Type)
	e, err := proto.ParseError(f.Body)
	require.NoError(t, err)
	require.Equal(t, proto.CodeInternal, e.Code)
	require.Equal(t, "store unavailable", e.Text)
	resp, err := tc.etcd.Client(t).Get(ctx, tc.prefix+"a/"+hexOf(newcomer.PublicKey()))
	require.NoError(t, err)
	require.Zero(t, resp.Count, "a refused registration wrote nothing")
	_, err = alice.c.Lookup(ctx, target(t, "newcomer"))
	require.ErrorIs(t, err, rendezvous.ErrNotFound)

	// Healed: bob is back on his server.
	s1.proxy.Heal()
	require.Eventually(t, online, 15*time.Second, 50*time.Millisecond)
	require.NoError(t, s1.Ready())
	require.NoError(t, alice.c.Send(ctx, msg(t, alice.id, trustdb.KindRevoke, addressing.TargetAddr(bob.id.Addr()), noNonce)))
	require.Equal(t, trustdb.KindRevoke, bob.recv(t).Kind)
}

func hexOf(k addressing.PublicKey) string { return hex.EncodeToString(k[:]) }

// TestClusterClientFailover: a client that knows several servers registers
// on the first that answers, moves to another when its server goes away,
// and keeps getting its messages.
func TestClusterClientFailover(t *testing.T) {
	checkGoroutines(t)
	tc := newTestCluster(t, 3)
	// A dead address first: the client staggers on to a live server.
	dead := udpListen(t)
	addrs := []string{dead.LocalAddr().String()}
	for _, s := range tc.servers {
		addrs = append(addrs, s.Addr().String())
	}
	id := newID(t)
	bob := &agent{id: id, inbox: make(chan *trustdb.Message, 64)}
	start := time.Now()
	bob.c = tc.servers[0].NewClient(id, func(cfg *rendezvous.ClientConfig) {
		cfg.ServerAddr, cfg.ServerAddrs = addrs[0], addrs[1:]
		cfg.Hostname = "bob"
		cfg.Deliver = inboxFunc(bob.inbox)
	})
	t.Logf("registered in %v past a dead first address", time.Since(start).Round(time.Millisecond))
	alice := newAgent(t, tc.servers[2].Server, nil, "alice")
	trust(t, alice, bob)

	for round := range 2 {
		// Which server has bob? Shut it down; bob moves, and a message
		// sent meanwhile reaches him.
		var on int = -1
		for i, s := range tc.servers {
			if i == 2 {
				continue // alice's
			}
			if s.Stats().Sessions == 1 {
				on = i
			}
		}
		require.GreaterOrEqual(t, on, 0, "round %d: bob is on a server", round)
		start := time.Now()
		require.NoError(t, tc.servers[on].Close())
		require.NoError(t, alice.c.Send(ctxT(t), msg(t, alice.id, trustdb.KindRevoke, addressing.TargetAddr(id.Addr()), noNonce)))
		require.Equal(t, trustdb.KindRevoke, bob.recv(t).Kind)
		t.Logf("round %d: bob moved off server %d and got the message in %v", round, on, time.Since(start).Round(time.Millisecond))
		require.NoError(t, bob.c.WaitReady(ctxT(t)))
		trust(t, alice, bob)
		if round == 0 {
			// Bring a server back for the second round.
			tc.servers[on].Restart()
		}
	}
}
