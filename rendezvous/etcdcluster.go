package rendezvous

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"math"
	"net/netip"
	"sync"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/agentnet/agentnet/addressing"
	"github.com/agentnet/agentnet/rendezvous/proto"
	"github.com/agentnet/agentnet/trustdb"
)

// Several servers, one service: the soft state an EtcdStore shares with
// the other servers on the same etcd (see the package doc). Each server
// holds a lease; its agents' session records (s/) and its own record (S/)
// are attached to it, so a dead server's agents go offline for everyone
// within the lease TTL. Changes that concern an agent on another server
// reach that server through its replica's watch: new mail wakes the
// session, a session record of another server closes the local one, a
// deleted pair closes local relay sessions, a network document is pushed
// to local members, and an introduction (q/) addressed to the server is
// pushed on its session stream.

// etcdCluster is an EtcdStore's soft state.
type etcdCluster struct {
	s *EtcdStore

	mu        sync.Mutex
	leaseID   clientv3.LeaseID
	pushLease clientv3.LeaseID // introductions: rotated, so they expire
	pushAt    time.Time
	fenced    bool // not fresh: sessions closed, reads and writes refused
	hooks     *clusterHooks
	local     map[addressing.PublicKey]localSession
	hbDone    chan struct{}
}

// localSession is the session record this server wrote for an agent.
type localSession struct {
	conn any    // the server's connection of the session
	val  []byte // the value written (origin ‖ record)
}

// clusterHooks are the server's reactions to other servers' changes. They
// run on the watch goroutine and must not block.
type clusterHooks struct {
	wake          func(k addressing.PublicKey)
	wakeSoon      func(k addressing.PublicKey) // for a trust request
	sessionMoved  func(k addressing.PublicKey)
	push          func(k addressing.PublicKey, frame []byte) bool
	pairDeleted   func(a, b addressing.PublicKey)
	memberChanged func(id addressing.NetworkID, k addressing.PublicKey, doc []byte, exit bool)
	fenced        func()
	resynced      func()
}

// RemoteSession is an agent's session on some server of the cluster.
type RemoteSession struct {
	Server   uint64
	Locators []netip.AddrPort
	NAT      proto.NATKind
}

func (c *etcdCluster) init(s *EtcdStore) {
	c.s = s
	c.local = make(map[addressing.PublicKey]localSession)
}

func (c *etcdCluster) ttlSeconds() int64 {
	return int64(math.Ceil(c.s.cfg.LeaseTTL.Seconds()))
}

// start grants the lease, announces the server and starts the heartbeat.
func (c *etcdCluster) start(ctx context.Context) error {
	t0 := time.Now()
	if err := c.grant(ctx); err != nil {
		return err
	}
	c.s.freshUntil.Store(t0.Add(c.s.cfg.LeaseTTL).UnixNano())
	c.rotatePushLease(t0)
	c.hbDone = make(chan struct{})
	go c.heartbeatLoop()
	return nil
}

// grant takes a new lease and writes the server record on it.
func (c *etcdCluster) grant(ctx context.Context) error {
	resp, err := c.s.cli.Grant(ctx, c.ttlSeconds())
	if err != nil {
		c.s.stats.errors.Add(1)
		return fmt.Errorf("grant lease: %w", err)
	}
	rec := binary.BigEndian.AppendUint64(nil, uint64(time.Now().UnixNano()))
	if _, err := c.s.cli.Put(ctx, c.s.key(tagServer, hexID(c.s.id)), string(append(c.s.origin[:], rec...)), clientv3.WithLease(resp.ID)); err != nil {
		c.s.stats.errors.Add(1)
		return fmt.Errorf("announce server: %w", err)
	}
	c.mu.Lock()
	c.leaseID = resp.ID
	c.mu.Unlock()
	return nil
}

func (c *etcdCluster) lease() clientv3.LeaseID {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.fenced {
		return 0
	}
	return c.leaseID
}

// stop ends the heartbeat and revokes the lease: this server's sessions
// vanish from the cluster at once.
func (c *etcdCluster) stop() {
	if c.hbDone != nil {
		<-c.hbDone
	}
	c.mu.Lock()
	id := c.leaseID
	c.leaseID = 0
	c.mu.Unlock()
	if id != 0 {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		c.s.cli.Revoke(ctx, id)
		cancel()
	}
}

