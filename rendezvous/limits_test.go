package rendezvous_test

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/stretchr/testify/require"

	"github.com/agentnet/agentnet/rendezvous"
	"github.com/agentnet/agentnet/rendezvous/proto"
	"github.com/agentnet/agentnet/rendezvous/rendezvoustest"
)

// TestCoLocatedAgentNotStarved: four keys on one address (127.0.0.1, like
// agents behind one CGNAT address) flood lookups; an agent on the same
// address that asks once every half second is never rate limited, while
// the flooders are. (Before, every attempt took a token of the address's
// shared bucket first, so the flood starved the quiet agent.)
func TestCoLocatedAgentNotStarved(t *testing.T) {
	checkGoroutines(t)
	srv := rendezvoustest.NewWithConfig(t, rendezvous.ServerConfig{Limits: rendezvous.Limits{
		AddrRate: 20, AddrBurst: 20, KeyRate: 10, KeyBurst: 10,
	}})
	quiet := newAgent(t, srv, nil, "quiet")
	var flooders []*agent
	for range 4 {
		flooders = append(flooders, newAgent(t, srv, nil, ""))
	}
	ctx, cancel := context.WithCancel(ctxT(t))
	var wg sync.WaitGroup
	var mu sync.Mutex
	limited := 0
	for _, f := range flooders {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				_, err := f.c.Lookup(ctx, target(t, "quiet"))
				if errors.Is(err, rendezvous.ErrRateLimited) {
					mu.Lock()
					limited++
					mu.Unlock()
				}
			}
		}()
	}
	time.Sleep(500 * time.Millisecond) // the flood is on
	for i := range 6 {
		_, err := quiet.c.Lookup(ctxT(t), target(t, "quiet"))
		require.NoError(t, err, "lookup %d of the quiet agent", i)
		time.Sleep(500 * time.Millisecond)
	}
	cancel()
	wg.Wait()
	mu.Lock()
	defer mu.Unlock()
	require.NotZero(t, limited, "the flooders were limited")
	t.Logf("flooders limited %d times", limited)
}

// TestMaxConnsFair: a server full of one prefix's connections still lets
// other prefixes in, each new one taking the place of the fullest prefix's
// newest connection, while the fullest prefix cannot add more. (Before,
// MaxConns was first come, first served: the flood kept everyone out.)
func TestMaxConnsFair(t *testing.T) {
	checkGoroutines(t)
	srv := rendezvoustest.NewWithConfig(t, rendezvous.ServerConfig{Limits: rendezvous.Limits{MaxConns: 12}})
	ctx := ctxT(t)
	flood := transportFrom(t, "127.0.1.1")
	var mine []*floodClient
	for range 12 {
		c, err := dialFlood(ctx, srv, flood)
		require.NoError(t, err)
		mine = append(mine, c)
	}
	require.Equal(t, 12, srv.Stats().Conns)
	id := newID(t)
	_, err := registerFlood(ctx, srv, flood, id)
	require.Error(t, err, "the fullest prefix cannot add a connection")

	b, err := dialFlood(ctx, srv, transportFrom(t, "127.0.2.1"))
	require.NoError(t, err, "another prefix gets in")
	c, err := dialFlood(ctx, srv, transportFrom(t, "127.0.3.1"))
	require.NoError(t, err)
	st := srv.Stats()
	require.Equal(t, uint64(2), st.ConnsEvicted)
	require.Equal(t, 12, st.Conns)
	// The newest flood connections were the ones given up.
	for _, fc := range mine[10:] {
		select {
		case <-fc.qc.Context().Done():
		case <-time.After(5 * time.Second):
			t.Fatal("evicted connection still open")
		}
	}
	// The newcomers keep working, and the flood still cannot push them out.
	_, err = registerFlood(ctx, srv, flood, newID(t))
	require.Error(t, err)
	for _, fc := range []*floodClient{b, c} {
		got, err := fc.request(ctx, target(t, "nobody"))
		require.NoError(t, err)
		require.Equal(t, frame(t, &proto.OK{}), got)
	}
}

