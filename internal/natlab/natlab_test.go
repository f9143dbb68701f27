package natlab_test

import (
	"bufio"
	"context"
	"encoding/base64"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/agentnet/agentnet/internal/natlab"
)

// quiet is how long a test waits to conclude that a packet was dropped;
// patience is how long it waits for one that must arrive (under load).
const (
	quiet    = 300 * time.Millisecond
	patience = 2 * time.Second
)

// within is the wait for a packet that arrives only if want.
func within(want bool) time.Duration {
	if want {
		return patience
	}
	return quiet
}

// TestKinds proves that each kind maps and filters as its name says.
func TestKinds(t *testing.T) {
	natlab.Require(t)
	type want struct {
		eim        bool // same mapping towards two servers
		filterOpen bool // a host never contacted may send to the mapping
		public     bool // the server sees the host's own address
		layers     int  // routers between the LAN and the internet
	}
	cases := []struct {
		kind natlab.Kind
		want want
	}{
		{natlab.KindNone, want{eim: true, filterOpen: true, public: true, layers: 1}},
		{natlab.KindHome, want{eim: true, layers: 1}},
		{natlab.KindSymmetric, want{eim: false, layers: 1}},
		{natlab.KindCone, want{eim: true, filterOpen: true, layers: 1}},
		{natlab.KindDouble, want{eim: true, layers: 2}},
	}
	for _, tc := range cases {
		t.Run(string(tc.kind), func(t *testing.T) {
			t.Parallel()
			w := newWorld(t, tc.kind)
			c := listen(t, w.host)

			m1 := mustObserve(t, c, w.r1)
			if tc.want.public {
				require.Equal(t, localAddr(c).Port(), m1.Port(), "no NAT keeps the port")
				require.Equal(t, w.host.IP(), m1.Addr(), "no NAT shows the host's address")
			} else {
				require.Equal(t, w.site.PublicIP(), m1.Addr(), "mapped to the site's public address")
				require.NotEqual(t, w.host.IP(), m1.Addr())
			}
			if tc.want.layers == 2 {
				require.NotEqual(t, w.site.Gateway().IP(), w.site.PublicIP(), "two layers of NAT")
				require.True(t, netip.MustParsePrefix("10.0.0.0/8").Contains(w.site.Gateway().IP()),
					"home router's WAN is on the carrier's private network")
			}

			// Filtering, before anyone but r1 was contacted: the same server
			// from another port, and another server.
			w.r1b.poke(t, m1, "from-r1b")
			require.Equal(t, tc.want.filterOpen, received(c, "from-r1b", within(tc.want.filterOpen)), "other port of the same host")
			w.r2.poke(t, m1, "from-r2")
			require.Equal(t, tc.want.filterOpen, received(c, "from-r2", within(tc.want.filterOpen)), "other host")
			w.r1.poke(t, m1, "from-r1")
			require.True(t, received(c, "from-r1", patience), "the contacted server always gets through")

			// Mapping: same public endpoint towards a second server?
			m2 := mustObserve(t, c, w.r2)
			require.Equal(t, m1.Addr(), m2.Addr(), "one public address")
			if tc.want.eim {
				require.Equal(t, m1, m2, "endpoint-independent mapping")
			} else {
				require.NotEqual(t, m1.Port(), m2.Port(), "endpoint-dependent mapping")
			}
			m3 := mustObserve(t, c, w.r1b)
			if tc.want.eim {
				require.Equal(t, m1, m3)
			} else {
				require.NotEqual(t, m1.Port(), m3.Port(), "a new port per destination port too")
			}
			t.Logf("%s: %v via r1, %v via r2, %v via r1:3479", tc.kind, m1, m2, m3)
		})
	}
}

func TestFlushConntrackKeepsPort(t *testing.T) {
	natlab.Require(t)
	for _, kind := range []natlab.Kind{natlab.KindHome, natlab.KindCone, natlab.KindDouble} {
		t.Run(string(kind), func(t *testing.T) {
			t.Parallel()
			w := newWorld(t, kind)
			c := listen(t, w.host)
			m1 := mustObserve(t, c, w.r1)
			require.NoError(t, w.site.FlushConntrack())
			m2 := mustObserve(t, c, w.r1)
			require.Equal(t, m1, m2, "masquerade hands the same mapping back")
		})
	}
}

