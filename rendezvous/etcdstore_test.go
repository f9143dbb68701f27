package rendezvous

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"net/netip"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/agentnet/agentnet/addressing"
	"github.com/agentnet/agentnet/internal/etcdtest"
	"github.com/agentnet/agentnet/trustdb"
)

// storeCase is one row of the store tests: how to open (and reopen) a
// store, and how to forge a NodeID index entry (a 48-bit collision).
type storeCase struct {
	name      string
	open      func(t *testing.T) Store
	forgeNode func(t *testing.T, tx Tx, node addressing.NodeID, k *addressing.PublicKey)
}

func storeCases(t *testing.T) []storeCase {
	dir := t.TempDir()
	etcd := etcdtest.Start(t, 3)
	return []storeCase{
		{
			name: "bbolt",
			open: func(t *testing.T) Store {
				s, err := OpenBoltStore(filepath.Join(dir, "rendezvous.db"))
				require.NoError(t, err)
				return s
			},
			forgeNode: func(t *testing.T, tx Tx, node addressing.NodeID, k *addressing.PublicKey) {
				b := tx.(boltTx).b(bucketNodes)
				if k == nil {
					require.NoError(t, b.Delete(node[:]))
				} else {
					require.NoError(t, b.Put(node[:], k[:]))
				}
			},
		},
		{
			name: "etcd",
			open: func(t *testing.T) Store { return openTestEtcd(t, etcd, "/store/") },
			forgeNode: func(t *testing.T, tx Tx, node addressing.NodeID, k *addressing.PublicKey) {
				et := tx.(*etcdTx)
				key := et.s.key(tagNode, hex.EncodeToString(node[:]))
				if k == nil {
					require.NoError(t, et.del(key))
				} else {
					require.NoError(t, et.put(key, k[:]))
				}
			},
		},
	}
}

func openTestEtcd(t *testing.T, c *etcdtest.Cluster, prefix string) *EtcdStore {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, err := OpenEtcdStore(ctx, EtcdConfig{Endpoints: c.Endpoints(), Prefix: prefix, LeaseTTL: 2 * time.Second})
	require.NoError(t, err)
	return s
}