// heartbeatLoop keeps the lease alive and the store fresh: every TTL/5 a
// keepalive, then a progress request whose answer proves the replica has
// everything up to now. The store answers until TTL after the last round
// that succeeded (the lease lives at least that long in etcd), and is
// fenced after that: the server closes its sessions, and reads and writes
// fail until etcd answers again.
func (c *etcdCluster) heartbeatLoop() {
	defer close(c.hbDone)
	ttl := c.s.cfg.LeaseTTL
	t := time.NewTicker(ttl / 5)
	defer t.Stop()
	for {
		select {
		case <-t.C:
		case <-c.s.ctx.Done():
			return
		}
		t0 := time.Now()
		if c.beat(t0, ttl/2) {
			c.s.freshUntil.Store(t0.Add(ttl).UnixNano())
			c.s.touch()
			c.mu.Lock()
			was := c.fenced
			c.fenced = false
			c.mu.Unlock()
			if was {
				c.s.log.Info("rendezvous: etcd answers again; serving")
			}
			c.rotatePushLease(t0)
		}
		if time.Now().UnixNano() > c.s.freshUntil.Load() {
			c.fence("no answer from etcd within the lease TTL")
		}
	}
}

// beat runs one heartbeat round; it reports success.
func (c *etcdCluster) beat(t0 time.Time, timeout time.Duration) bool {
	ctx, cancel := context.WithTimeout(c.s.ctx, timeout)
	defer cancel()
	c.mu.Lock()
	id := c.leaseID
	c.mu.Unlock()
	_, err := c.s.cli.KeepAliveOnce(ctx, id)
	if errors.Is(err, rpctypes.ErrLeaseNotFound) {
		c.leaseLost()
		if err = c.grant(ctx); err != nil {
			return false
		}
	}
	if err != nil {
		c.s.stats.errors.Add(1)
		return false
	}
	if err := c.s.cli.RequestProgress(c.s.watchCtx()); err != nil {
		c.s.stats.errors.Add(1)
		return false
	}
	for {
		c.s.progressMu.Lock()
		at := c.s.progressAt
		if at.After(t0) {
			c.s.progressMu.Unlock()
			return true
		}
		wake := c.s.progressWake
		c.s.progressMu.Unlock()
		select {
		case <-wake:
		case <-ctx.Done():
			return false
		}
	}
}

// leaseLost handles a lease etcd no longer has (it expired while we were
// cut off): everything on it is gone, so the sessions are too.
func (c *etcdCluster) leaseLost() {
	c.fence("etcd lease expired")
}

// fence closes every local session and refuses service until the next
// successful heartbeat.
func (c *etcdCluster) fence(why string) {
	c.mu.Lock()
	if c.fenced {
		c.mu.Unlock()
		return
	}
	c.fenced = true
	clear(c.local)
	h := c.hooks
	c.mu.Unlock()
	c.s.freshUntil.Store(0)
	c.s.log.Warn("rendezvous: cut off from etcd: closing sessions, refusing lookups and writes", "err", why)
	if h != nil && h.fenced != nil {
		h.fenced()
	}
}

// ready is nil while the store answers.
func (s *EtcdStore) ready() error {
	if s.ctx.Err() != nil {
		return fmt.Errorf("%w: closed", ErrStoreUnavailable)
	}
	until := s.freshUntil.Load()
	if time.Now().UnixNano() < until {
		return nil
	}
	last := s.lastContact.Load()
	if last == 0 {
		return fmt.Errorf("%w: etcd has not answered", ErrStoreUnavailable)
	}
	return fmt.Errorf("%w: etcd last answered %v ago (lease TTL %v)", ErrStoreUnavailable,
		time.Since(time.Unix(0, last)).Round(time.Millisecond), s.cfg.LeaseTTL)
}

// rotatePushLease takes a fresh lease for introductions every 15 s (they
// live at most 45 s, delivered or not).
func (c *etcdCluster) rotatePushLease(now time.Time) {
	c.mu.Lock()
	due := c.pushLease == 0 || now.Sub(c.pushAt) > 15*time.Second
	c.mu.Unlock()
	if !due {
		return
	}
	ctx, cancel := context.WithTimeout(c.s.ctx, c.s.cfg.LeaseTTL/2)
	defer cancel()
	resp, err := c.s.cli.Grant(ctx, 30)
	if err != nil {
		c.s.stats.errors.Add(1)
		return
	}
	c.mu.Lock()
	c.pushLease, c.pushAt = resp.ID, now
	c.mu.Unlock()
}

// --- session records ---

