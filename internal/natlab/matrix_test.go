package natlab_test

import (
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/agentnet/agentnet/internal/natlab"
)

const (
	probeEvery  = 50 * time.Millisecond
	probeWindow = 3 * time.Second
)

// notDirect lists the pairs where plain UDP hole punching must fail: an
// endpoint-dependent mapping on one side and a filter that only admits the
// endpoints it sent to on the other.
var notDirect = map[string]bool{
	"home/symmetric":      true,
	"symmetric/symmetric": true,
	"symmetric/double":    true,
}

// punchResult is what one side of a punch saw.
type punchResult struct {
	direct bool   // both sides heard each other
	pathA  string // how A heard B: "lan", "public" or "prflx" (peer-reflexive)
	pathB  string
}

func (r punchResult) String() string {
	if !r.direct {
		return "relay"
	}
	if r.pathA == r.pathB {
		return r.pathA
	}
	return r.pathA + "+" + r.pathB
}

// TestPunchMatrix punches UDP holes between every pair of kinds (and between
// two hosts behind one home NAT) in one lab, all pairs at once, each pair on
// fresh sockets: both sides learn their public mapping from a reflector,
// then probe every 50 ms for up to 3 s the peer's public and LAN addresses
// and any address they heard the peer from.
func TestPunchMatrix(t *testing.T) {
	natlab.Require(t)
	lab := natlab.New(t)
	refl := startReflector(t, lab.AddPublicHost("rdv"), 3478)

	hosts := map[natlab.Kind][2]*natlab.Host{}
	var sameA, sameB *natlab.Host
	for _, k := range natlab.Kinds {
		var hs [2]*natlab.Host
		for i := range hs {
			site := lab.AddSite(fmt.Sprintf("%s%d", k, i+1), k)
			hs[i] = site.AddHost(fmt.Sprintf("%s%d-a", k, i+1))
			if k == natlab.KindHome && i == 0 {
				sameA = hs[i]
				sameB = site.AddHost(fmt.Sprintf("%s%d-b", k, i+1))
			}
		}
		hosts[k] = hs
	}

	var pairs []punchPair
	for i, ka := range natlab.Kinds {
		for _, kb := range natlab.Kinds[i:] {
			pairs = append(pairs, punchPair{ka: ka, kb: kb, a: hosts[ka][0], b: hosts[kb][1]})
		}
	}
	pairs = append(pairs, punchPair{a: sameA, b: sameB})

	results := make([]punchResult, len(pairs))
	errs := make([]error, len(pairs))
	start := time.Now()
	var wg sync.WaitGroup
	for i, p := range pairs {
		wg.Go(func() { results[i], errs[i] = punch(p.a, p.b, refl.addr) })
	}
	wg.Wait()
	t.Logf("%d pairs punched at once in %v", len(pairs), time.Since(start))

	for i, p := range pairs {
		t.Run(p.name(), func(t *testing.T) {
			require.NoError(t, errs[i])
			r := results[i]
			if p.ka == "" {
				require.True(t, r.direct, "two hosts behind one NAT talk over the LAN")
				require.Equal(t, "lan", r.String(), "no hairpinning: the LAN path is the one that works")
				return
			}
			require.Equal(t, !notDirect[p.name()], r.direct, "direct path between %s (got %v)", p.name(), r)
		})
	}
	t.Log("measured punch matrix (direct as lan/public/prflx: how each side heard the peer; relay: no direct path):\n" +
		matrixTable(pairs, results))
}

// punchPair is one case of the matrix; the zero kinds mean two hosts of one site.
type punchPair struct {
	ka, kb natlab.Kind
	a, b   *natlab.Host
}

func (p punchPair) name() string {
	if p.ka == "" {
		return "same-site"
	}
	return string(p.ka) + "/" + string(p.kb)
}