// TestStores runs the same records and indexes through each store, closes
// it, reopens it and finds everything again.
func TestStores(t *testing.T) {
	for _, sc := range storeCases(t) {
		t.Run(sc.name, func(t *testing.T) {
			s := sc.open(t)
			a, b, c := key(t), key(t), key(t)
			now := time.Unix(1_800_000_000, 0)
			loc := []netip.AddrPort{netip.MustParseAddrPort("198.18.0.1:1"), netip.MustParseAddrPort("[2001:db8::1]:2")}

			require.NoError(t, s.Update(func(tx Tx) error {
				require.NoError(t, tx.PutAgent(AgentRecord{Key: a, Hostname: "alice", Locators: loc, Created: now, LastSeen: now}))
				require.NoError(t, tx.PutAgent(AgentRecord{Key: b}))
				require.ErrorIs(t, tx.PutAgent(AgentRecord{Key: b, Hostname: "alice"}), ErrHostnameTaken)
				sc.forgeNode(t, tx, c.NodeID(), &a)
				require.ErrorIs(t, tx.PutAgent(AgentRecord{Key: c}), ErrNodeIDTaken)
				sc.forgeNode(t, tx, c.NodeID(), nil)
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
			s = sc.open(t)
			defer s.Close()

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
				n, err := tx.AgentCount()
				require.NoError(t, err)
				require.Equal(t, 2, n)

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
				return nil
			}))
			// Prune drops what is older than the cutoff: 1 nonce pair (2
			// entries), the pending request, mail items 1 and 3.
			var pruned int
			require.NoError(t, s.Update(func(tx Tx) (err error) {
				pruned, err = tx.Prune(now.Add(time.Minute), now.Add(time.Minute))
				return err
			}))
			require.Equal(t, 5, pruned)
			require.NoError(t, s.View(func(tx Tx) error {
				items, err := tx.Mail(b, 0, 10)
				require.NoError(t, err)
				require.Len(t, items, 1)
				require.Equal(t, uint64(4), items[0].ID)
				_, ok, _ := tx.Pending(b, a)
				require.False(t, ok)
				// A read-only transaction refuses writes.
				require.Error(t, tx.PutPair(TrustPair{A: a, B: c}))
				return nil
			}))

			// Networks: the lowest free ID, unique names, the agent index.
			require.NoError(t, s.Update(func(tx Tx) error {
				n1, err := tx.CreateNetwork("one", a, now)
				require.NoError(t, err)
				require.Equal(t, addressing.NetworkID(1), n1.ID)
				_, err = tx.CreateNetwork("one", b, now)
				require.ErrorIs(t, err, ErrNetworkTaken)
				n2, err := tx.CreateNetwork("two", b, now)
				require.NoError(t, err)
				require.Equal(t, addressing.NetworkID(2), n2.ID)
				require.NoError(t, tx.PutNetworkMember(MemberRecord{Network: 1, Key: b, Join: []byte("join"), Time: now}))
				ok, err := tx.IsNetworkMember(1, b)
				require.NoError(t, err)
				require.True(t, ok)
				nets, err := tx.AgentNetworks(b)
				require.NoError(t, err)
				require.Equal(t, []AgentNetwork{{ID: 1, Member: true}, {ID: 2, Member: true}}, nets)
				ms, err := tx.NetworkMembers(1)
				require.NoError(t, err)
				require.Len(t, ms, 1)
				require.NoError(t, tx.DeleteNetworkMember(1, b))
				ok, err = tx.IsNetworkMember(1, b)
				require.NoError(t, err)
				require.False(t, ok)
				r, ok, err := tx.NetworkByName("two")
				require.NoError(t, err)
				require.True(t, ok)
				require.Equal(t, b, r.Owner)
				return nil
			}))
		})
	}
}

// TestEtcdConcurrentWriters: stores of several servers write the same
// records at once; the compares keep every index consistent: mailbox ids
// stay unique, the kept counts (mail, agents, agents per prefix, pending
// per prefix and in all) exact, one owner per hostname.
func TestEtcdConcurrentWriters(t *testing.T) {
	c := etcdtest.Start(t, 3)
	stores := []*EtcdStore{openTestEtcd(t, c, "/w/"), openTestEtcd(t, c, "/w/"), openTestEtcd(t, c, "/w/")}
	defer func() {
		for _, s := range stores {
			s.Close()
		}
	}()
	to := key(t)
	src := netip.MustParsePrefix("198.18.7.0/24")
	const per = 10
	var wg sync.WaitGroup
	ids := make(chan uint64, len(stores)*per)
	winners := make(chan addressing.PublicKey, len(stores)*per)
	for i, s := range stores {
		for j := range per {
			wg.Add(1)
			go func() {
				defer wg.Done()
				var id uint64
				require.NoError(t, s.Update(func(tx Tx) (err error) {
					id, err = tx.Enqueue(to, []byte{byte(i), byte(j)}, time.Now())
					return err
				}))
				ids <- id
				// Counts: a new agent and a pending request, at once on
				// every server.
				fresh := key(t)
				require.NoError(t, s.Update(func(tx Tx) error {
					if err := tx.PutAgent(AgentRecord{Key: fresh, Source: src, LastSeen: time.Now()}); err != nil {
						return err
					}
					return tx.PutPending(PendingRequest{Target: to, Requester: fresh, Source: src, Time: time.Now()})
				}))
				k := key(t)
				err := s.Update(func(tx Tx) error { return tx.PutAgent(AgentRecord{Key: k, Hostname: "contested"}) })
				if err == nil {
					winners <- k
				} else {
					require.ErrorIs(t, err, ErrHostnameTaken)
				}
			}()
		}
	}
	wg.Wait()
	close(ids)
	close(winners)
	seen := map[uint64]bool{}
	for id := range ids {
		require.False(t, seen[id], "mailbox id %d given twice", id)
		seen[id] = true
	}
	require.Len(t, seen, len(stores)*per)
	require.Len(t, winners, 1, "exactly one key holds the hostname")
	w := <-winners
	// Every replica converges on the same state (another server's commit
	// reaches a replica a watch event later).
	for _, s := range stores {
		require.Eventually(t, func() bool {
			var n, agents, from int
			var q PendingQuota
			var k addressing.PublicKey
			err := s.View(func(tx Tx) (err error) {
				if n, err = tx.MailCount(to); err != nil {
					return err
				}
				if agents, err = tx.AgentCount(); err != nil {
					return err
				}
				if from, err = tx.AgentsFrom(src); err != nil {
					return err
				}
				if q, err = tx.PendingQuota(key(t), src); err != nil {
					return err
				}
				k, _, err = tx.AgentByHostname("contested")
				return err
			})
			all := len(stores) * per
			return err == nil && n == all && k == w && agents == all+1 && from == all &&
				q == PendingQuota{BySource: all, Total: all}
		}, 5*time.Second, 5*time.Millisecond)
	}
	var conflicts uint64
	for _, s := range stores {
		st, err := s.storeStats()
		require.NoError(t, err)
		conflicts += st.Etcd.Conflicts
	}
	t.Logf("%d conflicting commits retried", conflicts)
}

