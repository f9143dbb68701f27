package quicnode

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/agentnet/agentnet/addressing"
	"github.com/agentnet/agentnet/internal/natlab"
	"github.com/agentnet/agentnet/internal/relayframe"
	"github.com/agentnet/agentnet/quicnode/internal/paths"
	"github.com/agentnet/agentnet/rendezvous"
	"github.com/agentnet/agentnet/trustdb"
	"github.com/stretchr/testify/require"
)

// labNet is a NAT lab with a rendezvous on a public host.
type labNet struct {
	t   *testing.T
	lab *natlab.Lab
	rdv *natlab.Host
	srv *rendezvous.Server

	pairs int // sites made by pair, for unique names
}

const (
	labRendezvousPort    = 7420
	labRendezvousTCPPort = 443
)

func newLabNet(t *testing.T) *labNet {
	t.Helper()
	natlab.Require(t)
	lab := natlab.New(t)
	h := lab.AddPublicHost("rdv")
	listen := func(port int) *net.UDPConn {
		c, err := h.ListenUDP(fmt.Sprintf("%s:%d", h.IP(), port))
		require.NoError(t, err)
		t.Cleanup(func() { c.Close() })
		return c
	}
	tcp, err := h.ListenTCP(fmt.Sprintf("%s:%d", h.IP(), labRendezvousTCPPort))
	require.NoError(t, err)
	srv, err := rendezvous.NewServer(rendezvous.ServerConfig{
		Conn:      listen(labRendezvousPort),
		STUNConn:  listen(labRendezvousPort + 1),
		RelayConn: listen(labRendezvousPort + 2),
		TCP:       rendezvous.TCPConfig{Listener: tcp},
		DataDir:   t.TempDir(),
		Limits:    rendezvous.Limits{RelayRate: 256 << 20, RelayBurst: 16 << 20},
	})
	require.NoError(t, err)
	require.NoError(t, srv.Start())
	t.Cleanup(func() { srv.Close() })
	return &labNet{t: t, lab: lab, rdv: h, srv: srv}
}

func (ln *labNet) rdvAddr() string {
	return netip.AddrPortFrom(ln.rdv.IP(), labRendezvousPort).String()
}

// startLabNode starts a node whose sockets live in host's namespace.
func (ln *labNet) startLabNode(h *natlab.Host, hostname string) *Node {
	ln.t.Helper()
	return ln.startLabNodeWith(ln.t, h, hostname, nil, true)
}

func (ln *labNet) rdvTCPAddr() string {
	return netip.AddrPortFrom(ln.rdv.IP(), labRendezvousTCPPort).String()
}

// startLabNodeWith starts a lab node, letting mod change its Config
// first; with wait, it waits for the registration.
func (ln *labNet) startLabNodeWith(t *testing.T, h *natlab.Host, hostname string, mod func(*Config), wait bool) *Node {
	t.Helper()
	st, err := trustdb.Open(t.TempDir())
	require.NoError(t, err)
	// Bind to the host's address: enumerating interfaces from the test
	// process would list the root namespace's, not the host's.
	main, err := h.ListenUDP(netip.AddrPortFrom(h.IP(), 0).String())
	require.NoError(t, err)
	relay, err := h.ListenUDP(netip.AddrPortFrom(h.IP(), 0).String())
	require.NoError(t, err)
	cfg := Config{
		Store: st, Conn: main, RelayConn: relay, Hostname: hostname,
		RendezvousAddr: ln.rdvAddr(), RendezvousKey: ln.srv.PublicKey(),
		ListenUDP: func(network, laddr string) (net.PacketConn, error) { return h.ListenUDP(laddr) },
		DialTCP:   h.DialContext,
	}
	if os.Getenv("AGENTNET_LAB_LOG") != "" { // the nodes' logs, for a failing lab test
		cfg.Logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo})).With("host", h.Name())
	}
	if mod != nil {
		mod(&cfg)
	}
	n, err := New(cfg)
	require.NoError(t, err)
	ctx := ctxT(t, 15*time.Second)
	require.NoError(t, n.Start(ctx))
	if wait {
		require.NoError(t, n.WaitRendezvous(ctx))
	}
	t.Cleanup(func() { n.Close(); st.Close() })
	return n
}

