package bench

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/quic-go/quic-go"

	"github.com/agentnet/agentnet/addressing"
	"github.com/agentnet/agentnet/rendezvous"
	"github.com/agentnet/agentnet/trustdb"
)

// rendezvousChild runs a rendezvous server with its default bbolt store in
// a temporary directory and benchLimits.
func rendezvousChild() (childServer, error) {
	dir, err := os.MkdirTemp("", "agentnet-bench-rendezvous-")
	if err != nil {
		return childServer{}, err
	}
	srv, err := rendezvous.NewServer(rendezvous.ServerConfig{
		Addr:    "127.0.0.1:0",
		DataDir: filepath.Join(dir, "data"),
		Limits:  benchLimits(),
	})
	if err == nil {
		err = srv.Start()
	}
	if err != nil {
		os.RemoveAll(dir)
		return childServer{}, err
	}
	return childServer{
		ready: []string{srv.Addr().String(), srv.PublicKey().String()},
		stats: func() map[string]int64 {
			st := srv.Stats()
			return map[string]int64{"conns": int64(st.Conns), "sessions": int64(st.Sessions)}
		},
		close: func() { srv.Close(); os.RemoveAll(dir) },
	}, nil
}

// rdvWorkers is the number of agents registering at once.
const rdvWorkers = 32

// rdvScale is the rendezvous scale scenario in progress.
type rdvScale struct {
	ch   *child
	addr string
	key  addressing.PublicKey
	trs  []*quic.Transport

	mu   sync.Mutex
	idOf map[*rendezvous.Client]*trustdb.Identity
}

