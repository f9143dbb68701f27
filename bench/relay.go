package bench

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/agentnet/agentnet/addressing"
	"github.com/agentnet/agentnet/rendezvous"
)

// The relay scenario: one hub and three clients of it at one rendezvous
// (in a child process, so its CPU is measured apart from the agents'), each
// client on another network (see nodeNet):
//
//   - direct: an open client, on a direct path (for comparison);
//   - UDP relay: a client whose main socket reaches the rendezvous only, so
//     the pair runs through the relay on UDP;
//   - over TCP: a client with no UDP at all, on the rendezvous's TCP
//     (TLS + WebSocket) listener: the relay carries the pair, the hub's
//     side on UDP, the client's through the tunnel.
//
// Each path gets the same bulk transfer and ping-pong, paths alternating
// within each repetition. The relayed paths also report the rendezvous
// process's CPU per GiB relayed. The server relays with its per-session
// budget lifted to liftedRelayRate, so the rows measure the relay, not its
// limiter; a second server in the same child keeps the default budget
// (rendezvous.DefaultRelayRate), and one more relayed client, of a hub of
// its own there, measures bulk under it.
//
// Every path is checked before and after it is measured (the client's link
// to the hub is direct or relayed, on UDP or TCP, as it should be; the
// relay forwarded at least the transfer's bytes on a relayed path, and
// hardly any on the direct one), so a row can never silently measure
// another path. Under -rtt, the UDP sockets of the nodes are delayed as in
// every scenario, the TCP tunnel (like all TCP in the bench) is not, so
// the path over TCP sees half the added round trip.

// roleRelayRendezvous is the child running the scenario's two servers.
const roleRelayRendezvous = "relay-rendezvous"

// The relay budget of the relay scenario's main server: far above what
// loopback carries, so the limiter never drops.
const (
	liftedRelayRate  = 1 << 30 // bytes/s per session
	liftedRelayBurst = 64 << 20
)

// relayBudgetWarmup is sent before the default-budget measurement: more
// than the default burst (1 MiB), so the measurement sees the rate.
const relayBudgetWarmup = 3 << 19

func relayMetrics() []metricDef {
	return []metricDef{
		{"direct: bulk MB/s", higher},
		{"direct: ping-pong p50 µs", lower},
		{"direct: ping-pong p99 µs", lower},
		{"UDP relay: bulk MB/s", higher},
		{"UDP relay: ping-pong p50 µs", lower},
		{"UDP relay: ping-pong p99 µs", lower},
		{"UDP relay: server CPU-s/GiB", lower},
		{"UDP relay: bulk / direct", higher},
		{"UDP relay: p50 / direct", lower},
		{"over TCP: bulk MB/s", higher},
		{"over TCP: ping-pong p50 µs", lower},
		{"over TCP: ping-pong p99 µs", lower},
		{"over TCP: server CPU-s/GiB", lower},
		{"over TCP: bulk / UDP relay", higher},
		{"over TCP: p50 / direct", lower},
		{"default " + byteSize(rendezvous.DefaultRelayRate) + "/s budget: UDP relay MB/s", higher},
		{"floor: quic-go direct p50 µs", lower},
		{"floor: quic-go via bare forwarder p50 µs", lower},
		{"floor: forwarder p50 / direct", lower},
		{"UDP relay: p50 / floor", lower},
		{"over TCP: p50 / floor", lower},
	}
}

// The floor rows put raw quic-go's ping-pong beside itself through a bare
// UDP forwarder in the relay's child process (forwarder: a read and a
// write per packet, no header, no lookup, no limiter): what any relay in
// another process costs a round trip on this machine, before agentnet's.
// The forwarder learns its target from a one-byte datagram (QUIC never
// sends one) and forwards everything else from anyone to it, and the
// target's packets to the last sender.

// bareForwarder runs the floor rows' forwarder on a loopback socket.
type bareForwarder struct {
	c         *net.UDPConn
	done      chan struct{}
	forwarded atomic.Int64 // packets
}

func startBareForwarder() (*bareForwarder, error) {
	c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		return nil, err
	}
	f := &bareForwarder{c: c, done: make(chan struct{})}
	go f.run()
	return f, nil
}

func (f *bareForwarder) run() {
	defer close(f.done)
	buf := make([]byte, 64<<10)
	var target, last netip.AddrPort
	for {
		n, from, err := f.c.ReadFromUDPAddrPort(buf)
		if err != nil {
			return
		}
		switch {
		case n == 1:
			target = from
		case from == target:
			if last.IsValid() {
				f.c.WriteToUDPAddrPort(buf[:n], last)
				f.forwarded.Add(1)
			}
		case target.IsValid():
			last = from
			f.c.WriteToUDPAddrPort(buf[:n], target)
			f.forwarded.Add(1)
		}
	}
}