// session record: version | server ID | uint8 nat | uint8 count | count × (uint8 len | netip binary | uint16 port) | time
func encodeSession(server uint64, nat proto.NATKind, locators []netip.AddrPort, t time.Time) []byte {
	b := []byte{recordVersion}
	b = binary.BigEndian.AppendUint64(b, server)
	b = append(b, byte(nat), byte(len(locators)))
	for _, ap := range locators {
		ab, _ := ap.Addr().WithZone("").MarshalBinary()
		b = append(b, byte(len(ab)))
		b = append(b, ab...)
		b = binary.BigEndian.AppendUint16(b, ap.Port())
	}
	return appendTime(b, t)
}

func decodeSession(v []byte) (RemoteSession, error) {
	d := dec{b: v}
	var r RemoteSession
	if d.next(1)[0] != recordVersion {
		d.bad = true
	}
	r.Server = binary.BigEndian.Uint64(d.next(8))
	r.NAT = proto.NATKind(d.next(1)[0])
	n := int(d.next(1)[0])
	for range n {
		var a netip.Addr
		if err := a.UnmarshalBinary(d.next(int(d.next(1)[0]))); err != nil {
			d.bad = true
		}
		port := binary.BigEndian.Uint16(d.next(2))
		if d.bad {
			break
		}
		r.Locators = append(r.Locators, netip.AddrPortFrom(a, port))
	}
	d.time()
	return r, d.err("session")
}

// stageSession writes k's session record (this server, locators) in tx,
// on the lease. Once tx commits, conn owns it.
func (c *etcdCluster) stageSession(tx Tx, conn any, k addressing.PublicKey, locators []netip.AddrPort) error {
	t, ok := tx.(*etcdTx)
	if !ok {
		return errors.New("rendezvous: etcd store: session outside an etcd transaction")
	}
	key := c.s.key(tagSession, hexKey(k))
	t.track(key) // a concurrent registration elsewhere makes one of the two run again
	val, err := t.putOp(key, encodeSession(c.s.id, proto.NATUnknown, locators, time.Now()), txOp{leased: true})
	if err != nil {
		return err
	}
	t.onCommit = append(t.onCommit, func() {
		c.mu.Lock()
		c.local[k] = localSession{conn: conn, val: val}
		c.mu.Unlock()
	})
	return nil
}

// sessionDown deletes k's session record if conn's is still the current
// one (a newer registration, here or elsewhere, keeps its own).
func (c *etcdCluster) sessionDown(k addressing.PublicKey, conn any) {
	c.mu.Lock()
	ls, ok := c.local[k]
	if !ok || ls.conn != conn {
		c.mu.Unlock()
		return
	}
	delete(c.local, k)
	c.mu.Unlock()
	key := c.s.key(tagSession, hexKey(k))
	ctx, cancel := context.WithTimeout(c.s.ctx, c.s.cfg.Timeout)
	defer cancel()
	_, err := c.s.cli.Txn(ctx).If(clientv3.Compare(clientv3.Value(key), "=", string(ls.val))).Then(clientv3.OpDelete(key)).Commit()
	if err == nil {
		c.s.stats.sessionDeletes.Add(1)
	}
	if err != nil && c.s.ctx.Err() == nil {
		c.s.stats.errors.Add(1)
		c.s.log.Warn("rendezvous: etcd: session record not deleted (it expires with the lease)", "key", k.String(), "err", err)
	}
}

// updateNAT rewrites k's session record with the NAT kind conn's agent
// reported.
func (c *etcdCluster) updateNAT(k addressing.PublicKey, conn any, nat proto.NATKind) error {
	c.mu.Lock()
	ls, ok := c.local[k]
	c.mu.Unlock()
	if !ok || ls.conn != conn {
		return nil
	}
	old, err := decodeSession(record(ls.val))
	if err != nil || old.NAT == nat {
		return err
	}
	val := append(append([]byte(nil), c.s.origin[:]...), encodeSession(c.s.id, nat, old.Locators, time.Now())...)
	lease := c.lease()
	if lease == 0 {
		return fmt.Errorf("%w: no etcd lease", ErrStoreUnavailable)
	}
	key := c.s.key(tagSession, hexKey(k))
	ctx, cancel := context.WithTimeout(c.s.ctx, c.s.cfg.Timeout)
	defer cancel()
	resp, err := c.s.cli.Txn(ctx).If(clientv3.Compare(clientv3.Value(key), "=", string(ls.val))).
		Then(clientv3.OpPut(key, string(val), clientv3.WithLease(lease))).Commit()
	if err != nil {
		c.s.stats.errors.Add(1)
		return fmt.Errorf("%w: %v", ErrStoreUnavailable, err)
	}
	if resp.Succeeded {
		c.s.stats.txns.Add(1)
		c.mu.Lock()
		if cur, ok := c.local[k]; ok && cur.conn == conn {
			c.local[k] = localSession{conn: conn, val: val}
		}
		c.mu.Unlock()
	}
	return nil
}