// RendezvousScale runs a rendezvous server in a child process and measures,
// with agents in this process:
//
//   - registrations/s: sz.RendezvousAgents agents each connect (QUIC
//     handshake), register and disconnect, rdvWorkers at a time; also per
//     CPU-second of the server process;
//   - lookups/s and trust requests/s: sz.RendezvousOps each, from a few
//     connected agents, of random registered agents (no trust pairs, so the
//     lookups are answered NotFound; requests go to offline agents'
//     mailboxes);
//   - server RSS per registered (offline) agent and per connected agent
//     (after a GC that returns freed memory to the OS; the bbolt file's
//     mapped pages count, as they do for the real server).
//
// It returns the values in the order of the scenario's metrics.
func RendezvousScale(ctx context.Context, sz Sizes) ([]float64, error) {
	ch, err := startChild(ctx, roleRendezvous)
	if err != nil {
		return nil, err
	}
	defer ch.close()
	if len(ch.ready) < 2 {
		return nil, fmt.Errorf("bench: rendezvous child: ready line %q", ch.ready)
	}
	key, err := addressing.ParsePublicKey(ch.ready[1])
	if err != nil {
		return nil, err
	}
	r := &rdvScale{ch: ch, addr: ch.ready[0], key: key}
	for range 8 {
		udp, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
		if err != nil {
			return nil, err
		}
		tr := &quic.Transport{Conn: udp}
		defer udp.Close()
		defer tr.Close()
		r.trs = append(r.trs, tr)
	}

	base, err := ch.stats(ctx, true)
	if err != nil {
		return nil, err
	}

	// Registrations: connect, register, disconnect.
	ids := make([]*trustdb.Identity, sz.RendezvousAgents)
	for i := range ids {
		if ids[i], err = trustdb.GenerateIdentity(); err != nil {
			return nil, err
		}
	}
	m := startMeter()
	if err := parallel(ctx, len(ids), rdvWorkers, func(i int) error {
		c, err := r.register(ctx, ids[i], i)
		if err != nil {
			return err
		}
		return c.Close()
	}); err != nil {
		return nil, err
	}
	regWall, _ := m.stop()
	afterReg, err := ch.stats(ctx, false)
	if err != nil {
		return nil, err
	}
	regCPU := time.Duration(afterReg["cpu_ns"] - base["cpu_ns"])
	offline, err := r.quiet(ctx, 0)
	if err != nil {
		return nil, err
	}

	// Connected agents, kept connected.
	conns := make([]*rendezvous.Client, sz.RendezvousConnected)
	defer func() {
		for _, c := range conns {
			if c != nil {
				c.Close()
			}
		}
	}()
	if err := parallel(ctx, len(conns), rdvWorkers, func(i int) error {
		id, err := trustdb.GenerateIdentity()
		if err != nil {
			return err
		}
		conns[i], err = r.register(ctx, id, i)
		return err
	}); err != nil {
		return nil, err
	}
	connected, err := r.quiet(ctx, len(conns))
	if err != nil {
		return nil, err
	}

	// Lookups and trust requests from the first few connected agents.
	askers := conns[:min(8, len(conns))]
	lookups, err := r.rate(ctx, sz.RendezvousOps, askers, func(ctx context.Context, c *rendezvous.Client, _ int, rnd *rand.Rand) error {
		t := addressing.TargetAddr(ids[rnd.IntN(len(ids))].Addr())
		_, err := c.Lookup(ctx, t)
		if errors.Is(err, rendezvous.ErrNotFound) {
			err = nil
		}
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("bench: lookups: %w", err)
	}
	// Signed before the clock starts: signing is the agent's work.
	msgs := make([][]byte, sz.RendezvousOps)
	askerIDs := make([]*trustdb.Identity, len(askers))
	for i := range askers {
		askerIDs[i] = r.idOf[askers[i]]
	}
	for i := range msgs {
		m, err := trustdb.NewMessage(askerIDs[i%len(askers)], trustdb.KindRequest,
			addressing.TargetAddr(ids[i%len(ids)].Addr()), [trustdb.NonceSize]byte{}, "", "bench")
		if err != nil {
			return nil, err
		}
		if msgs[i], err = m.MarshalBinary(); err != nil {
			return nil, err
		}
	}
	requests, err := r.rate(ctx, len(msgs), askers, func(ctx context.Context, c *rendezvous.Client, i int, _ *rand.Rand) error {
		return c.Send(ctx, msgs[i])
	})
	if err != nil {
		return nil, fmt.Errorf("bench: trust requests: %w", err)
	}

	n := float64(len(ids))
	return []float64{
		n / regWall.Seconds(),
		n / regCPU.Seconds(),
		lookups,
		requests,
		float64(offline["rss"]-base["rss"]) / n,
		float64(connected["rss"]-offline["rss"]) / float64(len(conns)),
	}, nil
}

// register connects a new agent and waits until it is registered.
func (r *rdvScale) register(ctx context.Context, id *trustdb.Identity, i int) (*rendezvous.Client, error) {
	c, err := rendezvous.NewClient(rendezvous.ClientConfig{
		Identity:   id,
		Transport:  r.trs[i%len(r.trs)],
		ServerAddr: r.addr,
		ServerKey:  r.key,
	})
	if err != nil {
		return nil, err
	}
	c.Start()
	if err := c.WaitReady(ctx); err != nil {
		c.Close()
		return nil, err
	}
	r.mu.Lock()
	if r.idOf == nil {
		r.idOf = make(map[*rendezvous.Client]*trustdb.Identity)
	}
	r.idOf[c] = id
	r.mu.Unlock()
	return c, nil
}

// quiet waits until the server has exactly conns connections and returns
// its stats after a GC.
func (r *rdvScale) quiet(ctx context.Context, conns int) (map[string]int64, error) {
	for {
		st, err := r.ch.stats(ctx, false)
		if err != nil {
			return nil, err
		}
		if st["conns"] == int64(conns) {
			break
		}
		select {
		case <-time.After(20 * time.Millisecond):
		case <-ctx.Done():
			return nil, fmt.Errorf("bench: rendezvous has %d connections, want %d: %w", st["conns"], conns, ctx.Err())
		}
	}
	return r.ch.stats(ctx, true)
}

// rate runs n requests spread over the clients, 8 at a time per client
// (the server allows 16 streams per connection), and returns requests/s.
func (r *rdvScale) rate(ctx context.Context, n int, clients []*rendezvous.Client, f func(ctx context.Context, c *rendezvous.Client, i int, rnd *rand.Rand) error) (float64, error) {
	m := startMeter()
	err := parallel(ctx, n, 8*len(clients), func(i int) error {
		rnd := rand.New(rand.NewPCG(uint64(i), 1))
		return f(ctx, clients[i%len(clients)], i, rnd)
	})
	wall, _ := m.stop()
	return float64(n) / wall.Seconds(), err
}
