package quicnode

import (
	"context"
	"io"
	"net"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/agentnet/agentnet/rendezvous"
	"github.com/agentnet/agentnet/trustdb"
	"github.com/stretchr/testify/require"
)

// blackHole is a UDP socket that never answers: a rendezvous UDP address
// behind a firewall that drops UDP.
func blackHole(t *testing.T) string {
	c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	require.NoError(t, err)
	t.Cleanup(func() { c.Close() })
	return c.LocalAddr().String()
}

// noUDP is a socket on a network that drops all UDP: writes vanish,
// nothing arrives.
type noUDP struct {
	addr   *net.UDPAddr
	closed chan struct{}
	once   sync.Once
	mu     sync.Mutex
	dl     time.Time
	wake   chan struct{} // closed and replaced when the deadline changes
}

func newNoUDP(port int) *noUDP {
	return &noUDP{addr: &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: port}, closed: make(chan struct{}), wake: make(chan struct{})}
}

// ReadFrom blocks until Close or the read deadline, as a socket that
// receives nothing does.
func (c *noUDP) ReadFrom([]byte) (int, net.Addr, error) {
	for {
		c.mu.Lock()
		dl, wake := c.dl, c.wake
		c.mu.Unlock()
		var timer <-chan time.Time
		if !dl.IsZero() {
			d := time.Until(dl)
			if d <= 0 {
				return 0, nil, os.ErrDeadlineExceeded
			}
			t := time.NewTimer(d)
			defer t.Stop()
			timer = t.C
		}
		select {
		case <-c.closed:
			return 0, nil, net.ErrClosed
		case <-timer:
			return 0, nil, os.ErrDeadlineExceeded
		case <-wake:
		}
	}
}
func (c *noUDP) WriteTo(p []byte, _ net.Addr) (int, error) { return len(p), nil }
func (c *noUDP) Close() error                              { c.once.Do(func() { close(c.closed) }); return nil }
func (c *noUDP) LocalAddr() net.Addr                       { return c.addr }
func (c *noUDP) SetDeadline(t time.Time) error             { return c.SetReadDeadline(t) }
func (c *noUDP) SetWriteDeadline(time.Time) error          { return nil }
func (c *noUDP) SetReadDeadline(t time.Time) error {
	c.mu.Lock()
	c.dl = t
	close(c.wake)
	c.wake = make(chan struct{})
	c.mu.Unlock()
	return nil
}

// startTCPServer runs a rendezvous with its TCP listener on.
func startTCPServer(t *testing.T) (*rendezvous.Server, string) {
	t.Helper()
	srv, err := rendezvous.NewServer(rendezvous.ServerConfig{
		Addr: "127.0.0.1:0", DataDir: t.TempDir(),
		TCP:    rendezvous.TCPConfig{Addr: "127.0.0.1:0"},
		Limits: rendezvous.Limits{RelayRate: 256 << 20, RelayBurst: 16 << 20},
	})
	require.NoError(t, err)
	require.NoError(t, srv.Start())
	t.Cleanup(func() { srv.Close() })
	return srv, srv.TCPAddr().String()
}

func startNodeCfg(t *testing.T, cfg Config) *Node {
	t.Helper()
	st, err := trustdb.Open(t.TempDir())
	require.NoError(t, err)
	cfg.Store = st
	if cfg.ListenAddr == "" {
		cfg.ListenAddr = "127.0.0.1:0"
	}
	n, err := New(cfg)
	require.NoError(t, err)
	ctx := ctxT(t, 15*time.Second)
	require.NoError(t, n.Start(ctx))
	t.Cleanup(func() { n.Close(); st.Close() })
	return n
}