// remoteSession returns k's session on another server of the cluster.
func (c *etcdCluster) remoteSession(k addressing.PublicKey) (RemoteSession, bool) {
	if c.s.ready() != nil {
		return RemoteSession{}, false
	}
	sn := c.s.snap.Load()
	it, ok := sn.tree.Get(kv{key: c.s.key(tagSession, hexKey(k))})
	if !ok {
		return RemoteSession{}, false
	}
	r, err := decodeSession(record(it.val))
	if err != nil || r.Server == c.s.id {
		return RemoteSession{}, false
	}
	return r, true
}

// push sends an introduction frame to k's session on server.
func (c *etcdCluster) push(server uint64, k addressing.PublicKey, frame []byte) error {
	c.mu.Lock()
	lease := c.pushLease
	if lease == 0 || c.fenced {
		lease = 0
	}
	c.mu.Unlock()
	if lease == 0 {
		return fmt.Errorf("%w: no etcd lease for introductions", ErrStoreUnavailable)
	}
	var nonce [8]byte
	rand.Read(nonce[:])
	key := c.s.key(tagPush, hexID(server), hex.EncodeToString(nonce[:]))
	val := append(append(append([]byte(nil), c.s.origin[:]...), k[:]...), frame...)
	if len(val) > etcdMaxValue {
		return errors.New("rendezvous: etcd store: introduction too large")
	}
	ctx, cancel := context.WithTimeout(c.s.ctx, c.s.cfg.Timeout)
	defer cancel()
	start := time.Now()
	_, err := c.s.cli.Put(ctx, key, string(val), clientv3.WithLease(lease))
	c.s.stats.latency.observe(time.Since(start))
	if err != nil {
		c.s.stats.errors.Add(1)
		return fmt.Errorf("%w: %v", ErrStoreUnavailable, err)
	}
	c.s.stats.txns.Add(1)
	c.s.stats.pushesSent.Add(1)
	return nil
}

// --- reactions to the watch ---

type clusterEventKind uint8

const (
	evMail clusterEventKind = iota + 1
	evSessionMoved
	evPairDeleted
	evMember
	evPush
)

type clusterEvent struct {
	kind  clusterEventKind
	k, k2 addressing.PublicKey
	id    addressing.NetworkID
	doc   []byte
	exit  bool
	// request: evMail of a trust request
	request bool
}

// react maps a change of key k (old value if had, new value; nil: deleted)
// to what the server must do. It runs under the store's lock.
func (c *etcdCluster) react(k string, old []byte, had bool, val []byte) (clusterEvent, bool) {
	p := c.s.prefix
	if len(k) < len(p)+2 {
		return clusterEvent{}, false
	}
	rest := k[len(p)+2:]
	mine := len(val) >= 8 && bytes.Equal(val[:8], c.s.origin[:])
	switch k[len(p)] {
	case tagMail:
		to, _, _ := cutSlash(rest)
		if key, ok := parseHexKey(to); ok && val != nil && !had {
			// A trust request wakes its target after requestDeliveryDelay,
			// as on one server (wakeSoon): the delivery's work must not
			// overlap the requester's answer.
			return clusterEvent{kind: evMail, k: key, request: isRequest(record(val))}, true
		}
	case tagSession:
		if val == nil || mine {
			return clusterEvent{}, false
		}
		if key, ok := parseHexKey(rest); ok {
			return clusterEvent{kind: evSessionMoved, k: key}, true
		}
	case tagPair:
		if val != nil || len(rest) != 4*addressing.PublicKeySize {
			return clusterEvent{}, false
		}
		a, ok1 := parseHexKey(rest[:2*addressing.PublicKeySize])
		b, ok2 := parseHexKey(rest[2*addressing.PublicKeySize:])
		if ok1 && ok2 {
			return clusterEvent{kind: evPairDeleted, k: a, k2: b}, true
		}
	case tagMember:
		if val == nil || mine {
			return clusterEvent{}, false
		}
		idHex, keyHex, _ := cutSlash(rest)
		id, err := hexDecode2(idHex)
		key, ok := parseHexKey(keyHex)
		if err != nil || !ok {
			return clusterEvent{}, false
		}
		nm, err := decodeMember(addressing.NetworkID(id), key, record(val))
		if err != nil {
			return clusterEvent{}, false
		}
		var om MemberRecord
		if had {
			om, _ = decodeMember(addressing.NetworkID(id), key, record(old))
		}
		switch {
		case nm.Exit != nil && !bytes.Equal(nm.Exit, om.Exit) && !nm.Member():
			return clusterEvent{kind: evMember, id: nm.Network, k: key, doc: nm.Exit, exit: true}, true
		case nm.Join != nil && !bytes.Equal(nm.Join, om.Join):
			return clusterEvent{kind: evMember, id: nm.Network, k: key, doc: nm.Join}, true
		}
	case tagPush:
		srv, _, _ := cutSlash(rest)
		if val == nil || srv != hexID(c.s.id) {
			return clusterEvent{}, false
		}
		r := record(val)
		if len(r) < addressing.PublicKeySize {
			return clusterEvent{}, false
		}
		key, _ := addressing.PublicKeyFromSlice(r[:addressing.PublicKeySize])
		return clusterEvent{kind: evPush, k: key, doc: append([]byte(nil), r[addressing.PublicKeySize:]...)}, true
	}
	return clusterEvent{}, false
}

