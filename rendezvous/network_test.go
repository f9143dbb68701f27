package rendezvous_test

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/agentnet/agentnet/addressing"
	"github.com/agentnet/agentnet/network"
	"github.com/agentnet/agentnet/rendezvous"
	"github.com/agentnet/agentnet/rendezvous/proto"
	"github.com/agentnet/agentnet/rendezvous/rendezvoustest"
	"github.com/agentnet/agentnet/trustdb"
)

// netAgent is a test client that records pushed network states.
type netAgent struct {
	id     *trustdb.Identity
	c      *rendezvous.Client
	pushed chan rendezvous.NetworkState
}

func newNetAgent(t *testing.T, srv *rendezvoustest.Server, id *trustdb.Identity) *netAgent {
	t.Helper()
	if id == nil {
		id = newID(t)
	}
	a := &netAgent{id: id, pushed: make(chan rendezvous.NetworkState, 64)}
	a.c = srv.NewClient(id, func(cfg *rendezvous.ClientConfig) {
		cfg.Network = func(st rendezvous.NetworkState) { a.pushed <- st }
	})
	return a
}

// push waits for the next pushed state of network id that satisfies ok.
func (a *netAgent) push(t *testing.T, id addressing.NetworkID, ok func(rendezvous.NetworkState) bool) rendezvous.NetworkState {
	t.Helper()
	deadline := time.After(5 * time.Second)
	for {
		select {
		case st := <-a.pushed:
			if st.ID == id && ok(st) {
				return st
			}
		case <-deadline:
			t.Fatal("no network push")
		}
	}
}

func hasDoc(want []byte) func(rendezvous.NetworkState) bool {
	return func(st rendezvous.NetworkState) bool {
		for _, d := range st.Docs {
			if string(d) == string(want) {
				return true
			}
		}
		return false
	}
}

func encodeDoc(t *testing.T, d network.Doc) []byte {
	t.Helper()
	b, err := d.AppendBinary(nil)
	require.NoError(t, err)
	return b
}

func invite(t *testing.T, owner *trustdb.Identity, info rendezvous.NetworkInfo, invitee addressing.PublicKey, issued time.Time, ttl time.Duration) network.Token {
	t.Helper()
	tok, err := network.NewInvite(owner, network.Info{ID: info.ID, Name: info.Name, Owner: info.Owner}, invitee, issued, ttl)
	require.NoError(t, err)
	return tok
}

func joinDoc(t *testing.T, member *trustdb.Identity, tok network.Token, at time.Time) []byte {
	t.Helper()
	j, err := network.NewJoin(member, tok, at)
	require.NoError(t, err)
	return encodeDoc(t, j)
}

