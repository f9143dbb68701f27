package quicnode

import (
	"io"
	"net"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/agentnet/agentnet/addressing"
	"github.com/agentnet/agentnet/network"
	"github.com/agentnet/agentnet/rendezvous"
	"github.com/agentnet/agentnet/trustdb"
)

// openStream dials to:port on from, and returns both ends with one byte
// exchanged, and a channel that reports the end of a blocked Read on each.
func openStream(t *testing.T, from *testNode, ln net.Listener, to string, port uint16) (reads [2]chan error) {
	t.Helper()
	ctx := ctxT(t, 10*time.Second)
	ca, err := from.Dial(ctx, to, port)
	require.NoError(t, err)
	t.Cleanup(func() { ca.Close() })
	cb, err := ln.Accept()
	require.NoError(t, err)
	t.Cleanup(func() { cb.Close() })
	_, err = ca.Write([]byte("x"))
	require.NoError(t, err)
	_, err = io.ReadFull(cb, make([]byte, 1))
	require.NoError(t, err)
	for i, c := range []net.Conn{ca, cb} {
		ch := make(chan error, 1)
		go func() {
			_, err := c.Read(make([]byte, 1))
			ch <- err
		}()
		reads[i] = ch
	}
	return reads
}

func requireCut(t *testing.T, reads [2]chan error, within time.Duration) {
	t.Helper()
	for _, ch := range reads {
		select {
		case err := <-ch:
			require.Error(t, err)
		case <-time.After(within):
			t.Fatal("read not cut")
		}
	}
}