// trustNodes makes a and b trust each other.
func trustNodes(t testing.TB, a, b *Node) {
	t.Helper()
	ctx := ctxT(t, 10*time.Second)
	require.NoError(t, a.RequestTrust(ctx, b.Addr().String(), ""))
	require.Eventually(t, func() bool { return len(b.PendingTrust()) > 0 }, 5*time.Second, 10*time.Millisecond)
	require.NoError(t, b.ApproveTrust(ctx, a.Addr().String()))
	require.Eventually(t, func() bool { return a.Store().IsTrusted(b.PublicKey()) }, 5*time.Second, 10*time.Millisecond)
}

// waitNAT waits until the node has classified its NAT.
func waitNAT(t testing.TB, n *Node) NATKind {
	t.Helper()
	require.Eventually(t, func() bool { return !n.NATInfo().Checked.IsZero() }, 5*time.Second, 10*time.Millisecond)
	return n.NATInfo().Kind
}

// transfer sends size random bytes from a to b's sink on port and checks
// them byte for byte. It returns the time to the first echoed byte and the
// path the transfer started on.
func transfer(t testing.TB, a, b *Node, port uint16, size int64) (ttfb time.Duration, path string) {
	t.Helper()
	ttfb, path, err := tryTransfer(a, b, port, size)
	require.NoError(t, err)
	return ttfb, path
}