func TestRebindChangesPort(t *testing.T) {
	natlab.Require(t)
	for _, kind := range []natlab.Kind{natlab.KindHome, natlab.KindSymmetric, natlab.KindCone, natlab.KindDouble} {
		t.Run(string(kind), func(t *testing.T) {
			t.Parallel()
			w := newWorld(t, kind)
			c := listen(t, w.host)
			m := mustObserve(t, c, w.r1)
			seen := map[uint16]bool{m.Port(): true}
			for range 3 {
				require.NoError(t, w.site.Rebind())
				m2 := mustObserve(t, c, w.r1)
				require.Equal(t, m.Addr(), m2.Addr(), "rebinding keeps the public address")
				require.False(t, seen[m2.Port()], "rebinding must give a new port, got %v again", m2)
				seen[m2.Port()] = true
				if kind != natlab.KindSymmetric {
					require.Equal(t, m2, mustObserve(t, c, w.r2), "still endpoint-independent after rebinding")
				}
				if kind == natlab.KindCone {
					w.r1b.poke(t, m2, "cone")
					require.True(t, received(c, "cone", patience), "full cone relearns the new port")
				}
			}
			require.Error(t, natlab.New(t).AddSite("pub", natlab.KindNone).Rebind(), "no NAT, nothing to rebind")
		})
	}
}

func TestRenumberChangesAddress(t *testing.T) {
	natlab.Require(t)
	for _, kind := range []natlab.Kind{natlab.KindHome, natlab.KindSymmetric, natlab.KindCone, natlab.KindDouble} {
		t.Run(string(kind), func(t *testing.T) {
			t.Parallel()
			w := newWorld(t, kind)
			c := listen(t, w.host)
			m := mustObserve(t, c, w.r1)
			first := w.site.PublicIP()
			require.Equal(t, first, m.Addr())
			next, err := w.site.Renumber()
			require.NoError(t, err)
			require.NotEqual(t, first, next)
			require.Equal(t, next, w.site.PublicIP())
			// The server still answers the old mapping's address: nothing
			// may come back through it.
			w.r1.poke(t, m, "to-the-old-address")
			require.False(t, received(c, "to-the-old-address", within(false)), "the old address must be gone")
			m2 := mustObserve(t, c, w.r1)
			require.Equal(t, next, m2.Addr(), "flows leave from the new address")
			t.Logf("%s: %v, then %v after renumbering", kind, m, m2)
		})
	}
	_, err := natlab.New(t).AddSite("pub", natlab.KindNone).Renumber()
	require.Error(t, err, "no NAT, nothing to renumber")
}

func TestMoveToAnotherSite(t *testing.T) {
	natlab.Require(t)
	t.Parallel()
	w := newWorld(t, natlab.KindHome)
	c := listen(t, w.host) // bound to the unspecified address, as agents are
	first := mustObserve(t, c, w.r1)
	require.Equal(t, w.site.PublicIP(), first.Addr())
	other := w.lab.AddSite("other", natlab.KindHome)
	ip, err := w.host.MoveTo(other)
	require.NoError(t, err)
	require.Equal(t, ip, w.host.IP())
	require.True(t, other.LAN().Contains(ip), "a new address on the new LAN")
	w.r1.poke(t, first, "to-the-old-network")
	require.False(t, received(c, "to-the-old-network", within(false)), "nothing reaches the old network's mapping")
	second := mustObserve(t, c, w.r1)
	require.Equal(t, other.PublicIP(), second.Addr(), "the same socket sends from the new network")
	t.Logf("%v, then %v after moving to %v", first, second, ip)
	_, err = w.r1host.MoveTo(other)
	require.Error(t, err, "a public host is on no site's LAN")
}

