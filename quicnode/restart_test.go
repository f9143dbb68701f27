package quicnode

import (
	"context"
	"io"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/agentnet/agentnet/quicnode/internal/paths"
	"github.com/agentnet/agentnet/trustdb"
	"github.com/stretchr/testify/require"
)

// crashConn is a UDP socket that can go silent at once, as a killed
// process's socket does: nothing written after crash leaves.
type crashConn struct {
	*net.UDPConn
	dead atomic.Bool
}

func (c *crashConn) WriteTo(b []byte, addr net.Addr) (int, error) {
	if c.dead.Load() {
		return len(b), nil
	}
	return c.UDPConn.WriteTo(b, addr)
}

// startFixedNode starts a node of tn's state dir on the UDP port of addr
// ("127.0.0.1:0" picks one) over a crashConn.
func startFixedNode(t *testing.T, tn *testNode, addr string) *crashConn {
	t.Helper()
	ua, err := net.ResolveUDPAddr("udp", addr)
	require.NoError(t, err)
	udp, err := net.ListenUDP("udp", ua)
	require.NoError(t, err)
	cc := &crashConn{UDPConn: udp}
	st, err := trustdb.Open(tn.dir)
	require.NoError(t, err)
	n, err := New(Config{Store: st, RendezvousAddr: tn.srv.addr, RendezvousKey: tn.srv.srv.PublicKey(), Conn: cc})
	require.NoError(t, err)
	ctx := ctxT(t, 10*time.Second)
	require.NoError(t, n.Start(ctx))
	require.NoError(t, n.WaitRendezvous(ctx))
	tn.store, tn.Node = st, n
	return cc
}

func echoOnce(ctx context.Context, n *Node, to string) error {
	c, err := n.Dial(ctx, to, PortEcho)
	if err != nil {
		return err
	}
	defer c.Close()
	if _, err := c.Write([]byte("ping")); err != nil {
		return err
	}
	_, err = io.ReadFull(c, make([]byte, 4))
	return err
}

// TestRestartedNodeReachableAtOnce: a node killed and restarted on the same
// port within 0.2 s is reachable again at once, both ways: its stateless
// reset key is derived from the identity, so the survivor's stale
// connection draws a reset instead of waiting for PathDead (5 s). Each dial
// gets a deadline of half of PathDead: before the reset key, the first one
// waited for the dead-path timer and failed.
func TestRestartedNodeReachableAtOnce(t *testing.T) {
	checkNoLeaks(t)
	srv := startServer(t)
	a := startNode(t, srv, "")
	b := &testNode{t: t, dir: t.TempDir(), srv: srv}
	t.Cleanup(b.stop)
	cc := startFixedNode(t, b, "127.0.0.1:0")
	port := b.LocalAddr().String()
	establishTrust(t, a, b, b.Addr().String())

	for round, restartedDials := range []bool{false, true} {
		ctx := ctxT(t, 10*time.Second)
		require.NoError(t, echoOnce(ctx, a.Node, b.Addr().String()))
		cc.dead.Store(true) // kill -9: no CONNECTION_CLOSE leaves
		b.stop()
		time.Sleep(100 * time.Millisecond)
		cc = startFixedNode(t, b, port)

		dctx, cancel := context.WithTimeout(ctx, paths.PathDead/2)
		start := time.Now()
		var err error
		if restartedDials {
			err = echoOnce(dctx, b.Node, a.Addr().String())
		} else {
			err = echoOnce(dctx, a.Node, b.Addr().String())
		}
		cancel()
		require.NoError(t, err, "round %d: the restarted node is not reachable at once", round)
		t.Logf("round %d (restarted node dials: %v): echo %v after the restart", round, restartedDials, time.Since(start).Round(time.Millisecond))
	}
}

// TestRestartReachesPeerFromPersistedAddress: the dialling side keeps the
// address that worked in its trust store, so after its own restart, with
// the rendezvous down, it reaches a trusted peer at once from that address
// (issue 9 item 8; issue 10's repeat contact).
func TestRestartReachesPeerFromPersistedAddress(t *testing.T) {
	checkNoLeaks(t)
	srv := startServer(t)
	a := startNode(t, srv, "")
	b := startNode(t, srv, "")
	establishTrust(t, a, b, b.Addr().String())
	ctx := ctxT(t, 20*time.Second)
	require.NoError(t, echoOnce(ctx, a.Node, b.Addr().String()))
	// a dialled b: a (not only b, the acceptor) stores where b was reached.
	hints := storeHints{a.store}
	require.Eventually(t, func() bool {
		ap, ok := hints.LoadHint(b.PublicKey())
		return ok && ap.String() == b.LocalAddr().String()
	}, 5*time.Second, 10*time.Millisecond, "the dialling side did not persist the peer's address")

	a.stop()
	require.NoError(t, srv.srv.Close()) // the rendezvous is down from here on
	st, err := trustdb.Open(a.dir)
	require.NoError(t, err)
	n, err := New(Config{Store: st, RendezvousAddr: srv.addr, RendezvousKey: srv.srv.PublicKey(), ListenAddr: "127.0.0.1:0"})
	require.NoError(t, err)
	require.NoError(t, n.Start(ctx))
	a.store, a.Node = st, n
	require.Error(t, n.WaitRendezvous(ctxT(t, 200*time.Millisecond)), "the rendezvous must be down for this test")

	dctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	require.NoError(t, echoOnce(dctx, n, b.Addr().String()), "the restarted node did not reach its peer from the persisted address")
	var found string
	for _, p := range n.Peers() {
		if p.Key == b.PublicKey() {
			found = p.Found
		}
	}
	require.Equal(t, "last-address", found)
}