// TestMaxConnsPerKey: one key cannot hold more than MaxConnsPerKey
// connections (registered or not).
func TestMaxConnsPerKey(t *testing.T) {
	checkGoroutines(t)
	srv := rendezvoustest.New(t)
	id := newID(t)
	var conns []*rawClient
	for range rendezvous.DefaultMaxConnsPerKey {
		conns = append(conns, dialRaw(t, srv, id, false))
	}
	// The server counts a connection when its accept loop takes it, after
	// the client's handshake has finished: wait until it holds all of them,
	// so the extra one is the one over the limit.
	require.Eventually(t, func() bool { return srv.Stats().Conns == rendezvous.DefaultMaxConnsPerKey }, 15*time.Second, 5*time.Millisecond)
	extra := dialRaw(t, srv, id, false)
	select {
	case <-extra.qc.Context().Done():
	case <-time.After(15 * time.Second):
		t.Fatal("the extra connection stayed open")
	}
	var ae *quic.ApplicationError
	require.ErrorAs(t, context.Cause(extra.qc.Context()), &ae)
	require.Equal(t, quic.ApplicationErrorCode(0x105), ae.ErrorCode)
	require.Contains(t, ae.ErrorMessage, "too many connections for this key")
	for _, c := range conns {
		require.NoError(t, c.qc.Context().Err(), "the first ones stay")
	}
	require.Equal(t, uint64(1), srv.Stats().ConnsRefused)
}

// TestRelayPerKeyLimit: one agent cannot be a side of more than
// MaxRelayPerKey relay sessions; others still get theirs. (Before, a few
// keys trusting each other could fill MaxRelaySessions.)
func TestRelayPerKeyLimit(t *testing.T) {
	checkGoroutines(t)
	srv := rendezvoustest.NewWithConfig(t, rendezvous.ServerConfig{Limits: rendezvous.Limits{MaxRelayPerKey: 2}})
	alice, bob, carol, dave := newNATAgent(t, srv, nil), newNATAgent(t, srv, nil), newNATAgent(t, srv, nil), newNATAgent(t, srv, nil)
	trust(t, alice.agent, bob.agent)
	trust(t, alice.agent, carol.agent)
	trust(t, carol.agent, dave.agent)
	ctx := ctxT(t)
	for range 2 {
		in, err := alice.c.Connect(ctx, bob.id.Addr(), nil, true)
		require.NoError(t, err)
		require.NotNil(t, in.Relay)
		bob.introduced(t)
	}
	in, err := alice.c.Connect(ctx, carol.id.Addr(), nil, true)
	require.NoError(t, err, "still introduced")
	require.Nil(t, in.Relay, "alice is a side of 2 sessions already")
	require.Nil(t, carol.introduced(t).Relay)
	in, err = carol.c.Connect(ctx, dave.id.Addr(), nil, true)
	require.NoError(t, err)
	require.NotNil(t, in.Relay, "others are not affected")
	dave.introduced(t)
	require.Equal(t, uint64(1), srv.Stats().RelayRefusedKey)
	require.Equal(t, 3, srv.RelayStats().Sessions)
}

// TestMaxAgentsPerPrefix: one source prefix cannot register more than its
// share of MaxAgents; another prefix still can. (Before, one source could
// register keys until MaxAgents was full.)
func TestMaxAgentsPerPrefix(t *testing.T) {
	checkGoroutines(t)
	srv := rendezvoustest.NewWithConfig(t, rendezvous.ServerConfig{Limits: rendezvous.Limits{MaxAgents: 100, MaxAgentsPerPrefix: 2}})
	ctx := ctxT(t)
	a := transportFrom(t, "127.0.1.1")
	for range 2 {
		_, err := dialFlood(ctx, srv, a)
		require.NoError(t, err)
	}
	_, err := registerFlood(ctx, srv, a, newID(t))
	require.ErrorContains(t, err, "register: error")
	_, err = registerFlood(ctx, srv, transportFrom(t, "127.0.1.2"), newID(t))
	require.Error(t, err, "the same /24")
	_, err = dialFlood(ctx, srv, transportFrom(t, "127.0.2.1"))
	require.NoError(t, err, "another prefix")
}