func TestLoss(t *testing.T) {
	natlab.Require(t)
	t.Parallel()
	w := newWorld(t, natlab.KindHome)
	c := listen(t, w.host)
	mustObserve(t, c, w.r1)

	require.NoError(t, w.site.SetLoss(100))
	_, err := observe(c, w.r1.addr, 2)
	require.ErrorIs(t, err, errNoReply, "100%% loss drops everything")

	// 40% each way: about 36% of round trips survive.
	require.NoError(t, w.site.SetLoss(40))
	const n = 200
	for range n {
		_, err := c.WriteToUDPAddrPort([]byte("who x"), w.r1.addr)
		require.NoError(t, err)
		time.Sleep(200 * time.Microsecond)
	}
	got := countReplies(c, quiet)
	require.Greater(t, got, n*10/100, "some round trips survive 40%% loss")
	require.Less(t, got, n*70/100, "many round trips die at 40%% loss")
	t.Logf("40%% loss each way: %d/%d round trips", got, n)

	require.NoError(t, w.site.SetLoss(0))
	mustObserve(t, c, w.r1)
}

// countReplies counts reflector answers arriving within d of each other.
func countReplies(c interface {
	SetReadDeadline(time.Time) error
	ReadFromUDPAddrPort([]byte) (int, netip.AddrPort, error)
}, d time.Duration) int {
	buf := make([]byte, 1500)
	n := 0
	for {
		_ = c.SetReadDeadline(time.Now().Add(d))
		k, _, err := c.ReadFromUDPAddrPort(buf)
		if err != nil {
			_ = c.SetReadDeadline(time.Time{})
			return n
		}
		if strings.HasPrefix(string(buf[:k]), "seen ") {
			n++
		}
	}
}

func TestUDPTimeout(t *testing.T) {
	natlab.Require(t)
	for _, kind := range []natlab.Kind{natlab.KindHome, natlab.KindCone, natlab.KindDouble} {
		t.Run(string(kind), func(t *testing.T) {
			t.Parallel()
			w := newWorld(t, kind)
			require.NoError(t, w.site.SetUDPTimeout(time.Second))
			c := listen(t, w.host)
			m := mustObserve(t, c, w.r1)
			w.r1.poke(t, m, "alive")
			require.True(t, received(c, "alive", patience), "mapping open right after use")
			time.Sleep(2200 * time.Millisecond)
			w.r1.poke(t, m, "expired")
			require.False(t, received(c, "expired", quiet), "mapping must expire after the UDP timeout")
			if kind == natlab.KindCone {
				w.r2.poke(t, m, "expired-cone")
				require.False(t, received(c, "expired-cone", quiet), "full-cone mapping must expire too")
			}
		})
	}
}

func TestLinkDownUp(t *testing.T) {
	natlab.Require(t)
	t.Parallel()
	w := newWorld(t, natlab.KindDouble)
	c := listen(t, w.host)
	mustObserve(t, c, w.r1)
	ctx := context.Background()
	ct, err := w.site.Router().Run(ctx, "conntrack", "-L", "-p", "udp", "--orig-port-dst", "3478")
	require.NoError(t, err)
	require.Contains(t, string(ct), "dport=3478", "the mapping exists")
	require.NoError(t, w.site.LinkDown())
	ct, err = w.site.Router().Run(ctx, "conntrack", "-L", "-p", "udp", "--orig-port-dst", "3478")
	require.NoError(t, err)
	require.NotContains(t, string(ct), "dport=3478", "link down drops the masquerade mappings")
	_, err = observe(c, w.r1.addr, 2)
	require.ErrorIs(t, err, errNoReply, "no traffic while the link is down")
	require.NoError(t, w.site.LinkUp())
	m := mustObserve(t, c, w.r1)
	require.Equal(t, w.site.PublicIP(), m.Addr())
	out, err := w.site.Router().Run(ctx, "ip", "route", "show", "default")
	require.NoError(t, err)
	require.Contains(t, string(out), "default via 198.18.0.1")
}