func TestNetworkMembership(t *testing.T) {
	checkGoroutines(t)
	srv := rendezvoustest.New(t)
	ctx := ctxT(t)
	owner, alice := newNetAgent(t, srv, nil), newNetAgent(t, srv, nil)
	strangerID := newID(t)
	stranger := dialRaw(t, srv, strangerID, true)

	info, err := owner.c.CreateNetwork(ctx, "builders")
	require.NoError(t, err)
	require.Equal(t, addressing.NetworkID(1), info.ID)
	_, err = alice.c.CreateNetwork(ctx, "builders")
	require.ErrorIs(t, err, rendezvous.ErrNetworkTaken)

	// Before alice joins, she and the owner see nothing of each other.
	ownerIn := addressing.TargetAddr(owner.id.Addr().WithNetwork(info.ID))
	_, err = alice.c.Lookup(ctx, ownerIn)
	require.ErrorIs(t, err, rendezvous.ErrNotFound)

	now := time.Now()
	tok := invite(t, owner.id, info, alice.id.PublicKey(), now, time.Hour)
	join := joinDoc(t, alice.id, tok, now)
	got, err := alice.c.JoinNetwork(ctx, join)
	require.NoError(t, err)
	require.Equal(t, info, got)
	_, err = alice.c.JoinNetwork(ctx, join)
	require.NoError(t, err, "sending the same Join again is a retry")
	owner.push(t, info.ID, hasDoc(join))

	// Members see each other: in the network, and in the global space.
	for _, tg := range []addressing.Target{ownerIn, addressing.TargetAddr(owner.id.Addr())} {
		pi, err := alice.c.Lookup(ctx, tg)
		require.NoError(t, err, tg)
		require.Equal(t, owner.id.PublicKey(), pi.Key)
	}
	pi, err := owner.c.Lookup(ctx, addressing.TargetAddr(alice.id.Addr().WithNetwork(info.ID)))
	require.NoError(t, err)
	require.Equal(t, alice.id.Addr().WithNetwork(info.ID), pi.Addr)
	st, err := alice.c.Members(ctx, info.ID)
	require.NoError(t, err)
	require.True(t, st.Full)
	require.Equal(t, [][]byte{join}, st.Docs)

	// A stranger gets the NotFound bytes for everything about the network.
	notFound := []byte{proto.Version, byte(proto.TypeNotFound), 0, 0}
	for name, m := range map[string]proto.Message{
		"lookup in network":     &proto.Lookup{Target: addressing.TargetAddr(alice.id.Addr().WithNetwork(info.ID))},
		"lookup global":         &proto.Lookup{Target: addressing.TargetAddr(alice.id.Addr())},
		"members":               &proto.NetworkMembers{ID: info.ID},
		"members of no network": &proto.NetworkMembers{ID: 999},
		"connect in network":    &proto.Connect{Target: alice.id.Addr().WithNetwork(info.ID)},
	} {
		require.Equal(t, notFound, stranger.request(t, frame(t, m)), name)
	}
	// A trusted pair outside the network does not see into it: N:x needs
	// both to be members of N.
	_, err = alice.c.Lookup(ctx, addressing.TargetAddr(strangerID.Addr().WithNetwork(info.ID)))
	require.ErrorIs(t, err, rendezvous.ErrNotFound)

	// Leave: alice is gone at once, and told.
	leave, err := network.NewLeave(alice.id, network.Info{ID: info.ID, Name: info.Name, Owner: info.Owner}, time.Now())
	require.NoError(t, err)
	leaveB := encodeDoc(t, leave)
	require.NoError(t, alice.c.SendExit(ctx, leaveB))
	owner.push(t, info.ID, hasDoc(leaveB))
	alice.push(t, info.ID, hasDoc(leaveB))
	_, err = alice.c.Lookup(ctx, ownerIn)
	require.ErrorIs(t, err, rendezvous.ErrNotFound)
	_, err = owner.c.Lookup(ctx, addressing.TargetAddr(alice.id.Addr()))
	require.ErrorIs(t, err, rendezvous.ErrNotFound)
	_, err = alice.c.Members(ctx, info.ID)
	require.ErrorIs(t, err, rendezvous.ErrNotFound)

	// Replays change nothing.
	_, err = alice.c.JoinNetwork(ctx, join)
	require.ErrorIs(t, err, rendezvous.ErrReplay)
	require.ErrorIs(t, alice.c.SendExit(ctx, leaveB), rendezvous.ErrReplay)

	// A fresh Join on the same invite brings her back; a Remove by the
	// owner ends it, and the old invite no longer works.
	rejoin := joinDoc(t, alice.id, tok, time.Now())
	_, err = alice.c.JoinNetwork(ctx, rejoin)
	require.NoError(t, err)
	remove, err := network.NewRemove(owner.id, network.Info{ID: info.ID, Name: info.Name, Owner: info.Owner}, alice.id.PublicKey(), time.Now())
	require.NoError(t, err)
	removeB := encodeDoc(t, remove)
	require.ErrorIs(t, alice.c.SendExit(ctx, removeB), rendezvous.ErrBadMessage, "only the owner removes")
	require.NoError(t, owner.c.SendExit(ctx, removeB))
	alice.push(t, info.ID, hasDoc(removeB))
	_, err = alice.c.Lookup(ctx, ownerIn)
	require.ErrorIs(t, err, rendezvous.ErrNotFound)
	_, err = alice.c.JoinNetwork(ctx, joinDoc(t, alice.id, tok, time.Now().Add(time.Millisecond)))
	require.ErrorIs(t, err, rendezvous.ErrBadMessage, "removed: the old invite is void")
	tok2 := invite(t, owner.id, info, addressing.PublicKey{}, time.Now(), time.Hour)
	_, err = alice.c.JoinNetwork(ctx, joinDoc(t, alice.id, tok2, time.Now()))
	require.NoError(t, err, "a bearer invite issued after the removal")
	require.Equal(t, uint64(0), srv.Stats().StoreErrors)
}