// TestTCPOnlyAgentReachesUDPPeer: an agent whose UDP never reaches the
// rendezvous registers over the TCP tunnel within the UDP probe time plus
// a TCP connect, says so in Reach, and a peer on UDP reaches it (and it
// the peer) through the relay, byte-exact both ways, datagrams too;
// revocation cuts the tunnelled connection at once.
func TestTCPOnlyAgentReachesUDPPeer(t *testing.T) {
	checkNoLeaks(t)
	srv, tcpAddr := startTCPServer(t)
	start := time.Now()
	// alice's network drops all UDP: her sockets send into the void.
	alice := startNodeCfg(t, Config{RendezvousAddr: srv.Addr().String(), RendezvousTCP: tcpAddr, RendezvousKey: srv.PublicKey(), Hostname: "alice",
		Conn: newNoUDP(40001), RelayConn: newNoUDP(40002)})
	err := alice.WaitRendezvous(ctxT(t, 10*time.Second))
	t.Logf("tunnel stats %+v", srv.TunnelStats())
	require.NoError(t, err)
	t.Logf("TCP-only agent registered after %v", time.Since(start).Round(time.Millisecond))
	r := alice.Reach()
	require.Equal(t, "tcp", r.Transport)
	require.Contains(t, r.Reason, "no answer within 1.5s")
	require.True(t, r.TunnelUp)
	require.Equal(t, "direct", r.TunnelVia)
	require.Equal(t, NATBlocked, alice.NATInfo().Kind)

	bob := startNodeCfg(t, Config{RendezvousAddr: srv.Addr().String(), RendezvousKey: srv.PublicKey(), Hostname: "bob"})
	require.NoError(t, bob.WaitRendezvous(ctxT(t, 10*time.Second)))
	require.Equal(t, "udp", bob.Reach().Transport)
	trustNodes(t, alice, bob)

	for _, d := range []struct{ from, to *Node }{{bob, alice}, {alice, bob}} {
		t0 := time.Now()
		ttfb, path := transfer(t, d.from, d.to, 9000, 8<<20)
		require.Equal(t, "relay", path)
		t.Logf("%s → %s: relay over TCP, first echoed byte %v, 8 MiB byte-exact in %v", d.from.Hostname(), d.to.Hostname(), ttfb.Round(time.Millisecond), time.Since(t0).Round(time.Millisecond))
		ps := alice.Peers()
		require.Len(t, ps, 1)
		require.Equal(t, "tcp", ps[0].Transport)
	}
	datagramRoundTrip(t, bob, alice)
	datagramRoundTrip(t, alice, bob)
	require.Positive(t, srv.TunnelStats().RelayIn)

	// Revocation cuts the tunnelled connection at once.
	c, err := bob.Dial(ctxT(t, 5*time.Second), "alice", PortEcho)
	require.NoError(t, err)
	readErr := make(chan error, 1)
	go func() { _, err := io.ReadAll(c); readErr <- err }()
	require.NoError(t, alice.RevokeTrust(ctxT(t, 5*time.Second), "bob"))
	select {
	case err := <-readErr:
		require.ErrorIs(t, err, ErrNotTrusted)
	case <-time.After(3 * time.Second):
		t.Fatal("revocation did not cut the stream over the TCP path")
	}
	_, err = bob.Dial(ctxT(t, 5*time.Second), "alice", PortEcho)
	require.ErrorIs(t, err, ErrNotTrusted)
}

// TestNothingReachesTheRendezvous: with neither UDP nor TCP getting
// through, the node says exactly that, with the addresses it tried and
// what to check, within the UDP probe time plus one TCP connect.
func TestNothingReachesTheRendezvous(t *testing.T) {
	checkNoLeaks(t)
	udp := blackHole(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	tcp := ln.Addr().String()
	ln.Close() // nothing listens: connection refused
	n := startNodeCfg(t, Config{RendezvousAddr: udp, RendezvousTCP: tcp})
	start := time.Now()
	require.Eventually(t, func() bool { return n.Reach().Err != nil }, 5*time.Second, 10*time.Millisecond)
	t.Logf("reported after %v: %v", time.Since(start).Round(time.Millisecond), n.Reach().Err)
	msg := n.Reach().Err.Error()
	for _, want := range []string{udp, tcp, "no answer within 1.5s", "connection refused", "firewall", "proxy"} {
		require.Contains(t, msg, want)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	require.Error(t, n.WaitRendezvous(ctx))
}
