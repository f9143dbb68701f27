package bench

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/quic-go/quic-go"

	"github.com/agentnet/agentnet/addressing"
	"github.com/agentnet/agentnet/rendezvous"
	"github.com/agentnet/agentnet/trustdb"
)

// The rendezvous on its stores, side by side: bbolt with one server, etcd
// with one server, etcd with three servers sharing one etcd cluster. The
// servers run in child processes (role roleRendezvousStore), etcd is three
// processes of the etcd binary (Debian's etcd-server), agents are in this
// process.

// roleRendezvousStore is the child role prefix; the rest is a storeSpec.
const roleRendezvousStore = "rendezvous-store:"

// clusterConfig is one column of configurations, one scenario each.
type clusterConfig struct {
	name    string // scenario name
	etcd    bool
	servers int
}

var clusterConfigs = []clusterConfig{
	{"rdv-bbolt-1", false, 1},
	{"rdv-etcd-1", true, 1},
	{"rdv-etcd-3", true, 3},
}

func clusterMetrics() []metricDef {
	return []metricDef{
		{"registrations/s", higher}, {"lookups/s", higher}, {"trust requests/s", higher},
		{"push p50 µs (across servers if 3)", lower}, {"push p99 µs", lower},
		{"server CPU µs/registration", lower}, {"server CPU µs/lookup", lower}, {"server CPU µs/trust request", lower},
		{"etcd CPU µs/registration", lower}, {"etcd CPU µs/trust request", lower},
		{"etcd round trips/registration", lower}, {"etcd round trips/lookup", lower}, {"etcd round trips/trust request", lower},
	}
}

// clusterScenarios are the plan's rows for the rendezvous stores.
func clusterScenarios() []scenario {
	var out []scenario
	for _, cc := range clusterConfigs {
		out = append(out, scenario{
			name: cc.name,
			title: func(sz Sizes) string {
				store := "bbolt"
				if cc.etcd {
					store = "etcd (3 members)"
				}
				return fmt.Sprintf("rendezvous on %s, %d server(s), %d agents", store, cc.servers, clusterAgents(sz))
			},
			metrics: clusterMetrics(),
			once:    true,
			only:    []System{Agentnet},
			onlyWhy: "no rendezvous",
			timeout: func(Sizes) time.Duration { return 5 * time.Minute },
			run: func(ctx context.Context, _ System, _ *Rig, sz Sizes) ([]float64, error) {
				return RendezvousCluster(ctx, sz, cc)
			},
		})
	}
	return out
}

// clusterAgents is how many agents register: the rendezvous scenario's
// count, at most 5000 (etcd rows pay an fsync'd write each).
func clusterAgents(sz Sizes) int { return min(sz.RendezvousAgents, 5000) }

// storeSpec is what a roleRendezvousStore child runs: "bbolt" or
// "etcd <endpoints> <prefix>", then the identity file, tab-separated.
func storeSpec(store, keyFile string) string { return store + "\t" + keyFile }

// storeChild runs a rendezvous server on the store spec describes.
func storeChild(spec string) (childServer, error) {
	store, keyFile, ok := strings.Cut(spec, "\t")
	if !ok {
		return childServer{}, fmt.Errorf("bad store spec %q", spec)
	}
	id, _, err := trustdb.LoadOrCreateIdentity(keyFile)
	if err != nil {
		return childServer{}, err
	}
	dir, err := os.MkdirTemp("", "agentnet-bench-store-")
	if err != nil {
		return childServer{}, err
	}
	cfg := rendezvous.ServerConfig{Addr: "127.0.0.1:0", DataDir: filepath.Join(dir, "data"), Identity: id, Limits: benchLimits(), RelayAddr: "-"}
	var es *rendezvous.EtcdStore
	if f := strings.Fields(store); len(f) == 3 && f[0] == "etcd" {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		es, err = rendezvous.OpenEtcdStore(ctx, rendezvous.EtcdConfig{Endpoints: strings.Split(f[1], ","), Prefix: f[2]})
		cancel()
		if err != nil {
			os.RemoveAll(dir)
			return childServer{}, err
		}
		cfg.Store = es
	}
	srv, err := rendezvous.NewServer(cfg)
	if err == nil {
		err = srv.Start()
	}
	if err != nil {
		if es != nil {
			es.Close()
		}
		os.RemoveAll(dir)
		return childServer{}, err
	}
	return childServer{
		ready: []string{srv.Addr().String(), srv.PublicKey().String()},
		stats: func() map[string]int64 {
			st := srv.Stats()
			m := map[string]int64{"conns": int64(st.Conns), "sessions": int64(st.Sessions)}
			if ss, err := srv.StoreStats(); err == nil && ss.Etcd != nil {
				e := ss.Etcd
				m["etcd_rt"] = int64(e.Txns + e.Conflicts + e.Reads + e.Errors)
			}
			return m
		},
		close: func() {
			srv.Close()
			if es != nil {
				es.Close()
			}
			os.RemoveAll(dir)
		},
	}, nil
}

