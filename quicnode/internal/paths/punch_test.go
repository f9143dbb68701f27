package paths

import (
	"bytes"
	"context"
	"crypto/rand"
	"net"
	"net/netip"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/agentnet/agentnet/addressing"
	"github.com/agentnet/agentnet/internal/probe"
	"github.com/agentnet/agentnet/rendezvous"
	"github.com/quic-go/quic-go/testutils/simnet"
	"github.com/stretchr/testify/require"
)

// TestPunchProbesCarryNoIdentity: an introduction's probes open a direct
// link, and nothing in them names either side: no NodeID, no key, and no
// bytes shared with the probes of another introduction of the same pair.
func TestPunchProbesCarryNoIdentity(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		tn := &testNet{Latency: 5 * time.Millisecond}
		a, ha := newTestManager(t, tn, "10.0.0.1:1000")
		b, hb := newTestManager(t, tn, "10.0.0.2:2000")
		trustPair(ha, hb)
		var mu sync.Mutex
		var probes [][]byte
		tn.setTap(func(p simnet.Packet) {
			if len(p.Data) > 0 && p.Data[0] < 0x40 { // beside QUIC
				mu.Lock()
				probes = append(probes, bytes.Clone(p.Data))
				mu.Unlock()
			}
		})
		aKey, bKey := ha.id.PublicKey(), hb.id.PublicKey()
		introduce := func() {
			var tok [probe.TokenSize]byte
			rand.Read(tok[:])
			// What the rendezvous pushes to both sides.
			a.Introduced(rendezvous.Introduce{Peer: bKey, PeerAddr: addressing.AddrFrom(0, bKey.NodeID()), Token: tok, Initiator: true,
				Candidates: []netip.AddrPort{b.LocalAddr().(*net.UDPAddr).AddrPort()}})
			b.Introduced(rendezvous.Introduce{Peer: aKey, PeerAddr: addressing.AddrFrom(0, aKey.NodeID()), Token: tok,
				Candidates: []netip.AddrPort{a.LocalAddr().(*net.UDPAddr).AddrPort()}})
		}
		var rounds [2][][]byte
		for i := range rounds {
			mu.Lock()
			probes = nil
			mu.Unlock()
			introduce()
			require.Eventually(t, func() bool { return a.directLink(bKey) != nil }, 5*time.Second, time.Millisecond)
			l := a.directLink(bKey)
			require.Equal(t, PhasePunch, l.Found)
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			require.NoError(t, echo(ctx, l, "punched"))
			cancel()
			mu.Lock()
			rounds[i] = probes
			mu.Unlock()
			require.NotEmpty(t, rounds[i], "no probes went out")
			a.ClosePeer(bKey, CodeClosing, "next round")
			require.Eventually(t, func() bool { return b.directLink(aKey) == nil }, time.Second, time.Millisecond)
			time.Sleep(punchWindow) // let both punch loops end (they probe on while no link is up)
		}
		require.Equal(t, uint64(2), a.Stats().PunchedLinks)

		secrets := [][]byte{}
		for _, k := range []addressing.PublicKey{aKey, bKey} {
			id := k.NodeID()
			secrets = append(secrets, id[:], k[:])
		}
		for _, r := range rounds {
			for _, p := range r {
				require.Equal(t, byte(probe.Type), p[0])
				for _, s := range secrets {
					require.False(t, bytes.Contains(p, s), "a probe carries a NodeID or key: %x", p)
				}
			}
		}
		// The two introductions' probes share no session ID or MAC.
		ids := func(r [][]byte) map[[8]byte]bool {
			m := map[[8]byte]bool{}
			for _, p := range r {
				q, err := probe.Parse(p)
				require.NoError(t, err)
				m[q.Session] = true
			}
			return m
		}
		first, second := ids(rounds[0]), ids(rounds[1])
		require.Len(t, first, 2, "one session ID per direction")
		for id := range second {
			require.False(t, first[id], "two introductions share a session ID")
		}
	})
}