func TestBlockUDP(t *testing.T) {
	natlab.Require(t)
	t.Parallel()
	w := newWorld(t, natlab.KindHome)
	c := listen(t, w.host)
	r1 := netip.PrefixFrom(w.r1.addr.Addr(), 32)
	r2 := netip.PrefixFrom(w.r2.addr.Addr(), 32)
	m := mustObserve(t, c, w.r2)

	require.NoError(t, w.site.BlockUDPTo(r2))
	_, err := observe(c, w.r2.addr, 2)
	require.ErrorIs(t, err, errNoReply, "blocked peer")
	mustObserve(t, c, w.r1)
	require.NoError(t, w.site.Unblock())
	require.Equal(t, m, mustObserve(t, c, w.r2), "blocking keeps the NAT state")

	require.NoError(t, w.site.BlockUDPExcept(r1))
	mustObserve(t, c, w.r1)
	_, err = observe(c, w.r2.addr, 2)
	require.ErrorIs(t, err, errNoReply, "everything but the allowed prefix is blocked")
	require.NoError(t, w.site.Unblock())
	mustObserve(t, c, w.r2)
}

func TestLabBasics(t *testing.T) {
	natlab.Require(t)
	t.Parallel()
	start := time.Now()
	a := natlab.New(t)
	a.AddPublicHost("rdv")
	for _, k := range []natlab.Kind{natlab.KindHome, natlab.KindCone} {
		s := a.AddSite(string(k), k)
		s.AddHost(string(k) + "-1")
	}
	t.Logf("lab of 6 namespaces built in %v", time.Since(start))

	// A second lab with the same names, side by side.
	b := natlab.New(t)
	rb := b.AddPublicHost("rdv")
	sb := b.AddSite("home", natlab.KindHome)
	hb := sb.AddHost("home-1")
	require.NotEqual(t, a.ID(), b.ID())
	require.NotEqual(t, a.Internet().Namespace(), b.Internet().Namespace())

	// TCP and Run across the NAT of lab b.
	ln, err := rb.ListenTCP(":8080")
	require.NoError(t, err)
	defer ln.Close()
	done := make(chan string, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			done <- err.Error()
			return
		}
		done <- c.RemoteAddr().String()
		c.Close()
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	conn, err := hb.DialContext(ctx, "tcp4", netip.AddrPortFrom(rb.IP(), 8080).String())
	require.NoError(t, err)
	conn.Close()
	require.Contains(t, <-done, sb.PublicIP().String()+":")

	out, err := hb.Run(ctx, "ip", "-4", "-o", "addr", "show", "dev", "eth0")
	require.NoError(t, err)
	require.Contains(t, string(out), hb.IP().String()+"/24")

	_, err = hb.Run(ctx, "false")
	require.Error(t, err)
}

func TestSetRate(t *testing.T) {
	natlab.Require(t)
	t.Parallel()
	lab := natlab.New(t)
	srv := lab.AddPublicHost("srv")
	site := lab.AddSite("home", natlab.KindHome)
	cli := site.AddHost("cli")

	ln, err := srv.ListenTCP(":9000")
	require.NoError(t, err)
	defer ln.Close()
	const size = 150 << 10
	// The server sends size bytes to a client that says "d" and drains one
	// that says "u".
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				cmd := make([]byte, 1)
				if _, err := io.ReadFull(c, cmd); err != nil {
					return
				}
				if cmd[0] == 'd' {
					_, _ = c.Write(make([]byte, size))
					return
				}
				_, _ = io.Copy(io.Discard, c)
				_, _ = c.Write([]byte("k"))
			}()
		}
	}()
	transfer := func(dir byte) time.Duration {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		start := time.Now()
		c, err := cli.DialContext(ctx, "tcp4", netip.AddrPortFrom(srv.IP(), 9000).String())
		require.NoError(t, err)
		defer c.Close()
		_, err = c.Write([]byte{dir})
		require.NoError(t, err)
		if dir == 'u' {
			_, err = c.Write(make([]byte, size))
			require.NoError(t, err)
			require.NoError(t, c.(*net.TCPConn).CloseWrite())
		}
		n, err := io.Copy(io.Discard, c)
		require.NoError(t, err)
		if dir == 'd' {
			require.EqualValues(t, size, n)
		} else {
			require.EqualValues(t, 1, n)
		}
		return time.Since(start)
	}
	for _, dir := range []byte{'d', 'u'} {
		require.NoError(t, site.SetRate(0))
		fast := transfer(dir)
		require.NoError(t, site.SetRate(4_000_000)) // 500 kB/s: size takes about 0.3 s
		slow := transfer(dir)
		t.Logf("150 KiB %c: %v unlimited, %v at 4 Mbit/s", dir, fast, slow)
		require.Greater(t, slow, 200*time.Millisecond)
		require.Less(t, fast, slow/2)
	}
}

