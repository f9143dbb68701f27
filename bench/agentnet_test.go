package bench

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// TestFirstContactIsFirst: a peer of the setup-first row that reuses a
// pooled trust store reaches the hub through the rendezvous, as a first
// contact does, not from the address the store's previous node kept; and
// the pool was used (else the check would prove nothing).
func TestFirstContactIsFirst(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	env, err := newAgentnetEnv(ctx, nil)
	require.NoError(t, err)
	defer NewRig(env).Close() // serves the echo, closes env
	found := func(p *agentnetPeer) string {
		for _, pi := range p.n.node.Peers() {
			if pi.Key == env.hub.node.PublicKey() {
				return pi.Found
			}
		}
		return ""
	}
	for i := range 3 {
		pooled := len(env.pool)
		peer, err := env.NewPeer(ctx)
		require.NoError(t, err)
		p := peer.(*agentnetPeer)
		e, err := openEcho(ctx, p.Dial)
		require.NoError(t, err)
		require.NoError(t, e.roundTrip(byte(i)))
		e.c.Close()
		require.Equal(t, "direct", found(p), "peer %d", i)
		require.NoError(t, p.Close())
		if i > 0 {
			require.Equal(t, 1, pooled, "peer %d did not reuse a pooled store", i)
		}
	}
}
