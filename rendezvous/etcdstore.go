package rendezvous

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"math"
	mrand "math/rand/v2"
	"net/netip"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/btree"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/agentnet/agentnet/addressing"
	"github.com/agentnet/agentnet/trustdb"
)

// ErrStoreUnavailable: the store cannot answer now (an EtcdStore that has
// not heard from etcd within its lease TTL, or whose writes keep failing).
// Retry later, or on another server.
var ErrStoreUnavailable = errors.New("rendezvous: store unavailable")

// Defaults of EtcdConfig.
const (
	DefaultEtcdPrefix   = "/agentnet/rendezvous/"
	DefaultEtcdLeaseTTL = 5 * time.Second
	DefaultEtcdTimeout  = 5 * time.Second
)

// Bounds of what an EtcdStore writes.
const (
	etcdMaxKey    = 256
	etcdMaxValue  = 64 << 10
	etcdMaxTxnOps = 128 // etcd's default --max-txn-ops
	etcdPage      = 1000
)

// EtcdConfig configures an EtcdStore. Endpoints is required; the zero value
// of every other field takes its default.
type EtcdConfig struct {
	// Endpoints are the etcd members' client URLs or host:port pairs.
	Endpoints []string
	// TLS, if set, is used for every connection to etcd (client
	// certificates, a private CA).
	TLS *tls.Config
	// Username and Password authenticate to etcd (etcd's auth), if set.
	Username, Password string
	// Prefix is the key prefix of every record (default
	// DefaultEtcdPrefix). Servers sharing a service use the same prefix.
	Prefix string
	// LeaseTTL is the lease of this server's soft state (its agents'
	// sessions) and the time the store keeps answering without hearing from
	// etcd (default 5 s; at least 2 s).
	LeaseTTL time.Duration
	// Timeout bounds each Update, retries included, and the initial
	// connection (default 5 s).
	Timeout time.Duration
	// Advertise is the IP address agents connected to other servers use to
	// reach this server's relay (a relay session opened here for an agent
	// there). Default: the IP the server listens on, if it listens on one
	// address; with a wildcard listen address set it.
	Advertise netip.Addr
	// Logger receives diagnostics; nil discards them.
	Logger *slog.Logger
}

// ParseEtcdURL parses a store URL of the form
// "etcd://host1:2379,host2:2379[/prefix]" into endpoints and a key prefix
// ("" if none given).
func ParseEtcdURL(s string) (endpoints []string, prefix string, err error) {
	rest, ok := strings.CutPrefix(s, "etcd://")
	if !ok {
		return nil, "", fmt.Errorf("rendezvous: store %q: want etcd://host:port[,host:port...][/prefix]", s)
	}
	hosts, path, _ := strings.Cut(rest, "/")
	for _, h := range strings.Split(hosts, ",") {
		h = strings.TrimSpace(h)
		if h == "" {
			continue
		}
		u, err := url.Parse("http://" + h)
		if err != nil || u.Host != h || u.Port() == "" {
			return nil, "", fmt.Errorf("rendezvous: store %q: endpoint %q: want host:port", s, h)
		}
		endpoints = append(endpoints, h)
	}
	if len(endpoints) == 0 {
		return nil, "", fmt.Errorf("rendezvous: store %q: no etcd endpoint", s)
	}
	if path != "" {
		prefix = "/" + strings.TrimSuffix(path, "/") + "/"
	}
	return endpoints, prefix, nil
}

// EtcdStore is a Store in etcd, shared by any number of rendezvous servers
// (see the package doc, "Several servers"). Each store holds a replica of
// the whole keyspace under its prefix in memory, fed by an etcd watch:
// reads cost no etcd round trip, and each Update is one etcd transaction
// whose compares check that nothing it read has changed since.
//
// Layout (hex is lower case; times are 16 hex digits of appendTime, so
// they sort in time order; every value is the writer's 8-byte server ID
// followed by the record, encoded as in BoltStore):
//
//	a/<key hex>                    agent record
//	e/<last seen><key hex>         empty (expiry index, IdleAgents)
//	n/<NodeID hex>                 public key (NodeID index)
//	h/<hostname>                   public key (hostname index)
//	o/<time><key hex><nonce hex>   1 (replay cache, pruned by time)
//	p/<target hex><req hex>        pending request
//	r/<lower hex><higher hex>      trust pair
//	m/<to hex>/<id, 16 hex>        time ‖ mailbox message
//	M/<to hex>                     uint64: the last mailbox id (ids never repeat)
//	c/agents, c/pending            uint64: agents, pending requests
//	c/A/<prefix hex>               uint64: agents whose Source is the prefix
//	c/P/<key hex>                  uint64: pending requests the key made
//	c/R/<prefix hex>               uint64: pending requests made from the prefix
//	c/m/<to hex>                   uint64: messages in the mailbox
//	k/server_key                   the server key (ServerKey)
//	k/layout                       uint8: the layout (1)
//	N/<id, 4 hex>                  network
//	T/<name>                       network ID (name index)
//	b/<id hex>/<key hex>           member record
//	i/<key hex>/<id hex>           1 (owner or member) or 0 (former member)
//
// A prefix is netip.Prefix's binary form. Every count is read and written
// in the transaction that changes what it counts, so the commit's compares
// keep it exact across servers. The soft state is attached to leases
// (etcdcluster.go):
//
//	s/<key hex>               the agent's session: server, locators, NAT kind
//	S/<server ID hex>         a live server
//	q/<server ID hex>/<rand>  an introduction for a session on that server
type EtcdStore struct {
	cfg    EtcdConfig
	cli    *clientv3.Client
	prefix string
	log    *slog.Logger
	id     uint64 // this store's (server's) ID, random per run
	origin [8]byte

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu     sync.Mutex
	master *btree.BTreeG[kv] // the replica; written by the watch loop only
	rev    int64             // revision applied
	revCh  chan struct{}     // closed and replaced whenever rev grows
	counts replicaCounts
	snap   atomic.Pointer[replicaSnap]

	// freshness (etcdcluster.go)
	freshUntil   atomic.Int64 // unix ns: answers until then
	lastContact  atomic.Int64 // unix ns
	progressMu   sync.Mutex
	progressAt   time.Time     // when the watch last reported progress
	progressWake chan struct{} // closed and replaced at every progress notify

	cluster etcdCluster // soft state (etcdcluster.go)

	stats etcdCounters

	// retry is held by the Update that retries after a conflict: this
	// server's writers that collided on a key (a count, a mailbox) retry
	// one at a time instead of colliding again on every round.
	retry chan struct{}

	// group commit (Update)
	groupMu    sync.Mutex
	groupBusy  bool         // a group is running
	groupQueue []*groupCall // waiting for the next group

	closeOnce sync.Once
}

type etcdCounters struct {
	txns, conflicts, errors, unavailable, reads, watchEvents, reloads atomic.Uint64
	sessionDeletes                                                    atomic.Uint64
	pushesSent, pushesReceived, pushesDropped                         atomic.Uint64
	latency                                                           histogram
}