// TestTCPOnlyBlocks: BlockAllUDP stops UDP but not TCP; AllowOnlyTCPTo lets
// only TCP with one address:port through; ResetTCPTo cuts a live TCP
// connection with a reset; a real tinyproxy with Basic auth answers a
// CONNECT from the site.
func TestTCPOnlyBlocks(t *testing.T) {
	natlab.Require(t)
	t.Parallel()
	w := newWorld(t, natlab.KindHome)
	c := listen(t, w.host)
	mustObserve(t, c, w.r1)
	pub := w.r1host
	ln, err := pub.ListenTCP(":8443")
	require.NoError(t, err)
	var wg sync.WaitGroup
	t.Cleanup(wg.Wait) // after the listener closes (cleanups run last first)
	t.Cleanup(func() { ln.Close() })
	wg.Go(func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Go(func() {
				defer conn.Close()
				conn.SetDeadline(time.Now().Add(10 * time.Second))
				io.Copy(conn, conn)
			})
		}
	})
	server := netip.AddrPortFrom(pub.IP(), 8443)
	echoTCP := func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		conn, err := w.host.DialContext(ctx, "tcp", server.String())
		if err != nil {
			return err
		}
		defer conn.Close()
		conn.SetDeadline(time.Now().Add(2 * time.Second))
		if _, err := conn.Write([]byte("x")); err != nil {
			return err
		}
		_, err = io.ReadFull(conn, make([]byte, 1))
		return err
	}

	require.NoError(t, w.site.BlockAllUDP())
	_, err = observe(c, w.r1.addr, 2)
	require.ErrorIs(t, err, errNoReply, "UDP is blocked")
	require.NoError(t, echoTCP(), "TCP still crosses")
	require.NoError(t, w.site.Unblock())

	proxy := pub.StartHTTPProxy(t, 3128, "agent", "pw")
	require.NoError(t, w.site.AllowOnlyTCPTo(proxy))
	_, err = observe(c, w.r1.addr, 2)
	require.ErrorIs(t, err, errNoReply, "UDP is blocked")
	require.Error(t, echoTCP(), "TCP to anything but the proxy is blocked")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	pc, err := w.host.DialContext(ctx, "tcp", proxy.String())
	require.NoError(t, err)
	fmt.Fprintf(pc, "CONNECT %s HTTP/1.1\r\nHost: %s\r\nProxy-Authorization: Basic %s\r\n\r\n", server, server, base64.StdEncoding.EncodeToString([]byte("agent:pw")))
	pc.SetDeadline(time.Now().Add(5 * time.Second))
	resp, err := http.ReadResponse(bufio.NewReader(pc), nil)
	require.NoError(t, err)
	require.Equal(t, 200, resp.StatusCode, "tinyproxy tunnels to the server")
	pc.Close()
	require.NoError(t, w.site.Unblock())

	// A live connection is cut by a reset at its next packet.
	conn, err := w.host.DialContext(ctx, "tcp", server.String())
	require.NoError(t, err)
	defer conn.Close()
	require.NoError(t, w.site.ResetTCPTo(server))
	conn.SetDeadline(time.Now().Add(2 * time.Second))
	conn.Write([]byte("x"))
	_, err = io.ReadFull(conn, make([]byte, 1))
	require.ErrorIs(t, err, syscall.ECONNRESET)
	require.NoError(t, w.site.Unreset())
	require.NoError(t, echoTCP(), "after Unreset TCP works again")
}
