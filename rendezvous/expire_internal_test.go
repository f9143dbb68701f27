package rendezvous

import (
	"context"
	"net"
	"testing"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/stretchr/testify/require"

	"github.com/agentnet/agentnet/addressing"
	"github.com/agentnet/agentnet/internal/etcdtest"
	"github.com/agentnet/agentnet/rendezvous/proto"
)

// TestIdleRegistrationsExpire: a registration offline for longer than
// AgentTTL is deleted (its hostname free again), an online agent's is kept
// however old; the expired agent registers again under its own address,
// and its trust pair still lets its peer look it up. (Before, agent
// records never expired, so MaxAgents filled up for good.)
func TestIdleRegistrationsExpire(t *testing.T) {
	limits := Limits{AgentTTL: time.Hour}
	t.Run("bbolt", func(t *testing.T) { testIdleRegistrationsExpire(t, testServer(t, limits)) })
	t.Run("etcd", func(t *testing.T) {
		st := openTestEtcd(t, etcdtest.Start(t, 3), "/expire/")
		t.Cleanup(func() { st.Close() })
		s, err := NewServer(ServerConfig{Addr: "127.0.0.1:0", STUNAddr: "-", RelayAddr: "-", Limits: limits, Store: st})
		require.NoError(t, err)
		require.NoError(t, s.Start())
		t.Cleanup(func() { s.Close() })
		testIdleRegistrationsExpire(t, s)
	})
}

func testIdleRegistrationsExpire(t *testing.T, s *Server) {
	old, online, peer := newTestID(t), newTestID(t), newTestID(t)
	long := time.Now().Add(-2 * time.Hour)
	require.NoError(t, s.store.Update(func(tx Tx) error {
		for _, r := range []AgentRecord{
			{Key: old.PublicKey(), Hostname: "old", Created: long, LastSeen: long},
			{Key: peer.PublicKey(), Created: time.Now(), LastSeen: time.Now()},
		} {
			if err := tx.PutAgent(r); err != nil {
				return err
			}
		}
		return tx.PutPair(TrustPair{A: peer.PublicKey(), B: old.PublicKey(), Created: long})
	}))
	// An online agent whose registration is just as old.
	conn, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	require.NoError(t, err)
	tr := &quic.Transport{Conn: conn}
	t.Cleanup(func() { tr.Close(); conn.Close() })
	c, err := NewClient(ClientConfig{Identity: online, Transport: tr, ServerAddr: s.Addr().String(), ServerKey: s.PublicKey()})
	require.NoError(t, err)
	t.Cleanup(func() { c.Close() })
	c.Start()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	require.NoError(t, c.WaitReady(ctx))
	require.NoError(t, s.store.Update(func(tx Tx) error {
		rec, _, err := tx.Agent(online.PublicKey())
		if err != nil {
			return err
		}
		rec.LastSeen = long
		return tx.PutAgent(rec)
	}))

	s.prune(time.Now(), true)
	require.Equal(t, uint64(1), s.Stats().AgentsExpired)
	require.NoError(t, s.store.View(func(tx Tx) error {
		_, ok, err := tx.Agent(old.PublicKey())
		require.NoError(t, err)
		require.False(t, ok, "offline past the TTL: gone")
		_, ok, _ = tx.AgentByHostname("old")
		require.False(t, ok, "its hostname is free")
		rec, ok, _ := tx.Agent(online.PublicKey())
		require.True(t, ok, "online: kept")
		require.WithinDuration(t, time.Now(), rec.LastSeen, time.Minute, "and marked seen")
		_, ok, _ = tx.Pair(peer.PublicKey(), old.PublicKey())
		require.True(t, ok, "the pair stays")
		return nil
	}))
	// Unseen, a lookup finds nothing; registered again, the pair applies.
	require.Equal(t, &proto.NotFound{}, s.lookup(peer.PublicKey(), addressing.TargetAddr(old.Addr())))
	now := time.Now()
	require.NoError(t, s.store.Update(func(tx Tx) error {
		return tx.PutAgent(AgentRecord{Key: old.PublicKey(), Hostname: "old", Created: now, LastSeen: now})
	}))
	res, ok := s.lookup(peer.PublicKey(), addressing.TargetAddr(old.Addr())).(*proto.LookupResult)
	require.True(t, ok)
	require.Equal(t, old.PublicKey(), res.Key)
}