func tryTransfer(a, b *Node, port uint16, size int64) (ttfb time.Duration, path string, err error) {
	ln, err := b.Listen(port)
	if err != nil {
		return 0, "", err
	}
	defer ln.Close()
	sums := make(chan []byte, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			sums <- nil
			return
		}
		defer c.Close()
		one := make([]byte, 1)
		if _, err := io.ReadFull(c, one); err != nil {
			sums <- nil
			return
		}
		c.Write(one) // the first byte comes back: time to first byte
		h := sha256.New()
		h.Write(one)
		if _, err := io.Copy(h, c); err != nil {
			sums <- nil
			return
		}
		sums <- h.Sum(nil)
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	start := time.Now()
	c, err := a.Dial(ctx, b.Addr().String(), port)
	if err != nil {
		return 0, "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(60 * time.Second))
	h := sha256.New()
	first := make([]byte, 1)
	rand.Read(first)
	h.Write(first)
	if _, err := c.Write(first); err != nil {
		return 0, "", err
	}
	if _, err := io.ReadFull(c, first); err != nil {
		return 0, "", err
	}
	ttfb = time.Since(start)
	path = pathTo(a, b)
	if _, err := io.Copy(io.MultiWriter(c, h), io.LimitReader(rand.Reader, size-1)); err != nil {
		return ttfb, path, err
	}
	if err := c.(interface{ CloseWrite() error }).CloseWrite(); err != nil {
		return ttfb, path, err
	}
	select {
	case sum := <-sums:
		if !bytes.Equal(sum, h.Sum(nil)) {
			return ttfb, path, errors.New("transfer corrupted or cut")
		}
	case <-ctx.Done():
		return ttfb, path, errors.New("transfer did not finish")
	}
	return ttfb, path, nil
}

// pathTo names the path a's new traffic to b takes.
func pathTo(a, b *Node) string {
	if l := a.liveLink(b.PublicKey()); l != nil {
		return l.Kind.String()
	}
	return "none"
}

// datagramRoundTrip checks the echo service answers a datagram.
func datagramRoundTrip(t testing.TB, a, b *Node) {
	t.Helper()
	pc, err := a.ListenPacket(0)
	require.NoError(t, err)
	defer pc.Close()
	to := addressing.SockAddrFrom(b.Addr(), PortEcho)
	buf := make([]byte, 2048)
	for i := 0; i < 20; i++ {
		_, err := pc.WriteTo([]byte("dgram"), to)
		require.NoError(t, err)
		pc.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
		if n, _, err := pc.ReadFrom(buf); err == nil {
			require.Equal(t, "dgram", string(buf[:n]))
			return
		}
	}
	t.Fatal("no datagram echo")
}

func TestNATMatrix(t *testing.T) {
	ln := newLabNet(t)
	kinds := []natlab.Kind{natlab.KindNone, natlab.KindHome, natlab.KindSymmetric, natlab.KindCone, natlab.KindDouble}
	// Two sites per kind, so that a pair of one kind is two NATs.
	sites := map[string]*natlab.Site{}
	for _, k := range kinds {
		for _, side := range []string{"a", "b"} {
			sites[string(k)+side] = ln.lab.AddSite(fmt.Sprintf("%.3s%s", k, side), k)
		}
	}
	same := ln.lab.AddSite("same", natlab.KindHome)

	hard := func(k natlab.Kind) bool { return k == natlab.KindSymmetric }
	open := func(k natlab.Kind) bool { return k == natlab.KindNone || k == natlab.KindCone }
	// A hard NAT reaches an easy one (endpoint-independent mapping, here
	// with address-and-port-dependent filtering; double is two of them
	// stacked) by birthday punching: many sockets on the hard side, a
	// spray of probes from the easy side (birthday.go). Two hard NATs
	// would need a birthday match of both random ports: relay.
	birthday := func(k natlab.Kind) bool { return k == natlab.KindHome || k == natlab.KindDouble }
	type cell struct {
		name     string
		a, b     *natlab.Host
		wantPath string
	}
	var cells []cell
	hostN := 0
	host := func(s *natlab.Site) *natlab.Host {
		hostN++
		return s.AddHost(fmt.Sprintf("h%d", hostN))
	}
	for i, ka := range kinds {
		for _, kb := range kinds[i:] {
			want := "direct"
			if (hard(ka) && !open(kb) && !birthday(kb)) || (hard(kb) && !open(ka) && !birthday(ka)) {
				want = "relay"
			}
			cells = append(cells, cell{string(ka) + "/" + string(kb), host(sites[string(ka)+"a"]), host(sites[string(kb)+"b"]), want})
		}
	}
	// Birthday punching in the other direction: the hard side dials.
	cells = append(cells,
		cell{"symmetric/home", host(sites["symmetrica"]), host(sites["homeb"]), "direct"},
		cell{"double/symmetric", host(sites["doublea"]), host(sites["symmetricb"]), "direct"},
		cell{"cone/symmetric", host(sites["conea"]), host(sites["symmetricb"]), "direct"})
	cells = append(cells, cell{"same-nat/same-nat", host(same), host(same), "direct"})

	var mu sync.Mutex
	var table []string
	for _, c := range cells {
		t.Run(c.name, func(t *testing.T) {
			a := ln.startLabNode(c.a, "")
			b := ln.startLabNode(c.b, "")
			trustNodes(t, a, b)
			waitNAT(t, a)
			waitNAT(t, b)
			ttfb, path := transfer(t, a, b, 9000, 16<<20)
			datagramRoundTrip(t, a, b)
			mu.Lock()
			table = append(table, fmt.Sprintf("%-22s %-5s/%-5s %-7s ttfb %v", c.name, a.NATInfo().Kind, b.NATInfo().Kind, path, ttfb.Round(time.Millisecond)))
			mu.Unlock()
			require.Equal(t, c.wantPath, path, "path for %s", c.name)
		})
	}
	t.Logf("NAT matrix (pair, NAT kinds seen, path, time to first byte):\n%s", strings.Join(table, "\n"))
}

// labPair is two trusted agents on two sites of the lab.
type labPair struct {
	sa, sb *natlab.Site
	ha, hb *natlab.Host
	a, b   *Node
}

func (ln *labNet) pair(t *testing.T, ka, kb natlab.Kind) *labPair {
	t.Helper()
	return ln.pairWith(t, ka, kb, false)
}

// pairWith is pair; with wildcard, the nodes' sockets are bound to the
// unspecified address (as the daemon's are by default) instead of the
// host's address, so they keep working when the host moves.
func (ln *labNet) pairWith(t *testing.T, ka, kb natlab.Kind, wildcard bool) *labPair {
	t.Helper()
	ln.pairs++
	sa := ln.lab.AddSite(fmt.Sprintf("p%da", ln.pairs), ka)
	sb := ln.lab.AddSite(fmt.Sprintf("p%db", ln.pairs), kb)
	p := &labPair{sa: sa, sb: sb}
	p.ha, p.hb = sa.AddHost(fmt.Sprintf("p%dha", ln.pairs)), sb.AddHost(fmt.Sprintf("p%dhb", ln.pairs))
	start := func(h *natlab.Host) *Node {
		if !wildcard {
			return ln.startLabNode(h, "")
		}
		return ln.startLabNodeWith(t, h, "", func(c *Config) {
			c.Conn.Close()
			c.RelayConn.Close()
			main, err := h.ListenUDP("0.0.0.0:0")
			require.NoError(t, err)
			relay, err := h.ListenUDP("0.0.0.0:0")
			require.NoError(t, err)
			c.Conn, c.RelayConn = main, relay
		}, true)
	}
	p.a, p.b = start(p.ha), start(p.hb)
	trustNodes(t, p.a, p.b)
	waitNAT(t, p.a)
	waitNAT(t, p.b)
	return p
}

func TestNATRelay(t *testing.T) {
	ln := newLabNet(t)
	p := ln.pair(t, natlab.KindSymmetric, natlab.KindSymmetric)

	// While the transfer runs, a third host that knows the session ID
	// (here: read from a's relay state) floods the relay with forged Data.
	third := ln.lab.AddSite("evil", natlab.KindNone).AddHost("x")
	evil, err := third.ListenUDP(netip.AddrPortFrom(third.IP(), 0).String())
	require.NoError(t, err)
	defer evil.Close()
	stop := make(chan struct{})
	var injected sync.WaitGroup
	injected.Add(1)
	go func() {
		defer injected.Done()
		relayAddr := net.UDPAddrFromAddrPort(netip.AddrPortFrom(ln.rdv.IP(), labRendezvousPort+2))
		for {
			select {
			case <-stop:
				return
			case <-time.After(5 * time.Millisecond):
			}
			for _, id := range p.a.paths.RelaySessions() {
				evil.WriteTo(relayframe.AppendData(nil, id, []byte("forged quic packet")), relayAddr)
			}
		}
	}()
	before := ln.srv.RelayStats()
	ttfb, path := transfer(t, p.a, p.b, 9000, 64<<20)
	close(stop)
	injected.Wait()
	require.Equal(t, "relay", path)
	after := ln.srv.RelayStats()
	require.Greater(t, after.DroppedWrongSource, before.DroppedWrongSource, "forged frames must be dropped by the relay")
	t.Logf("relay: 64 MiB byte-exact, time to first byte %v; relay dropped %d forged frames", ttfb.Round(time.Millisecond), after.DroppedWrongSource-before.DroppedWrongSource)
}

func TestNATFaults(t *testing.T) {
	ln := newLabNet(t)
	type fault struct {
		name  string
		setup func(p *labPair) // before the transfer
		hit   func(p *labPair) // during it
	}
	faults := []fault{
		{"conntrack-flush", nil, func(p *labPair) { require.NoError(t, p.sa.FlushConntrack()); require.NoError(t, p.sb.FlushConntrack()) }},
		{"rebind", nil, func(p *labPair) { require.NoError(t, p.sa.Rebind()) }},
		{"outage-2s", nil, func(p *labPair) {
			require.NoError(t, p.sa.LinkDown())
			time.Sleep(2 * time.Second)
			require.NoError(t, p.sa.LinkUp())
		}},
		{"loss-2pct", func(p *labPair) { require.NoError(t, p.sa.SetLoss(2)); require.NoError(t, p.sb.SetLoss(2)) }, nil},
	}
	for _, f := range faults {
		t.Run(f.name, func(t *testing.T) {
			p := ln.pair(t, natlab.KindHome, natlab.KindHome)
			// Slow the link so the fault lands mid-transfer.
			require.NoError(t, p.sa.SetRate(80_000_000))
			if f.setup != nil {
				f.setup(p)
			}
			done := make(chan struct{})
			if f.hit != nil {
				go func() {
					defer close(done)
					time.Sleep(700 * time.Millisecond)
					f.hit(p)
				}()
			} else {
				close(done)
			}
			start := time.Now()
			// Either the transfer survives byte-exact, or (when the fault
			// killed the connection) the next Dial succeeds within 3 s.
			_, _, err := tryTransfer(p.a, p.b, 9000, 16<<20)
			<-done
			if err != nil {
				t.Logf("%s: transfer cut (%v); the connection must be re-made", f.name, err)
				dialStart := time.Now()
				c, err := p.a.Dial(ctxT(t, 3*time.Second), p.b.Addr().String(), PortEcho)
				require.NoError(t, err, "re-dial after %s", f.name)
				c.Close()
				t.Logf("%s: connection re-made, next dial took %v", f.name, time.Since(dialStart))
			} else {
				t.Logf("%s: 16 MiB byte-exact in %v through the fault", f.name, time.Since(start).Round(time.Millisecond))
			}
		})
	}
	t.Run("mapping-timeout-5s-idle-20s", func(t *testing.T) {
		p := ln.pair(t, natlab.KindHome, natlab.KindHome)
		require.NoError(t, p.sa.SetUDPTimeout(5*time.Second))
		require.NoError(t, p.sb.SetUDPTimeout(5*time.Second))
		transfer(t, p.a, p.b, 9000, 1<<20)
		time.Sleep(20 * time.Second)
		start := time.Now()
		c, err := p.a.Dial(ctxT(t, 3*time.Second), p.b.Addr().String(), PortEcho)
		require.NoError(t, err)
		_, err = c.Write([]byte("x"))
		require.NoError(t, err)
		one := make([]byte, 1)
		c.SetReadDeadline(time.Now().Add(3 * time.Second))
		_, err = io.ReadFull(c, one)
		require.NoError(t, err)
		c.Close()
		t.Logf("after 20 s idle with 5 s mappings: dial + echo in %v (path %s)", time.Since(start).Round(time.Millisecond), pathTo(p.a, p.b))
	})
}

func TestNATUpgradeAndFailover(t *testing.T) {
	ln := newLabNet(t)
	sa := ln.lab.AddSite("sa", natlab.KindHome)
	sb := ln.lab.AddSite("sb", natlab.KindHome)
	rdvOnly := netip.PrefixFrom(ln.rdv.IP(), 32)
	// Only the rendezvous is reachable from site a: no direct path.
	require.NoError(t, sa.BlockUDPExcept(rdvOnly))
	a := ln.startLabNode(sa.AddHost("a"), "")
	b := ln.startLabNode(sb.AddHost("b"), "")
	trustNodes(t, a, b)
	waitNAT(t, a)
	start := time.Now()
	_, path := transfer(t, a, b, 9000, 1<<20)
	require.Equal(t, "relay", path)
	t.Logf("relay fallback: first byte after %v", time.Since(start).Round(time.Millisecond))

	require.NoError(t, sa.Unblock())
	lifted := time.Now()
	require.Eventually(t, func() bool { return pathTo(a, b) == "direct" }, 2*paths.UpgradeEvery+10*time.Second, 100*time.Millisecond, "never upgraded to direct")
	t.Logf("upgrade: direct %v after the block was lifted", time.Since(lifted).Round(time.Millisecond))
	_, path = transfer(t, a, b, 9001, 1<<20)
	require.Equal(t, "direct", path)

	require.NoError(t, sa.BlockUDPExcept(rdvOnly))
	cut := time.Now()
	require.Eventually(t, func() bool { return pathTo(a, b) == "relay" }, 10*time.Second, 50*time.Millisecond, "never failed over to relay")
	t.Logf("failover: relay %v after the direct path was cut", time.Since(cut).Round(time.Millisecond))
	_, path = transfer(t, a, b, 9002, 1<<20)
	require.Equal(t, "relay", path)
}

// openFDs counts the process's open file descriptors.
func openFDs(t testing.TB) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	require.NoError(t, err)
	return len(ents)
}

