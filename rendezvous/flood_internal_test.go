package rendezvous

import (
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/agentnet/agentnet/addressing"
	"github.com/agentnet/agentnet/rendezvous/proto"
	"github.com/agentnet/agentnet/trustdb"
)

// testServer starts a server with a temporary store whose commits skip the
// disk sync (logic tests with thousands of transactions).
func testServer(t *testing.T, limits Limits) *Server {
	t.Helper()
	st, err := openTempStore()
	require.NoError(t, err)
	st.db.NoSync = true
	t.Cleanup(func() { st.Close() })
	s, err := NewServer(ServerConfig{Addr: "127.0.0.1:0", STUNAddr: "-", RelayAddr: "-", Limits: limits, Store: st})
	require.NoError(t, err)
	require.NoError(t, s.Start())
	t.Cleanup(func() { s.Close() })
	return s
}

func newTestID(t *testing.T) *trustdb.Identity {
	t.Helper()
	id, err := trustdb.GenerateIdentity()
	require.NoError(t, err)
	return id
}

func signed(t *testing.T, from *trustdb.Identity, kind trustdb.Kind, to addressing.Target, replyTo [trustdb.NonceSize]byte) []byte {
	t.Helper()
	m, err := trustdb.NewMessage(from, kind, to, replyTo, "", "")
	require.NoError(t, err)
	b, err := m.AppendBinary(nil)
	require.NoError(t, err)
	return b
}

func mustTarget(t *testing.T, s string) addressing.Target {
	t.Helper()
	tg, err := addressing.ParseTarget(s)
	require.NoError(t, err)
	return tg
}

// send runs a trust message through the server as its request handler does.
func send(t *testing.T, s *Server, from *trustdb.Identity, src netip.Prefix, raw []byte) proto.Message {
	t.Helper()
	resp, after := s.trustSend(from.PublicKey(), src, raw)
	if after != nil {
		after()
	}
	return resp
}

// TestTrustRequestFlood1000Keys: 1000 throwaway keys from 10 source
// prefixes (100 each) ask an agent for trust, a legitimate requester from
// an eleventh prefix asks, then all 1000 ask again, then 1000 fresh keys
// from the same prefixes. The legitimate request keeps its slot and its
// queued copy, every attacking prefix holds at most its share of the 64
// slots, and the agent can approve the legitimate request. A fellow network
// member's request gets a slot too. (Before, the first 64 requests took
// every slot for good and the legitimate one was answered OK and dropped.)
func TestTrustRequestFlood1000Keys(t *testing.T) {
	s := testServer(t, Limits{})
	bob := newTestID(t)
	now := time.Now()
	require.NoError(t, s.store.Update(func(tx Tx) error {
		return tx.PutAgent(AgentRecord{Key: bob.PublicKey(), Hostname: "bob", Created: now, LastSeen: now})
	}))
	tg := mustTarget(t, "bob")
	prefix := func(i int) netip.Prefix { return netip.MustParsePrefix(fmt.Sprintf("198.18.%d.0/24", i)) }

	var keys []*trustdb.Identity
	wave := func(ids []*trustdb.Identity) {
		for i, id := range ids {
			resp := send(t, s, id, prefix(1+i%10), signed(t, id, trustdb.KindRequest, tg, [16]byte{}))
			require.Equal(t, &proto.OK{}, resp)
		}
	}
	for range 1000 {
		keys = append(keys, newTestID(t))
	}
	wave(keys)
	alice := newTestID(t)
	require.NoError(t, s.store.Update(func(tx Tx) error {
		return tx.PutAgent(AgentRecord{Key: alice.PublicKey(), Created: now, LastSeen: now})
	}))
	require.Equal(t, &proto.OK{}, send(t, s, alice, prefix(11), signed(t, alice, trustdb.KindRequest, tg, [16]byte{})))
	wave(keys)
	fresh := make([]*trustdb.Identity, 1000)
	for i := range fresh {
		fresh[i] = newTestID(t)
	}
	wave(fresh)

	// A fellow network member of bob's (network 1, joined by both).
	carol := newTestID(t)
	require.NoError(t, s.store.Update(func(tx Tx) error {
		if _, err := tx.CreateNetwork("team", bob.PublicKey(), now); err != nil {
			return err
		}
		return tx.PutNetworkMember(MemberRecord{Network: 1, Key: carol.PublicKey(), Join: []byte("join"), Time: now})
	}))
	require.Equal(t, &proto.OK{}, send(t, s, carol, prefix(3), signed(t, carol, trustdb.KindRequest, tg, [16]byte{})))

	st := s.Stats()
	t.Logf("dropped %d, evicted %d", st.RequestsDropped, st.RequestsEvicted)
	var slots []PendingRequest
	var mail []MailItem
	require.NoError(t, s.store.View(func(tx Tx) (err error) {
		if slots, err = tx.Pendings(bob.PublicKey(), 1000); err != nil {
			return err
		}
		mail, err = tx.Mail(bob.PublicKey(), 0, 1000)
		return err
	}))
	require.Len(t, slots, DefaultMaxPendingPerTarget)
	require.Len(t, mail, DefaultMaxPendingPerTarget, "every evicted request's queued copy went with it")
	per := make(map[netip.Prefix]int)
	var aliceReq *PendingRequest
	members := 0
	for i, p := range slots {
		switch {
		case p.Requester == alice.PublicKey():
			aliceReq = &slots[i]
		case p.Member:
			require.Equal(t, carol.PublicKey(), p.Requester)
			members++
		default:
			per[p.Source]++
		}
	}
	require.NotNil(t, aliceReq, "the legitimate request kept its slot")
	require.Equal(t, 1, members, "the member's request got a slot")
	t.Logf("slots per attacking prefix: %v", per)
	for p, n := range per {
		require.LessOrEqual(t, n, 7, "prefix %s holds more than its share (62 slots / 10 prefixes)", p)
	}
	queued := false
	for _, m := range mail {
		queued = queued || m.ID == aliceReq.MailID
	}
	require.True(t, queued, "the legitimate request waits in the mailbox")

	m, err := trustdb.ParseMessage(aliceReq.Msg)
	require.NoError(t, err)
	require.Equal(t, &proto.OK{}, send(t, s, bob, prefix(12), signed(t, bob, trustdb.KindApprove, addressing.TargetAddr(alice.Addr()), m.Nonce)))
	require.NoError(t, s.store.View(func(tx Tx) error {
		_, ok, err := tx.Pair(alice.PublicKey(), bob.PublicKey())
		require.True(t, ok)
		return err
	}))
}