func matrixTable(pairs []punchPair, results []punchResult) string {
	cell := map[[2]natlab.Kind]string{}
	same := ""
	for i, p := range pairs {
		if p.ka == "" {
			same = results[i].String()
			continue
		}
		cell[[2]natlab.Kind{p.ka, p.kb}] = results[i].String()
		cell[[2]natlab.Kind{p.kb, p.ka}] = results[i].String()
	}
	var b strings.Builder
	fmt.Fprintf(&b, "%-10s", "")
	for _, k := range natlab.Kinds {
		fmt.Fprintf(&b, " %-13s", k)
	}
	b.WriteString("\n")
	for _, ka := range natlab.Kinds {
		fmt.Fprintf(&b, "%-10s", ka)
		for _, kb := range natlab.Kinds {
			fmt.Fprintf(&b, " %-13s", cell[[2]natlab.Kind{ka, kb}])
		}
		b.WriteString("\n")
	}
	fmt.Fprintf(&b, "same-site (two hosts behind one home NAT): %s", same)
	return b.String()
}

// punch runs a hole punch between a and b on fresh sockets.
func punch(a, b *natlab.Host, refl netip.AddrPort) (punchResult, error) {
	ca, err := a.ListenUDP(":0")
	if err != nil {
		return punchResult{}, err
	}
	defer ca.Close()
	cb, err := b.ListenUDP(":0")
	if err != nil {
		return punchResult{}, err
	}
	defer cb.Close()
	ma, err := observe(ca, refl, 8)
	if err != nil {
		return punchResult{}, fmt.Errorf("reflexive address of %s: %w", a.Name(), err)
	}
	mb, err := observe(cb, refl, 8)
	if err != nil {
		return punchResult{}, fmt.Errorf("reflexive address of %s: %w", b.Name(), err)
	}
	lanA := netip.AddrPortFrom(a.IP(), localAddr(ca).Port())
	lanB := netip.AddrPortFrom(b.IP(), localAddr(cb).Port())

	id := nonce()
	var heardA, heardB atomic.Bool
	deadline := time.Now().Add(probeWindow)
	var fromA, fromB netip.AddrPort
	var wg sync.WaitGroup
	wg.Go(func() { fromA = prober(ca, id, "a", []netip.AddrPort{mb, lanB}, &heardA, &heardB, deadline) })
	wg.Go(func() { fromB = prober(cb, id, "b", []netip.AddrPort{ma, lanA}, &heardB, &heardA, deadline) })
	wg.Wait()

	path := func(from, public, lan netip.AddrPort) string {
		switch from {
		case public:
			return "public"
		case lan:
			return "lan"
		}
		return "prflx"
	}
	r := punchResult{direct: heardA.Load() && heardB.Load()}
	if r.direct {
		r.pathA = path(fromA, mb, lanB)
		r.pathB = path(fromB, ma, lanA)
	}
	return r, nil
}

// prober sends "punch <id> <me>" to every target every probeEvery until both
// sides have heard each other or the deadline passes. A probe heard from a
// new address adds it to the targets (peer-reflexive learning). It returns
// the address the peer was first heard from.
func prober(c *net.UDPConn, id, me string, targets []netip.AddrPort, heard, peerHeard *atomic.Bool, deadline time.Time) netip.AddrPort {
	defer c.SetReadDeadline(time.Time{})
	mine := []byte("punch " + id + " " + me)
	buf := make([]byte, 1500)
	var from netip.AddrPort
	for time.Now().Before(deadline) && !(heard.Load() && peerHeard.Load()) {
		for _, to := range targets {
			_, _ = c.WriteToUDPAddrPort(mine, to)
		}
		tick := time.Now().Add(probeEvery)
		for {
			_ = c.SetReadDeadline(tick)
			n, src, err := c.ReadFromUDPAddrPort(buf)
			if err != nil {
				break
			}
			id2, who, ok := strings.Cut(strings.TrimPrefix(string(buf[:n]), "punch "), " ")
			if !ok || id2 != id || who == me {
				continue
			}
			if !heard.Load() {
				from = src
				heard.Store(true)
			}
			if !slices.Contains(targets, src) {
				targets = append(targets, src)
			}
		}
	}
	// One last round so that a peer that heard us late also hears us.
	for _, to := range targets {
		_, _ = c.WriteToUDPAddrPort(mine, to)
	}
	return from
}