// TestNetworkLifecycle: members reach each other without a trust request
// (by N:x and by the global address); a stranger cannot; leaving and being
// removed cut live streams at once and refuse new dials; a removed member's
// old invite is void.
func TestNetworkLifecycle(t *testing.T) {
	checkNoLeaks(t)
	srv := startServer(t)
	alice := startNode(t, srv, "alice")
	bob := startNode(t, srv, "bob")
	carol := startNode(t, srv, "carol")
	ctx := ctxT(t, 20*time.Second)

	id, err := alice.CreateNetwork(ctx, "team")
	require.NoError(t, err)
	_, err = bob.CreateNetwork(ctx, "team")
	require.ErrorIs(t, err, rendezvous.ErrNetworkTaken)
	_, err = bob.Invite(id, carol.PublicKey(), time.Hour)
	require.ErrorIs(t, err, ErrNoNetwork)
	tok, err := alice.Invite(id, bob.PublicKey(), time.Hour)
	require.NoError(t, err)

	// The token is bob's: carol cannot use it, nor a damaged copy.
	_, err = carol.JoinNetwork(ctx, tok)
	require.ErrorIs(t, err, network.ErrWrongInvitee)
	_, err = bob.JoinNetwork(ctx, tok[:len(tok)-4]+"AAAA")
	require.Error(t, err)
	got, err := bob.JoinNetwork(ctx, tok)
	require.NoError(t, err)
	require.Equal(t, id, got)
	again, err := bob.JoinNetwork(ctx, tok)
	require.NoError(t, err, "joining again is a no-op")
	require.Equal(t, id, again)

	ms := bob.Members(id)
	require.Len(t, ms, 2)
	require.True(t, ms[0].Owner)
	require.Equal(t, alice.PublicKey(), ms[0].Key)
	require.Equal(t, addressing.AddrFrom(id, bob.Addr().Node()), ms[1].Addr)
	require.True(t, ms[1].Self)
	require.Equal(t, []NetworkInfo{{ID: id, Name: "team", Owner: alice.PublicKey(), Owned: true, Members: 2}}, alice.Networks())

	aliceIn := addressing.AddrFrom(id, alice.Addr().Node()).String()
	bobIn := addressing.AddrFrom(id, bob.Addr().Node()).String()
	echo := func(n *testNode, to string) error {
		c, err := n.Dial(ctx, to, PortEcho)
		if err != nil {
			return err
		}
		defer c.Close()
		if _, err := c.Write([]byte("ping")); err != nil {
			return err
		}
		b := make([]byte, 4)
		_, err = io.ReadFull(c, b)
		return err
	}
	// No trust request anywhere: the network is the consent.
	require.NoError(t, echo(bob, aliceIn))
	require.NoError(t, echo(alice, bob.Addr().String()))
	require.NoError(t, echo(alice, bobIn))
	require.NoError(t, echo(bob, "alice"), "hostnames resolve through the rendezvous")
	require.False(t, alice.store.IsTrusted(bob.PublicKey()))

	// Carol is no member: refused before any packet, in the network or not.
	for _, to := range []string{aliceIn, alice.Addr().String(), "alice"} {
		require.ErrorIs(t, echo(carol, to), ErrNotTrusted, to)
	}
	// And the network does not extend bob's pairwise trust: with carol
	// trusted by bob, carol still cannot reach alice, nor bob in N.
	establishTrust(t, bob, carol, "carol")
	require.ErrorIs(t, echo(carol, aliceIn), ErrNotTrusted)
	require.ErrorIs(t, echo(carol, bobIn), ErrNotTrusted)
	require.NoError(t, echo(carol, "bob"))

	ln, err := alice.Listen(80)
	require.NoError(t, err)
	defer ln.Close()

	// Leave cuts bob's live stream to alice at once, both ends.
	reads := openStream(t, bob, ln, aliceIn, 80)
	require.NoError(t, bob.LeaveNetwork(ctx, id))
	requireCut(t, reads, 3*time.Second)
	require.ErrorIs(t, echo(bob, aliceIn), ErrNotTrusted)
	require.Eventually(t, func() bool { return !alice.store.IsMember(id, bob.PublicKey()) }, 5*time.Second, 10*time.Millisecond)
	require.ErrorIs(t, echo(alice, bobIn), ErrNotTrusted)
	require.Empty(t, bob.Networks())
	require.Error(t, alice.LeaveNetwork(ctx, id), "the owner cannot leave")

	// Back in on the same invite (still valid); then alice removes him.
	_, err = bob.JoinNetwork(ctx, tok)
	require.NoError(t, err)
	require.NoError(t, echo(bob, aliceIn))
	reads = openStream(t, bob, ln, aliceIn, 80)
	require.NoError(t, alice.RemoveMember(ctx, id, bob.Addr().String()))
	requireCut(t, reads, 3*time.Second)
	require.ErrorIs(t, echo(alice, bobIn), ErrNotTrusted)
	require.Eventually(t, func() bool { return len(bob.Networks()) == 0 }, 5*time.Second, 10*time.Millisecond)
	require.ErrorIs(t, echo(bob, aliceIn), ErrNotTrusted)
	_, err = bob.JoinNetwork(ctx, tok)
	require.ErrorIs(t, err, rendezvous.ErrBadMessage, "a removed member's old invite is void")

	// A bearer invite issued after the removal lets him in again.
	bearer, err := alice.Invite(id, addressing.PublicKey{}, time.Minute)
	require.NoError(t, err)
	_, err = bob.JoinNetwork(ctx, bearer)
	require.NoError(t, err)
	require.NoError(t, echo(bob, aliceIn))
	require.Zero(t, alice.Stats().NetworkDocsRefused)
	require.Zero(t, bob.Stats().NetworkDocsRefused)
}

// TestNetworkRestartAndExpiry: memberships survive a rendezvous restart and
// a node restart; an expired invite is refused.
func TestNetworkRestartAndExpiry(t *testing.T) {
	checkNoLeaks(t)
	srv := startServer(t)
	alice := startNode(t, srv, "")
	bob := startNode(t, srv, "")
	ctx := ctxT(t, 20*time.Second)
	id, err := alice.CreateNetwork(ctx, "kept")
	require.NoError(t, err)

	expired, err := network.NewInvite(alice.id, network.Info{ID: id, Name: "kept", Owner: alice.PublicKey()}, bob.PublicKey(), time.Now().Add(-2*time.Hour), time.Hour)
	require.NoError(t, err)
	_, err = bob.JoinNetwork(ctx, expired.String())
	require.ErrorIs(t, err, network.ErrExpired)

	tok, err := alice.Invite(id, addressing.PublicKey{}, 0)
	require.NoError(t, err)
	_, err = bob.JoinNetwork(ctx, tok)
	require.NoError(t, err)

	srv.restart()
	bob.stop()
	bob.start()
	require.NoError(t, alice.WaitRendezvous(ctx))
	require.True(t, bob.store.IsMember(id, alice.PublicKey()), "kept on disk")
	c, err := bob.Dial(ctx, addressing.AddrFrom(id, alice.Addr().Node()).String(), PortEcho)
	require.NoError(t, err, "bob found alice through the restarted rendezvous")
	c.Close()
	require.Equal(t, []Member{{Addr: addressing.AddrFrom(id, alice.Addr().Node()), Key: alice.PublicKey(), Owner: true, Self: true}},
		alice.Members(id)[:1])
}