func cutSlash(s string) (string, string, bool) {
	i := bytes.IndexByte([]byte(s), '/')
	if i < 0 {
		return s, "", false
	}
	return s[:i], s[i+1:], true
}

// run performs a reaction (on the watch goroutine, outside the lock).
func (c *etcdCluster) run(ev clusterEvent) {
	c.mu.Lock()
	h := c.hooks
	if ev.kind == evSessionMoved {
		delete(c.local, ev.k) // ours is not the current record any more
	}
	c.mu.Unlock()
	if h == nil {
		return
	}
	switch ev.kind {
	case evMail:
		if ev.request && h.wakeSoon != nil {
			h.wakeSoon(ev.k)
		} else {
			h.wake(ev.k)
		}
	case evSessionMoved:
		h.sessionMoved(ev.k)
	case evPairDeleted:
		h.pairDeleted(ev.k, ev.k2)
	case evMember:
		h.memberChanged(ev.id, ev.k, ev.doc, ev.exit)
	case evPush:
		c.s.stats.pushesReceived.Add(1)
		if !h.push(ev.k, ev.doc) {
			c.s.stats.pushesDropped.Add(1)
		}
	}
}

// resynced runs after a full reload of the replica: changes may have been
// missed, so every local session looks at its mailbox again.
func (c *etcdCluster) resynced() {
	c.mu.Lock()
	h := c.hooks
	c.mu.Unlock()
	if h != nil {
		h.resynced()
	}
}

// attach connects a server's reactions. One server per store.
func (c *etcdCluster) attach(h *clusterHooks) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.hooks != nil {
		return errors.New("rendezvous: an EtcdStore serves one server; open one per server")
	}
	c.hooks = h
	return nil
}

// detach disconnects the server (it closed): the store may serve another.
func (c *etcdCluster) detach() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.hooks = nil
	clear(c.local)
}

// storeStats implements storeStatser.
func (s *EtcdStore) storeStats() (StoreStats, error) {
	sn := s.snap.Load()
	e := &EtcdStats{
		Txns: s.stats.txns.Load(), Conflicts: s.stats.conflicts.Load(), Errors: s.stats.errors.Load(),
		Unavailable: s.stats.unavailable.Load(), Reads: s.stats.reads.Load(), WatchEvents: s.stats.watchEvents.Load(),
		Reloads: s.stats.reloads.Load(), SessionDeletes: s.stats.sessionDeletes.Load(), Latency: s.stats.latency.snapshot(), Revision: sn.rev,
		Fresh: s.ready() == nil, Servers: sn.counts.servers, Sessions: sn.counts.sessions, Keys: sn.counts.keys,
		PushesSent: s.stats.pushesSent.Load(), PushesReceived: s.stats.pushesReceived.Load(), PushesDropped: s.stats.pushesDropped.Load(),
	}
	if last := s.lastContact.Load(); last != 0 {
		e.LastContact = time.Unix(0, last)
	}
	return StoreStats{Kind: "etcd", Agents: sn.counts.agents, Mail: sn.counts.mail, Bytes: sn.counts.bytes, Etcd: e}, nil
}

// isRequest reports whether a mailbox record (time ‖ message) holds a
// trust request.
func isRequest(rec []byte) bool {
	if len(rec) < 8 {
		return false
	}
	m, err := trustdb.ParseMessage(rec[8:])
	return err == nil && m.Kind == trustdb.KindRequest
}
