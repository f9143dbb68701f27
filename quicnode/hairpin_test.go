package quicnode

import (
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/agentnet/agentnet/internal/natlab"
	"github.com/stretchr/testify/require"
)

// remoteOf returns the address a's preferred live link to b uses: a UDP
// address for a direct link, the relay session for a relayed one.
func remoteOf(a, b *Node) net.Addr {
	for _, p := range a.Peers() {
		if p.Key == b.PublicKey() && !p.Standby {
			return p.Remote
		}
	}
	return nil
}

// udpAddrPort is the AddrPort of a UDP address, or the zero AddrPort.
func udpAddrPort(a net.Addr) netip.AddrPort {
	u, ok := a.(*net.UDPAddr)
	if !ok {
		return netip.AddrPort{}
	}
	ap := u.AddrPort()
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}

// TestNATHairpin puts two agents behind one full-cone NAT whose LAN is
// isolated (they cannot reach each other's LAN address). With hairpinning
// on, each reaches the other at its public (reflexive) candidate through the
// router and the pair goes direct; without it only the relay is left.
func TestNATHairpin(t *testing.T) {
	ln := newLabNet(t)
	cases := []struct {
		name    string
		hairpin bool
		want    string
		size    int64
	}{
		{"hairpin", true, "direct", 16 << 20},
		{"no-hairpin", false, "relay", 1 << 20},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			site := ln.lab.AddSite(tc.name, natlab.KindCone)
			require.NoError(t, site.IsolateLAN())
			if tc.hairpin {
				require.NoError(t, site.EnableHairpin())
			}
			a := ln.startLabNode(site.AddHost(tc.name+"-a"), "")
			b := ln.startLabNode(site.AddHost(tc.name+"-b"), "")
			trustNodes(t, a, b)
			waitNAT(t, a)
			waitNAT(t, b)

			start := time.Now()
			ttfb, path := transfer(t, a, b, 9000, tc.size)
			took := time.Since(start)
			datagramRoundTrip(t, a, b)
			ra, rb := udpAddrPort(remoteOf(a, b)), udpAddrPort(remoteOf(b, a))
			t.Logf("%s: path %s, %d MiB byte-exact in %v, time to first byte %v; a uses %v (%s), b uses %v (%s); NAT seen %s/%s",
				tc.name, path, tc.size>>20, took.Round(time.Millisecond), ttfb.Round(time.Millisecond),
				remoteOf(a, b), pathTo(a, b), remoteOf(b, a), pathTo(b, a), a.NATInfo().Kind, b.NATInfo().Kind)
			require.Equal(t, tc.want, path)
			if tc.want == "direct" {
				// Both reach the other at its public mapping, hairpinned by
				// the router: LAN addresses are unreachable here.
				require.Equal(t, site.PublicIP(), ra.Addr(), "a reaches b at the public address")
				require.Equal(t, site.PublicIP(), rb.Addr(), "b sees a at the public address")
				require.Equal(t, a.NATInfo().Mapped, rb, "b sees a's own reflexive address")
				require.Equal(t, b.NATInfo().Mapped, ra, "a reaches b's reflexive address")
			}
		})
	}
}