// TestNetworkCompromisedRendezvous: documents a rendezvous pushes are
// verified against the owner key the node learnt itself; a Join under
// another key, or a Remove not signed by the owner, changes nothing.
func TestNetworkCompromisedRendezvous(t *testing.T) {
	checkNoLeaks(t)
	srv := startServer(t)
	alice := startNode(t, srv, "")
	bob := startNode(t, srv, "")
	ctx := ctxT(t, 10*time.Second)
	id, err := alice.CreateNetwork(ctx, "guarded")
	require.NoError(t, err)
	tok, err := alice.Invite(id, bob.PublicKey(), time.Hour)
	require.NoError(t, err)
	_, err = bob.JoinNetwork(ctx, tok)
	require.NoError(t, err)

	mallory, err := trustdb.GenerateIdentity()
	require.NoError(t, err)
	fakeOwner, err := trustdb.GenerateIdentity()
	require.NoError(t, err)
	fake := network.Info{ID: id, Name: "guarded", Owner: fakeOwner.PublicKey()}
	ftok, err := network.NewInvite(fakeOwner, fake, mallory.PublicKey(), time.Now(), time.Hour)
	require.NoError(t, err)
	j, err := network.NewJoin(mallory, ftok, time.Now())
	require.NoError(t, err)
	forgedJoin, err := j.AppendBinary(nil)
	require.NoError(t, err)
	rm, err := network.NewRemove(fakeOwner, fake, bob.PublicKey(), time.Now())
	require.NoError(t, err)
	forgedRemove, err := rm.AppendBinary(nil)
	require.NoError(t, err)

	// What a compromised rendezvous could push: the forged documents, in a
	// change and in a "full list" that also leaves bob out.
	info := rendezvous.NetworkInfo{ID: id, Name: "guarded", Owner: fakeOwner.PublicKey()}
	alice.networkPushed(rendezvous.NetworkState{NetworkInfo: info, Docs: [][]byte{forgedJoin, forgedRemove}})
	bob.networkPushed(rendezvous.NetworkState{NetworkInfo: info, Docs: [][]byte{forgedJoin, forgedRemove}})
	for _, n := range []*testNode{alice, bob} {
		require.False(t, n.store.IsMember(0, mallory.PublicKey()))
		require.Error(t, n.gate(mallory.PublicKey()), "the gate refuses mallory")
		require.Equal(t, uint64(2), n.Stats().NetworkDocsRefused)
	}
	require.True(t, alice.store.IsMember(id, bob.PublicKey()), "the forged Remove changed nothing")
	require.True(t, bob.store.IsMember(id, bob.PublicKey()))
	// Members of a network the node never joined are ignored altogether.
	bob.networkPushed(rendezvous.NetworkState{NetworkInfo: rendezvous.NetworkInfo{ID: id + 1, Name: "other", Owner: fakeOwner.PublicKey()}, Docs: [][]byte{forgedJoin}})
	_, ok := bob.store.Network(id + 1)
	require.False(t, ok)

	c, err := bob.Dial(ctx, addressing.AddrFrom(id, alice.Addr().Node()).String(), PortEcho)
	require.NoError(t, err)
	c.Close()
}

