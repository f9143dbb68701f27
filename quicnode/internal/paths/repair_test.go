package paths

import (
	"context"
	"crypto/rand"
	"errors"
	"io"
	"net"
	"net/netip"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/agentnet/agentnet/addressing"
	"github.com/agentnet/agentnet/rendezvous"
	"github.com/stretchr/testify/require"
)

// fakeRendezvous introduces managers to each other by calling them: a
// Connect pushes the introduction to the target (Introduced) and answers
// with the target's current public address, as the rendezvous does with
// its live session address.
type fakeRendezvous struct {
	mu    sync.Mutex
	nodes map[addressing.NodeID]*fakeRdvNode
}

type fakeRdvNode struct {
	r   *fakeRendezvous
	key addressing.PublicKey
	m   *Manager
	pub func() netip.AddrPort
}

func (r *fakeRendezvous) add(key addressing.PublicKey, m *Manager, pub func() netip.AddrPort) *fakeRdvNode {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.nodes == nil {
		r.nodes = make(map[addressing.NodeID]*fakeRdvNode)
	}
	n := &fakeRdvNode{r: r, key: key, m: m, pub: pub}
	r.nodes[key.NodeID()] = n
	m.SetRendezvous(n)
	return n
}

func (n *fakeRdvNode) peer(id addressing.NodeID) (*fakeRdvNode, error) {
	n.r.mu.Lock()
	defer n.r.mu.Unlock()
	p := n.r.nodes[id]
	if p == nil {
		return nil, rendezvous.ErrNotFound
	}
	return p, nil
}

func (n *fakeRdvNode) Lookup(ctx context.Context, t addressing.Target) (rendezvous.PeerInfo, error) {
	addr, ok := t.Addr()
	if !ok {
		return rendezvous.PeerInfo{}, rendezvous.ErrNotFound
	}
	p, err := n.peer(addr.Node())
	if err != nil {
		return rendezvous.PeerInfo{}, err
	}
	return rendezvous.PeerInfo{Key: p.key, Addr: addressing.AddrFrom(0, p.key.NodeID()), Online: true, Locators: []netip.AddrPort{p.pub()}}, nil
}

func (n *fakeRdvNode) Connect(ctx context.Context, target addressing.Addr, cands []netip.AddrPort, relay bool) (rendezvous.Introduce, error) {
	p, err := n.peer(target.Node())
	if err != nil {
		return rendezvous.Introduce{}, err
	}
	var token [16]byte
	rand.Read(token[:])
	p.m.Introduced(rendezvous.Introduce{Peer: n.key, PeerAddr: addressing.AddrFrom(0, n.key.NodeID()),
		Candidates: append([]netip.AddrPort{n.pub()}, cands...), Token: token})
	return rendezvous.Introduce{Peer: p.key, PeerAddr: target, Candidates: []netip.AddrPort{p.pub()}, Token: token, Initiator: true}, nil
}

func (n *fakeRdvNode) STUNAddrs() (netip.AddrPort, netip.AddrPort) {
	return netip.AddrPort{}, netip.AddrPort{}
}
func (n *fakeRdvNode) Self() (addressing.Addr, netip.AddrPort) {
	return addressing.AddrFrom(0, n.key.NodeID()), n.pub()
}
func (n *fakeRdvNode) ReportNAT(ctx context.Context, kind string) error { return nil }

