package natlab

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Site is a router of some Kind with a LAN behind it. Its event and
// impairment methods act on the WAN side of the site's outermost router (the
// carrier router for KindDouble), except where noted, and are safe for
// concurrent use.
type Site struct {
	lab   *Lab
	name  string
	kind  Kind
	lan   netip.Prefix
	outer *router // owns the public address
	gw    *router // the LAN's default gateway; == outer unless KindDouble

	hosts    int      // guarded by lab.mu
	ports    []string // the hosts' ports on the gateway's br0; guarded by lab.mu
	isolated bool     // IsolateLAN was called; guarded by lab.mu
}

// router is a router namespace and the state of its nftables impairments.
type router struct {
	host    *Host
	kind    Kind // KindNone, KindHome, KindSymmetric or KindCone
	gw      netip.Addr
	lanAddr netip.Addr

	uplink     *Host  // namespace at the other end of wan0
	uplinkPort string // name of wan0's peer in uplink

	mu         sync.Mutex // serialises changes to the ruleset and qdiscs
	loss       int
	blocks     []block
	rebinds    int
	mapTimeout time.Duration
	rate       int64 // bit/s, 0 = unlimited
	hairpin    bool
	pub        netip.Addr // the WAN address after Renumber; zero: host.ip
}

// Name returns the site's name.
func (s *Site) Name() string { return s.name }

// Kind returns the site's NAT kind.
func (s *Site) Kind() Kind { return s.kind }

// LAN returns the prefix of the site's LAN.
func (s *Site) LAN() netip.Prefix { return s.lan }

// Router returns the site's outermost router, whose WAN address is
// PublicIP (for KindDouble, the carrier router).
func (s *Site) Router() *Host { return s.outer.host }

// Gateway returns the router on the site's LAN, the hosts' default gateway.
// It is Router except for KindDouble, where it is the home router behind the
// carrier.
func (s *Site) Gateway() *Host { return s.gw.host }

// PublicIP returns the site's address on the internet: what a server there
// sees as the source of the site's hosts. For KindNone the hosts keep their
// own public addresses and this is the router's WAN address.
func (s *Site) PublicIP() netip.Addr {
	r := s.outer
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.publicLocked()
}

func (r *router) publicLocked() netip.Addr {
	if r.pub.IsValid() {
		return r.pub
	}
	return r.host.ip
}