// TestNetworkRemovalCutsFellows: when the owner removes a member, the
// member's links to the other members (not only to the owner) close at
// once, and neither side can dial the other.
func TestNetworkRemovalCutsFellows(t *testing.T) {
	checkNoLeaks(t)
	srv := startServer(t)
	alice := startNode(t, srv, "")
	bob := startNode(t, srv, "")
	dave := startNode(t, srv, "")
	ctx := ctxT(t, 20*time.Second)
	id, err := alice.CreateNetwork(ctx, "crew")
	require.NoError(t, err)
	tok, err := alice.Invite(id, addressing.PublicKey{}, time.Hour)
	require.NoError(t, err)
	for _, n := range []*testNode{bob, dave} {
		_, err = n.JoinNetwork(ctx, tok)
		require.NoError(t, err)
	}
	daveIn := addressing.AddrFrom(id, dave.Addr().Node()).String()
	ln, err := dave.Listen(80)
	require.NoError(t, err)
	defer ln.Close()
	reads := openStream(t, bob, ln, daveIn, 80)

	start := time.Now()
	require.NoError(t, alice.RemoveMember(ctx, id, bob.PublicKey().String()))
	requireCut(t, reads, 3*time.Second)
	t.Logf("fellow link cut %v after the removal", time.Since(start).Round(time.Millisecond))
	_, err = bob.Dial(ctx, daveIn, PortEcho)
	require.ErrorIs(t, err, ErrNotTrusted)
	_, err = dave.Dial(ctx, bob.Addr().String(), PortEcho)
	require.ErrorIs(t, err, ErrNotTrusted)
	require.Len(t, dave.Members(id), 2)
}

// forget makes n unaware of member k of network id, as if k's Join had not
// reached it yet.
func forget(t *testing.T, n *testNode, id addressing.NetworkID, k addressing.PublicKey) {
	t.Helper()
	require.NoError(t, n.store.UpdateNetwork(id, func(r *trustdb.Network, exists bool) (bool, error) {
		r.DropMember(k)
		return exists, nil
	}))
	require.False(t, n.store.IsMember(id, k))
	n.rebuildIndex() // the knock table too, now rather than when the subscriber runs
}

// TestNetworkFellowReachableBeforePush: a member that has not yet heard of
// a fellow's Join (its push is late or lost) still reaches it and admits
// it: the dialling side fetches the member list when a dial names an
// unknown fellow, and the gate fetches it when the knock refuses a
// handshake, while the dialler retries.
func TestNetworkFellowReachableBeforePush(t *testing.T) {
	checkNoLeaks(t)
	srv := startServer(t)
	alice := startNode(t, srv, "")
	bob := startNode(t, srv, "")
	dave := startNode(t, srv, "")
	ctx := ctxT(t, 20*time.Second)
	id, err := alice.CreateNetwork(ctx, "crew")
	require.NoError(t, err)
	tok, err := alice.Invite(id, addressing.PublicKey{}, time.Hour)
	require.NoError(t, err)
	for _, n := range []*testNode{bob, dave} {
		_, err = n.JoinNetwork(ctx, tok)
		require.NoError(t, err)
	}
	daveIn := addressing.AddrFrom(id, dave.Addr().Node()).String()
	bobIn := addressing.AddrFrom(id, bob.Addr().Node()).String()
	require.Eventually(t, func() bool { return bob.store.IsMember(id, dave.PublicKey()) }, 5*time.Second, 10*time.Millisecond)

	// The gate side: dave does not know bob; bob knows dave.
	forget(t, dave, id, bob.PublicKey())
	require.NoError(t, echoOnce(ctx, bob.Node, daveIn), "dave's gate refused a member it had not heard of")
	require.True(t, dave.store.IsMember(id, bob.PublicKey()))

	// The dialling side: bob does not know dave (by N:x, then by 0:x).
	for _, to := range []string{daveIn, dave.Addr().String()} {
		require.NoError(t, bob.Disconnect(daveIn))
		forget(t, bob, id, dave.PublicKey())
		time.Sleep(netRefreshEvery) // past the rate limit of the last fetch
		require.NoError(t, echoOnce(ctx, bob.Node, to), "bob did not look for a fellow he had not heard of (%s)", to)
	}
	// Both at once, the other way round.
	require.NoError(t, dave.Disconnect(bobIn))
	forget(t, dave, id, bob.PublicKey())
	forget(t, bob, id, dave.PublicKey())
	time.Sleep(netRefreshEvery)
	require.NoError(t, echoOnce(ctx, dave.Node, bobIn))

	// A stranger still gets nothing: refused locally, however often.
	carol := startNode(t, srv, "")
	for range 3 {
		require.ErrorIs(t, echoOnce(ctx, carol.Node, daveIn), ErrNotTrusted)
	}
}
