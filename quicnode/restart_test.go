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