// Renumber gives the site's NAT a new public address, as an ISP renumbering
// a line does: the next free public address is added to the WAN link, the
// old one removed, and the conntrack table flushed, so every flow leaves
// from the new address on its next packet and nothing reaches the old one.
// It returns the new address (PublicIP from now on; Router().IP() stays
// the first). It fails for KindNone and while hairpinning is on (its rules
// name the address).
func (s *Site) Renumber() (netip.Addr, error) {
	r := s.outer
	if r.kind == KindNone {
		return netip.Addr{}, fmt.Errorf("natlab: site %s has no NAT to renumber", s.name)
	}
	s.lab.mu.Lock()
	next, err := s.lab.allocWAN()
	s.lab.mu.Unlock()
	if err != nil {
		return netip.Addr{}, err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.hairpin {
		return netip.Addr{}, fmt.Errorf("natlab: renumber %s: hairpinning names the old address", s.name)
	}
	old := r.publicLocked()
	ctx := context.Background()
	// Removing a subnet's primary address removes its secondaries too
	// unless they are promoted.
	if err := r.host.ns.sysctl([][2]string{{"net.ipv4.conf." + wanIf + ".promote_secondaries", "1"}}, false); err != nil {
		return netip.Addr{}, err
	}
	err = runIP(ctx, r.host.ns.name, []string{
		fmt.Sprintf("addr add %s/%d dev %s", next, internetBits, wanIf),
		fmt.Sprintf("addr del %s/%d dev %s", old, internetBits, wanIf),
		"route replace default via " + r.gw.String(),
	})
	if err != nil {
		return netip.Addr{}, fmt.Errorf("natlab: renumber %s: %w", s.name, err)
	}
	r.pub = next
	if err := r.flush(); err != nil {
		return netip.Addr{}, err
	}
	if r.kind == KindCone {
		if _, err := r.host.ns.exec(ctx, "flush map "+nftTable+" cone\nflush map "+nftTable+" conesrc\n", "nft", "-f", "-"); err != nil {
			return netip.Addr{}, err
		}
	}
	return next, nil
}

func (s *Site) routers() []*router {
	if s.gw == s.outer {
		return []*router{s.outer}
	}
	return []*router{s.gw, s.outer}
}

// AddHost adds a host to the site's LAN (192.168.S.10 and up; public
// 198.19.S.10 and up for KindNone). Host names are unique in the lab. It
// fails the test given to New on error, so call it from that test's
// goroutine.
func (s *Site) AddHost(name string) *Host {
	s.lab.tb.Helper()
	h, err := s.addHost(name)
	if err != nil {
		s.lab.tb.Fatal(err)
	}
	return h
}

func (s *Site) addHost(name string) (*Host, error) {
	l := s.lab
	l.mu.Lock()
	defer l.mu.Unlock()
	if err := l.reserve(name); err != nil {
		return nil, err
	}
	if s.hosts >= maxHostsPerSite {
		return nil, fmt.Errorf("natlab: site %s is full", s.name)
	}
	a := s.lan.Addr().As4()
	a[3] = byte(10 + s.hosts)
	s.hosts++
	ip := netip.AddrFrom4(a)
	ns := l.nsName(name)
	port := l.port()
	gw := s.gw.host
	err := runIP(context.Background(), "", []string{
		"netns add " + ns,
		fmt.Sprintf("link add %s netns %s type veth peer name eth0 netns %s", port, gw.ns.name, ns),
	})
	if err != nil {
		return nil, err
	}
	h, err := l.open(ns, name, ip)
	if err != nil {
		return nil, err
	}
	s.ports = append(s.ports, port)
	h.site, h.port = s, port
	err = parallel(
		func() error { return attachPort(gw, port, s.isolated) },
		func() error {
			if err := h.ns.baseSysctls(false); err != nil {
				return err
			}
			return runIP(context.Background(), ns, hostLines("eth0", netip.PrefixFrom(ip, s.lan.Bits()), s.gw.lanAddr))
		},
	)
	if err != nil {
		return nil, err
	}
	return h, nil
}

// MoveTo moves a LAN host to site s's LAN, as a laptop changing networks
// does: its link to the old LAN is deleted (with its address and routes),
// a new one to s's LAN comes up with the next free address there, and the
// default route points at s's gateway. A socket bound to the unspecified
// address stays open and sends from the new address; one bound to the old
// address can no longer send. It returns the new address.
func (h *Host) MoveTo(s *Site) (netip.Addr, error) {
	l := h.lab
	l.mu.Lock()
	defer l.mu.Unlock()
	h.mu.Lock()
	from, oldPort := h.site, h.port
	h.mu.Unlock()
	if from == nil {
		return netip.Addr{}, fmt.Errorf("natlab: %s is not on a site's LAN", h.name)
	}
	if s.lab != l {
		return netip.Addr{}, fmt.Errorf("natlab: site %s is in another lab", s.name)
	}
	if s.hosts >= maxHostsPerSite {
		return netip.Addr{}, fmt.Errorf("natlab: site %s is full", s.name)
	}
	a := s.lan.Addr().As4()
	a[3] = byte(10 + s.hosts)
	s.hosts++
	ip := netip.AddrFrom4(a)
	port := l.port()
	gw := s.gw.host
	ctx := context.Background()
	if err := runIP(ctx, h.ns.name, []string{"link del eth0"}); err != nil {
		return netip.Addr{}, fmt.Errorf("natlab: move %s: %w", h.name, err)
	}
	from.ports = slices.DeleteFunc(from.ports, func(p string) bool { return p == oldPort })
	if err := runIP(ctx, "", []string{fmt.Sprintf("link add %s netns %s type veth peer name eth0 netns %s", port, gw.ns.name, h.ns.name)}); err != nil {
		return netip.Addr{}, fmt.Errorf("natlab: move %s: %w", h.name, err)
	}
	s.ports = append(s.ports, port)
	if err := attachPort(gw, port, s.isolated); err != nil {
		return netip.Addr{}, err
	}
	if err := h.ns.baseSysctls(false); err != nil {
		return netip.Addr{}, err
	}
	if err := runIP(ctx, h.ns.name, hostLines("eth0", netip.PrefixFrom(ip, s.lan.Bits()), s.gw.lanAddr)); err != nil {
		return netip.Addr{}, fmt.Errorf("natlab: move %s: %w", h.name, err)
	}
	h.mu.Lock()
	h.ip, h.site, h.port = ip, s, port
	h.mu.Unlock()
	return ip, nil
}

// IsolateLAN cuts the site's hosts off from each other at layer 2, as
// "client isolation" on a Wi-Fi access point does: every host's port on the
// LAN bridge becomes an isolated bridge port (bridge_slave isolated on), now
// and for hosts added later. Hosts still reach the router, and through it
// the internet, but no longer each other's LAN addresses (not even their
// ARP requests get through). Two hosts of an isolated LAN talk only through
// the router: by hairpinning (EnableHairpin) or via a relay outside.
func (s *Site) IsolateLAN() error {
	l := s.lab
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return errors.New("natlab: lab is closed")
	}
	var lines []string
	for _, p := range s.ports {
		lines = append(lines, isolateLine(p))
	}
	if err := runIP(context.Background(), s.gw.host.ns.name, lines); err != nil {
		return err
	}
	s.isolated = true
	return nil
}

