// Package etcdtest runs a real etcd cluster inside a test process
// (go.etcd.io/etcd/server/v3/embed): members on 127.0.0.1 ports the test
// picks, data in the test's temporary directory, stopped in Cleanup. Only
// tests import it, so no binary links the etcd server.
package etcdtest

import (
	"fmt"
	"net"
	"net/url"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"
)

// Options tune a cluster. The zero value is a fast test cluster.
type Options struct {
	// Fsync keeps etcd's fsyncs (off by default: tests do not need
	// durability across a machine crash, and fsync dominates on a shared
	// VM). Benchmarks turn it on.
	Fsync bool
	// TickMs and ElectionMs are raft's heartbeat and election timeout
	// (defaults 25 and 250 ms: a lost leader is replaced in well under a
	// second).
	TickMs, ElectionMs uint
}

// Cluster is a running etcd cluster. Its methods are safe for concurrent
// use.
type Cluster struct {
	opts    Options
	token   string
	initial string

	mu      sync.Mutex
	members []*Member
}

// Member is one etcd member.
type Member struct {
	Name      string
	ClientURL string // http://127.0.0.1:port
	peerURL   string
	dir       string
	etcd      *embed.Etcd // nil while stopped
}

// Start starts a cluster of n members and waits until it has a leader.
func Start(t testing.TB, n int) *Cluster {
	t.Helper()
	return StartWith(t, n, Options{})
}

// StartWith starts a cluster of n members with opts.
func StartWith(t testing.TB, n int, opts Options) *Cluster {
	t.Helper()
	c, err := New(n, opts, t.TempDir())
	if err != nil {
		t.Fatalf("etcdtest: %v", err)
	}
	t.Cleanup(c.Close)
	return c
}

// New starts a cluster of n members with their data under dir, for a
// cluster shared by several tests (TestMain); the caller closes it.
func New(n int, opts Options, dir string) (*Cluster, error) {
	if opts.TickMs == 0 {
		opts.TickMs = 25
	}
	if opts.ElectionMs == 0 {
		opts.ElectionMs = 250
	}
	var lastErr error
	for try := range 3 { // ports are picked free, but may be taken before etcd binds them
		c, err := start(n, opts, filepath.Join(dir, fmt.Sprintf("try%d", try)))
		if err == nil {
			return c, nil
		}
		lastErr = err
	}
	return nil, lastErr
}

func start(n int, opts Options, dir string) (*Cluster, error) {
	ports, err := freePorts(2 * n)
	if err != nil {
		return nil, err
	}
	c := &Cluster{opts: opts, token: fmt.Sprintf("etcdtest-%d", time.Now().UnixNano())}
	var initial []string
	for i := range n {
		m := &Member{
			Name:      fmt.Sprintf("m%d", i),
			ClientURL: fmt.Sprintf("http://127.0.0.1:%d", ports[2*i]),
			peerURL:   fmt.Sprintf("http://127.0.0.1:%d", ports[2*i+1]),
			dir:       filepath.Join(dir, fmt.Sprintf("m%d", i)),
		}
		c.members = append(c.members, m)
		initial = append(initial, m.Name+"="+m.peerURL)
	}
	c.initial = strings.Join(initial, ",")
	// One after the other: a member starting asks its peers whether it
	// was bootstrapped before, and a peer whose port is open but which is
	// still bootstrapping itself answers only after a 1 s timeout; a peer
	// not listening yet answers at once. Readiness needs a quorum, so it
	// is waited for after all have started.
	for _, m := range c.members {
		if err := c.launch(m, embed.ClusterStateFlagNew); err != nil {
			c.Close()
			return nil, err
		}
	}
	for _, m := range c.members {
		if err := c.ready(m); err != nil {
			c.Close()
			return nil, err
		}
	}
	return c, nil
}