// TestEtcdReplicaCatchesUp: a watch that cannot resume
// (history compacted away while it was broken) reloads the whole replica.
func TestEtcdReplicaCatchesUp(t *testing.T) {
	c := etcdtest.Start(t, 3)
	proxy := c.Proxy(t)
	cut := func() *EtcdStore {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		s, err := OpenEtcdStore(ctx, EtcdConfig{Endpoints: proxy.Endpoints(), Prefix: "/r/", LeaseTTL: 2 * time.Second})
		require.NoError(t, err)
		return s
	}()
	defer cut.Close()
	other := openTestEtcd(t, c, "/r/")
	defer other.Close()

	proxy.Cut()
	for _, h := range []string{"while-cut-1", "while-cut"} { // two revisions: the first is compacted away
		k := key(t)
		require.NoError(t, other.Update(func(tx Tx) error { return tx.PutAgent(AgentRecord{Key: k, Hostname: h}) }))
	}
	// Compact away the history the cut store's watch would resume from.
	cli := c.Client(t)
	resp, err := cli.Get(context.Background(), "/r/", clientv3.WithPrefix(), clientv3.WithCountOnly())
	require.NoError(t, err)
	_, err = cli.Compact(context.Background(), resp.Header.Revision)
	require.NoError(t, err)
	proxy.Heal()
	require.Eventually(t, func() bool {
		var found bool
		err := cut.View(func(tx Tx) (err error) {
			_, found, err = tx.AgentByHostname("while-cut")
			return err
		})
		return err == nil && found
	}, 15*time.Second, 20*time.Millisecond)
	st, err := cut.storeStats()
	require.NoError(t, err)
	require.GreaterOrEqual(t, st.Etcd.Reloads, uint64(2), "the initial load and the reload")
}

