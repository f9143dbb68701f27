package rendezvous_test

import (
	"math/rand/v2"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/agentnet/agentnet/addressing"
	"github.com/agentnet/agentnet/rendezvous"
	"github.com/agentnet/agentnet/rendezvous/proto"
	"github.com/agentnet/agentnet/rendezvous/rendezvoustest"
	"github.com/agentnet/agentnet/trustdb"
)

// TestRequestBeforeTargetRegisters: requests to a hostname and to an address
// no agent holds yet are kept, survive a server restart, and reach the agent
// when it first registers with that address and hostname; it can approve
// them. The requesters' answers are the same bytes as for an agent that
// exists. (Before, such requests were answered OK and dropped.)
func TestRequestBeforeTargetRegisters(t *testing.T) {
	checkGoroutines(t)
	srv := rendezvoustest.New(t)
	carol := newAgent(t, srv, nil, "carol")
	daveID := newID(t)
	dave := dialRaw(t, srv, daveID, true)
	bobID := newID(t) // not registered yet
	ctx := ctxT(t)

	ok := frame(t, &proto.OK{})
	require.NoError(t, carol.c.Send(ctx, msg(t, carol.id, trustdb.KindRequest, target(t, "bob"), noNonce)))
	got := dave.request(t, frame(t, &proto.TrustSend{Msg: msg(t, daveID, trustdb.KindRequest, addressing.TargetAddr(bobID.Addr().WithNetwork(3)), noNonce)}))
	require.Equal(t, ok, got)

	srv.Restart()
	dave = dialRaw(t, srv, daveID, true)
	_ = dave

	bob := newAgent(t, srv, bobID, "bob")
	m1, m2 := bob.recv(t), bob.recv(t)
	from := map[addressing.PublicKey]*trustdb.Message{m1.From: m1, m2.From: m2}
	require.Contains(t, from, carol.id.PublicKey())
	require.Contains(t, from, daveID.PublicKey())
	bob.noMessage(t, 100*time.Millisecond)

	// The held request is a pending request like any other: bob approves it.
	require.NoError(t, bob.c.Send(ctx, msg(t, bobID, trustdb.KindApprove, addressing.TargetAddr(carol.id.Addr()), from[carol.id.PublicKey()].Nonce)))
	require.Equal(t, trustdb.KindApprove, carol.recv(t).Kind)
	info, err := carol.c.Lookup(ctx, target(t, "bob"))
	require.NoError(t, err)
	require.Equal(t, bobID.PublicKey(), info.Key)
}

// TestRequestHeldForHostnameClaimedLater: a request to a hostname waits until
// an agent claims the name, also by SetHostname after registering.
func TestRequestHeldForHostnameClaimedLater(t *testing.T) {
	checkGoroutines(t)
	srv := rendezvoustest.New(t)
	alice := newAgent(t, srv, nil, "alice")
	bob := newAgent(t, srv, nil, "")
	ctx := ctxT(t)
	require.NoError(t, alice.c.Send(ctx, msg(t, alice.id, trustdb.KindRequest, target(t, "bobby"), noNonce)))
	bob.noMessage(t, 100*time.Millisecond)
	require.NoError(t, bob.c.SetHostname(ctx, "bobby"))
	m := bob.recv(t)
	require.Equal(t, alice.id.PublicKey(), m.From)
}

// TestRequestWhileTargetStarts: the request and the target's first
// registration race (the target's daemon is starting); whichever the server
// sees first, the target gets the request, every time.
func TestRequestWhileTargetStarts(t *testing.T) {
	checkGoroutines(t)
	srv := rendezvoustest.New(t)
	alice := newAgent(t, srv, nil, "alice")
	ctx := ctxT(t)
	for i := range 12 {
		bobID := newID(t)
		inbox := make(chan *trustdb.Message, 4)
		name := "bob" + string(rune('a'+i))
		tg := target(t, name)
		if i%4 >= 2 {
			tg = addressing.TargetAddr(bobID.Addr())
		}
		raw := msg(t, alice.id, trustdb.KindRequest, tg, noNonce)
		cfg := srv.ClientConfig(bobID, rendezvoustest.NewTransport(t))
		cfg.Hostname, cfg.Deliver = name, inboxFunc(inbox)
		bob, err := rendezvous.NewClient(cfg)
		require.NoError(t, err)
		delay := time.Duration(rand.N(20)) * time.Millisecond
		sent := make(chan error, 1)
		go func() {
			if i%2 == 1 {
				time.Sleep(delay)
			}
			sent <- alice.c.Send(ctx, raw)
		}()
		if i%2 == 0 {
			time.Sleep(delay)
		}
		bob.Start()
		require.NoError(t, <-sent)
		select {
		case m := <-inbox:
			require.Equal(t, alice.id.PublicKey(), m.From)
		case <-time.After(10 * time.Second):
			t.Fatalf("round %d (delay %v): request never delivered", i, delay)
		}
		require.NoError(t, bob.Close())
	}
}

// TestHeldRequestWithdrawn: a revoke withdraws a request still held for an
// address nobody holds, and the agent that registers later gets nothing.
func TestHeldRequestWithdrawn(t *testing.T) {
	checkGoroutines(t)
	srv := rendezvoustest.New(t)
	alice := newAgent(t, srv, nil, "alice")
	bobID := newID(t)
	ctx := ctxT(t)
	to := addressing.TargetAddr(bobID.Addr())
	require.NoError(t, alice.c.Send(ctx, msg(t, alice.id, trustdb.KindRequest, to, noNonce)))
	require.NoError(t, alice.c.Send(ctx, msg(t, alice.id, trustdb.KindRevoke, to, noNonce)))
	bob := newAgent(t, srv, bobID, "")
	bob.noMessage(t, 300*time.Millisecond)
}
