package natlab

import (
	"fmt"
	"net/netip"
	"strings"
	"time"
)

// Interface names inside router namespaces.
const (
	wanIf = "wan0" // towards the internet (or the carrier NAT)
	lanIf = "br0"  // bridge of the router's LAN
)

// nftTable is the one table natlab installs in a router namespace.
const nftTable = "ip natlab"

// defaultMapTimeout is how long a full-cone mapping lives without outbound
// traffic: the default nf_conntrack_udp_timeout_stream.
const defaultMapTimeout = 120 * time.Second

// rulesetFor renders the initial ruleset of a router of the given kind.
//
// Chains (nft reserves "fwd" and "in", hence the longer names):
//   - impair (forward, priority -10): loss and block rules, rewritten as a whole.
//   - forward / input (filter): address-and-port-dependent filtering; the input
//     drop keeps unsolicited WAN packets from creating conntrack entries for the
//     router itself, which would collide with later outbound flows and make
//     masquerade silently pick another port.
//   - postrouting (srcnat): masquerade, rewritten on Rebind.
//   - cone only: prerouting (dstnat) sends inbound UDP through the learnt map,
//     learn (postrouting, after srcnat) records WAN port -> LAN address:port
//     in @cone and the reverse, LAN address:port -> public address:port, in
//     @conesrc (used by hairpinning, see hairpinRules).
func rulesetFor(kind Kind) string {
	var b strings.Builder
	fmt.Fprintf(&b, "table %s {\n", nftTable)
	b.WriteString("\tchain impair { type filter hook forward priority -10; policy accept; }\n")
	if kind == KindNone {
		b.WriteString("}\n")
		return b.String()
	}
	if kind == KindCone {
		b.WriteString("\tmap cone { type inet_service : ipv4_addr . inet_service; flags dynamic, timeout; }\n")
		b.WriteString("\tmap conesrc { type ipv4_addr . inet_service : ipv4_addr . inet_service; flags dynamic, timeout; }\n")
		fmt.Fprintf(&b, "\tchain prerouting {\n\t\ttype nat hook prerouting priority dstnat; policy accept;\n")
		fmt.Fprintf(&b, "\t\tiifname %q meta l4proto udp dnat ip to udp dport map @cone\n\t}\n", wanIf)
		fmt.Fprintf(&b, "\tchain learn {\n\t\ttype filter hook postrouting priority 200; policy accept;\n%s\t}\n",
			indent(learnRules(defaultMapTimeout), 2))
	}
	b.WriteString("\tchain forward {\n\t\ttype filter hook forward priority filter; policy accept;\n")
	fmt.Fprintf(&b, "\t\tiifname %q ct state established,related accept\n", wanIf)
	if kind == KindCone {
		fmt.Fprintf(&b, "\t\tiifname %q ct status dnat accept\n", wanIf)
	}
	fmt.Fprintf(&b, "\t\tiifname %q drop\n\t}\n", wanIf)
	b.WriteString("\tchain input {\n\t\ttype filter hook input priority filter; policy accept;\n")
	fmt.Fprintf(&b, "\t\tiifname %q ct state established,related accept\n", wanIf)
	fmt.Fprintf(&b, "\t\tiifname %q drop\n\t}\n", wanIf)
	fmt.Fprintf(&b, "\tchain postrouting {\n\t\ttype nat hook postrouting priority srcnat; policy accept;\n%s\t}\n",
		indent(masqueradeRules(kind, 0, 0), 2))
	b.WriteString("}\n")
	return b.String()
}

// masqueradeRules renders the postrouting rules; lo..hi restricts the source
// ports of TCP and UDP (0, 0 = no restriction). Without "random" masquerade
// keeps the source port when it can and otherwise reuses an existing
// mapping of the same LAN address:port, which is what makes it
// endpoint-independent; "random" skips both and picks a fresh port per flow.
func masqueradeRules(kind Kind, lo, hi int) []string {
	flags := ""
	if kind == KindSymmetric {
		flags = " random"
	}
	var rules []string
	if lo > 0 {
		// "masquerade to :range" needs the protocol to be known.
		rules = append(rules, fmt.Sprintf("oifname %q meta l4proto { tcp, udp } masquerade to :%d-%d%s", wanIf, lo, hi, flags))
	}
	rules = append(rules, fmt.Sprintf("oifname %q masquerade%s", wanIf, flags))
	return rules
}

// learnRules renders the full-cone learning rules. They run after srcnat, so
// "ip saddr . udp sport" is the public endpoint; the LAN endpoint comes from
// conntrack: the original source for LAN-initiated flows, the reply source
// for flows that came in through the map. Every outbound packet refreshes
// both entries: @cone (WAN port -> LAN endpoint) and @conesrc (LAN endpoint
// -> public endpoint).
func learnRules(timeout time.Duration) []string {
	secs := max(int(timeout.Round(time.Second)/time.Second), 1)
	var rules []string
	for _, dir := range []string{"original", "reply"} {
		lan := fmt.Sprintf("ct %s ip saddr . ct %s proto-src", dir, dir)
		rules = append(rules, fmt.Sprintf("oifname %q meta l4proto udp ct direction %s update @cone { udp sport timeout %ds : %s } update @conesrc { %s timeout %ds : ip saddr . udp sport }",
			wanIf, dir, secs, lan, lan, secs))
	}
	return rules
}