func (f *bareForwarder) close() {
	f.c.Close()
	<-f.done
}

func relayScenario() scenario {
	return scenario{
		name: "relay",
		title: func(sz Sizes) string {
			return fmt.Sprintf("relay paths (server in a child, budget lifted), bulk %s, ping-pong (%d)", byteSize(sz.RelayBytes), sz.RelayPingPongs)
		},
		metrics: relayMetrics(),
		once:    true, // repeated inside, on one setup
		only:    []System{Agentnet},
		onlyWhy: "no relay",
		timeout: func(Sizes) time.Duration { return 3 * time.Minute },
		run: func(ctx context.Context, _ System, _ *Rig, sz Sizes) ([]float64, error) {
			return RelayPaths(ctx, sz)
		},
	}
}

// relayRendezvousChild runs the scenario's two rendezvous servers with
// benchLimits: the main one with the relay budget lifted and its TCP
// listener on, the other with the default budget and no TCP.
func relayRendezvousChild() (childServer, error) {
	dir, err := os.MkdirTemp("", "agentnet-bench-relay-")
	if err != nil {
		return childServer{}, err
	}
	lifted := benchLimits()
	lifted.RelayRate, lifted.RelayBurst = liftedRelayRate, liftedRelayBurst
	var srvs []*rendezvous.Server
	fwd, err := startBareForwarder()
	if err != nil {
		os.RemoveAll(dir)
		return childServer{}, err
	}
	closeAll := func() {
		for _, s := range srvs {
			s.Close()
		}
		fwd.close()
		os.RemoveAll(dir)
	}
	for i, cfg := range []rendezvous.ServerConfig{
		{Limits: lifted, TCP: rendezvous.TCPConfig{Addr: "127.0.0.1:0"}},
		{Limits: benchLimits()},
	} {
		cfg.Addr = "127.0.0.1:0"
		cfg.DataDir = filepath.Join(dir, fmt.Sprint(i))
		s, err := rendezvous.NewServer(cfg)
		if err == nil {
			srvs = append(srvs, s)
			err = s.Start()
		}
		if err != nil {
			closeAll()
			return childServer{}, err
		}
	}
	var ready []string
	for _, s := range srvs {
		tcp := "-"
		if a := s.TCPAddr(); a != nil {
			tcp = a.String()
		}
		ready = append(ready, s.Addr().String(), s.PublicKey().String(), tcp, s.STUNAddr().String(), s.RelayAddr().String())
	}
	ready = append(ready, fwd.c.LocalAddr().String())
	return childServer{
		ready: ready,
		stats: func() map[string]int64 {
			m := make(map[string]int64)
			for i, s := range srvs {
				rs := s.RelayStats()
				m[fmt.Sprintf("relay%d_bytes", i)] = int64(rs.ForwardedBytes)
				m[fmt.Sprintf("relay%d_over_limit", i)] = int64(rs.DroppedOverLimit)
			}
			m["fwd_packets"] = fwd.forwarded.Load()
			return m
		},
		close: closeAll,
	}, nil
}

// parseRelayReady reads the servers of relayRendezvousChild's ready line
// and the bare forwarder's address.
func parseRelayReady(f []string) ([]rdvAt, netip.AddrPort, error) {
	const per = 5
	if len(f) != 2*per+1 {
		return nil, netip.AddrPort{}, fmt.Errorf("bench: relay rendezvous child: ready line %q", f)
	}
	fwd, err := netip.ParseAddrPort(f[2*per])
	if err != nil {
		return nil, netip.AddrPort{}, fmt.Errorf("bench: relay rendezvous child: %w", err)
	}
	f = f[:2*per]
	var out []rdvAt
	for i := 0; i < len(f); i += per {
		key, err := addressing.ParsePublicKey(f[i+1])
		if err != nil {
			return nil, netip.AddrPort{}, err
		}
		at := rdvAt{addr: f[i], key: key}
		if f[i+2] != "-" {
			at.tcp = f[i+2]
		}
		for _, s := range []string{f[i], f[i+3], f[i+4]} {
			ap, err := netip.ParseAddrPort(s)
			if err != nil {
				return nil, netip.AddrPort{}, fmt.Errorf("bench: relay rendezvous child: %w", err)
			}
			at.udp = append(at.udp, ap)
		}
		out = append(out, at)
	}
	return out, fwd, nil
}