func freePorts(n int) ([]int, error) {
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	var ports []int
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		ls = append(ls, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

func mustURL(s string) url.URL {
	u, err := url.Parse(s)
	if err != nil {
		panic(err)
	}
	return *u
}

// launch starts m's etcd without waiting for it to serve.
func (c *Cluster) launch(m *Member, state string) error {
	cfg := embed.NewConfig()
	cfg.Name = m.Name
	cfg.Dir = m.dir
	cfg.InitialCluster = c.initial
	cfg.InitialClusterToken = c.token
	cfg.ClusterState = state
	cfg.ListenClientUrls = []url.URL{mustURL(m.ClientURL)}
	cfg.AdvertiseClientUrls = cfg.ListenClientUrls
	cfg.ListenPeerUrls = []url.URL{mustURL(m.peerURL)}
	cfg.AdvertisePeerUrls = cfg.ListenPeerUrls
	cfg.TickMs = c.opts.TickMs
	cfg.ElectionMs = c.opts.ElectionMs
	cfg.UnsafeNoFsync = !c.opts.Fsync
	cfg.EnableGRPCGateway = false
	cfg.ZapLoggerBuilder = embed.NewZapLoggerBuilder(zap.NewNop())
	cfg.Logger = "zap"
	cfg.LogLevel = "error"
	e, err := embed.StartEtcd(cfg)
	if err != nil {
		return fmt.Errorf("start %s: %w", m.Name, err)
	}
	c.mu.Lock()
	m.etcd = e
	c.mu.Unlock()
	return nil
}

// ready waits until m serves (has joined a cluster with a leader).
func (c *Cluster) ready(m *Member) error {
	c.mu.Lock()
	e := m.etcd
	c.mu.Unlock()
	select {
	case <-e.Server.ReadyNotify():
		return nil
	case err := <-e.Err():
		return fmt.Errorf("%s: %w", m.Name, err)
	case <-time.After(20 * time.Second):
		return fmt.Errorf("%s: not ready after 20 s", m.Name)
	}
}

// Endpoints returns the client URLs of every member (running or not).
func (c *Cluster) Endpoints() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make([]string, len(c.members))
	for i, m := range c.members {
		out[i] = m.ClientURL
	}
	return out
}

// Members returns the members.
func (c *Cluster) Members() []*Member {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]*Member(nil), c.members...)
}

// Leader returns the index of the member that is the raft leader, or -1.
func (c *Cluster) Leader() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	for i, m := range c.members {
		if m.etcd != nil && m.etcd.Server.Leader() == m.etcd.Server.MemberID() && m.etcd.Server.Leader() != 0 {
			return i
		}
	}
	return -1
}

// WaitLeader waits for a leader and returns its index.
func (c *Cluster) WaitLeader(timeout time.Duration) (int, error) {
	deadline := time.Now().Add(timeout)
	for {
		if i := c.Leader(); i >= 0 {
			return i, nil
		}
		if time.Now().After(deadline) {
			return -1, fmt.Errorf("etcdtest: no leader after %v", timeout)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// Stop stops member i abruptly, as a crash would (its data stays).
func (c *Cluster) Stop(i int) {
	c.mu.Lock()
	m := c.members[i]
	e := m.etcd
	m.etcd = nil
	c.mu.Unlock()
	if e != nil {
		e.Server.HardStop()
		e.Close()
	}
}

// Restart starts a stopped member again on its data.
func (c *Cluster) Restart(i int) error {
	c.mu.Lock()
	m := c.members[i]
	c.mu.Unlock()
	if err := c.launch(m, embed.ClusterStateFlagExisting); err != nil {
		return fmt.Errorf("etcdtest: restart: %w", err)
	}
	if err := c.ready(m); err != nil {
		return fmt.Errorf("etcdtest: restart: %w", err)
	}
	return nil
}

// Client returns a client of the cluster, closed in Cleanup.
func (c *Cluster) Client(t testing.TB) *clientv3.Client {
	t.Helper()
	cli, err := clientv3.New(clientv3.Config{Endpoints: c.Endpoints(), DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatalf("etcdtest: client: %v", err)
	}
	t.Cleanup(func() { cli.Close() })
	return cli
}

// Close stops every member. It is idempotent.
func (c *Cluster) Close() {
	c.mu.Lock()
	ms := append([]*Member(nil), c.members...)
	c.mu.Unlock()
	var wg sync.WaitGroup
	for i := range ms {
		wg.Add(1)
		go func() { defer wg.Done(); c.Stop(i) }()
	}
	wg.Wait()
}