func TestNetworkForgedRefused(t *testing.T) {
	checkGoroutines(t)
	srv := rendezvoustest.New(t)
	ctx := ctxT(t)
	owner, alice, bob := newNetAgent(t, srv, nil), newNetAgent(t, srv, nil), newNetAgent(t, srv, nil)
	info, err := owner.c.CreateNetwork(ctx, "n1")
	require.NoError(t, err)
	now := time.Now()

	// An invite made by someone else than the network's owner: to the
	// server, a network it does not know.
	fake := rendezvous.NetworkInfo{ID: info.ID, Name: info.Name, Owner: bob.id.PublicKey()}
	_, err = alice.c.JoinNetwork(ctx, joinDoc(t, alice.id, invite(t, bob.id, fake, alice.id.PublicKey(), now, time.Hour), now))
	require.ErrorIs(t, err, rendezvous.ErrNotFound)
	// Alice's Join sent from bob's connection.
	good := joinDoc(t, alice.id, invite(t, owner.id, info, alice.id.PublicKey(), now, time.Hour), now)
	_, err = bob.c.JoinNetwork(ctx, good)
	require.ErrorIs(t, err, rendezvous.ErrBadMessage)
	// A backdated Join (valid for its invite, but not fresh).
	old := now.Add(-2 * time.Hour)
	_, err = alice.c.JoinNetwork(ctx, joinDoc(t, alice.id, invite(t, owner.id, info, alice.id.PublicKey(), old, 3*time.Hour), old))
	require.ErrorIs(t, err, rendezvous.ErrBadMessage)
	// Garbage, and a Leave of a non-member.
	_, err = alice.c.JoinNetwork(ctx, []byte("not a document"))
	require.ErrorIs(t, err, rendezvous.ErrBadMessage)
	leave, err := network.NewLeave(alice.id, network.Info{ID: info.ID, Name: info.Name, Owner: info.Owner}, now)
	require.NoError(t, err)
	require.ErrorIs(t, alice.c.SendExit(ctx, encodeDoc(t, leave)), rendezvous.ErrNotFound)
	// A Join for a network the server does not know.
	other := rendezvous.NetworkInfo{ID: 77, Name: "nope", Owner: owner.id.PublicKey()}
	_, err = alice.c.JoinNetwork(ctx, joinDoc(t, alice.id, invite(t, owner.id, other, alice.id.PublicKey(), now, time.Hour), now))
	require.ErrorIs(t, err, rendezvous.ErrNotFound)

	_, err = alice.c.Lookup(ctx, addressing.TargetAddr(owner.id.Addr()))
	require.ErrorIs(t, err, rendezvous.ErrNotFound, "nothing refused made a member")
	require.Equal(t, uint64(6), srv.Stats().NetworkRefused)
}