// TestNATBirthday repeats birthday punching (hard × easy-home) on fresh
// pairs in both directions: every attempt must go direct, the hard side
// must keep one extra socket only while the link lives, and close it after.
func TestNATBirthday(t *testing.T) {
	natlab.Require(t)
	checkNoLeaks(t) // runs after every other cleanup: nodes, server, lab
	ln := newLabNet(t)
	const attempts = 6
	var direct int
	var ttfbs []string
	for i := 0; i < attempts; i++ {
		p := ln.pair(t, natlab.KindHome, natlab.KindSymmetric)
		dialer, other := p.a, p.b // home dials symmetric
		hard := p.b
		if i%2 == 1 {
			dialer, other = p.b, p.a // symmetric dials home
		}
		require.Equal(t, NATHard, hard.NATInfo().Kind)
		require.Equal(t, NATEasy, p.a.NATInfo().Kind)
		before := openFDs(t)
		ttfb, path := transfer(t, dialer, other, 9000, 1<<20)
		ttfbs = append(ttfbs, fmt.Sprintf("%s %v", path, ttfb.Round(time.Millisecond)))
		if path != "direct" {
			continue
		}
		direct++
		l := hard.liveLink(p.a.PublicKey())
		require.NotNil(t, l)
		require.NotEqual(t, hard.LocalAddr().String(), l.Conn.LocalAddr().String(), "the link runs on a birthday socket")
		// The other extra sockets are closed at once.
		require.Less(t, openFDs(t)-before, 16, "extra sockets left open")
		// When the link ends, its socket is closed too.
		withLink := openFDs(t)
		hard.paths.ClosePeer(p.a.PublicKey(), CodeClosing, "test")
		require.Eventually(t, func() bool { return openFDs(t) < withLink }, 3*time.Second, 20*time.Millisecond, "birthday socket not closed with its link")
	}
	t.Logf("birthday: %d/%d direct; path and time to first byte per attempt: %s", direct, attempts, strings.Join(ttfbs, ", "))
	require.Equal(t, attempts, direct, "birthday punching must go direct every time")

	// A miss (here: the easy side can reach only the rendezvous) falls
	// back to the relay, and the hard side closes all its extra sockets
	// once the attempt's window is over.
	p := ln.pair(t, natlab.KindHome, natlab.KindSymmetric)
	require.NoError(t, p.sa.BlockUDPExcept(netip.PrefixFrom(ln.rdv.IP(), 32)))
	before := openFDs(t)
	ttfb, path := transfer(t, p.b, p.a, 9000, 1<<20)
	require.Equal(t, "relay", path)
	require.GreaterOrEqual(t, ttfb, paths.BirthdayRelayAfter)
	require.Eventually(t, func() bool { return openFDs(t)-before < 16 }, paths.BirthdayWindow+2*time.Second, 50*time.Millisecond, "extra sockets left open after a miss")
	t.Logf("birthday miss: relay, first byte after %v", ttfb.Round(time.Millisecond))
}