// TestRepairKeepsTheConnection: both agents behind NATs that filter by
// address and port, a stream busy both ways; one NAT moves to a new public
// address (a rebinding or a renumbering look alike from outside). The
// link is re-punched in place: the same connection and stream carry on,
// with a pause of about a second, and nothing is closed at PathDead. When
// the acceptor moved, the dialler's packets are redirected (quic-go's
// client side cannot change its remote address); when the dialler moved,
// the acceptor's quic-go follows it by itself once our probes have opened
// the acceptor's NAT, and a redirect is not needed (but harmless).
func TestRepairKeepsTheConnection(t *testing.T) {
	for _, tc := range []struct {
		name       string
		moveDialer bool
	}{{"acceptor_moves", false}, {"dialer_moves", true}} {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				tn := &testNet{Latency: 5 * time.Millisecond}
				aPub, bPub := netip.MustParseAddrPort("198.51.100.1:40000"), netip.MustParseAddrPort("203.0.113.1:50000")
				natA := tn.addNAT("10.0.0.1:1000", aPub.String(), bPub)
				natB := tn.addNAT("10.0.1.1:2000", bPub.String(), aPub)
				a, ha := newTestManager(t, tn, "10.0.0.1:1000")
				b, hb := newTestManager(t, tn, "10.0.1.1:2000")
				trustPair(ha, hb)
				var rdv fakeRendezvous
				rdv.add(ha.id.PublicKey(), a, natA.public)
				rdv.add(hb.id.PublicKey(), b, natB.public)
				a.setHint(hb.id.PublicKey(), net.UDPAddrFromAddrPort(bPub))

				ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
				defer cancel()
				l, err := a.Link(ctx, hb.id.PublicKey())
				require.NoError(t, err)
				s, err := l.Conn.OpenStreamSync(ctx)
				require.NoError(t, err)

				// A writer and a reader of the echo: the longest pause
				// between two reads is what an application sees.
				var (
					mu      sync.Mutex
					lastAt  = time.Now()
					gap     time.Duration
					read    int
					stop    = make(chan struct{})
					wg      sync.WaitGroup
					errRead error
				)
				wg.Add(2)
				go func() {
					defer wg.Done()
					chunk := make([]byte, 1000)
					for {
						select {
						case <-stop:
							s.Close()
							return
						case <-time.After(10 * time.Millisecond):
						}
						if _, err := s.Write(chunk); err != nil {
							return
						}
					}
				}()
				go func() {
					defer wg.Done()
					buf := make([]byte, 4096)
					for {
						k, err := s.Read(buf)
						now := time.Now()
						mu.Lock()
						if k > 0 {
							gap = max(gap, now.Sub(lastAt))
							lastAt = now
							read += k
						}
						mu.Unlock()
						if err != nil {
							if !errors.Is(err, io.EOF) {
								errRead = err
							}
							return
						}
					}
				}()

				time.Sleep(2 * time.Second)
				mover, to := natB, netip.MustParseAddrPort("203.0.113.9:50123")
				if tc.moveDialer {
					mover, to = natA, netip.MustParseAddrPort("198.51.100.7:41234")
				}
				mover.move(to)
				time.Sleep(3 * PathDead)
				close(stop)
				wg.Wait()

				require.NoError(t, errRead)
				require.True(t, l.Alive(), "the link must survive the move")
				require.Same(t, l, a.Best(hb.id.PublicKey()), "the same link carries new traffic")
				require.Zero(t, a.Stats().PathsDead+b.Stats().PathsDead, "nothing may be closed as dead")
				require.GreaterOrEqual(t, a.Stats().Repaired+b.Stats().Repaired, uint64(1), "the path was repaired")
				if !tc.moveDialer {
					require.Equal(t, uint64(1), a.Stats().Redirected, "the dialler follows the acceptor by redirecting")
				}
				mu.Lock()
				defer mu.Unlock()
				t.Logf("longest pause %v; repairs a %d b %d; redirected a %d b %d", gap,
					a.Stats().Repairs, b.Stats().Repairs, a.Stats().Redirected, b.Stats().Redirected)
				// The move is noticed RepairAfter to RepairAfter plus two
				// checks later; then one introduction, a probe round and
				// quic-go's next probe timeout.
				require.Less(t, gap, 2*time.Second, "longest pause between reads")
				require.Greater(t, gap, RepairAfter-livenessPeriod, "the move cannot go unnoticed")
				require.Greater(t, read, 100_000, "the stream carried on after the move")
				require.NoError(t, echo(ctx, l, "after the move"))
			})
		})
	}
}

// TestRepairOfAStalledPathEndsAtOnce: a path that only stalls (both ways
// cut for longer than RepairAfter, then back, nobody moved) is re-punched
// like a moved one, but its punch sessions end a probe round after the
// peer's probes come from the address the link already uses, not when the
// link is next heard (an idle link may not be for a while) or after the
// whole punch window; nothing is redirected or closed.
func TestRepairOfAStalledPathEndsAtOnce(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		tn := &testNet{Latency: 5 * time.Millisecond}
		a, ha := newTestManager(t, tn, "10.0.0.1:1000")
		b, hb := newTestManager(t, tn, "10.0.1.1:2000")
		trustPair(ha, hb)
		aAddr, bAddr := netip.MustParseAddrPort("10.0.0.1:1000"), netip.MustParseAddrPort("10.0.1.1:2000")
		var rdv fakeRendezvous
		rdv.add(ha.id.PublicKey(), a, func() netip.AddrPort { return aAddr })
		rdv.add(hb.id.PublicKey(), b, func() netip.AddrPort { return bAddr })
		a.setHint(hb.id.PublicKey(), net.UDPAddrFromAddrPort(bAddr))

		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		l, err := a.Link(ctx, hb.id.PublicKey())
		require.NoError(t, err)
		require.NoError(t, echo(ctx, l, "before the stall"))
		punches := func(m *Manager) int {
			m.mu.Lock()
			defer m.mu.Unlock()
			return len(m.punches)
		}

		time.Sleep(time.Second)
		ua, ub := net.UDPAddrFromAddrPort(aAddr), net.UDPAddrFromAddrPort(bAddr)
		tn.setCut(ua, ub, true)
		// A message sent into the stall: quic-go retransmits it, with
		// backoff, while nothing comes back.
		s, err := l.Conn.OpenStreamSync(ctx)
		require.NoError(t, err)
		_, err = s.Write([]byte("into the stall"))
		require.NoError(t, err)
		time.Sleep(RepairAfter + 3*livenessPeriod) // noticed, re-punch under way
		require.GreaterOrEqual(t, a.Stats().Repairs, uint64(1), "the stall must start a repair")
		require.Positive(t, punches(a), "a repair's punch session probes")
		rx := l.Conn.ConnectionStats().PacketsReceived
		tn.setCut(ua, ub, false)
		restored := time.Now()
		for punches(a)+punches(b) > 0 && time.Since(restored) < punchWindow {
			time.Sleep(5 * time.Millisecond)
		}
		ended := time.Since(restored)
		heard := l.Conn.ConnectionStats().PacketsReceived > rx
		t.Logf("punch sessions ended %v after the path came back (link heard by then: %v)", ended, heard)
		require.Zero(t, punches(a)+punches(b))
		require.LessOrEqual(t, ended, 4*probeEvery, "a probe round after the peer's probes, not the %v window", punchWindow)
		s.Close()

		require.True(t, l.Alive())
		require.Same(t, l, a.Best(hb.id.PublicKey()))
		require.Zero(t, a.Stats().Redirected+b.Stats().Redirected, "nobody moved: nothing redirected")
		require.Zero(t, a.Stats().PathsDead+b.Stats().PathsDead)
		require.NoError(t, echo(ctx, l, "after the stall"))
	})
}
