package rendezvous

import (
	"net/netip"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/agentnet/agentnet/addressing"
	"github.com/agentnet/agentnet/trustdb"
)

func key(t *testing.T) addressing.PublicKey {
	t.Helper()
	id, err := trustdb.GenerateIdentity()
	require.NoError(t, err)
	return id.PublicKey()
}

func TestBoltStore(t *testing.T) {
	path := filepath.Join(t.TempDir(), "rendezvous.db")
	s, err := OpenBoltStore(path)
	require.NoError(t, err)
	a, b, c := key(t), key(t), key(t)
	now := time.Unix(1_800_000_000, 0)
	loc := []netip.AddrPort{netip.MustParseAddrPort("198.18.0.1:1"), netip.MustParseAddrPort("[2001:db8::1]:2")}

	require.NoError(t, s.Update(func(tx Tx) error {
		require.NoError(t, tx.PutAgent(AgentRecord{Key: a, Hostname: "alice", Locators: loc, Created: now, LastSeen: now}))
		require.NoError(t, tx.PutAgent(AgentRecord{Key: b}))
		require.ErrorIs(t, tx.PutAgent(AgentRecord{Key: b, Hostname: "alice"}), ErrHostnameTaken)
		// A forged index entry stands in for a 48-bit NodeID collision.
		node := c.NodeID()
		require.NoError(t, tx.(boltTx).b(bucketNodes).Put(node[:], a[:]))
		require.ErrorIs(t, tx.PutAgent(AgentRecord{Key: c}), ErrNodeIDTaken)
		require.NoError(t, tx.(boltTx).b(bucketNodes).Delete(node[:]))
		n, err := tx.AgentCount()
		require.NoError(t, err)
		require.Equal(t, 2, n)

		seen, err := tx.SeeNonce(a, [16]byte{1}, now)
		require.NoError(t, err)
		require.False(t, seen)
		seen, err = tx.SeeNonce(a, [16]byte{1}, now)
		require.NoError(t, err)
		require.True(t, seen)
		seen, err = tx.SeeNonce(b, [16]byte{1}, now)
		require.NoError(t, err)
		require.False(t, seen)

		require.NoError(t, tx.PutPending(PendingRequest{Target: b, Requester: a, Nonce: [16]byte{2}, Time: now, Msg: []byte("req")}))
		require.NoError(t, tx.PutPair(TrustPair{A: b, B: a, Request: []byte("r"), Approve: []byte("ap"), Created: now}))
		for i := range 3 {
			id, err := tx.Enqueue(b, []byte{byte(i)}, now)
			require.NoError(t, err)
			require.Equal(t, uint64(i+1), id)
		}
		return nil
	}))

	// Reopen: everything is still there.
	require.NoError(t, s.Close())
	s, err = OpenBoltStore(path)
	require.NoError(t, err)
	defer s.Close()
	_, err = OpenBoltStore(path)
	require.ErrorContains(t, err, "in use")

	require.NoError(t, s.Update(func(tx Tx) error {
		r, ok, err := tx.Agent(a)
		require.NoError(t, err)
		require.True(t, ok)
		require.Equal(t, "alice", r.Hostname)
		require.Equal(t, loc, r.Locators)
		require.True(t, now.Equal(r.Created))
		k, ok, err := tx.AgentByHostname("alice")
		require.NoError(t, err)
		require.True(t, ok)
		require.Equal(t, a, k)
		k, ok, err = tx.AgentByNode(b.NodeID())
		require.NoError(t, err)
		require.True(t, ok)
		require.Equal(t, b, k)

		// Renaming releases the old hostname.
		r.Hostname = "alice2"
		require.NoError(t, tx.PutAgent(r))
		_, ok, _ = tx.AgentByHostname("alice")
		require.False(t, ok)
		require.NoError(t, tx.PutAgent(AgentRecord{Key: b, Hostname: "alice"}))

		p, ok, err := tx.Pending(b, a)
		require.NoError(t, err)
		require.True(t, ok)
		require.Equal(t, []byte("req"), p.Msg)
		n, err := tx.PendingCount(b)
		require.NoError(t, err)
		require.Equal(t, 1, n)
		n, err = tx.PendingCount(a)
		require.NoError(t, err)
		require.Equal(t, 0, n)

		pair, ok, err := tx.Pair(a, b) // either order
		require.NoError(t, err)
		require.True(t, ok)
		require.Equal(t, b, pair.A)
		require.Equal(t, []byte("ap"), pair.Approve)

		items, err := tx.Mail(b, 1, 10)
		require.NoError(t, err)
		require.Len(t, items, 2)
		require.Equal(t, uint64(2), items[0].ID)
		deleted, err := tx.Ack(b, 2)
		require.NoError(t, err)
		require.True(t, deleted)
		deleted, err = tx.Ack(b, 2)
		require.NoError(t, err)
		require.False(t, deleted)
		n, err = tx.MailCount(b)
		require.NoError(t, err)
		require.Equal(t, 2, n)
		// Ids never repeat, even after deletions.
		id, err := tx.Enqueue(b, []byte("x"), now.Add(time.Hour))
		require.NoError(t, err)
		require.Equal(t, uint64(4), id)

		// Prune drops what is older than the cutoff: 1 nonce pair (2
		// entries), the pending request, mail items 1 and 3.
		pruned, err := tx.Prune(now.Add(time.Minute))
		require.NoError(t, err)
		require.Equal(t, 5, pruned)
		items, err = tx.Mail(b, 0, 10)
		require.NoError(t, err)
		require.Len(t, items, 1)
		require.Equal(t, uint64(4), items[0].ID)
		_, ok, _ = tx.Pending(b, a)
		require.False(t, ok)
		return nil
	}))
}

func TestRateLimiter(t *testing.T) {
	l := newRateLimiter[int](2, 3, 2)
	now := time.Unix(0, 0)
	for range 3 {
		require.True(t, l.allow(1, now))
	}
	require.False(t, l.allow(1, now))
	require.True(t, l.allow(1, now.Add(500*time.Millisecond)))
	require.False(t, l.allow(1, now.Add(500*time.Millisecond)))
	// Bounded table: keys 2 and 3 evict key 1, which starts full again.
	require.True(t, l.allow(2, now))
	require.True(t, l.allow(3, now))
	require.Equal(t, 2, l.buckets.Len())

	require.Equal(t, netip.MustParseAddr("2001:db8:1:2::"), addrKey(netip.MustParseAddr("2001:db8:1:2:3:4:5:6")))
	require.Equal(t, netip.MustParseAddr("10.1.2.3"), addrKey(netip.MustParseAddr("::ffff:10.1.2.3")))
}