// kv is one key of the replica. val is the value as stored in etcd (with
// the origin prefix); nil marks a key deleted in a transaction's overlay.
type kv struct {
	key string
	val []byte
	mod int64
}

func kvLess(a, b kv) bool { return a.key < b.key }

// replicaCounts are maintained by the watch loop.
type replicaCounts struct {
	agents, mail, sessions, servers, keys int
	bytes                                 int64
}

// replicaSnap is a read-only clone of the replica at rev.
type replicaSnap struct {
	mu     sync.Mutex // Clone is not safe for concurrent use
	tree   *btree.BTreeG[kv]
	rev    int64
	counts replicaCounts
}

func (sn *replicaSnap) clone() *btree.BTreeG[kv] {
	sn.mu.Lock()
	defer sn.mu.Unlock()
	return sn.tree.Clone()
}

// OpenEtcdStore connects to etcd, loads the replica and starts its watch
// and lease. Close releases it.
func OpenEtcdStore(ctx context.Context, cfg EtcdConfig) (*EtcdStore, error) {
	if len(cfg.Endpoints) == 0 {
		return nil, errors.New("rendezvous: EtcdConfig.Endpoints is required")
	}
	if cfg.Prefix == "" {
		cfg.Prefix = DefaultEtcdPrefix
	}
	if !strings.HasSuffix(cfg.Prefix, "/") || len(cfg.Prefix) > 64 {
		return nil, fmt.Errorf("rendezvous: EtcdConfig.Prefix %q: want at most 64 bytes ending in /", cfg.Prefix)
	}
	switch {
	case cfg.LeaseTTL == 0:
		cfg.LeaseTTL = DefaultEtcdLeaseTTL
	case cfg.LeaseTTL < 2*time.Second || cfg.LeaseTTL > time.Hour:
		return nil, fmt.Errorf("rendezvous: EtcdConfig.LeaseTTL %v: want 2s-1h", cfg.LeaseTTL)
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = DefaultEtcdTimeout
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	cli, err := clientv3.New(clientv3.Config{
		Endpoints:            cfg.Endpoints,
		TLS:                  cfg.TLS,
		Username:             cfg.Username,
		Password:             cfg.Password,
		DialTimeout:          cfg.Timeout,
		DialKeepAliveTime:    cfg.LeaseTTL / 2,
		DialKeepAliveTimeout: cfg.LeaseTTL / 2,
		AutoSyncInterval:     time.Minute,
		Logger:               zap.NewNop(),
		Context:              ctx,
	})
	if err != nil {
		return nil, fmt.Errorf("rendezvous: etcd %s: %w", strings.Join(cfg.Endpoints, ","), explainEtcdTimeout(cfg, err))
	}
	s := &EtcdStore{
		cfg:          cfg,
		cli:          cli,
		prefix:       cfg.Prefix,
		log:          log,
		revCh:        make(chan struct{}),
		retry:        make(chan struct{}, 1),
		progressWake: make(chan struct{}),
	}
	var b [8]byte
	rand.Read(b[:])
	s.id = binary.BigEndian.Uint64(b[:]) | 1 // never 0
	binary.BigEndian.PutUint64(s.origin[:], s.id)
	s.ctx, s.cancel = context.WithCancel(context.Background())
	s.cluster.init(s)

	lctx, cancel := context.WithTimeout(ctx, cfg.Timeout)
	defer cancel()
	if err := s.load(lctx); err != nil {
		cli.Close()
		return nil, fmt.Errorf("rendezvous: etcd %s: load: %w", strings.Join(cfg.Endpoints, ","), explainEtcdTimeout(cfg, err))
	}
	if err := s.checkLayout(lctx); err != nil {
		s.cancel()
		cli.Close()
		return nil, err
	}
	if err := s.cluster.start(lctx); err != nil {
		s.cancel()
		cli.Close()
		return nil, fmt.Errorf("rendezvous: etcd %s: %w", strings.Join(cfg.Endpoints, ","), explainEtcdTimeout(cfg, err))
	}
	s.wg.Add(1)
	go s.watchLoop()
	return s, nil
}

// ID returns the store's server ID: the one other servers see in this
// server's session records.
func (s *EtcdStore) ID() uint64 { return s.id }

// Client returns the etcd client (for tests and tools). The store owns it.
func (s *EtcdStore) Client() *clientv3.Client { return s.cli }

// Close stops the watch, revokes the lease (this server's sessions vanish
// from the cluster at once) and closes the etcd client. It is idempotent.
func (s *EtcdStore) Close() error {
	s.closeOnce.Do(func() {
		s.cancel()
		s.wg.Wait()
		s.cluster.stop()
		s.cli.Close()
	})
	return nil
}

// --- replica ---

// load reads the whole prefix at one revision, in pages, and replaces the
// replica with it.
func (s *EtcdStore) load(ctx context.Context) error {
	tree := btree.NewG(32, kvLess)
	var counts replicaCounts
	end := clientv3.GetPrefixRangeEnd(s.prefix)
	from := s.prefix
	var rev int64
	for {
		opts := []clientv3.OpOption{clientv3.WithRange(end), clientv3.WithLimit(etcdPage)}
		if rev != 0 {
			opts = append(opts, clientv3.WithRev(rev))
		}
		s.stats.reads.Add(1)
		resp, err := s.cli.Get(ctx, from, opts...)
		if err != nil {
			s.stats.errors.Add(1)
			return err
		}
		if rev == 0 {
			rev = resp.Header.Revision
		}
		for _, ev := range resp.Kvs {
			k := kv{key: string(ev.Key), val: ev.Value, mod: ev.ModRevision}
			tree.ReplaceOrInsert(k)
			s.count(&counts, k.key, k.val, +1)
		}
		if !resp.More || len(resp.Kvs) == 0 {
			break
		}
		from = string(resp.Kvs[len(resp.Kvs)-1].Key) + "\x00"
	}
	s.stats.reloads.Add(1)
	s.mu.Lock()
	s.master = tree
	if rev > s.rev {
		s.rev = rev
	}
	s.counts = counts
	s.publishLocked()
	s.mu.Unlock()
	s.touch()
	return nil
}

// checkLayout refuses a prefix that holds records of another layout, or
// records without a layout record (written by something else, or damaged:
// its counts could not be trusted), and records the layout in an empty
// one. The soft state (sessions, servers, introductions) does not count:
// it lives on leases and says nothing about the records.
func (s *EtcdStore) checkLayout(ctx context.Context) error {
	sn := s.snap.Load()
	lk := s.key(tagMeta, metaKeyLayout)
	if it, ok := sn.tree.Get(kv{key: lk}); ok {
		if v := record(it.val); len(v) != 1 || v[0] != etcdLayout {
			return fmt.Errorf("%w: etcd prefix %s holds records of layout %x; this server reads layout %d "+
				"(a newer server wrote them, or they are damaged)", ErrStoreDamaged, s.prefix, v, etcdLayout)
		}
		return nil
	}
	records := 0
	var first string
	sn.tree.AscendGreaterOrEqual(kv{key: s.prefix}, func(it kv) bool {
		if !strings.HasPrefix(it.key, s.prefix) {
			return false
		}
		if len(it.key) > len(s.prefix) {
			switch it.key[len(s.prefix)] {
			case tagSession, tagServer, tagPush:
				return true
			}
		}
		if records == 0 {
			first = it.key
		}
		records++
		return true
	})
	if records > 0 {
		return fmt.Errorf("%w: etcd prefix %s holds %d records (the first %q) but no layout record %s: "+
			"not a store a rendezvous server wrote, or damaged; refusing to serve from it "+
			"(use another prefix, or restore the prefix from a backup)", ErrStoreDamaged, s.prefix, records, first, lk)
	}
	// Empty: ours now. Another server may record it at the same moment.
	val := append(s.origin[:len(s.origin):len(s.origin)], etcdLayout)
	_, err := s.cli.Txn(ctx).If(clientv3.Compare(clientv3.CreateRevision(lk), "=", 0)).
		Then(clientv3.OpPut(lk, string(val))).Commit()
	if err != nil {
		return fmt.Errorf("rendezvous: etcd %s: record layout: %w", strings.Join(s.cfg.Endpoints, ","), err)
	}
	return nil
}

// count adjusts counts for key k with value v appearing (+1) or going (-1).
func (s *EtcdStore) count(c *replicaCounts, k string, v []byte, sign int) {
	c.keys += sign
	c.bytes += int64(sign * (len(k) + len(v)))
	if len(k) < len(s.prefix)+2 {
		return
	}
	switch k[len(s.prefix)] {
	case tagAgent:
		c.agents += sign
	case tagMail:
		c.mail += sign
	case tagSession:
		c.sessions += sign
	case tagServer:
		c.servers += sign
	}
}

// publishLocked publishes a snapshot of the master and wakes waiters.
func (s *EtcdStore) publishLocked() {
	s.snap.Store(&replicaSnap{tree: s.master.Clone(), rev: s.rev, counts: s.counts})
	close(s.revCh)
	s.revCh = make(chan struct{})
}

// watchLoop applies the watch to the replica until Close, reloading the
// replica when the watch cannot resume (compacted).
func (s *EtcdStore) watchLoop() {
	defer s.wg.Done()
	backoff := 50 * time.Millisecond
	for s.ctx.Err() == nil {
		err := s.watch()
		if s.ctx.Err() != nil {
			return
		}
		s.log.Warn("rendezvous: etcd watch ended; resuming", "err", err)
		if errors.Is(err, rpctypes.ErrCompacted) {
			ctx, cancel := context.WithTimeout(s.ctx, s.cfg.Timeout)
			err = s.load(ctx)
			cancel()
			if err == nil {
				s.cluster.resynced()
				backoff = 50 * time.Millisecond
				continue
			}
			s.log.Warn("rendezvous: etcd reload failed", "err", err)
		}
		select {
		case <-time.After(backoff):
		case <-s.ctx.Done():
			return
		}
		backoff = min(2*backoff, time.Second)
	}
}

// watchCtx is the context of the watch stream and of progress requests
// (clientv3 keys streams by the context's metadata).
func (s *EtcdStore) watchCtx() context.Context {
	return clientv3.WithRequireLeader(s.ctx)
}

// watch follows the prefix from the replica's revision until an error.
func (s *EtcdStore) watch() error {
	s.mu.Lock()
	from := s.rev + 1
	s.mu.Unlock()
	ctx, cancel := context.WithCancel(s.watchCtx())
	defer cancel()
	wch := s.cli.Watch(ctx, s.prefix, clientv3.WithPrefix(), clientv3.WithRev(from))
	for resp := range wch {
		if err := resp.Err(); err != nil {
			return err
		}
		if resp.IsProgressNotify() {
			s.progress(resp.Header.Revision)
			continue
		}
		if len(resp.Events) == 0 {
			continue
		}
		s.apply(resp.Events)
	}
	if s.ctx.Err() != nil {
		return s.ctx.Err()
	}
	return errors.New("watch channel closed")
}

// progress records a progress notification: every change up to rev has
// been applied.
func (s *EtcdStore) progress(rev int64) {
	s.mu.Lock()
	if rev > s.rev {
		s.rev = rev
		s.publishLocked()
	}
	s.mu.Unlock()
	s.progressMu.Lock()
	s.progressAt = time.Now()
	close(s.progressWake)
	s.progressWake = make(chan struct{})
	s.progressMu.Unlock()
}

// apply applies one watch response's events to the replica, then runs the
// cluster's reactions to them.
func (s *EtcdStore) apply(events []*clientv3.Event) {
	var acts []clusterEvent
	s.mu.Lock()
	for _, ev := range events {
		k := string(ev.Kv.Key)
		old, had := s.master.Get(kv{key: k})
		if had {
			s.count(&s.counts, k, old.val, -1)
		}
		var val []byte
		if ev.Type == clientv3.EventTypeDelete {
			s.master.Delete(kv{key: k})
		} else {
			val = ev.Kv.Value
			s.master.ReplaceOrInsert(kv{key: k, val: val, mod: ev.Kv.ModRevision})
			s.count(&s.counts, k, val, +1)
		}
		if ev.Kv.ModRevision > s.rev {
			s.rev = ev.Kv.ModRevision
		}
		if a, ok := s.cluster.react(k, old.val, had, val); ok {
			acts = append(acts, a)
		}
	}
	s.stats.watchEvents.Add(uint64(len(events)))
	s.publishLocked()
	s.mu.Unlock()
	s.touch()
	for _, a := range acts {
		s.cluster.run(a)
	}
}

// waitRev waits until the replica has applied rev.
func (s *EtcdStore) waitRev(ctx context.Context, rev int64) error {
	for {
		s.mu.Lock()
		cur, ch := s.rev, s.revCh
		s.mu.Unlock()
		if cur >= rev {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// touch records contact with etcd.
func (s *EtcdStore) touch() { s.lastContact.Store(time.Now().UnixNano()) }

// --- Store ---

// View implements Store: fn reads the replica as of the last revision
// applied. It fails with ErrStoreUnavailable when etcd has not answered
// within the lease TTL.
func (s *EtcdStore) View(fn func(Tx) error) error {
	if err := s.ready(); err != nil {
		s.stats.unavailable.Add(1)
		return err
	}
	sn := s.snap.Load()
	return fn(&etcdTx{s: s, base: sn.tree, rev: sn.rev, counts: sn.counts})
}

// Update implements Store: fn runs on the replica, its writes go to etcd
// in one transaction that commits only if nothing fn read has changed
// since; otherwise fn runs again on the newer replica. While a commit of
// this server is in flight, the Updates that arrive wait and then share
// one transaction, run one after the other on it (group commit: writers
// of one count or mailbox do not collide, and a burst costs a few etcd
// round trips, not one each); a function that fails there, or would make
// the transaction too big, runs again alone, so fn may run more than once
// and must not have effects outside the transaction. Update returns once
// the replica includes its writes, so the next View on this server sees
// them. It fails with ErrStoreUnavailable when etcd cannot be reached
// within EtcdConfig.Timeout, and never reports success for a write etcd
// did not commit.
func (s *EtcdStore) Update(fn func(Tx) error) error {
	if err := s.ready(); err != nil {
		s.stats.unavailable.Add(1)
		return err
	}
	c := &groupCall{fn: fn, done: make(chan error, 1), lead: make(chan []*groupCall, 1)}
	s.groupMu.Lock()
	if s.groupBusy {
		s.groupQueue = append(s.groupQueue, c)
		s.groupMu.Unlock()
		select {
		case err := <-c.done:
			return s.groupResult(c, err)
		case calls := <-c.lead:
			s.runGroup(calls)
		}
	} else {
		s.groupBusy = true
		s.groupMu.Unlock()
		s.runGroup([]*groupCall{c})
	}
	return s.groupResult(c, <-c.done)
}

// Group commit (Update).
const (
	groupMax    = 32                 // calls per transaction
	groupBudget = etcdMaxTxnOps - 28 // writes, and compares, a group may reach before the last call
)

// errAlone: the call runs again in a transaction of its own.
var errAlone = errors.New("rendezvous: etcd store: run alone")

type groupCall struct {
	fn   func(Tx) error
	done chan error        // the result (buffered)
	lead chan []*groupCall // or: run these calls, then hand over (buffered)
}

func (s *EtcdStore) groupResult(c *groupCall, err error) error {
	if errors.Is(err, errAlone) {
		return s.updateAlone(c.fn)
	}
	return err
}

// runGroup commits calls in one transaction, delivers each call's result
// and hands the next group to the first waiting call.
func (s *EtcdStore) runGroup(calls []*groupCall) {
	var handOff sync.Once
	results := make([]error, len(calls))
	err := s.updateAlone(func(tx Tx) error {
		t := tx.(*etcdTx)
		t.release = func() { handOff.Do(s.nextGroup) }
		clear(results)
		for i, c := range calls {
			if len(calls) == 1 {
				return c.fn(tx)
			}
			sv := t.save()
			err := c.fn(tx)
			if err == nil && i > 0 && (len(t.ops) > groupBudget || len(t.reads)+len(t.ranges) > groupBudget) {
				err = errAlone
			}
			if err != nil {
				t.restore(sv)
				results[i] = errAlone
			}
		}
		return nil
	})
	for i, c := range calls {
		if results[i] == nil {
			results[i] = err
		}
		c.done <- results[i]
	}
	handOff.Do(s.nextGroup)
}

// nextGroup hands the waiting calls to the first of them, or marks the
// group commit idle. A group's runner calls it once: when it is done, or
// earlier when it starts a long job of its own (Prune), so that the
// others' Updates do not wait for it.
func (s *EtcdStore) nextGroup() {
	s.groupMu.Lock()
	if len(s.groupQueue) == 0 {
		s.groupBusy = false
		s.groupMu.Unlock()
		return
	}
	n := min(len(s.groupQueue), groupMax)
	next := append([]*groupCall(nil), s.groupQueue[:n]...)
	s.groupQueue = append(s.groupQueue[:0], s.groupQueue[n:]...)
	s.groupMu.Unlock()
	next[0].lead <- next
}

// txState is what a call of a group may change in its transaction.
type txState struct {
	tree                  *btree.BTreeG[kv]
	reads                 map[string]int64
	ops                   map[string]txOp
	ranges, order, commit int
	err                   error
}

func (t *etcdTx) save() txState {
	return txState{tree: t.tree.Clone(), reads: maps.Clone(t.reads), ops: maps.Clone(t.ops),
		ranges: len(t.ranges), order: len(t.order), commit: len(t.onCommit), err: t.err}
}

func (t *etcdTx) restore(sv txState) {
	t.tree, t.reads, t.ops, t.err = sv.tree, sv.reads, sv.ops, sv.err
	t.ranges, t.order, t.onCommit = t.ranges[:sv.ranges], t.order[:sv.order], t.onCommit[:sv.commit]
}

// updateAlone is Update for fn alone: its own transaction, retried until
// it commits, fails, or EtcdConfig.Timeout passes.
func (s *EtcdStore) updateAlone(fn func(Tx) error) error { return s.updateTx(fn, true) }

// updateTx runs fn in transactions until one commits; with serialize, its
// retries take s.retry. Prune's batches do not: they run inside an Update
// whose retry may hold it.
func (s *EtcdStore) updateTx(fn func(Tx) error, serialize bool) error {
	if err := s.ready(); err != nil {
		s.stats.unavailable.Add(1)
		return err
	}
	ctx, cancel := context.WithTimeout(s.ctx, s.cfg.Timeout)
	defer cancel()
	backoff := 10 * time.Millisecond
	var lastErr error
	holding := false
	defer func() {
		if holding {
			<-s.retry
		}
	}()
	for attempt := 0; ; attempt++ {
		if attempt > 0 && serialize && !holding {
			select {
			case s.retry <- struct{}{}:
				holding = true
			case <-ctx.Done():
				return fmt.Errorf("%w: etcd write not committed within %v: %v", ErrStoreUnavailable, s.cfg.Timeout, lastErr)
			}
		}
		sn := s.snap.Load()
		tx := &etcdTx{s: s, base: sn.tree, rev: sn.rev, counts: sn.counts, tree: sn.clone(), write: true}
		if err := fn(tx); err != nil {
			return err
		}
		if tx.err != nil {
			return tx.err
		}
		rev, ok, err := tx.commit(ctx)
		switch {
		case err == nil && ok:
			for _, f := range tx.onCommit {
				f()
			}
			if rev > 0 {
				// Read your writes; the commit is durable whatever happens here.
				wctx, wcancel := context.WithTimeout(ctx, time.Second)
				s.waitRev(wctx, rev)
				wcancel()
			}
			return nil
		case err == nil: // a compare failed: another writer was first
			s.stats.conflicts.Add(1)
			s.catchUp(ctx, rev)
			lastErr = errors.New("conflicting writes")
			// Writers that collided retry spread out, not in lockstep.
			if attempt > 0 {
				d := time.Duration(mrand.Int64N(int64(min(time.Millisecond<<min(attempt, 6), 50*time.Millisecond))))
				select {
				case <-time.After(d):
				case <-ctx.Done():
				}
			}
		default:
			s.stats.errors.Add(1)
			lastErr = err
			if errors.Is(err, errTxnTooBig) {
				return err
			}
			if errors.Is(err, rpctypes.ErrLeaseNotFound) {
				s.cluster.leaseLost()
			}
		}
		if ctx.Err() != nil {
			return fmt.Errorf("%w: etcd write not committed within %v: %v", ErrStoreUnavailable, s.cfg.Timeout, lastErr)
		}
		if err != nil {
			select {
			case <-time.After(backoff):
			case <-ctx.Done():
				return fmt.Errorf("%w: etcd write not committed within %v: %v", ErrStoreUnavailable, s.cfg.Timeout, lastErr)
			}
			backoff = min(2*backoff, 500*time.Millisecond)
		}
	}
}

// catchUp waits until the replica has applied rev (a revision etcd
// answered): it asks for a progress notification, since rev may belong to
// a key outside the prefix.
func (s *EtcdStore) catchUp(ctx context.Context, rev int64) {
	s.mu.Lock()
	cur := s.rev
	s.mu.Unlock()
	if cur >= rev {
		return
	}
	// The change that made the compare fail is in the prefix, so its watch
	// event is on its way; a progress request covers a rev that belongs to
	// a key outside the prefix.
	wctx, cancel := context.WithTimeout(ctx, 20*time.Millisecond)
	err := s.waitRev(wctx, rev)
	cancel()
	if err == nil {
		return
	}
	ctx, cancel = context.WithTimeout(ctx, time.Second)
	defer cancel()
	s.cli.RequestProgress(s.watchCtx())
	s.waitRev(ctx, rev)
}

// --- transactions ---

var errTxnTooBig = errors.New("rendezvous: etcd store: transaction over etcd's operation limit")

// etcdTx is a Tx on the replica. A write Tx writes into its own clone
// (tree) and records what it read (reads: the key's mod revision at rev, 0
// if absent; ranges) and what it writes (ops), for commit.
type etcdTx struct {
	s      *EtcdStore
	base   *btree.BTreeG[kv] // the snapshot, read-only
	rev    int64
	counts replicaCounts
	tree   *btree.BTreeG[kv] // base with this Tx's writes (write Tx only)
	write  bool
	err    error

	reads    map[string]int64
	ranges   [][2]string
	ops      map[string]txOp
	order    []string
	onCommit []func()
	// release, in a group's transaction, lets the next group run (Prune)
	release func()
}

type txOp struct {
	val    []byte // nil: delete
	leased bool   // attach to the server's lease (soft state)
	lease  clientv3.LeaseID
}

func (t *etcdTx) view() *btree.BTreeG[kv] {
	if t.tree != nil {
		return t.tree
	}
	return t.base
}

// get returns the record of key k (without its origin prefix).
func (t *etcdTx) get(k string) ([]byte, bool) {
	t.track(k)
	it, ok := t.view().Get(kv{key: k})
	if !ok || it.val == nil {
		return nil, false
	}
	return record(it.val), true
}

// record strips a stored value's origin prefix (empty for a malformed
// value, which its decoder then reports as corrupt).
func record(v []byte) []byte {
	if len(v) < 8 {
		return []byte{}
	}
	return v[8:]
}

// track records that a write Tx read k, unless it wrote k first.
func (t *etcdTx) track(k string) {
	if !t.write {
		return
	}
	if _, wrote := t.ops[k]; wrote {
		return
	}
	if _, ok := t.reads[k]; ok {
		return
	}
	if t.reads == nil {
		t.reads = make(map[string]int64)
	}
	var mod int64
	if it, ok := t.base.Get(kv{key: k}); ok {
		mod = it.mod
	}
	t.reads[k] = mod
}

// scan calls f for each key in [from, end) in order until f returns false,
// and records the range read: from up to the last key visited if f stopped
// early, else up to end.
func (t *etcdTx) scan(from, end string, f func(k string, rec []byte) bool) {
	last := ""
	stopped := false
	t.view().AscendRange(kv{key: from}, kv{key: end}, func(it kv) bool {
		last = it.key
		if !f(it.key, record(it.val)) {
			stopped = true
			return false
		}
		return true
	})
	if t.write {
		if stopped {
			end = last + "\x00"
		}
		t.ranges = append(t.ranges, [2]string{from, end})
	}
}

func (t *etcdTx) put(k string, rec []byte) error {
	_, err := t.putOp(k, rec, txOp{})
	return err
}

// putOp writes rec under k with op's lease and returns the value as
// stored (origin ‖ rec).
func (t *etcdTx) putOp(k string, rec []byte, op txOp) ([]byte, error) {
	if !t.write {
		return nil, errors.New("rendezvous: etcd store: write in a read-only transaction")
	}
	if len(k) > etcdMaxKey || len(rec)+8 > etcdMaxValue {
		return nil, fmt.Errorf("rendezvous: etcd store: record %q over the size bound (%d bytes)", k, len(rec))
	}
	v := make([]byte, 0, 8+len(rec))
	v = append(append(v, t.s.origin[:]...), rec...)
	op.val = v
	t.tree.ReplaceOrInsert(kv{key: k, val: v})
	t.setOp(k, op)
	return v, nil
}

func (t *etcdTx) del(k string) error {
	if !t.write {
		return errors.New("rendezvous: etcd store: write in a read-only transaction")
	}
	t.track(k) // a delete of what we did not read could undo another's put
	t.tree.Delete(kv{key: k})
	t.setOp(k, txOp{})
	return nil
}

func (t *etcdTx) setOp(k string, op txOp) {
	if t.ops == nil {
		t.ops = make(map[string]txOp)
	}
	if _, ok := t.ops[k]; !ok {
		t.order = append(t.order, k)
	}
	t.ops[k] = op
}

// commit sends the transaction. ok is false if a compare failed (rev is
// then etcd's revision at that time); rev is the commit revision on
// success (0 if there was nothing to write).
func (t *etcdTx) commit(ctx context.Context) (rev int64, ok bool, err error) {
	if len(t.ops) == 0 {
		return 0, true, nil
	}
	cmps := make([]clientv3.Cmp, 0, len(t.reads)+len(t.ranges))
	for k, mod := range t.reads {
		cmps = append(cmps, clientv3.Compare(clientv3.ModRevision(k), "=", mod))
	}
	for _, r := range t.ranges {
		cmps = append(cmps, clientv3.Compare(clientv3.ModRevision(r[0]).WithRange(r[1]), "<", t.rev+1))
	}
	lease := t.s.cluster.lease()
	ops := make([]clientv3.Op, 0, len(t.ops))
	for _, k := range t.order {
		op := t.ops[k]
		switch {
		case op.val == nil:
			ops = append(ops, clientv3.OpDelete(k))
		case op.leased:
			if lease == 0 {
				return 0, false, fmt.Errorf("%w: no etcd lease", ErrStoreUnavailable)
			}
			ops = append(ops, clientv3.OpPut(k, string(op.val), clientv3.WithLease(lease)))
		case op.lease != 0:
			ops = append(ops, clientv3.OpPut(k, string(op.val), clientv3.WithLease(op.lease)))
		default:
			ops = append(ops, clientv3.OpPut(k, string(op.val)))
		}
	}
	if len(cmps) > etcdMaxTxnOps || len(ops) > etcdMaxTxnOps {
		return 0, false, fmt.Errorf("%w: %d compares, %d writes", errTxnTooBig, len(cmps), len(ops))
	}
	start := time.Now()
	resp, err := t.s.cli.Txn(ctx).If(cmps...).Then(ops...).Commit()
	t.s.stats.latency.observe(time.Since(start))
	if err != nil {
		return 0, false, err
	}
	t.s.touch()
	if !resp.Succeeded {
		return resp.Header.Revision, false, nil
	}
	t.s.stats.txns.Add(1)
	return resp.Header.Revision, true, nil
}

// --- keys ---

// Record tags: the first byte after the prefix.
const (
	tagAgent    = 'a'
	tagNode     = 'n'
	tagHost     = 'h'
	tagNonce    = 'o'
	tagPending  = 'p'
	tagPair     = 'r'
	tagMail     = 'm'
	tagMailSeq  = 'M'
	tagNet      = 'N'
	tagNetName  = 'T'
	tagMember   = 'b'
	tagAgentNet = 'i'
	tagSession  = 's'
	tagServer   = 'S'
	tagPush     = 'q'

	tagAgentSeen = 'e'
	tagCount     = 'c'
	tagMeta      = 'k'
)

// Meta keys (under tagMeta).
const (
	metaKeyServer = "server_key" // the server key (PutServerKey)
	metaKeyLayout = "layout"     // uint8: etcdLayout
)

// etcdLayout is the layout of the records under a prefix this version
// reads and writes (OpenEtcdStore refuses any other).
const etcdLayout = 1

func (s *EtcdStore) key(tag byte, parts ...string) string {
	var b strings.Builder
	b.WriteString(s.prefix)
	b.WriteByte(tag)
	b.WriteByte('/')
	for i, p := range parts {
		if i > 0 {
			b.WriteByte('/')
		}
		b.WriteString(p)
	}
	return b.String()
}

func hexKey(k addressing.PublicKey) string { return hex.EncodeToString(k[:]) }
func hexNet(id addressing.NetworkID) string {
	return hex.EncodeToString(binary.BigEndian.AppendUint16(nil, uint16(id)))
}
func hexID(id uint64) string { return hex.EncodeToString(binary.BigEndian.AppendUint64(nil, id)) }

// prefixEnd is the end of the range of keys starting with p.
func prefixEnd(p string) string { return clientv3.GetPrefixRangeEnd(p) }

func parseHexKey(s string) (addressing.PublicKey, bool) {
	b, err := hex.DecodeString(s)
	if err != nil {
		return addressing.PublicKey{}, false
	}
	return addressing.PublicKeyFromSlice(b)
}

// --- counts ---

// Count keys (under tagCount). Every count is a key read and written in
// the transaction that changes what it counts, so the commit's compare on
// its mod revision keeps it exact when several servers write at once (the
// loser runs again on the newer replica, as for any other conflict).
const (
	countAgents     = "agents"  // registered agents
	countPending    = "pending" // all pending requests
	countAgentSrc   = "A"       // /<prefix hex>: agents whose Source is the prefix
	countPendingBy  = "P"       // /<key hex>: pending requests the key made
	countPendingSrc = "R"       // /<prefix hex>: pending requests made from the prefix
	countMail       = "m"       // /<key hex>: messages in the key's mailbox
)

// countKey is the key of a count ("" for a prefix count of an invalid
// prefix: none).
func (s *EtcdStore) countKey(name string, part ...string) string {
	return s.key(tagCount, append([]string{name}, part...)...)
}

func (s *EtcdStore) prefixCountKey(name string, p netip.Prefix) string {
	b := prefixKey(p)
	if b == nil {
		return ""
	}
	return s.countKey(name, hex.EncodeToString(b))
}

// getCount reads the count under k (tracked: a write Tx that read it
// commits only if it did not change).
func (t *etcdTx) getCount(k string) (int, error) {
	if k == "" {
		return 0, nil
	}
	v, ok := t.get(k)
	if !ok {
		return 0, nil
	}
	if len(v) != 8 || v[0]&0x80 != 0 {
		return 0, fmt.Errorf("rendezvous: store: corrupt count %s", k)
	}
	return int(binary.BigEndian.Uint64(v)), nil
}

// addCount adds d to the count under k ("": none), deleting it at zero.
func (t *etcdTx) addCount(k string, d int) error {
	if k == "" {
		return nil
	}
	n, err := t.getCount(k)
	if err != nil {
		return err
	}
	if n += d; n <= 0 {
		if _, ok := t.get(k); !ok {
			return nil
		}
		return t.del(k)
	}
	return t.put(k, binary.BigEndian.AppendUint64(nil, uint64(n)))
}

// hexTime is t as 16 hex digits that sort in time order (appendTime).
func hexTime(tm time.Time) string { return hex.EncodeToString(appendTime(nil, tm)) }

// --- Tx ---

func (t *etcdTx) Agent(k addressing.PublicKey) (AgentRecord, bool, error) {
	v, ok := t.get(t.s.key(tagAgent, hexKey(k)))
	if !ok {
		return AgentRecord{}, false, nil
	}
	r, err := decodeAgent(k, v)
	return r, err == nil, err
}

func (t *etcdTx) AgentByNode(n addressing.NodeID) (addressing.PublicKey, bool, error) {
	v, ok := t.get(t.s.key(tagNode, hex.EncodeToString(n[:])))
	if !ok {
		return addressing.PublicKey{}, false, nil
	}
	return keyValue(v)
}

func (t *etcdTx) AgentByHostname(h string) (addressing.PublicKey, bool, error) {
	if h == "" || len(h) > addressing.MaxHostnameLen {
		return addressing.PublicKey{}, false, nil
	}
	v, ok := t.get(t.s.key(tagHost, h))
	if !ok {
		return addressing.PublicKey{}, false, nil
	}
	return keyValue(v)
}

// AgentCount returns the kept count. A registration that reads it and adds
// an agent commits only if no other did meanwhile, so MaxAgents holds
// across servers.
func (t *etcdTx) AgentCount() (int, error) { return t.getCount(t.s.countKey(countAgents)) }

func (t *etcdTx) AgentsFrom(src netip.Prefix) (int, error) {
	return t.getCount(t.s.prefixCountKey(countAgentSrc, src))
}

func (t *etcdTx) seenKey(tm time.Time, k addressing.PublicKey) string {
	return t.s.key(tagAgentSeen, hexTime(tm)+hexKey(k))
}

func (t *etcdTx) PutAgent(r AgentRecord) error {
	node := r.Key.NodeID()
	if k, ok, err := t.AgentByNode(node); err != nil {
		return err
	} else if ok && k != r.Key {
		return ErrNodeIDTaken
	}
	if r.Hostname != "" {
		if k, ok, err := t.AgentByHostname(r.Hostname); err != nil {
			return err
		} else if ok && k != r.Key {
			return ErrHostnameTaken
		}
	}
	old, had, err := t.Agent(r.Key)
	if err != nil {
		return err
	}
	if had && old.Hostname != "" && old.Hostname != r.Hostname {
		if err := t.del(t.s.key(tagHost, old.Hostname)); err != nil {
			return err
		}
	}
	if r.Hostname != "" && (!had || old.Hostname != r.Hostname) {
		if err := t.put(t.s.key(tagHost, r.Hostname), r.Key[:]); err != nil {
			return err
		}
	}
	if k, ok, _ := t.AgentByNode(node); !ok || k != r.Key {
		if err := t.put(t.s.key(tagNode, hex.EncodeToString(node[:])), r.Key[:]); err != nil {
			return err
		}
	}
	if had {
		if old.LastSeen != r.LastSeen {
			if err := t.del(t.seenKey(old.LastSeen, r.Key)); err != nil {
				return err
			}
		}
		if old.Source != r.Source {
			if err := t.addCount(t.s.prefixCountKey(countAgentSrc, old.Source), -1); err != nil {
				return err
			}
		}
	}
	if !had || old.Source != r.Source {
		if err := t.addCount(t.s.prefixCountKey(countAgentSrc, r.Source), 1); err != nil {
			return err
		}
	}
	if !had {
		if err := t.addCount(t.s.countKey(countAgents), 1); err != nil {
			return err
		}
	}
	if !had || old.LastSeen != r.LastSeen {
		if err := t.put(t.seenKey(r.LastSeen, r.Key), nil); err != nil {
			return err
		}
	}
	return t.put(t.s.key(tagAgent, hexKey(r.Key)), encodeAgent(r))
}

func (t *etcdTx) DeleteAgent(k addressing.PublicKey) error {
	r, had, err := t.Agent(k)
	if err != nil || !had {
		return err
	}
	if r.Hostname != "" {
		if owner, ok, _ := t.AgentByHostname(r.Hostname); ok && owner == k {
			if err := t.del(t.s.key(tagHost, r.Hostname)); err != nil {
				return err
			}
		}
	}
	node := k.NodeID()
	if owner, ok, _ := t.AgentByNode(node); ok && owner == k {
		if err := t.del(t.s.key(tagNode, hex.EncodeToString(node[:]))); err != nil {
			return err
		}
	}
	if err := errors.Join(
		t.del(t.seenKey(r.LastSeen, k)),
		t.addCount(t.s.prefixCountKey(countAgentSrc, r.Source), -1),
		t.addCount(t.s.countKey(countAgents), -1),
	); err != nil {
		return err
	}
	return t.del(t.s.key(tagAgent, hexKey(k)))
}

func (t *etcdTx) IdleAgents(before time.Time, max int) ([]addressing.PublicKey, error) {
	if max <= 0 {
		return nil, nil
	}
	p := t.s.key(tagAgentSeen)
	var out []addressing.PublicKey
	bad := false
	t.scan(p, p+hexTime(before), func(k string, _ []byte) bool {
		key, ok := parseHexKey(k[min(len(k), len(p)+16):])
		if len(k) != len(p)+16+2*addressing.PublicKeySize || !ok {
			bad = true
			return false
		}
		out = append(out, key)
		return len(out) < max
	})
	if bad {
		return nil, errors.New("rendezvous: store: corrupt agent expiry index")
	}
	return out, nil
}

// --- server key ---

func (t *etcdTx) ServerKey() (addressing.PublicKey, bool, error) {
	v, ok := t.get(t.s.key(tagMeta, metaKeyServer))
	if !ok {
		return addressing.PublicKey{}, false, nil
	}
	k, ok := addressing.PublicKeyFromSlice(v)
	if !ok {
		return k, false, errors.New("rendezvous: store: corrupt server key")
	}
	return k, true, nil
}

func (t *etcdTx) PutServerKey(k addressing.PublicKey) error {
	return t.put(t.s.key(tagMeta, metaKeyServer), k[:])
}

// --- replay cache ---

func (t *etcdTx) SeeNonce(from addressing.PublicKey, nonce [trustdb.NonceSize]byte, tm time.Time) (bool, error) {
	k := t.s.key(tagNonce, hexTime(tm)+hexKey(from)+hex.EncodeToString(nonce[:]))
	if _, ok := t.get(k); ok {
		return true, nil
	}
	return false, t.put(k, []byte{1})
}

// --- pending requests ---

func (t *etcdTx) pendingKey(target, requester addressing.PublicKey) string {
	return t.s.key(tagPending, hexKey(target)+hexKey(requester))
}

func (t *etcdTx) Pending(target, requester addressing.PublicKey) (PendingRequest, bool, error) {
	v, ok := t.get(t.pendingKey(target, requester))
	if !ok {
		return PendingRequest{}, false, nil
	}
	p, err := decodePending(target, requester, v)
	return p, err == nil, err
}

// pendingFromKey decodes the pending request under etcd key k.
func (t *etcdTx) pendingFromKey(k string, v []byte) (PendingRequest, error) {
	p := len(t.s.key(tagPending))
	const n = 2 * addressing.PublicKeySize
	if len(k) != p+2*n {
		return PendingRequest{}, errors.New("rendezvous: store: corrupt pending key")
	}
	target, ok1 := parseHexKey(k[p : p+n])
	requester, ok2 := parseHexKey(k[p+n:])
	if !ok1 || !ok2 {
		return PendingRequest{}, errors.New("rendezvous: store: corrupt pending key")
	}
	return decodePending(target, requester, v)
}

func (t *etcdTx) Pendings(target addressing.PublicKey, max int) ([]PendingRequest, error) {
	if max <= 0 {
		return nil, nil
	}
	p := t.s.key(tagPending, hexKey(target))
	var out []PendingRequest
	var err error
	t.scan(p, prefixEnd(p), func(k string, v []byte) bool {
		var r PendingRequest
		if r, err = t.pendingFromKey(k, v); err != nil {
			return false
		}
		out = append(out, r)
		return len(out) < max
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

func (t *etcdTx) PendingQuota(requester addressing.PublicKey, src netip.Prefix) (PendingQuota, error) {
	var q PendingQuota
	var e1, e2, e3 error
	q.ByRequester, e1 = t.getCount(t.s.countKey(countPendingBy, hexKey(requester)))
	q.BySource, e2 = t.getCount(t.s.prefixCountKey(countPendingSrc, src))
	q.Total, e3 = t.getCount(t.s.countKey(countPending))
	return q, errors.Join(e1, e2, e3)
}

// countPending adds d to the counts p takes part in.
func (t *etcdTx) countPending(p PendingRequest, d int) error {
	return errors.Join(
		t.addCount(t.s.countKey(countPendingBy, hexKey(p.Requester)), d),
		t.addCount(t.s.prefixCountKey(countPendingSrc, p.Source), d),
		t.addCount(t.s.countKey(countPending), d),
	)
}

func (t *etcdTx) PutPending(p PendingRequest) error {
	old, had, err := t.Pending(p.Target, p.Requester)
	if err != nil {
		return err
	}
	if had {
		if err := t.countPending(old, -1); err != nil {
			return err
		}
	}
	if err := t.countPending(p, 1); err != nil {
		return err
	}
	return t.put(t.pendingKey(p.Target, p.Requester), encodePending(p))
}

func (t *etcdTx) DeletePending(target, requester addressing.PublicKey) error {
	old, had, err := t.Pending(target, requester)
	if err != nil || !had {
		return err
	}
	if err := t.countPending(old, -1); err != nil {
		return err
	}
	return t.del(t.pendingKey(target, requester))
}

// --- pairs ---

func (t *etcdTx) pairKey(a, b addressing.PublicKey) string {
	return t.s.key(tagPair, hex.EncodeToString(pairKey(a, b)))
}

func (t *etcdTx) Pair(a, b addressing.PublicKey) (TrustPair, bool, error) {
	v, ok := t.get(t.pairKey(a, b))
	if !ok {
		return TrustPair{}, false, nil
	}
	p, err := decodePair(v)
	return p, err == nil, err
}

func (t *etcdTx) PutPair(p TrustPair) error { return t.put(t.pairKey(p.A, p.B), encodePair(p)) }

func (t *etcdTx) DeletePair(a, b addressing.PublicKey) error {
	k := t.pairKey(a, b)
	if _, ok := t.get(k); !ok {
		return nil
	}
	return t.del(k)
}

// --- mailboxes ---

func (t *etcdTx) mailPrefix(to addressing.PublicKey) string {
	return t.s.key(tagMail, hexKey(to)) + "/"
}

func (t *etcdTx) Enqueue(to addressing.PublicKey, msg []byte, tm time.Time) (uint64, error) {
	seqKey := t.s.key(tagMailSeq, hexKey(to))
	var id uint64
	if v, ok := t.get(seqKey); ok {
		if len(v) != 8 {
			return 0, errors.New("rendezvous: store: corrupt mailbox sequence")
		}
		id = binary.BigEndian.Uint64(v)
	}
	if id == math.MaxUint64 {
		return 0, errors.New("rendezvous: store: mailbox sequence exhausted")
	}
	id++
	if err := t.put(seqKey, binary.BigEndian.AppendUint64(nil, id)); err != nil {
		return 0, err
	}
	if err := t.addCount(t.s.countKey(countMail, hexKey(to)), 1); err != nil {
		return 0, err
	}
	return id, t.put(t.mailPrefix(to)+hexID(id), append(appendTime(nil, tm), msg...))
}

func (t *etcdTx) MailCount(to addressing.PublicKey) (int, error) {
	return t.getCount(t.s.countKey(countMail, hexKey(to)))
}

func (t *etcdTx) Mail(to addressing.PublicKey, after uint64, max int) ([]MailItem, error) {
	if max <= 0 || after == math.MaxUint64 {
		return nil, nil
	}
	p := t.mailPrefix(to)
	var items []MailItem
	var bad bool
	t.scan(p+hexID(after+1), prefixEnd(p), func(k string, v []byte) bool {
		id, err := hex.DecodeString(k[len(p):])
		if err != nil || len(id) != 8 || len(v) < 8 {
			bad = true
			return false
		}
		items = append(items, MailItem{ID: binary.BigEndian.Uint64(id), Time: readTime(v), Msg: append([]byte(nil), v[8:]...)})
		return len(items) < max
	})
	if bad {
		return nil, errors.New("rendezvous: store: corrupt mailbox")
	}
	return items, nil
}

func (t *etcdTx) Ack(to addressing.PublicKey, id uint64) (bool, error) {
	k := t.mailPrefix(to) + hexID(id)
	if _, ok := t.get(k); !ok {
		return false, nil
	}
	if err := t.addCount(t.s.countKey(countMail, hexKey(to)), -1); err != nil {
		return false, err
	}
	return true, t.del(k)
}

// --- pruning ---

// Batches of Prune: deletions per transaction (each also writes the counts
// it changes, within etcdMaxTxnOps), and keys looked at per transaction.
const (
	pruneBatch = 32
	pruneWalk  = etcdPage
)

// Prune deletes what is older than its cutoffs. Unlike every other write
// it does not wait for the enclosing Update: it walks each range in key
// order and commits as it goes, in transactions of at most pruneBatch
// deletions that look at most pruneWalk keys, each its own Update
// (compares, retries, the counts kept), so a record changed meanwhile is
// judged again on the newer replica; the server's other Updates go on in
// the next group meanwhile. The replay cache is keyed by time, so its walk
// ends at the cutoff: it costs what it deletes.
func (t *etcdTx) Prune(nonces, records time.Time) (int, error) {
	if !t.write {
		return 0, errors.New("rendezvous: etcd store: write in a read-only transaction")
	}
	if t.release != nil {
		t.release() // the others' Updates do not wait for the walk
	}
	s := t.s
	n := 0
	if !nonces.IsZero() {
		p := s.key(tagNonce)
		k, err := s.pruneRange(p, p+hexTime(nonces), func(string, []byte) bool { return true },
			func(t *etcdTx, k string) error { return t.del(k) })
		if n += k; err != nil {
			return n, err
		}
	}
	if records.IsZero() {
		return n, nil
	}
	p := s.key(tagPending)
	k, err := s.pruneRange(p, prefixEnd(p), func(_ string, v []byte) bool {
		return len(v) >= 1+trustdb.NonceSize+8 && readTime(v[1+trustdb.NonceSize:]).Before(records)
	}, func(t *etcdTx, k string) error {
		it, ok := t.view().Get(kv{key: k})
		if !ok {
			return nil
		}
		r, err := t.pendingFromKey(k, record(it.val))
		if err != nil {
			return err
		}
		return t.DeletePending(r.Target, r.Requester)
	})
	if n += k; err != nil {
		return n, err
	}
	p = s.key(tagMail)
	k, err = s.pruneRange(p, prefixEnd(p), func(_ string, v []byte) bool {
		return len(v) >= 8 && readTime(v).Before(records)
	}, func(t *etcdTx, k string) error {
		to, ok := parseHexKey(k[len(p):min(len(k), len(p)+2*addressing.PublicKeySize)])
		if !ok {
			return errors.New("rendezvous: store: corrupt mailbox key")
		}
		return errors.Join(t.addCount(s.countKey(countMail, hexKey(to)), -1), t.del(k))
	})
	return n + k, err
}

// pruneRange deletes (with del) the keys in [from, end) whose records old
// reports, a batch per Update, and returns how many.
func (s *EtcdStore) pruneRange(from, end string, old func(k string, rec []byte) bool, del func(t *etcdTx, k string) error) (int, error) {
	n := 0
	for from < end {
		var deleted int
		next := end
		err := s.updateTx(func(tx Tx) error { // inside an Update: not in a group, nor serialized
			t := tx.(*etcdTx)
			deleted, next = 0, end
			var dead []string
			walked := 0
			t.view().AscendRange(kv{key: from}, kv{key: end}, func(it kv) bool {
				if walked == pruneWalk || len(dead) == pruneBatch {
					next = it.key
					return false
				}
				walked++
				if old(it.key, record(it.val)) {
					t.track(it.key) // deleted only if unchanged since judged
					dead = append(dead, it.key)
				}
				return true
			})
			for _, k := range dead {
				if err := del(t, k); err != nil {
					return err
				}
			}
			deleted = len(dead)
			return nil
		}, false)
		if err != nil {
			return n, fmt.Errorf("rendezvous: etcd prune: %w", err)
		}
		n += deleted
		from = next
	}
	return n, nil
}
