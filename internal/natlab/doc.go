// Package natlab builds a small internet out of Linux network namespaces,
// per test, so that NAT traversal can be tested against the kernel's real
// NAT (nftables masquerade and conntrack) with agents running in-process.
//
// A test calls [Require] (skip when not root; fail when CI=true), [New],
// then adds public hosts and sites, and opens sockets inside hosts with
// [Host.ListenUDP]: the socket is created on a thread that joined the
// host's namespace and stays there, while the returned *net.UDPConn is used
// from any goroutine of the test process. Everything is torn down in
// t.Cleanup.
//
// # Topology
//
// Namespace names are "nl" + a random 4-hex lab id + "-" + name, so labs
// run side by side. Interface names are short and fixed (eth0, wan0, br0,
// pN) because each lives in its own namespace.
//
//	                 nl<id>-inet: bridge br0 198.18.0.1/16, ip_forward,
//	                 routes 198.19.S.0/24 to the KindNone routers
//	  +-------------------+------------------+---------------------------+
//	  |                   |                  |                           |
//	public host        router (none)      router (home,            carrier router
//	eth0 198.18.1.N    wan0 198.18.1.N    symmetric, cone)         (KindDouble, home-like)
//	                   br0 198.19.S.1/24  wan0 198.18.1.N          wan0 198.18.1.N
//	                      |               br0 192.168.S.1/24       br0 10.S.0.1/24
//	                   hosts eth0            |                        |
//	                   198.19.S.10+       hosts eth0               home router
//	                   (public, no NAT)   192.168.S.10+            wan0 10.S.0.2/24
//	                                                               br0 192.168.S.1/24
//	                                                                  |
//	                                                               hosts 192.168.S.10+
//
// Every host's default route points at its router (public hosts and routers
// at 198.18.0.1). [Site.PublicIP] is the outermost router's WAN address;
// [Site.Router] is that router, [Site.Gateway] the one on the LAN. Events
// and impairments ([Site.Rebind], [Site.SetLoss], [Site.BlockUDPExcept],
// [Site.LinkDown], [Site.SetRate]) act on the WAN link of the outermost
// router; [Site.FlushConntrack] and [Site.SetUDPTimeout] on every router of
// the site.
//
// # NAT kinds
//
//   - none: plain routing, hosts keep their public addresses.
//   - home: masquerade (endpoint-independent mapping), a forward filter that
//     admits only established/related traffic from the WAN
//     (address-and-port-dependent filtering) and an input-hook drop of
//     unsolicited WAN traffic to the router itself.
//   - symmetric: the same with "masquerade random": a new port per
//     destination (endpoint-dependent mapping).
//   - cone: masquerade, plus a dynamic nft map WAN port -> LAN addr:port
//     learnt after source NAT from every outbound packet, through which
//     inbound UDP from anyone is dnat'ed (full cone).
//   - double: a home-like carrier NAT in front of a home NAT.
//
// With plain UDP probes both ways, peer-reflexive learning and LAN
// candidates, every pair punches a direct path except home/symmetric,
// symmetric/symmetric and symmetric/double; two hosts behind one NAT reach
// each other only by their LAN addresses (no hairpinning by default).
// TestPunchMatrix measures and prints this.
//
// # LAN isolation and hairpinning
//
//   - [Site.IsolateLAN] makes every host port on the LAN bridge an isolated
//     bridge port ("bridge_slave isolated on"), including hosts added later:
//     hosts reach the router (and through it the internet) but not each
//     other's LAN addresses, as under Wi-Fi client isolation.
//   - [Site.EnableHairpin] (KindCone only) adds NAT loopback for UDP: a LAN
//     host's packet to PublicIP and a mapped port is dnat'ed through the
//     cone map to the LAN endpoint owning that port, and source-NATed to the
//     sender's own public mapping (RFC 4787 REQ-9), looked up in a second
//     learnt map (LAN endpoint -> public endpoint); a sender with no mapping
//     yet gets the public address and its own port. Replies go back through
//     the router. The rules live in their own chains (hairpin, hairpinsrc),
//     so Rebind leaves them alone, and after a Rebind the receiver sees the
//     sender's new mapping.
//
// Together they model two agents behind one NAT that can meet only through
// their public candidates: isolated without hairpinning, only a relay
// outside connects them. TestLabIsolateLAN and TestHairpin show both.
//
// # Traps (each cost time; keep them in mind when changing the rules)
//
//   - Without the input drop on a home router, an early punch packet
//     creates a conntrack entry for the router itself; the later outbound
//     flow collides with it and masquerade silently picks another port, so
//     punching fails. A packet dropped in a hook leaves no conntrack entry.
//   - The full-cone map must be learnt after NAT (postrouting, priority
//     above srcnat) and keyed by the translated port; the LAN endpoint comes
//     from conntrack (original source for outbound flows, reply source for
//     flows that came in through the map).
//   - "masquerade to :range" needs "meta l4proto { tcp, udp }" first. With
//     a range, masquerade still maps endpoint-independently: it reuses an
//     existing mapping of the same LAN address:port; "random" disables that.
//   - conntrack -F does not change a public port: masquerade hands the same
//     one back. [Site.Rebind] narrows masquerade to a port range excluding
//     every port in use, then flushes.
//   - "numgen random mod 100 < 100" does not parse (values are 0..99): 100%
//     loss is a plain drop rule.
//   - Taking a masquerading link down drops its NAT mappings and every route
//     through it; [Site.LinkUp] puts the default route back.
//   - Flows that have seen replies use nf_conntrack_udp_timeout_stream, not
//     nf_conntrack_udp_timeout; both are per namespace.
//   - br_netfilter is built into this kernel and bridge-nf-call-iptables
//     defaults to 1 in every new namespace: bridged LAN traffic would pass the
//     router's IP hooks and conntrack. natlab turns it off per namespace.
//   - /proc/sys/net resolves against the calling thread's namespace, and a
//     process forked from a thread that joined a namespace starts inside it:
//     natlab sets sysctls and runs nft, conntrack and tc that way.
//   - A packet a LAN host sends to the public address before hairpinning is
//     on makes a conntrack entry with no NAT (it is for the router itself);
//     later packets of that flow follow it and bypass the hairpin rules
//     until it expires. EnableHairpin deletes such entries.
//   - The kernel has no netem: delay and jitter must be emulated in user
//     space. tbf works for rate limits.
//   - The internet namespace forwards between ports of one bridge, which
//     makes Linux send ICMP redirects: they are disabled, as are rp_filter
//     and IPv6 (the lab is IPv4 only).
//
// Namespaces of a test binary that was killed before its cleanups ran are
// removed by the next [New] (claims in /run/natlab record the owning PID).
package natlab