// EnableHairpin makes the site's full-cone router hairpin UDP: a LAN host
// that sends to the site's public address and a mapped port reaches the LAN
// host that owns the mapping, and sees replies come from that public
// address and port. The receiver sees the packets come from the sender's
// own public mapping (the public address, with the sender's port kept if
// it has no mapping yet), so its replies go back through the router. Only
// KindCone has the table of mappings this needs; other kinds fail. Calling
// it again is a no-op.
func (s *Site) EnableHairpin() error {
	r := s.outer
	if r.kind != KindCone {
		return fmt.Errorf("natlab: site %s is %s: hairpinning needs a %s router", s.name, s.kind, KindCone)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.hairpin {
		return nil
	}
	ctx := context.Background()
	if _, err := r.host.ns.exec(ctx, hairpinRules(r.publicLocked(), s.lan), "nft", "-f", "-"); err != nil {
		return err
	}
	// Packets a LAN host already sent to the public address made conntrack
	// entries without NAT (they went to the router itself); later packets of
	// those flows would follow them, bypassing the hairpin until they expire.
	lan := s.lan.Masked()
	mask := net.IP(net.CIDRMask(lan.Bits(), 32)).String()
	_, err := r.host.ns.exec(ctx, "", "conntrack", "-D", "-p", "udp",
		"-s", lan.Addr().String(), "--mask-src", mask, "-d", r.publicLocked().String())
	if err != nil && !strings.Contains(err.Error(), "0 flow entries have been deleted") {
		return err
	}
	r.hairpin = true
	return nil
}

// FlushConntrack empties the connection tracking table of every router of
// the site (conntrack -F). Masquerade keeps the public port of a flow that
// resumes: this is the benign "NAT reboot", not a rebinding.
func (s *Site) FlushConntrack() error {
	for _, r := range s.routers() {
		if err := r.flush(); err != nil {
			return err
		}
	}
	return nil
}

func (r *router) flush() error {
	_, err := r.host.ns.exec(context.Background(), "", "conntrack", "-F")
	return err
}

var portRE = regexp.MustCompile(`(?:sport|dport)=(\d+)`)

// Rebind forces new public ports for the site's existing flows: masquerade is
// restricted to a port range that excludes every port in use, then the
// conntrack table is flushed (and, for KindCone, the learnt mappings
// forgotten). The public address stays. It fails for KindNone.
func (s *Site) Rebind() error {
	r := s.outer
	if r.kind == KindNone {
		return fmt.Errorf("natlab: site %s has no NAT to rebind", s.name)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	ctx := context.Background()
	out, err := r.host.ns.exec(ctx, "", "conntrack", "-L")
	if err != nil {
		return err
	}
	var used []int
	for _, m := range portRE.FindAllSubmatch(out, -1) {
		if p, err := strconv.Atoi(string(m[1])); err == nil {
			used = append(used, p)
		}
	}
	const width, first, slots = 2000, 10000, 27 // ranges 10000-11999 .. 62000-63999
	lo := 0
	for i := range slots {
		c := first + ((r.rebinds+i)%slots)*width
		if !slices.ContainsFunc(used, func(p int) bool { return p >= c && p < c+width }) {
			lo = c
			r.rebinds += i + 1
			break
		}
	}
	if lo == 0 {
		return fmt.Errorf("natlab: rebind %s: no free port range", s.name)
	}
	if _, err := r.host.ns.exec(ctx, replaceChain("postrouting", masqueradeRules(r.kind, lo, lo+width-1)), "nft", "-f", "-"); err != nil {
		return err
	}
	if err := r.flush(); err != nil {
		return err
	}
	if r.kind == KindCone {
		if _, err := r.host.ns.exec(ctx, "flush map "+nftTable+" cone\nflush map "+nftTable+" conesrc\n", "nft", "-f", "-"); err != nil {
			return err
		}
	}
	return nil
}

// LinkDown takes the site's WAN link down. The kernel drops the
// masquerade mappings of the link and the routes through it.
func (s *Site) LinkDown() error {
	return runIP(context.Background(), s.outer.host.ns.name, []string{"link set " + wanIf + " down"})
}

// LinkUp brings the site's WAN link back and restores its default route.
func (s *Site) LinkUp() error {
	return runIP(context.Background(), s.outer.host.ns.name, []string{
		"link set " + wanIf + " up",
		"route replace default via " + s.outer.gw.String(),
	})
}

// SetLoss drops percent of the packets crossing the site's WAN link, in each
// direction independently (nft numgen). 0 removes the loss.
func (s *Site) SetLoss(percent int) error {
	if percent < 0 || percent > 100 {
		return fmt.Errorf("natlab: loss %d%% out of range", percent)
	}
	r := s.outer
	r.mu.Lock()
	defer r.mu.Unlock()
	r.loss = percent
	return r.applyImpairLocked()
}

// BlockUDPTo drops UDP between the site and peers in prefix, both ways,
// keeping the NAT state (unlike LinkDown). Use it to force traffic to a
// relay; Unblock lifts it.
func (s *Site) BlockUDPTo(prefix netip.Prefix) error {
	if !prefix.IsValid() || !prefix.Addr().Is4() {
		return fmt.Errorf("natlab: bad prefix %v", prefix)
	}
	return s.addBlock(block{prefix: []netip.Prefix{prefix}})
}

// BlockUDPExcept drops all UDP between the site and the internet except with
// the allowed prefixes (typically the rendezvous host): direct paths to peers
// fail while the rendezvous and its relay keep working. Unblock lifts it.
func (s *Site) BlockUDPExcept(allow ...netip.Prefix) error {
	for _, p := range allow {
		if !p.IsValid() || !p.Addr().Is4() {
			return fmt.Errorf("natlab: bad prefix %v", p)
		}
	}
	return s.addBlock(block{except: true, prefix: slices.Clone(allow)})
}

// BlockAllUDP drops all UDP between the site and the internet, as many
// corporate networks and hosted sandboxes do; TCP still crosses. Unblock
// lifts it.
func (s *Site) BlockAllUDP() error { return s.addBlock(block{except: true}) }

// AllowOnlyTCPTo drops everything between the site and the internet but
// TCP with ap (an HTTP proxy, say): no direct route at all. Unblock lifts it.
func (s *Site) AllowOnlyTCPTo(ap netip.AddrPort) error {
	if !ap.IsValid() || !ap.Addr().Is4() {
		return fmt.Errorf("natlab: bad address %v", ap)
	}
	return s.addBlock(block{tcpOnly: ap})
}

// ResetTCPTo makes the site's router answer TCP from the site to ap with
// resets (nft "reject with tcp reset"), which cuts the site's live TCP
// connections to ap at their next packet; Unblock lifts it (with the other
// blocks).
func (s *Site) ResetTCPTo(ap netip.AddrPort) error {
	if !ap.IsValid() || !ap.Addr().Is4() {
		return fmt.Errorf("natlab: bad address %v", ap)
	}
	return s.addBlock(block{reset: ap})
}

// Unreset removes the blocks ResetTCPTo set; the other blocks stay.
func (s *Site) Unreset() error {
	r := s.outer
	r.mu.Lock()
	defer r.mu.Unlock()
	kept := r.blocks[:0]
	for _, b := range r.blocks {
		if !b.reset.IsValid() {
			kept = append(kept, b)
		}
	}
	r.blocks = kept
	return r.applyImpairLocked()
}

func (s *Site) addBlock(b block) error {
	r := s.outer
	r.mu.Lock()
	defer r.mu.Unlock()
	r.blocks = append(r.blocks, b)
	return r.applyImpairLocked()
}

// Unblock removes every block (BlockUDPTo, BlockUDPExcept, BlockAllUDP,
// AllowOnlyTCPTo, ResetTCPTo). Loss stays.
func (s *Site) Unblock() error {
	r := s.outer
	r.mu.Lock()
	defer r.mu.Unlock()
	r.blocks = nil
	return r.applyImpairLocked()
}

func (r *router) applyImpairLocked() error {
	_, err := r.host.ns.exec(context.Background(), replaceChain("impair", impairRules(r.loss, r.blocks)), "nft", "-f", "-")
	return err
}

// SetUDPTimeout sets how long an idle UDP mapping lives on every router of
// the site: both nf_conntrack_udp_timeout (flows without replies) and
// nf_conntrack_udp_timeout_stream (flows that saw replies, 120 s by
// default), and the lifetime of full-cone mappings. The new value applies
// from each flow's next packet. d is rounded to whole seconds, at least 1.
func (s *Site) SetUDPTimeout(d time.Duration) error {
	if d <= 0 {
		return errors.New("natlab: udp timeout must be positive")
	}
	secs := strconv.Itoa(max(int(d.Round(time.Second)/time.Second), 1))
	for _, r := range s.routers() {
		err := r.host.ns.sysctl([][2]string{
			{"net.netfilter.nf_conntrack_udp_timeout", secs},
			{"net.netfilter.nf_conntrack_udp_timeout_stream", secs},
		}, false)
		if err != nil {
			return err
		}
		if r.kind == KindCone {
			r.mu.Lock()
			r.mapTimeout = d
			_, err := r.host.ns.exec(context.Background(), replaceChain("learn", learnRules(d)), "nft", "-f", "-")
			r.mu.Unlock()
			if err != nil {
				return err
			}
		}
	}
	return nil
}

// SetRate limits the site's WAN link to bitsPerSecond in each direction
// with a token bucket (tc tbf on both ends of the link; packets that wait
// more than 50 ms are dropped). 0 removes the limit.
func (s *Site) SetRate(bitsPerSecond int64) error {
	if bitsPerSecond < 0 {
		return fmt.Errorf("natlab: rate %d out of range", bitsPerSecond)
	}
	r := s.outer
	r.mu.Lock()
	defer r.mu.Unlock()
	ctx := context.Background()
	ends := []struct {
		h   *Host
		dev string
	}{{r.host, wanIf}, {r.uplink, r.uplinkPort}}
	for _, e := range ends {
		var err error
		switch {
		case bitsPerSecond > 0:
			// The bucket must hold at least one full packet and a tick's worth of tokens.
			burst := max(bitsPerSecond/8/100, 16<<10)
			_, err = e.h.ns.exec(ctx, "", "tc", "qdisc", "replace", "dev", e.dev, "root", "tbf",
				"rate", strconv.FormatInt(bitsPerSecond, 10)+"bit",
				"burst", strconv.FormatInt(burst, 10), "latency", "50ms")
		case r.rate > 0:
			_, err = e.h.ns.exec(ctx, "", "tc", "qdisc", "del", "dev", e.dev, "root")
		}
		if err != nil {
			return err
		}
	}
	r.rate = bitsPerSecond
	return nil
}