// etcdProcs is a three-member etcd cluster of etcd binary processes.
type etcdProcs struct {
	endpoints []string
	cmds      []*exec.Cmd
	dir       string
}

// startEtcd starts three etcd processes (fsync on, as in production) on
// free 127.0.0.1 ports and waits until they serve.
func startEtcd(ctx context.Context) (*etcdProcs, error) {
	bin, err := exec.LookPath("etcd")
	if err != nil {
		return nil, notSupported("no etcd binary (apt-get install etcd-server)")
	}
	dir, err := os.MkdirTemp("", "agentnet-bench-etcd-")
	if err != nil {
		return nil, err
	}
	e := &etcdProcs{dir: dir}
	var ports []int
	var ls []net.Listener
	for range 6 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		ls = append(ls, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	for _, l := range ls {
		l.Close()
	}
	var initial []string
	for i := range 3 {
		initial = append(initial, fmt.Sprintf("b%d=http://127.0.0.1:%d", i, ports[2*i+1]))
	}
	token := fmt.Sprintf("bench-%d", time.Now().UnixNano())
	for i := range 3 {
		client := fmt.Sprintf("http://127.0.0.1:%d", ports[2*i])
		peer := fmt.Sprintf("http://127.0.0.1:%d", ports[2*i+1])
		cmd := exec.Command(bin, "--name", fmt.Sprintf("b%d", i), "--data-dir", filepath.Join(dir, strconv.Itoa(i)),
			"--listen-client-urls", client, "--advertise-client-urls", client,
			"--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
			"--initial-cluster", strings.Join(initial, ","), "--initial-cluster-token", token,
			"--initial-cluster-state", "new", "--log-level", "error")
		if err := cmd.Start(); err != nil {
			e.stop()
			return nil, err
		}
		e.cmds = append(e.cmds, cmd)
		e.endpoints = append(e.endpoints, client)
	}
	// Ready when a store opens on it.
	deadline := time.Now().Add(30 * time.Second)
	for {
		cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		s, err := rendezvous.OpenEtcdStore(cctx, rendezvous.EtcdConfig{Endpoints: e.endpoints, Prefix: "/bench-ready/", Timeout: 2 * time.Second})
		cancel()
		if err == nil {
			s.Close()
			return e, nil
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			e.stop()
			return nil, fmt.Errorf("bench: etcd not ready: %w", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// cpu returns the CPU time the etcd processes have used.
func (e *etcdProcs) cpu() time.Duration {
	var total time.Duration
	for _, c := range e.cmds {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", c.Process.Pid))
		if err != nil {
			continue
		}
		// Fields after the command name (in parentheses): utime is 14th, stime 15th overall.
		s := string(b)
		f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
		if len(f) > 12 {
			ut, _ := strconv.ParseInt(f[11], 10, 64)
			st, _ := strconv.ParseInt(f[12], 10, 64)
			total += time.Duration(ut+st) * 10 * time.Millisecond // USER_HZ = 100
		}
	}
	return total
}

func (e *etcdProcs) stop() {
	for _, c := range e.cmds {
		c.Process.Signal(syscall.SIGKILL)
		c.Wait()
	}
	os.RemoveAll(e.dir)
}

// clusterRun is one configuration being measured.
type clusterRun struct {
	servers []*child
	addrs   []string
	key     addressing.PublicKey
	etcd    *etcdProcs
	trs     []*quic.Transport
}

// totals sums the servers' stats: CPU, etcd round trips, sessions.
func (r *clusterRun) totals(ctx context.Context) (cpu time.Duration, rt, sessions int64, err error) {
	for _, c := range r.servers {
		st, err := c.stats(ctx, false)
		if err != nil {
			return 0, 0, 0, err
		}
		cpu += time.Duration(st["cpu_ns"])
		rt += st["etcd_rt"]
		sessions += st["sessions"]
	}
	return cpu, rt, sessions, nil
}

func (r *clusterRun) etcdCPU() time.Duration {
	if r.etcd == nil {
		return 0
	}
	return r.etcd.cpu()
}

// client registers id with server i and returns the client.
func (r *clusterRun) client(ctx context.Context, id *trustdb.Identity, server, tr int, deliver func(context.Context, []byte) error) (*rendezvous.Client, error) {
	c, err := rendezvous.NewClient(rendezvous.ClientConfig{
		Identity: id, Transport: r.trs[tr%len(r.trs)], ServerAddr: r.addrs[server], ServerKey: r.key, Deliver: deliver,
	})
	if err != nil {
		return nil, err
	}
	c.Start()
	if err := c.WaitReady(ctx); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

// phase measures one workload: wall time, server CPU, etcd CPU and etcd
// round trips per operation.
type phase struct {
	rate                float64
	cpuPerOp, etcdPerOp float64 // µs
	rtPerOp             float64
}

func (r *clusterRun) measure(ctx context.Context, n int, work func() error) (phase, error) {
	cpu0, rt0, _, err := r.totals(ctx)
	if err != nil {
		return phase{}, err
	}
	e0 := r.etcdCPU()
	start := time.Now()
	if err := work(); err != nil {
		return phase{}, err
	}
	wall := time.Since(start)
	cpu1, rt1, _, err := r.totals(ctx)
	if err != nil {
		return phase{}, err
	}
	e1 := r.etcdCPU()
	return phase{
		rate:      float64(n) / wall.Seconds(),
		cpuPerOp:  micros(cpu1-cpu0) / float64(n),
		etcdPerOp: micros(e1-e0) / float64(n),
		rtPerOp:   float64(rt1-rt0) / float64(n),
	}, nil
}

// RendezvousCluster measures one store configuration: registrations
// (connect, register, disconnect), lookups and trust requests (from
// connected agents spread over the servers, to random registered agents,
// which are offline: lookups answer NotFound, requests go to mailboxes),
// and the latency of a trust request from an agent on the first server to
// a live agent on the last one (Send called → message delivered). Per
// operation it reports the servers' CPU, the etcd processes' CPU and the
// etcd round trips the servers made (transactions, conflicts, reads).
func RendezvousCluster(ctx context.Context, sz Sizes, cc clusterConfig) ([]float64, error) {
	r := &clusterRun{}
	dir, err := os.MkdirTemp("", "agentnet-bench-cluster-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	keyFile := filepath.Join(dir, "cluster.key")
	id, _, err := trustdb.LoadOrCreateIdentity(keyFile)
	if err != nil {
		return nil, err
	}
	r.key = id.PublicKey()
	store := "bbolt"
	if cc.etcd {
		if r.etcd, err = startEtcd(ctx); err != nil {
			return nil, err
		}
		defer r.etcd.stop()
		store = fmt.Sprintf("etcd %s /bench-%d/", strings.Join(r.etcd.endpoints, ","), time.Now().UnixNano())
	}
	for range cc.servers {
		ch, err := startChild(ctx, roleRendezvousStore+storeSpec(store, keyFile))
		if err != nil {
			return nil, err
		}
		defer ch.close()
		r.servers = append(r.servers, ch)
		r.addrs = append(r.addrs, ch.ready[0])
	}
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

	n := clusterAgents(sz)
	ids := make([]*trustdb.Identity, n)
	for i := range ids {
		if ids[i], err = trustdb.GenerateIdentity(); err != nil {
			return nil, err
		}
	}
	reg, err := r.measure(ctx, n, func() error {
		return parallel(ctx, n, rdvWorkers, func(i int) error {
			c, err := r.client(ctx, ids[i], i%cc.servers, i, nil)
			if err != nil {
				return err
			}
			return c.Close()
		})
	})
	if err != nil {
		return nil, fmt.Errorf("bench: registrations: %w", err)
	}

	// Askers: 8 connected agents over the servers.
	askers := make([]*rendezvous.Client, 8)
	askerIDs := make([]*trustdb.Identity, len(askers))
	defer func() {
		for _, c := range askers {
			if c != nil {
				c.Close()
			}
		}
	}()
	for i := range askers {
		if askerIDs[i], err = trustdb.GenerateIdentity(); err != nil {
			return nil, err
		}
		if askers[i], err = r.client(ctx, askerIDs[i], i%cc.servers, i, nil); err != nil {
			return nil, err
		}
	}
	ops := sz.RendezvousOps
	look, err := r.measure(ctx, ops, func() error {
		return parallel(ctx, ops, 8*len(askers), func(i int) error {
			rnd := rand.New(rand.NewPCG(uint64(i), 2))
			_, err := askers[i%len(askers)].Lookup(ctx, addressing.TargetAddr(ids[rnd.IntN(n)].Addr()))
			if errors.Is(err, rendezvous.ErrNotFound) {
				err = nil
			}
			return err
		})
	})
	if err != nil {
		return nil, fmt.Errorf("bench: lookups: %w", err)
	}
	msgs := make([][]byte, ops)
	for i := range msgs {
		m, err := trustdb.NewMessage(askerIDs[i%len(askers)], trustdb.KindRequest, addressing.TargetAddr(ids[i%n].Addr()), [trustdb.NonceSize]byte{}, "", "bench")
		if err != nil {
			return nil, err
		}
		if msgs[i], err = m.MarshalBinary(); err != nil {
			return nil, err
		}
	}
	trust, err := r.measure(ctx, ops, func() error {
		return parallel(ctx, ops, 8*len(askers), func(i int) error {
			return askers[i%len(askers)].Send(ctx, msgs[i])
		})
	})
	if err != nil {
		return nil, fmt.Errorf("bench: trust requests: %w", err)
	}

	// Push latency: a on the first server, b (live) on the last.
	push, err := r.pushLatency(ctx, min(200, max(20, ops/5)), cc.servers-1)
	if err != nil {
		return nil, fmt.Errorf("bench: push: %w", err)
	}
	vals := []float64{reg.rate, look.rate, trust.rate, micros(push.P50()), micros(push.P99()),
		reg.cpuPerOp, look.cpuPerOp, trust.cpuPerOp}
	if cc.etcd {
		vals = append(vals, reg.etcdPerOp, trust.etcdPerOp, reg.rtPerOp, look.rtPerOp, trust.rtPerOp)
	} else {
		vals = append(vals, 0, 0, 0, 0, 0)
	}
	return vals, nil
}

// pushLatency sends k trust requests one by one from an agent on server 0
// to an agent on server last and returns the time from Send to delivery.
func (r *clusterRun) pushLatency(ctx context.Context, k, last int) (Latency, error) {
	aID, err := trustdb.GenerateIdentity()
	if err != nil {
		return nil, err
	}
	bID, err := trustdb.GenerateIdentity()
	if err != nil {
		return nil, err
	}
	got := make(chan time.Time, 1)
	b, err := r.client(ctx, bID, last, 6, func(context.Context, []byte) error {
		select {
		case got <- time.Now():
		default:
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	defer b.Close()
	a, err := r.client(ctx, aID, 0, 7, nil)
	if err != nil {
		return nil, err
	}
	defer a.Close()
	var mu sync.Mutex
	var lat Latency
	for range k {
		m, err := trustdb.NewMessage(aID, trustdb.KindRequest, addressing.TargetAddr(bID.Addr()), [trustdb.NonceSize]byte{}, "", "")
		if err != nil {
			return nil, err
		}
		raw, err := m.MarshalBinary()
		if err != nil {
			return nil, err
		}
		start := time.Now()
		if err := a.Send(ctx, raw); err != nil {
			return nil, err
		}
		select {
		case at := <-got:
			mu.Lock()
			lat = append(lat, at.Sub(start))
			mu.Unlock()
		case <-time.After(10 * time.Second):
			return nil, errors.New("a trust request was not delivered within 10 s")
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	return lat, nil
}
