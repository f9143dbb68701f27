package daemon

import (
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/agentnet/agentnet/ctl"
	"github.com/agentnet/agentnet/rendezvous/rendezvoustest"
)

// TestNetworks drives networks through the control API: three daemons, no
// trust requests; the members ping each other, the stranger gets not_found
// for the network and not_trusted for dials.
func TestNetworks(t *testing.T) {
	checkNoLeaks(t)
	srv := rendezvoustest.New(t)
	dir := t.TempDir()
	start := func(name string) *testDaemon {
		d := startDaemon(t, Config{StateDir: filepath.Join(dir, name), RendezvousAddr: srv.Addr().String(), RendezvousKey: srv.PublicKey(), Hostname: name})
		waitRegistered(t, d)
		return d
	}
	alice, bob, carol := start("alice"), start("bob"), start("carol")
	status := func(d *testDaemon) ctl.Status {
		var st ctl.Status
		d.must(t, "GET", ctl.PathStatus, nil, &st)
		return st
	}
	stA, stB := status(alice), status(bob)

	var n ctl.Network
	alice.must(t, "POST", ctl.PathNetworks, ctl.NetworkCreateRequest{Name: "team"}, &n)
	require.True(t, n.Owned)
	require.Equal(t, 1, n.Members)
	requireCode(t, bob.do(t, "POST", ctl.PathNetworks, ctl.NetworkCreateRequest{Name: "team"}, nil), ctl.CodeConflict)
	requireCode(t, bob.do(t, "POST", ctl.PathNetworks, ctl.NetworkCreateRequest{Name: "Bad Name"}, nil), ctl.CodeInvalidArgument)

	// An invite for bob's key; carol cannot use it, nobody can use a
	// damaged one, and only the owner invites.
	var inv ctl.NetworkInvite
	alice.must(t, "POST", ctl.NetworkPath("team", "invite"), ctl.NetworkInviteRequest{Invitee: stB.Key, TTLSeconds: 600}, &inv)
	require.False(t, inv.Bearer)
	require.Equal(t, stB.Key, inv.Invitee)
	require.WithinDuration(t, time.Now().Add(10*time.Minute), inv.Expires, time.Minute)
	requireCode(t, carol.do(t, "POST", ctl.PathNetworksJoin, ctl.NetworkJoinRequest{Token: inv.Token}, nil), ctl.CodeNotTrusted)
	requireCode(t, bob.do(t, "POST", ctl.PathNetworksJoin, ctl.NetworkJoinRequest{Token: inv.Token[:len(inv.Token)-6]}, nil), ctl.CodeInvalidArgument)
	requireCode(t, alice.do(t, "POST", ctl.NetworkPath("team", "invite"), ctl.NetworkInviteRequest{Invitee: "bob"}, nil), ctl.CodeNotFound)
	requireCode(t, alice.do(t, "POST", ctl.NetworkPath("nope", "invite"), ctl.NetworkInviteRequest{}, nil), ctl.CodeNotFound)

	bob.must(t, "POST", ctl.PathNetworksJoin, ctl.NetworkJoinRequest{Token: inv.Token}, &n)
	require.Equal(t, "team", n.Name)
	require.False(t, n.Owned)
	requireCode(t, bob.do(t, "POST", ctl.NetworkPath("team", "invite"), ctl.NetworkInviteRequest{}, nil), ctl.CodeConflict)

	var ms ctl.NetworkMembers
	bob.must(t, "GET", ctl.NetworkPath("team", ""), nil, &ms)
	require.Len(t, ms.Members, 2)
	require.True(t, ms.Members[0].Owner)
	require.Equal(t, stA.Key, ms.Members[0].Key)
	aliceIn := ms.Network.OwnerAddr
	require.Equal(t, "1:"+stA.Addr[2:], aliceIn)

	// Members ping each other by N:x and by the global address.
	var ping ctl.PingResult
	bob.must(t, "POST", ctl.PathPing, ctl.PingRequest{Peer: aliceIn, Count: 1}, &ping)
	alice.must(t, "POST", ctl.PathPing, ctl.PingRequest{Peer: stB.Addr, Count: 1}, &ping)
	// The stranger: not_found about the network, not_trusted for dials.
	requireCode(t, carol.do(t, "GET", ctl.NetworkPath("team", ""), nil, nil), ctl.CodeNotFound)
	requireCode(t, carol.do(t, "GET", ctl.NetworkPath("1", ""), nil, nil), ctl.CodeNotFound)
	requireCode(t, carol.do(t, "POST", ctl.PathPing, ctl.PingRequest{Peer: aliceIn, Count: 1}, nil), ctl.CodeNotTrusted)
	requireCode(t, carol.do(t, "POST", ctl.PathPing, ctl.PingRequest{Peer: "alice", Count: 1}, nil), ctl.CodeNotTrusted)

	// The owner removes bob: dials fail both ways; alice's list shrinks.
	alice.must(t, "POST", ctl.NetworkPath("team", "remove"), ctl.NetworkRemoveRequest{Member: stB.Addr}, &ms)
	require.Len(t, ms.Members, 1)
	requireCode(t, alice.do(t, "POST", ctl.PathPing, ctl.PingRequest{Peer: stB.Addr, Count: 1}, nil), ctl.CodeNotTrusted)
	require.Eventually(t, func() bool {
		var l ctl.NetworkList
		bob.must(t, "GET", ctl.PathNetworks, nil, &l)
		return len(l.Networks) == 0
	}, 5*time.Second, 20*time.Millisecond)
	requireCode(t, bob.do(t, "POST", ctl.PathPing, ctl.PingRequest{Peer: aliceIn, Count: 1}, nil), ctl.CodeNotTrusted)
	requireCode(t, alice.do(t, "POST", ctl.NetworkPath("team", "remove"), ctl.NetworkRemoveRequest{Member: stB.Addr}, nil), ctl.CodeNotFound)

	// A bearer invite: carol joins, then leaves.
	alice.must(t, "POST", ctl.NetworkPath("1", "invite"), ctl.NetworkInviteRequest{}, &inv)
	require.True(t, inv.Bearer)
	carol.must(t, "POST", ctl.PathNetworksJoin, ctl.NetworkJoinRequest{Token: inv.Token}, &n)
	carol.must(t, "POST", ctl.PathPing, ctl.PingRequest{Peer: aliceIn, Count: 1}, &ping)
	carol.must(t, "POST", ctl.NetworkPath("team", "leave"), nil, &n)
	requireCode(t, carol.do(t, "POST", ctl.PathPing, ctl.PingRequest{Peer: aliceIn, Count: 1}, nil), ctl.CodeNotTrusted)
	requireCode(t, alice.do(t, "POST", ctl.NetworkPath("team", "leave"), nil, nil), ctl.CodeConflict)
	var l ctl.NetworkList
	alice.must(t, "GET", ctl.PathNetworks, nil, &l)
	require.Len(t, l.Networks, 1)
}
