package rendezvous

import (
	"encoding/binary"
	"net/netip"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	bolt "go.etcd.io/bbolt"

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
		list, err := tx.Pendings(b, 10)
		require.NoError(t, err)
		require.Len(t, list, 1)
		list, err = tx.Pendings(a, 10)
		require.NoError(t, err)
		require.Empty(t, list)
		q, err := tx.PendingQuota(a, netip.Prefix{})
		require.NoError(t, err)
		require.Equal(t, PendingQuota{ByRequester: 1, Total: 1}, q)

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
		n, err := tx.MailCount(b)
		require.NoError(t, err)
		require.Equal(t, 2, n)
		// Ids never repeat, even after deletions.
		id, err := tx.Enqueue(b, []byte("x"), now.Add(time.Hour))
		require.NoError(t, err)
		require.Equal(t, uint64(4), id)

		// Prune drops what is older than the cutoff: 1 nonce pair (2
		// entries), the pending request, mail items 1 and 3.
		pruned, err := tx.Prune(now.Add(time.Minute), time.Time{})
		require.NoError(t, err)
		require.Equal(t, 2, pruned, "only the replay cache with a zero records cutoff")
		pruned, err = tx.Prune(now.Add(time.Minute), now.Add(time.Minute))
		require.NoError(t, err)
		require.Equal(t, 3, pruned)
		q, err = tx.PendingQuota(a, netip.Prefix{})
		require.NoError(t, err)
		require.Equal(t, PendingQuota{}, q, "the counts follow the pruned request")
		n, err = tx.MailCount(b)
		require.NoError(t, err)
		require.Equal(t, 1, n)
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

// TestStoreCounts: the counts each store keeps follow every write, Prune
// keeps them too, and the expiry index finds idle agents oldest first.
func TestStoreCounts(t *testing.T) {
	for _, sc := range storeCases(t) {
		t.Run(sc.name, func(t *testing.T) {
			s := sc.open(t)
			defer s.Close()
			testStoreCounts(t, s)
		})
	}
}

func testStoreCounts(t *testing.T, s Store) {
	src1, src2 := netip.MustParsePrefix("198.18.1.0/24"), netip.MustParsePrefix("2001:db8::/48")
	a, b, c := key(t), key(t), key(t)
	t0 := time.Unix(1_800_000_000, 0)
	require.NoError(t, s.Update(func(tx Tx) error {
		require.NoError(t, tx.PutAgent(AgentRecord{Key: a, Hostname: "a", Source: src1, LastSeen: t0}))
		require.NoError(t, tx.PutAgent(AgentRecord{Key: b, Source: src1, LastSeen: t0.Add(time.Hour)}))
		require.NoError(t, tx.PutAgent(AgentRecord{Key: c, Source: src2, LastSeen: t0.Add(2 * time.Hour)}))
		n, _ := tx.AgentsFrom(src1)
		require.Equal(t, 2, n)
		idle, err := tx.IdleAgents(t0.Add(90*time.Minute), 10)
		require.NoError(t, err)
		require.Equal(t, []addressing.PublicKey{a, b}, idle)
		idle, _ = tx.IdleAgents(t0.Add(90*time.Minute), 1)
		require.Equal(t, []addressing.PublicKey{a}, idle)
		// Seen again: the index moves.
		require.NoError(t, tx.PutAgent(AgentRecord{Key: a, Hostname: "a", Source: src1, LastSeen: t0.Add(3 * time.Hour)}))
		idle, _ = tx.IdleAgents(t0.Add(90*time.Minute), 10)
		require.Equal(t, []addressing.PublicKey{b}, idle)

		require.NoError(t, tx.DeleteAgent(a))
		_, ok, _ := tx.Agent(a)
		require.False(t, ok)
		_, ok, _ = tx.AgentByHostname("a")
		require.False(t, ok, "the hostname is free again")
		_, ok, _ = tx.AgentByNode(a.NodeID())
		require.False(t, ok)
		n, _ = tx.AgentsFrom(src1)
		require.Equal(t, 1, n)
		n, _ = tx.AgentCount()
		require.Equal(t, 2, n)
		idle, _ = tx.IdleAgents(t0.Add(10*time.Hour), 10)
		require.Equal(t, []addressing.PublicKey{b, c}, idle)

		for i, p := range []PendingRequest{
			{Target: a, Requester: b, Source: src1, Time: t0},
			{Target: c, Requester: b, Source: src1, Time: t0},
			{Target: a, Requester: c, Source: src2, Time: t0},
		} {
			p.MailID = uint64(i + 1)
			require.NoError(t, tx.PutPending(p))
		}
		// Replacing keeps the counts.
		require.NoError(t, tx.PutPending(PendingRequest{Target: a, Requester: b, Source: src1, Time: t0.Add(time.Minute)}))
		q, _ := tx.PendingQuota(b, src1)
		require.Equal(t, PendingQuota{ByRequester: 2, BySource: 2, Total: 3}, q)
		q, _ = tx.PendingQuota(c, src2)
		require.Equal(t, PendingQuota{ByRequester: 1, BySource: 1, Total: 3}, q)
		list, _ := tx.Pendings(a, 10)
		require.Len(t, list, 2)
		list, _ = tx.Pendings(a, 1)
		require.Len(t, list, 1)
		require.NoError(t, tx.DeletePending(a, b))
		require.NoError(t, tx.DeletePending(a, b)) // gone: nothing changes
		q, _ = tx.PendingQuota(b, src1)
		require.Equal(t, PendingQuota{ByRequester: 1, BySource: 1, Total: 2}, q)

		for range 3 {
			_, err := tx.Enqueue(c, []byte("m"), t0)
			require.NoError(t, err)
		}
		n, _ = tx.MailCount(c)
		require.Equal(t, 3, n)
		n, _ = tx.MailCount(a)
		require.Equal(t, 0, n)
		return nil
	}))
	// Prune keeps the counts: the two requests and the three messages are
	// older than the records cutoff; a newer message stays.
	require.NoError(t, s.Update(func(tx Tx) error {
		_, err := tx.Enqueue(c, []byte("new"), t0.Add(time.Hour))
		return err
	}))
	var pruned int
	require.NoError(t, s.Update(func(tx Tx) (err error) {
		pruned, err = tx.Prune(time.Time{}, t0.Add(time.Minute))
		return err
	}))
	require.Equal(t, 5, pruned)
	require.NoError(t, s.View(func(tx Tx) error {
		q, _ := tx.PendingQuota(b, src1)
		require.Equal(t, PendingQuota{}, q)
		q, _ = tx.PendingQuota(c, src2)
		require.Equal(t, PendingQuota{}, q)
		n, _ := tx.MailCount(c)
		require.Equal(t, 1, n)
		return nil
	}))
}

// TestPruneReplayCacheByTime: Prune deletes the replay-cache entries older
// than its nonces cutoff and no others, in batches (more entries than one
// etcd transaction may delete), and leaves records alone with a zero
// records cutoff.
func TestPruneReplayCacheByTime(t *testing.T) {
	for _, sc := range storeCases(t) {
		t.Run(sc.name, func(t *testing.T) {
			s := sc.open(t)
			defer s.Close()
			a, b := key(t), key(t)
			t0 := time.Unix(1_800_000_000, 0)
			const old, fresh = 150, 20
			at := func(i int) time.Time {
				if i >= old {
					return t0.Add(time.Hour + time.Duration(i)*time.Second)
				}
				return t0.Add(time.Duration(i) * time.Second)
			}
			// see runs SeeNonce for every entry, 40 per transaction (an etcd
			// transaction writes at most 128 keys), and returns which were seen.
			see := func() []bool {
				var out []bool
				for from := 0; from < old+fresh; from += 40 {
					require.NoError(t, s.Update(func(tx Tx) error {
						for i := from; i < min(from+40, old+fresh); i++ {
							seen, err := tx.SeeNonce(a, [16]byte{byte(i), byte(i >> 8)}, at(i))
							require.NoError(t, err)
							out = append(out, seen)
						}
						return nil
					}))
				}
				return out
			}
			for i, seen := range see() {
				require.False(t, seen, "entry %d", i)
			}
			require.NoError(t, s.Update(func(tx Tx) error {
				_, err := tx.Enqueue(b, []byte("m"), t0)
				return err
			}))
			var pruned int
			require.NoError(t, s.Update(func(tx Tx) (err error) {
				pruned, err = tx.Prune(t0.Add(30*time.Minute), time.Time{})
				return err
			}))
			require.Equal(t, old, pruned)
			for i, seen := range see() {
				require.Equal(t, i >= old, seen, "entry %d", i)
			}
			require.NoError(t, s.View(func(tx Tx) error {
				n, err := tx.MailCount(b)
				require.NoError(t, err)
				require.Equal(t, 1, n, "a zero records cutoff keeps the mail")
				return nil
			}))
		})
	}
}

// TestBoltStoreConvertsLayout1: a store written by the previous version
// (nested mailboxes, replay cache by sender, no counts) opens with its mail,
// ids, pending requests and agents intact and its counts built.
func TestBoltStoreConvertsLayout1(t *testing.T) {
	path := filepath.Join(t.TempDir(), "rendezvous.db")
	a, b := key(t), key(t)
	t0 := time.Unix(1_800_000_000, 0)
	db, err := bolt.Open(path, 0o600, nil)
	require.NoError(t, err)
	require.NoError(t, db.Update(func(tx *bolt.Tx) error {
		for _, name := range [][]byte{bucketAgents, bucketNodes, bucketHostnames, bucketNoncesV1, bucketPending, bucketPairs, bucketMailV1, bucketMeta} {
			if _, err := tx.CreateBucket(name); err != nil {
				return err
			}
		}
		// An agent record and a pending request as version 1 wrote them.
		agent := []byte{1, 5, 'a', 'l', 'i', 'c', 'e', 0}
		agent = appendTime(appendTime(agent, t0), t0)
		require.NoError(t, tx.Bucket(bucketAgents).Put(a[:], agent))
		node := a.NodeID()
		require.NoError(t, tx.Bucket(bucketNodes).Put(node[:], a[:]))
		require.NoError(t, tx.Bucket(bucketHostnames).Put([]byte("alice"), a[:]))
		require.NoError(t, tx.Bucket(bucketMeta).Put(metaAgentCount, binary.BigEndian.AppendUint64(nil, 1)))
		pend := append([]byte{1}, make([]byte, 16)...)
		pend = appendBytes16(appendTime(pend, t0), []byte("req"))
		require.NoError(t, tx.Bucket(bucketPending).Put(append(a[:], b[:]...), pend))
		require.NoError(t, tx.Bucket(bucketNoncesV1).Put(append(b[:], make([]byte, 16)...), appendTime(nil, t0)))
		mb, err := tx.Bucket(bucketMailV1).CreateBucket(a[:])
		require.NoError(t, err)
		for id := uint64(5); id <= 7; id++ {
			require.NoError(t, mb.Put(binary.BigEndian.AppendUint64(nil, id), append(appendTime(nil, t0), byte(id))))
		}
		require.NoError(t, mb.SetSequence(7))
		return nil
	}))
	require.NoError(t, db.Close())

	s, err := OpenBoltStore(path)
	require.NoError(t, err)
	defer s.Close()
	require.NoError(t, s.Update(func(tx Tx) error {
		r, ok, err := tx.Agent(a)
		require.NoError(t, err)
		require.True(t, ok)
		require.Equal(t, "alice", r.Hostname)
		idle, _ := tx.IdleAgents(t0.Add(time.Second), 10)
		require.Equal(t, []addressing.PublicKey{a}, idle)
		p, ok, err := tx.Pending(a, b)
		require.NoError(t, err)
		require.True(t, ok)
		require.Equal(t, []byte("req"), p.Msg)
		q, _ := tx.PendingQuota(b, netip.Prefix{})
		require.Equal(t, PendingQuota{ByRequester: 1, Total: 1}, q)
		items, err := tx.Mail(a, 0, 10)
		require.NoError(t, err)
		require.Len(t, items, 3)
		require.Equal(t, uint64(5), items[0].ID)
		require.Equal(t, []byte{6}, items[1].Msg)
		n, _ := tx.MailCount(a)
		require.Equal(t, 3, n)
		id, err := tx.Enqueue(a, []byte("new"), t0)
		require.NoError(t, err)
		require.Equal(t, uint64(8), id, "ids continue above the old ones")
		return nil
	}))
	require.NoError(t, s.View(func(tx Tx) error {
		require.Nil(t, tx.(boltTx).b(bucketMailV1))
		require.Nil(t, tx.(boltTx).b(bucketNoncesV1))
		return nil
	}))
}

// TestFairLimiter: keys that share an address share its rate; one that
// floods gets its share and no more, a quiet one is never starved.
func TestFairLimiter(t *testing.T) {
	l := newFairLimiter(10, 10, 16)
	a := netip.MustParseAddr("198.18.0.1")
	flood, quiet := key(t), key(t)
	now := time.Unix(1_800_000_000, 0)
	okFlood, okQuiet := 0, 0
	for i := range 1000 { // 10 s: the flooder asks 100/s, the quiet key 1/s
		now = now.Add(10 * time.Millisecond)
		if l.allow(a, flood, now) {
			okFlood++
		}
		if i%100 == 0 && l.allow(a, quiet, now) {
			okQuiet++
		}
	}
	require.Equal(t, 10, okQuiet, "the quiet key got every request")
	require.InDelta(t, 10*10/2, okFlood, 15, "the flooder got about its half of 10/s")
	// Another address is not affected.
	require.True(t, l.allow(netip.MustParseAddr("198.18.0.2"), flood, now))
}
