package natlab_test

import (
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/agentnet/agentnet/internal/natlab"
)

// receivedFrom waits up to d for msg on c and returns where it came from.
func receivedFrom(c *net.UDPConn, msg string, d time.Duration) (netip.AddrPort, bool) {
	buf := make([]byte, 1500)
	deadline := time.Now().Add(d)
	defer c.SetReadDeadline(time.Time{})
	for {
		_ = c.SetReadDeadline(deadline)
		n, from, err := c.ReadFromUDPAddrPort(buf)
		if err != nil {
			return netip.AddrPort{}, false
		}
		if string(buf[:n]) == msg {
			return netip.AddrPortFrom(from.Addr().Unmap(), from.Port()), true
		}
	}
}

func send(tb testing.TB, c *net.UDPConn, to netip.AddrPort, msg string) {
	tb.Helper()
	_, err := c.WriteToUDPAddrPort([]byte(msg), to)
	require.NoError(tb, err)
}

// TestLabIsolateLAN shows that an isolated LAN's hosts, including one added
// afterwards, no longer reach each other but still reach their router and
// the internet.
func TestLabIsolateLAN(t *testing.T) {
	natlab.Require(t)
	t.Parallel()
	w := newWorld(t, natlab.KindCone)
	b := w.site.AddHost("b")
	ca, cb := listen(t, w.host), listen(t, b)
	atB := netip.AddrPortFrom(b.IP(), localAddr(cb).Port())
	atA := netip.AddrPortFrom(w.host.IP(), localAddr(ca).Port())

	send(t, ca, atB, "lan-before")
	require.True(t, received(cb, "lan-before", patience), "one LAN: hosts reach each other before isolation")

	require.NoError(t, w.site.IsolateLAN())
	require.NoError(t, w.site.IsolateLAN(), "isolating twice is harmless")
	c := w.site.AddHost("c")
	cc := listen(t, c)

	// a knows b's MAC from the first exchange: isolation stops unicast
	// frames too, not only ARP.
	send(t, ca, atB, "lan-after")
	require.False(t, received(cb, "lan-after", quiet), "isolated: a cannot reach b's LAN address")
	send(t, cc, atA, "lan-late")
	require.False(t, received(ca, "lan-late", quiet), "a host added after IsolateLAN is isolated too")
	send(t, cb, atA, "lan-back")
	require.False(t, received(ca, "lan-back", quiet), "isolation holds both ways")

	// The router (its LAN address) and the internet stay reachable.
	rc, err := w.site.Gateway().ListenUDP(":0")
	require.NoError(t, err)
	defer rc.Close()
	gwLAN := w.site.LAN().Addr().Next()
	for i, h := range []*net.UDPConn{ca, cb, cc} {
		msg := "to-router-" + string(rune('a'+i))
		send(t, h, netip.AddrPortFrom(gwLAN, localAddr(rc).Port()), msg)
		require.True(t, received(rc, msg, patience), "host %d reaches the router", i)
		require.Equal(t, w.site.PublicIP(), mustObserve(t, h, w.r1).Addr(), "host %d reaches the internet", i)
	}
}

// TestHairpin shows that two hosts of an isolated full-cone LAN reach each
// other at their public mappings once hairpinning is on, that each sees the
// other's public mapping as the source, and that without hairpinning the
// public address does not work from inside.
func TestHairpin(t *testing.T) {
	natlab.Require(t)
	t.Parallel()
	w := newWorld(t, natlab.KindCone)
	b := w.site.AddHost("b")
	require.NoError(t, w.site.IsolateLAN())
	ca, cb := listen(t, w.host), listen(t, b)
	ma, mb := mustObserve(t, ca, w.r1), mustObserve(t, cb, w.r1)
	require.Equal(t, w.site.PublicIP(), ma.Addr())
	require.Equal(t, w.site.PublicIP(), mb.Addr())

	// This also leaves a conntrack entry (to the router itself, no NAT) that
	// EnableHairpin must clear, or the same flow would keep bypassing it.
	send(t, ca, mb, "no-hairpin")
	require.False(t, received(cb, "no-hairpin", quiet), "without hairpinning the public mapping does not work from inside")

	require.NoError(t, w.site.EnableHairpin())
	require.NoError(t, w.site.EnableHairpin(), "enabling twice is harmless")

	send(t, ca, mb, "hairpin")
	from, ok := receivedFrom(cb, "hairpin", patience)
	require.True(t, ok, "hairpinned to the owner of the mapping")
	require.Equal(t, ma, from, "the receiver sees the sender's public mapping (through the router)")

	send(t, cb, from, "reply")
	back, ok := receivedFrom(ca, "reply", patience)
	require.True(t, ok, "the reply comes back through the router")
	require.Equal(t, mb, back, "from the public mapping the sender addressed")

	// The other way, b first: b's flow to a's mapping is new.
	send(t, cb, ma, "hairpin-b")
	from, ok = receivedFrom(ca, "hairpin-b", patience)
	require.True(t, ok)
	require.Equal(t, mb, from)

	// The mappings stay what the internet sees, and the LAN stays isolated.
	require.Equal(t, ma, mustObserve(t, ca, w.r1), "hairpinning does not disturb a's mapping")
	require.Equal(t, mb, mustObserve(t, cb, w.r2), "nor b's")
	send(t, ca, netip.AddrPortFrom(b.IP(), localAddr(cb).Port()), "lan")
	require.False(t, received(cb, "lan", quiet), "still isolated at layer 2")

	// After a rebinding the public ports differ from the local ones: the
	// receiver sees the sender's new mapping, not its local port.
	require.NoError(t, w.site.Rebind())
	ma2, mb2 := mustObserve(t, ca, w.r1), mustObserve(t, cb, w.r1)
	require.NotEqual(t, localAddr(ca).Port(), ma2.Port(), "Rebind moves the mapping off the local port")
	send(t, ca, mb2, "rebound")
	from, ok = receivedFrom(cb, "rebound", patience)
	require.True(t, ok, "hairpinned to the new mapping")
	require.Equal(t, ma2, from, "seen from a's new mapping")
	t.Logf("a %v, b %v; after rebinding a %v (local port %d), b %v", ma, mb, ma2, localAddr(ca).Port(), mb2)

	// A fresh socket that has no mapping yet still hairpins, from the
	// public address.
	cn := listen(t, w.host)
	send(t, cn, mb2, "fresh")
	from, ok = receivedFrom(cb, "fresh", patience)
	require.True(t, ok, "a socket without a mapping hairpins too")
	require.Equal(t, netip.AddrPortFrom(w.site.PublicIP(), localAddr(cn).Port()), from, "from the public address and its own port")

	require.Error(t, w.lab.AddSite("home", natlab.KindHome).EnableHairpin(), "only a full cone has the map")
}