// hairpinRules renders the two chains that make a full-cone router hairpin
// UDP: a LAN host's packet to the public address pub and a mapped port is
// dnat'ed through @cone to the LAN endpoint that owns the mapping, and
// source-NATed to the sender's own public endpoint (@conesrc; the public
// address with the port kept when the sender has no mapping yet), as RFC
// 4787 REQ-9 asks. The receiver's replies then go back through the router,
// which undoes both translations. The chains are separate from prerouting
// and postrouting, which Rebind rewrites.
func hairpinRules(pub netip.Addr, lan netip.Prefix) string {
	var b strings.Builder
	fmt.Fprintf(&b, "add chain %s hairpin { type nat hook prerouting priority dstnat; policy accept; }\n", nftTable)
	fmt.Fprintf(&b, "add chain %s hairpinsrc { type nat hook postrouting priority srcnat; policy accept; }\n", nftTable)
	fmt.Fprintf(&b, "flush chain %s hairpin\n", nftTable)
	fmt.Fprintf(&b, "flush chain %s hairpinsrc\n", nftTable)
	fmt.Fprintf(&b, "add rule %s hairpin iifname %q ip saddr %s ip daddr %s meta l4proto udp dnat ip to udp dport map @cone\n",
		nftTable, lanIf, lan.Masked(), pub)
	match := fmt.Sprintf("oifname %q ip saddr %s ct original ip daddr %s meta l4proto udp", lanIf, lan.Masked(), pub)
	fmt.Fprintf(&b, "add rule %s hairpinsrc %s snat ip to ip saddr . udp sport map @conesrc\n", nftTable, match)
	fmt.Fprintf(&b, "add rule %s hairpinsrc %s snat ip to %s\n", nftTable, match, pub)
	return b.String()
}

// replaceChain renders an atomic rewrite of one chain.
func replaceChain(chain string, rules []string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "flush chain %s %s\n", nftTable, chain)
	for _, r := range rules {
		fmt.Fprintf(&b, "add rule %s %s %s\n", nftTable, chain, r)
	}
	return b.String()
}

// impairRules renders the impair chain: random loss on both directions of
// the WAN link, then the UDP blocks.
func impairRules(loss int, blocks []block) []string {
	var rules []string
	switch {
	case loss >= 100: // numgen values are 0..99: "< 100" does not parse
		rules = append(rules,
			fmt.Sprintf("iifname %q drop", wanIf),
			fmt.Sprintf("oifname %q drop", wanIf))
	case loss > 0:
		rules = append(rules,
			fmt.Sprintf("iifname %q numgen random mod 100 < %d drop", wanIf, loss),
			fmt.Sprintf("oifname %q numgen random mod 100 < %d drop", wanIf, loss))
	}
	for _, bl := range blocks {
		rules = append(rules, bl.rules()...)
	}
	return rules
}

// block is one block on a router's WAN link: UDP to or except prefixes,
// or (tcpOnly) everything but TCP with one address and port, or (reset)
// TCP to one address and port answered with resets.
type block struct {
	except  bool           // block everything except prefixes
	prefix  []netip.Prefix // blocked (or, with except, allowed) peers
	tcpOnly netip.AddrPort // valid: only TCP with this address:port crosses
	reset   netip.AddrPort // valid: TCP to this address:port gets a reset
}

func (bl block) rules() []string {
	if ap := bl.tcpOnly; ap.IsValid() {
		a, p := ap.Addr().String(), ap.Port()
		return []string{
			fmt.Sprintf("oifname %q ip daddr != %s drop", wanIf, a),
			fmt.Sprintf("oifname %q meta l4proto != tcp drop", wanIf),
			fmt.Sprintf("oifname %q tcp dport != %d drop", wanIf, p),
			fmt.Sprintf("iifname %q ip saddr != %s drop", wanIf, a),
			fmt.Sprintf("iifname %q meta l4proto != tcp drop", wanIf),
			fmt.Sprintf("iifname %q tcp sport != %d drop", wanIf, p),
		}
	}
	if ap := bl.reset; ap.IsValid() {
		return []string{fmt.Sprintf("oifname %q ip daddr %s tcp dport %d reject with tcp reset", wanIf, ap.Addr(), ap.Port())}
	}
	if bl.except {
		if len(bl.prefix) == 0 {
			return []string{
				fmt.Sprintf("oifname %q meta l4proto udp drop", wanIf),
				fmt.Sprintf("iifname %q meta l4proto udp drop", wanIf),
			}
		}
		set := prefixSet(bl.prefix)
		return []string{
			fmt.Sprintf("oifname %q meta l4proto udp ip daddr != %s drop", wanIf, set),
			fmt.Sprintf("iifname %q meta l4proto udp ip saddr != %s drop", wanIf, set),
		}
	}
	set := prefixSet(bl.prefix)
	return []string{
		fmt.Sprintf("oifname %q meta l4proto udp ip daddr %s drop", wanIf, set),
		fmt.Sprintf("iifname %q meta l4proto udp ip saddr %s drop", wanIf, set),
	}
}

func prefixSet(ps []netip.Prefix) string {
	s := make([]string, len(ps))
	for i, p := range ps {
		s[i] = p.Masked().String()
	}
	return "{ " + strings.Join(s, ", ") + " }"
}

func indent(lines []string, depth int) string {
	var b strings.Builder
	for _, l := range lines {
		b.WriteString(strings.Repeat("\t", depth))
		b.WriteString(l)
		b.WriteString("\n")
	}
	return b.String()
}