func TestNetworkRestartKeepsMembers(t *testing.T) {
	checkGoroutines(t)
	srv := rendezvoustest.New(t)
	ctx := ctxT(t)
	owner, alice := newNetAgent(t, srv, nil), newNetAgent(t, srv, nil)
	info, err := owner.c.CreateNetwork(ctx, "kept")
	require.NoError(t, err)
	now := time.Now()
	join := joinDoc(t, alice.id, invite(t, owner.id, info, addressing.PublicKey{}, now, time.Hour), now)
	_, err = alice.c.JoinNetwork(ctx, join)
	require.NoError(t, err)

	srv.Restart()
	// Each member gets the full list again when it registers.
	for _, a := range []*netAgent{owner, alice} {
		st := a.push(t, info.ID, func(st rendezvous.NetworkState) bool { return st.Full })
		require.Equal(t, [][]byte{join}, st.Docs)
		require.Equal(t, info, st.NetworkInfo)
	}
	require.NoError(t, alice.c.WaitReady(ctx))
	pi, err := alice.c.Lookup(ctx, addressing.TargetAddr(owner.id.Addr().WithNetwork(info.ID)))
	require.NoError(t, err)
	require.Equal(t, owner.id.PublicKey(), pi.Key)
	_, err = alice.c.CreateNetwork(ctx, "kept")
	require.ErrorIs(t, err, rendezvous.ErrNetworkTaken)
	info2, err := alice.c.CreateNetwork(ctx, "second")
	require.NoError(t, err)
	require.Equal(t, addressing.NetworkID(2), info2.ID)
}

func TestNetworkListPages(t *testing.T) {
	checkGoroutines(t)
	srv := rendezvoustest.New(t)
	ctx := ctxT(t)
	owner := newNetAgent(t, srv, nil)
	info, err := owner.c.CreateNetwork(ctx, "big")
	require.NoError(t, err)
	now := time.Now()
	tok := invite(t, owner.id, info, addressing.PublicKey{}, now, time.Hour)
	// Enough bearer joins (about 350 bytes each) for several pages.
	var joins [][]byte
	for range 40 {
		id := newID(t)
		c := srv.NewClient(id, nil)
		j := joinDoc(t, id, tok, now)
		_, err := c.JoinNetwork(ctx, j)
		require.NoError(t, err)
		joins = append(joins, j)
	}
	st, err := owner.c.Members(ctx, info.ID)
	require.NoError(t, err)
	require.True(t, st.Full)
	require.ElementsMatch(t, joins, st.Docs)
}

// TestNetworkJoinNoOracle: a stranger's Join for an existing network ID and
// for an unused one gets the same bytes: for an invite it made itself
// (NotFound) and for a forged one (bad_message, the same text). (Before, the
// self-made invite for an existing ID answered bad_message and for an
// unused one not_found.)
func TestNetworkJoinNoOracle(t *testing.T) {
	checkGoroutines(t)
	srv := rendezvoustest.New(t)
	ctx := ctxT(t)
	owner := newNetAgent(t, srv, nil)
	info, err := owner.c.CreateNetwork(ctx, "private")
	require.NoError(t, err)
	strangerID, fakeOwner := newID(t), newID(t)
	stranger := dialRaw(t, srv, strangerID, true)
	now := time.Now()
	join := func(id addressing.NetworkID, name string, forged bool) []byte {
		t.Helper()
		tok := invite(t, fakeOwner, rendezvous.NetworkInfo{ID: id, Name: name, Owner: fakeOwner.PublicKey()}, strangerID.PublicKey(), now, time.Hour)
		if forged {
			tok.Invite.Owner = info.Owner // claims the real owner; the signature is fakeOwner's
		}
		j, err := network.NewJoin(strangerID, tok, now)
		require.NoError(t, err)
		return stranger.request(t, frame(t, &proto.NetworkSend{Doc: encodeDoc(t, j)}))
	}
	notFound := frame(t, &proto.NotFound{})
	for _, name := range []string{info.Name, "other"} {
		require.Equal(t, notFound, join(info.ID, name, false), "existing ID, name %s", name)
		require.Equal(t, notFound, join(999, name, false), "unused ID, name %s", name)
		forged := join(info.ID, name, true)
		f, _, err := proto.ParseFrame(forged)
		require.NoError(t, err)
		require.Equal(t, proto.TypeError, f.Type)
		require.Equal(t, forged, join(999, name, true), "forged invite, name %s", name)
	}
}