// TestEtcdPrefixRefused: an EtcdStore never serves from a prefix it cannot
// trust: records without a layout record (written by something else, or a
// store whose layout record was lost: its counts could be anything), a
// layout of another version, and a damaged count is reported, not read as
// zero. Nothing it refuses is written to.
func TestEtcdPrefixRefused(t *testing.T) {
	c := etcdtest.Start(t, 3)
	cli := c.Client(t)
	ctx := context.Background()
	open := func(prefix string) (*EtcdStore, error) {
		octx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		return OpenEtcdStore(octx, EtcdConfig{Endpoints: c.Endpoints(), Prefix: prefix, LeaseTTL: 2 * time.Second})
	}
	count := func(prefix string) int64 {
		resp, err := cli.Get(ctx, prefix, clientv3.WithPrefix(), clientv3.WithCountOnly())
		require.NoError(t, err)
		return resp.Count
	}

	t.Run("foreign records", func(t *testing.T) {
		_, err := cli.Put(ctx, "/foreign/config", "something else's")
		require.NoError(t, err)
		_, err = open("/foreign/")
		require.ErrorIs(t, err, ErrStoreDamaged)
		require.ErrorContains(t, err, "no layout record")
		t.Log(err)
		require.Equal(t, int64(1), count("/foreign/"), "nothing written")
	})

	t.Run("another layout", func(t *testing.T) {
		s, err := open("/newer/")
		require.NoError(t, err)
		k := key(t)
		require.NoError(t, s.Update(func(tx Tx) error { return tx.PutAgent(AgentRecord{Key: k}) }))
		require.NoError(t, s.Close())
		_, err = cli.Put(ctx, "/newer/k/layout", string(append(make([]byte, 8), 2)))
		require.NoError(t, err)
		before := count("/newer/")
		_, err = open("/newer/")
		require.ErrorIs(t, err, ErrStoreDamaged)
		require.ErrorContains(t, err, "layout 02")
		require.Equal(t, before, count("/newer/"))
	})

	t.Run("layout record lost", func(t *testing.T) {
		s, err := open("/lost/")
		require.NoError(t, err)
		k := key(t)
		require.NoError(t, s.Update(func(tx Tx) error { return tx.PutAgent(AgentRecord{Key: k}) }))
		require.NoError(t, s.Close())
		_, err = cli.Delete(ctx, "/lost/k/layout")
		require.NoError(t, err)
		_, err = open("/lost/")
		require.ErrorIs(t, err, ErrStoreDamaged)
	})

	t.Run("damaged count", func(t *testing.T) {
		s, err := open("/count/")
		require.NoError(t, err)
		defer s.Close()
		k := key(t)
		require.NoError(t, s.Update(func(tx Tx) error { return tx.PutAgent(AgentRecord{Key: k}) }))
		_, err = cli.Put(ctx, "/count/c/agents", string(append(make([]byte, 8), "xyz"...)))
		require.NoError(t, err)
		require.Eventually(t, func() bool {
			err := s.View(func(tx Tx) error { _, err := tx.AgentCount(); return err })
			return err != nil && strings.Contains(err.Error(), "corrupt count")
		}, 5*time.Second, 10*time.Millisecond)
		// A registration that would add to it fails instead of starting
		// from zero.
		err = s.Update(func(tx Tx) error { return tx.PutAgent(AgentRecord{Key: key(t)}) })
		require.ErrorContains(t, err, "corrupt count")
	})
}