// relayPath is one client of the relay scenario and the path it must be on.
type relayPath struct {
	name      string
	dial      func(context.Context) (net.Conn, error)
	peers     func() []peerPath // the client node's links
	hub       addressing.PublicKey
	kind      string // "direct" or "relay"
	transport string // "udp" or "tcp"

	mbps, cpuGiB, p50, p99 []float64
}

type peerPath struct {
	key             addressing.PublicKey
	kind, transport string
	standby         bool
}

// check fails unless the client's link to the hub is the one wanted.
func (p *relayPath) check() error {
	var seen []string
	for _, l := range p.peers() {
		if l.key != p.hub || l.standby {
			continue
		}
		if l.kind == p.kind && l.transport == p.transport {
			return nil
		}
		seen = append(seen, l.kind+"/"+l.transport)
	}
	return fmt.Errorf("bench: %s client: link to the hub is %v, want %s/%s", p.name, seen, p.kind, p.transport)
}

func nodePaths(n *anode) func() []peerPath {
	return func() []peerPath {
		var out []peerPath
		for _, s := range n.node.Peers() {
			out = append(out, peerPath{key: s.Key, kind: s.Path, transport: s.Transport, standby: s.Standby})
		}
		return out
	}
}

// RelayPaths runs the relay scenario (see relayScenario) and returns the
// values in the order of relayMetrics. Ratios are ratios of the medians.
func RelayPaths(ctx context.Context, sz Sizes) ([]float64, error) {
	ch, err := startChild(ctx, roleRelayRendezvous)
	if err != nil {
		return nil, err
	}
	defer ch.close()
	ats, fwdAddr, err := parseRelayReady(ch.ready)
	if err != nil {
		return nil, err
	}
	// The floor: raw quic-go, its server registered at the forwarder.
	qe, err := NewQUICEnv(ctx)
	if err != nil {
		return nil, err
	}
	qrig := NewRig(qe)
	defer qrig.Close()
	qenv := qe.(*quicEnv)
	if _, err := qenv.udp.WriteToUDPAddrPort([]byte{0}, fwdAddr); err != nil {
		return nil, err
	}
	viaFwd, err := qenv.newPeer()
	if err != nil {
		return nil, err
	}
	defer viaFwd.Close()
	viaFwd.to = net.UDPAddrFromAddrPort(fwdAddr)
	var floorDirect, floorFwd []float64
	env, err := newAgentnetEnv(ctx, &ats[0])
	if err != nil {
		return nil, err
	}
	rig := NewRig(env)
	defer rig.Close()
	envDefault, err := newAgentnetEnv(ctx, &ats[1])
	if err != nil {
		return nil, err
	}
	rigDefault := NewRig(envDefault)
	defer rigDefault.Close()

	hub := env.hub.node.PublicKey()
	direct := &relayPath{name: "direct", dial: env.Dial, peers: nodePaths(env.client), hub: hub, kind: "direct", transport: "udp"}
	udp := &relayPath{name: "UDP relay", hub: hub, kind: "relay", transport: "udp"}
	tcp := &relayPath{name: "over TCP", hub: hub, kind: "relay", transport: "tcp"}
	budget := &relayPath{name: "default budget", hub: envDefault.hub.node.PublicKey(), kind: "relay", transport: "udp"}

	// The clients start, register, get trusted and dial at once: most of
	// the setup is the protocol's timers (the TCP-only node's 1.5 s UDP
	// probe, the relay dial's 1.5 s of punching first).
	var mu sync.Mutex
	setup := []struct {
		p   *relayPath
		env *agentnetEnv
		how nodeNet
	}{{direct, env, netOpen}, {udp, env, netRelayOnly}, {tcp, env, netTCPOnly}, {budget, envDefault, netRelayOnly}}
	if err := parallel(ctx, len(setup), len(setup), func(i int) error {
		s := setup[i]
		if s.p.dial == nil {
			peer, err := s.env.newPeer(ctx, s.how)
			if err != nil {
				return fmt.Errorf("bench: %s client: %w", s.p.name, err)
			}
			mu.Lock()
			s.p.dial, s.p.peers = peer.Dial, nodePaths(peer.n)
			mu.Unlock()
		}
		e, err := openEcho(ctx, s.p.dial)
		if err != nil {
			return fmt.Errorf("bench: %s client: first dial: %w", s.p.name, err)
		}
		err = e.roundTrip(1)
		e.c.Close()
		if err != nil {
			return fmt.Errorf("bench: %s client: first round trip: %w", s.p.name, err)
		}
		return s.p.check()
	}); err != nil {
		return nil, err
	}

	paths := []*relayPath{direct, udp, tcp}
	for i := range max(sz.Reps, 1) {
		for j := range paths {
			p := paths[(i+j)%len(paths)]
			s0, err := ch.stats(ctx, false)
			if err != nil {
				return nil, err
			}
			t, err := bulkOn(ctx, p.dial, sz.RelayBytes)
			if err != nil {
				return nil, fmt.Errorf("bench: %s: bulk: %w", p.name, err)
			}
			s1, err := ch.stats(ctx, false)
			if err != nil {
				return nil, err
			}
			relayed := s1["relay0_bytes"] - s0["relay0_bytes"]
			switch {
			case p.kind == "relay" && relayed < sz.RelayBytes:
				return nil, fmt.Errorf("bench: %s: the relay forwarded %d bytes of a %d-byte transfer", p.name, relayed, sz.RelayBytes)
			case p.kind == "direct" && relayed > sz.RelayBytes/10:
				return nil, fmt.Errorf("bench: %s: the relay forwarded %d bytes of a %d-byte transfer", p.name, relayed, sz.RelayBytes)
			}
			if n := s1["relay0_over_limit"] - s0["relay0_over_limit"]; n > 0 {
				return nil, fmt.Errorf("bench: %s: the lifted budget dropped %d frames", p.name, n)
			}
			serverCPU := time.Duration(s1["cpu_ns"] - s0["cpu_ns"])
			p.mbps = append(p.mbps, t.MBps())
			p.cpuGiB = append(p.cpuGiB, serverCPU.Seconds()/(float64(t.Bytes)/(1<<30)))
			lat, err := pingPongOn(ctx, p.dial, sz.RelayPingPongs)
			if err != nil {
				return nil, fmt.Errorf("bench: %s: ping-pong: %w", p.name, err)
			}
			p.p50 = append(p.p50, micros(lat.P50()))
			p.p99 = append(p.p99, micros(lat.P99()))
			if err := p.check(); err != nil { // still on its path
				return nil, err
			}
		}
		for j := range 2 {
			dial, into, via := qenv.Dial, &floorDirect, false
			if (i+j)%2 == 1 {
				dial, into, via = viaFwd.Dial, &floorFwd, true
			}
			s0, err := ch.stats(ctx, false)
			if err != nil {
				return nil, err
			}
			lat, err := pingPongOn(ctx, dial, sz.RelayPingPongs)
			if err != nil {
				return nil, fmt.Errorf("bench: floor: ping-pong: %w", err)
			}
			s1, err := ch.stats(ctx, false)
			if err != nil {
				return nil, err
			}
			// Each round trip is two packets at least (one each way); the
			// forwarded connection's last ACKs may cross the direct run.
			switch n := s1["fwd_packets"] - s0["fwd_packets"]; {
			case via && n < 2*int64(sz.RelayPingPongs):
				return nil, fmt.Errorf("bench: floor: the forwarder forwarded %d packets of %d round trips", n, sz.RelayPingPongs)
			case !via && n > int64(sz.RelayPingPongs)/10:
				return nil, fmt.Errorf("bench: floor: the forwarder forwarded %d packets of the direct ping-pong", n)
			}
			*into = append(*into, micros(lat.P50()))
		}
	}

	// Bulk under the default budget: past the burst first.
	if _, err := bulkOn(ctx, budget.dial, relayBudgetWarmup); err != nil {
		return nil, fmt.Errorf("bench: %s: bulk: %w", budget.name, err)
	}
	bt, err := bulkOn(ctx, budget.dial, sz.RelayBudgetBytes)
	if err != nil {
		return nil, fmt.Errorf("bench: %s: bulk: %w", budget.name, err)
	}
	if err := budget.check(); err != nil {
		return nil, err
	}

	m := func(v []float64) float64 { return median(v) }
	ratio := func(a, b float64) float64 {
		if b == 0 {
			return 0
		}
		return a / b
	}
	return []float64{
		m(direct.mbps), m(direct.p50), m(direct.p99),
		m(udp.mbps), m(udp.p50), m(udp.p99), m(udp.cpuGiB),
		ratio(m(udp.mbps), m(direct.mbps)), ratio(m(udp.p50), m(direct.p50)),
		m(tcp.mbps), m(tcp.p50), m(tcp.p99), m(tcp.cpuGiB),
		ratio(m(tcp.mbps), m(udp.mbps)), ratio(m(tcp.p50), m(direct.p50)),
		bt.MBps(),
		m(floorDirect), m(floorFwd), ratio(m(floorFwd), m(floorDirect)),
		ratio(m(udp.p50), m(floorFwd)), ratio(m(tcp.p50), m(floorFwd)),
	}, nil
}