// onePerPrefix returns n strangers' requests, each from its own /24.
func onePerPrefix(n int) []PendingRequest {
	var out []PendingRequest
	for i := range n {
		out = append(out, PendingRequest{Source: netip.PrefixFrom(netip.AddrFrom4([4]byte{198, 18, byte(i), 0}), 24), MailID: uint64(i + 1)})
	}
	return out
}

// TestPickEvicted: the fairness rules of a full target's slots.
func TestPickEvicted(t *testing.T) {
	pa, pb, pc := netip.MustParsePrefix("198.18.1.0/24"), netip.MustParsePrefix("198.18.2.0/24"), netip.MustParsePrefix("198.18.3.0/24")
	req := func(src netip.Prefix, id uint64, member bool) PendingRequest {
		return PendingRequest{Source: src, MailID: id, Member: member}
	}
	for _, tc := range []struct {
		name  string
		slots []PendingRequest
		p     PendingRequest
		want  uint64 // MailID of the victim; 0: dropped
	}{
		{"newcomer prefix evicts the largest prefix's oldest", []PendingRequest{req(pa, 3, false), req(pa, 2, false), req(pb, 1, false)}, req(pc, 9, false), 2},
		{"one fewer is not enough", []PendingRequest{req(pa, 1, false), req(pa, 2, false), req(pb, 3, false)}, req(pb, 9, false), 0},
		{"the largest prefix cannot evict itself", []PendingRequest{req(pa, 1, false), req(pa, 2, false), req(pb, 3, false)}, req(pa, 9, false), 0},
		{"equal shares: dropped", []PendingRequest{req(pa, 1, false), req(pb, 2, false)}, req(pc, 9, false), 0},
		{"64 prefixes holding one slot each: a 65th is dropped", onePerPrefix(64), req(netip.MustParsePrefix("198.19.0.0/24"), 99, false), 0},
		{"a member evicts any stranger", []PendingRequest{req(pa, 1, false), req(pb, 2, false)}, req(pa, 9, true), 1},
		{"a member's slot is never a stranger's", []PendingRequest{req(pa, 1, true), req(pa, 2, true), req(pb, 3, false)}, req(pc, 9, false), 0},
		{"members compete among themselves only when all are members", []PendingRequest{req(pa, 1, true), req(pa, 2, true), req(pb, 3, true)}, req(pc, 9, true), 1},
		{"all members: a stranger is dropped", []PendingRequest{req(pa, 1, true), req(pa, 2, true)}, req(pc, 9, false), 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			v := pickEvicted(tc.slots, tc.p)
			if tc.want == 0 {
				require.Nil(t, v)
				return
			}
			require.NotNil(t, v)
			require.Equal(t, tc.want, v.MailID)
		})
	}
}
