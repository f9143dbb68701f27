package trustdb

import (
	"errors"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/agentnet/agentnet/addressing"
)

func testKeys(tb testing.TB, n int) []addressing.PublicKey {
	tb.Helper()
	out := make([]addressing.PublicKey, n)
	for i := range out {
		id, err := GenerateIdentity()
		require.NoError(tb, err)
		out[i] = id.PublicKey()
	}
	return out
}

func TestNetworkStore(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "trust")
	s, err := Open(dir)
	require.NoError(t, err)
	defer func() { s.Close() }()
	self := s.Identity().PublicKey()
	ks := testKeys(t, 3)
	owner, bob, carol := ks[0], ks[1], ks[2]

	var mu sync.Mutex
	var changes []NetworkChange
	s.Subscribe(func(ev Event) {
		if ev.Network != nil {
			mu.Lock()
			changes = append(changes, *ev.Network)
			mu.Unlock()
		}
	})
	lastChange := func() NetworkChange {
		s.Flush()
		mu.Lock()
		defer mu.Unlock()
		return changes[len(changes)-1]
	}

	// We join network 5 owned by someone else.
	require.NoError(t, s.UpdateNetwork(5, func(n *Network, exists bool) (bool, error) {
		require.False(t, exists)
		n.Name, n.Owner, n.Proof = "builders", owner, []byte("our join")
		n.SetMember(self, []byte("our join"))
		n.SetMember(bob, []byte("bob join"))
		return true, nil
	}))
	require.Equal(t, NetworkChange{ID: 5, Added: sorted(owner, bob)}, lastChange())
	require.True(t, s.IsMember(5, owner))
	require.True(t, s.IsMember(5, bob))
	require.True(t, s.IsMember(5, self))
	require.False(t, s.IsMember(5, carol))
	require.True(t, s.IsMember(0, bob))
	require.False(t, s.IsMember(0, self), "id 0 means fellow members, not us")
	require.ElementsMatch(t, []addressing.PublicKey{owner, bob}, s.Fellows())
	k, ok := s.MemberByNode(5, bob.NodeID())
	require.True(t, ok)
	require.Equal(t, bob, k)
	_, ok = s.MemberByNode(6, bob.NodeID())
	require.False(t, ok)
	_, ok = s.MemberByNode(0, self.NodeID())
	require.False(t, ok)

	// An unchanged record writes nothing and tells nobody.
	s.Flush()
	mu.Lock()
	before := len(changes)
	mu.Unlock()
	require.NoError(t, s.UpdateNetwork(5, func(n *Network, exists bool) (bool, error) { return true, nil }))
	s.Flush()
	mu.Lock()
	require.Equal(t, before, len(changes))
	mu.Unlock()

	// A failing fn changes nothing.
	boom := errors.New("boom")
	require.ErrorIs(t, s.UpdateNetwork(5, func(n *Network, exists bool) (bool, error) {
		n.DropMember(bob)
		return true, boom
	}), boom)
	require.True(t, s.IsMember(5, bob))

	// Bob leaves, carol joins.
	require.NoError(t, s.UpdateNetwork(5, func(n *Network, exists bool) (bool, error) {
		n.SetExit(bob, []byte("bob leave"))
		n.SetMember(carol, []byte("carol join"))
		return true, nil
	}))
	require.Equal(t, NetworkChange{ID: 5, Added: []addressing.PublicKey{carol}, Removed: []addressing.PublicKey{bob}}, lastChange())
	require.False(t, s.IsMember(0, bob))
	n, ok := s.Network(5)
	require.True(t, ok)
	doc, ok := n.Exit(bob)
	require.True(t, ok)
	require.Equal(t, "bob leave", string(doc))
	require.True(t, n.HasMember(carol))
	require.False(t, n.HasMember(bob))

	// Survives a reopen, mirror included.
	require.NoError(t, s.Close())
	s, err = Open(dir)
	require.NoError(t, err)
	require.True(t, s.IsMember(5, carol))
	require.False(t, s.IsMember(5, bob))
	got, ok := s.Network(5)
	require.True(t, ok)
	require.Equal(t, n.Members, got.Members)
	require.Equal(t, n.Ended, got.Ended)
	require.Equal(t, []byte("our join"), got.Proof)
	require.Len(t, s.Networks(), 1)

	// Deleting (we left) removes everyone.
	cancel := s.Subscribe(func(ev Event) {
		if ev.Network != nil {
			mu.Lock()
			changes = append(changes, *ev.Network)
			mu.Unlock()
		}
	})
	defer cancel()
	require.NoError(t, s.UpdateNetwork(5, func(n *Network, exists bool) (bool, error) { return false, nil }))
	require.Equal(t, NetworkChange{ID: 5, Removed: sorted(owner, carol), Deleted: true}, lastChange())
	require.False(t, s.IsMember(0, carol))
	require.Empty(t, s.Networks())

	// Invalid records are refused.
	require.ErrorIs(t, s.UpdateNetwork(6, func(n *Network, exists bool) (bool, error) {
		n.Name = "Bad Name"
		n.Owner = owner
		return true, nil
	}), ErrMalformed)
	require.ErrorIs(t, s.UpdateNetwork(0, func(n *Network, exists bool) (bool, error) { return true, nil }), ErrMalformed)
}

func sorted(ks ...addressing.PublicKey) []addressing.PublicKey {
	sortKeys(ks)
	return ks
}

// networkSeeds are encoded network records (with a member; owned, with
// a former member and times), for FuzzParseNetwork and its corpus.
func networkSeeds(tb testing.TB) [][]byte {
	ks := testKeys(tb, 3)
	n := Network{ID: 9, Name: "x", Owner: ks[0], Proof: []byte("p")}
	n.SetMember(ks[1], []byte("join"))
	owned := Network{ID: 9, Name: "builders", Owner: ks[0], Created: time.Unix(1_800_000_000, 0), Updated: time.Unix(1_800_000_100, 5)}
	owned.SetMember(ks[1], []byte("join-1"))
	owned.SetExit(ks[2], []byte("leave-2"))
	var out [][]byte
	for _, n := range []Network{n, owned} {
		b, err := n.appendBinary(nil)
		require.NoError(tb, err)
		out = append(out, b, b[:len(b)-1])
	}
	return out
}

func FuzzParseNetwork(f *testing.F) {
	for _, s := range networkSeeds(f) {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		n, err := parseNetwork([]byte{0, 9}, b)
		if err != nil {
			return
		}
		if _, err := n.appendBinary(nil); err != nil {
			t.Fatalf("parsed network does not encode: %v", err)
		}
	})
}