// TestEtcdGroupCommit: Updates that arrive while a commit is in flight
// share a transaction; one that fails (here every fourth, after writing)
// returns its own error and leaves nothing behind, and the others commit
// with the counts exact. The burst costs fewer etcd transactions than
// Updates.
func TestEtcdGroupCommit(t *testing.T) {
	s := openTestEtcd(t, etcdtest.Start(t, 3), "/group/")
	defer s.Close()
	to := key(t)
	const n = 64
	errRefused := errors.New("refused")
	before, err := s.storeStats()
	require.NoError(t, err)
	var wg sync.WaitGroup
	errs := make([]error, n)
	keys := make([]addressing.PublicKey, n)
	for i := range n {
		keys[i] = key(t)
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = s.Update(func(tx Tx) error {
				if err := tx.PutAgent(AgentRecord{Key: keys[i], Hostname: fmt.Sprintf("g%d", i)}); err != nil {
					return err
				}
				if _, err := tx.Enqueue(to, []byte{byte(i)}, time.Now()); err != nil {
					return err
				}
				if i%4 == 0 {
					return errRefused
				}
				return nil
			})
		}()
	}
	wg.Wait()
	for i, err := range errs {
		if i%4 == 0 {
			require.ErrorIs(t, err, errRefused, "call %d", i)
		} else {
			require.NoError(t, err, "call %d", i)
		}
	}
	require.NoError(t, s.View(func(tx Tx) error {
		for i, k := range keys {
			_, ok, err := tx.Agent(k)
			require.NoError(t, err)
			require.Equal(t, i%4 != 0, ok, "agent %d", i)
			_, ok, _ = tx.AgentByHostname(fmt.Sprintf("g%d", i))
			require.Equal(t, i%4 != 0, ok, "hostname %d", i)
		}
		agents, _ := tx.AgentCount()
		require.Equal(t, n*3/4, agents)
		mail, _ := tx.MailCount(to)
		require.Equal(t, n*3/4, mail)
		items, err := tx.Mail(to, 0, 2*n)
		require.NoError(t, err)
		require.Len(t, items, n*3/4)
		return nil
	}))
	after, err := s.storeStats()
	require.NoError(t, err)
	txns := after.Etcd.Txns - before.Etcd.Txns
	t.Logf("%d Updates (%d committed) in %d etcd transactions, %d conflicts", n, n*3/4, txns, after.Etcd.Conflicts-before.Etcd.Conflicts)
	require.Less(t, txns, uint64(n*3/4), "the Updates shared transactions")
}

// TestEtcdMailWakeOfRequest: a mailbox message that is a trust request
// wakes its target's session after the delivery delay (wakeSoon), as on one
// server, also when it arrives through the watch; other messages wake it
// at once.
func TestEtcdMailWakeOfRequest(t *testing.T) {
	s := &EtcdStore{prefix: "/x/"}
	s.cluster.s = s
	from, err := trustdb.GenerateIdentity()
	require.NoError(t, err)
	to := key(t)
	for _, tc := range []struct {
		kind    trustdb.Kind
		request bool
	}{{trustdb.KindRequest, true}, {trustdb.KindApprove, false}, {trustdb.KindRevoke, false}} {
		var replyTo [trustdb.NonceSize]byte
		if tc.kind == trustdb.KindApprove {
			replyTo[0] = 1
		}
		m, err := trustdb.NewMessage(from, tc.kind, addressing.TargetAddr(addressing.AddrFrom(0, to.NodeID())), replyTo, "", "")
		require.NoError(t, err)
		raw, err := m.AppendBinary(nil)
		require.NoError(t, err)
		val := append(append(make([]byte, 8), appendTime(nil, time.Now())...), raw...)
		ev, ok := s.cluster.react(s.key(tagMail, hexKey(to))+"/"+hexID(1), nil, false, val)
		require.True(t, ok)
		require.Equal(t, evMail, ev.kind)
		require.Equal(t, to, ev.k)
		require.Equal(t, tc.request, ev.request, "%s", tc.kind)
	}
}

// TestEtcdPruneReleasesGroup: a Prune (the maintenance loop's long walk)
// lets the server's other Updates go on in the next group instead of
// waiting for it: here an Update issued from inside the pruning Update,
// which would wait forever for the group it is in without the hand-off.
func TestEtcdPruneReleasesGroup(t *testing.T) {
	s := openTestEtcd(t, etcdtest.Start(t, 3), "/prunegroup/")
	defer s.Close()
	k := key(t)
	done := make(chan error, 1)
	go func() {
		done <- s.Update(func(tx Tx) error {
			if _, err := tx.Prune(time.Now(), time.Now()); err != nil {
				return err
			}
			return s.Update(func(tx Tx) error { return tx.PutAgent(AgentRecord{Key: k}) })
		})
	}()
	select {
	case err := <-done:
		require.NoError(t, err)
	case <-time.After(10 * time.Second):
		t.Fatal("an Update waited for the pruning group")
	}
	require.NoError(t, s.View(func(tx Tx) error {
		_, ok, err := tx.Agent(k)
		require.True(t, ok)
		return err
	}))
}
