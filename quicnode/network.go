package quicnode

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/agentnet/agentnet/addressing"
	"github.com/agentnet/agentnet/network"
	"github.com/agentnet/agentnet/quicnode/internal/paths"
	"github.com/agentnet/agentnet/rendezvous"
	"github.com/agentnet/agentnet/trustdb"
)

// Networks (REQ-2). Joining a network is the consent: its members reach
// each other without a trust request. The node keeps, per network it is
// in, the owner key it learnt out of band (its own creation, or the invite
// it accepted) and admits a member only on a Join that verifies under that
// key; the rendezvous only carries the documents. The gate, the knock table
// and the dialer admit a key that is trusted or a fellow member
// (admissible); when a membership ends, links to keys no longer admissible
// close at once.

// Network errors.
var (
	// ErrNoNetwork: the node is not in that network.
	ErrNoNetwork = errors.New("quicnode: not in that network")
	// ErrNotOwner: only the network's owner may do that (invite, remove);
	// the owner may not leave.
	ErrNotOwner = errors.New("quicnode: not the network's owner")
)

// DefaultInviteTTL is how long an invite is valid when Invite gets ttl 0.
const DefaultInviteTTL = 24 * time.Hour

// fellowRetry bounds how long a dial to a fellow member retries a refused
// handshake: the peer may not have heard of our Join yet (memberships
// travel through the rendezvous).
const fellowRetry = 3 * time.Second

// netRefreshEvery bounds how often the node fetches a network's member
// list on its own (besides the pushes): when a dial names a fellow we do not
// know, or when the knock refuses a handshake (it may come from a member
// whose Join has not reached us yet).
const netRefreshEvery = time.Second

// netRefresher is the single-flight, rate-limited fetch of member lists.
type netRefresher struct {
	mu   sync.Mutex
	last map[addressing.NetworkID]time.Time
	busy map[addressing.NetworkID]chan struct{}
	kick chan struct{} // one slot: the gate asks for a refresh of every network
}

// NetworkInfo describes a network the node is in.
type NetworkInfo struct {
	ID      addressing.NetworkID
	Name    string
	Owner   addressing.PublicKey
	Owned   bool // we own it
	Members int  // the owner included
}

// Member is a member of a network, as the node verified it.
type Member struct {
	Addr   addressing.Addr // in the network: N:xxxx.xxxx.xxxx
	Key    addressing.PublicKey
	Owner  bool
	Self   bool
	Joined time.Time // the time of its Join; zero for the owner
}

// netCounters are the networks' counters.
type netCounters struct {
	docsRefused atomic.Uint64 // pushed or fetched documents that did not verify or fit
}

// admissible reports whether k may connect: trusted, or a fellow member of
// a network we are in.
func (n *Node) admissible(k addressing.PublicKey) bool {
	return n.store.IsTrusted(k) || n.store.IsMember(0, k)
}

func infoOf(r trustdb.Network) network.Info {
	return network.Info{ID: r.ID, Name: r.Name, Owner: r.Owner}
}

// CreateNetwork creates a network named name (hostname rules) that we own,
// at the rendezvous, and returns its ID.
func (n *Node) CreateNetwork(ctx context.Context, name string) (addressing.NetworkID, error) {
	if n.rdv == nil {
		return 0, errors.New("quicnode: create network: no rendezvous configured")
	}
	info, err := n.rdv.CreateNetwork(ctx, name)
	if err != nil {
		return 0, fmt.Errorf("quicnode: create network: %w", err)
	}
	self := n.id.PublicKey()
	err = n.store.UpdateNetwork(info.ID, func(r *trustdb.Network, exists bool) (bool, error) {
		if exists && r.Owner != self {
			return false, fmt.Errorf("we are in another network %d already", info.ID)
		}
		r.Name, r.Owner, r.Proof, r.Members, r.Ended = info.Name, self, nil, nil, nil
		return true, nil
	})
	if err != nil {
		return 0, fmt.Errorf("quicnode: create network: %w", err)
	}
	n.log.Info("network created", "network", info.ID, "name", info.Name)
	return info.ID, nil
}

// Invite returns an invite token for network id, which we must own, valid
// for ttl (DefaultInviteTTL if 0). A zero invitee makes a bearer invite
// that anyone holding the token can use until it expires; otherwise only
// that key can join with it. It does no I/O.
func (n *Node) Invite(id addressing.NetworkID, invitee addressing.PublicKey, ttl time.Duration) (string, error) {
	r, ok := n.store.Network(id)
	if !ok {
		return "", fmt.Errorf("quicnode: invite to %d: %w", id, ErrNoNetwork)
	}
	if r.Owner != n.id.PublicKey() {
		return "", fmt.Errorf("quicnode: invite to %s: %w", r.Name, ErrNotOwner)
	}
	if ttl == 0 {
		ttl = DefaultInviteTTL
	}
	tok, err := network.NewInvite(n.id, infoOf(r), invitee, time.Now(), ttl)
	if err != nil {
		return "", fmt.Errorf("quicnode: invite: %w", err)
	}
	return tok.String(), nil
}

// JoinNetwork joins the network an invite token names: it checks the token
// (the owner's signature, the invitee, the expiry), sends our signed Join
// to the rendezvous, and fetches the members. Joining a network we are in
// already does nothing.
func (n *Node) JoinNetwork(ctx context.Context, token string) (addressing.NetworkID, error) {
	tok, err := network.ParseToken(token)
	if err != nil {
		return 0, fmt.Errorf("quicnode: join network: %w", err)
	}
	info := tok.Invite.Info()
	self := n.id.PublicKey()
	if r, ok := n.store.Network(info.ID); ok {
		if r.Owner != info.Owner || r.Name != info.Name {
			return 0, fmt.Errorf("quicnode: join network %s: we are in another network with ID %d", info.Name, info.ID)
		}
		if r.HasMember(self) {
			return info.ID, nil
		}
	}
	if n.rdv == nil {
		return 0, errors.New("quicnode: join network: no rendezvous configured")
	}
	j, err := network.NewJoin(n.id, tok, time.Now())
	if err != nil {
		return 0, fmt.Errorf("quicnode: join network %s: %w", info.Name, err)
	}
	raw, err := j.AppendBinary(nil)
	if err != nil {
		return 0, fmt.Errorf("quicnode: join network: %w", err)
	}
	got, err := n.rdv.JoinNetwork(ctx, raw)
	if err != nil {
		return 0, fmt.Errorf("quicnode: join network %s: %w", info.Name, err)
	}
	if got.ID != info.ID || got.Name != info.Name || got.Owner != info.Owner {
		return 0, fmt.Errorf("quicnode: join network %s: the rendezvous answered for another network", info.Name)
	}
	err = n.store.UpdateNetwork(info.ID, func(r *trustdb.Network, exists bool) (bool, error) {
		if exists && r.Owner != info.Owner {
			return false, fmt.Errorf("we are in another network %d already", info.ID)
		}
		r.Name, r.Owner, r.Proof = info.Name, info.Owner, raw
		r.SetMember(self, raw)
		return true, nil
	})
	if err != nil {
		return 0, fmt.Errorf("quicnode: join network %s: %w", info.Name, err)
	}
	n.log.Info("network joined", "network", info.ID, "name", info.Name)
	if st, err := n.rdv.Members(ctx, info.ID); err != nil {
		n.log.Warn("network members not fetched; they come with the next push", "network", info.ID, "err", err)
	} else {
		// Not a full list for us: pushes may have brought newer changes
		// on the session stream meanwhile, so omissions prove nothing.
		st.Full = false
		n.applyNetwork(st)
	}
	return info.ID, nil
}

// LeaveNetwork leaves network id: the rendezvous and, through it, the
// members are told, and links to members that are no longer admissible
// close at once. The owner cannot leave (ErrNotOwner).
func (n *Node) LeaveNetwork(ctx context.Context, id addressing.NetworkID) error {
	r, ok := n.store.Network(id)
	if !ok {
		return fmt.Errorf("quicnode: leave network %d: %w", id, ErrNoNetwork)
	}
	if r.Owner == n.id.PublicKey() {
		return fmt.Errorf("quicnode: leave network %s: the owner cannot leave: %w", r.Name, ErrNotOwner)
	}
	leave, err := network.NewLeave(n.id, infoOf(r), time.Now())
	if err != nil {
		return fmt.Errorf("quicnode: leave network %s: %w", r.Name, err)
	}
	if err := n.sendExit(ctx, leave); err != nil {
		return fmt.Errorf("quicnode: leave network %s: %w", r.Name, err)
	}
	err = n.store.UpdateNetwork(id, func(*trustdb.Network, bool) (bool, error) { return false, nil })
	if err != nil {
		return fmt.Errorf("quicnode: leave network %s: %w", r.Name, err)
	}
	n.closeInadmissible(r.Keys(), "left the network")
	n.log.Info("network left", "network", id, "name", r.Name)
	return nil
}

// RemoveMember removes member (its address in any network, its hostname if
// it is trusted, or its key) from network id, which we must own: the
// rendezvous and the members are told, and our links to it close at once
// unless it stays admissible.
func (n *Node) RemoveMember(ctx context.Context, id addressing.NetworkID, member string) error {
	r, ok := n.store.Network(id)
	if !ok {
		return fmt.Errorf("quicnode: remove from %d: %w", id, ErrNoNetwork)
	}
	if r.Owner != n.id.PublicKey() {
		return fmt.Errorf("quicnode: remove from %s: %w", r.Name, ErrNotOwner)
	}
	k, ok := n.findMember(r, member)
	if !ok {
		return fmt.Errorf("quicnode: remove %s from %s: %w", member, r.Name, ErrNoNetwork)
	}
	rm, err := network.NewRemove(n.id, infoOf(r), k, time.Now())
	if err != nil {
		return fmt.Errorf("quicnode: remove from %s: %w", r.Name, err)
	}
	raw, _ := rm.AppendBinary(nil)
	if err := n.sendExit(ctx, rm); err != nil {
		return fmt.Errorf("quicnode: remove from %s: %w", r.Name, err)
	}
	err = n.store.UpdateNetwork(id, func(r *trustdb.Network, exists bool) (bool, error) {
		if !exists {
			return false, nil
		}
		r.SetExit(k, raw)
		return true, nil
	})
	if err != nil {
		return fmt.Errorf("quicnode: remove from %s: %w", r.Name, err)
	}
	n.closeInadmissible([]addressing.PublicKey{k}, "removed from the network")
	n.log.Info("network member removed", "network", id, "peer", k.NodeID())
	return nil
}

// sendExit sends a Leave or Remove. A rendezvous that answers not found
// (it has no such membership) is no reason to keep ours.
func (n *Node) sendExit(ctx context.Context, e *network.Exit) error {
	if n.rdv == nil {
		return errors.New("no rendezvous configured")
	}
	raw, err := e.AppendBinary(nil)
	if err != nil {
		return err
	}
	if err := n.rdv.SendExit(ctx, raw); err != nil && !errors.Is(err, rendezvous.ErrNotFound) {
		return err
	}
	return nil
}

// findMember finds the member of r that s names: an address (any
// network), a key, or the hostname of a trusted peer.
func (n *Node) findMember(r trustdb.Network, s string) (addressing.PublicKey, bool) {
	if k, err := addressing.ParsePublicKey(s); err == nil {
		return k, r.HasMember(k) && k != r.Owner
	}
	t, err := addressing.ParseTarget(s)
	if err != nil {
		return addressing.PublicKey{}, false
	}
	if a, ok := t.Addr(); ok {
		for _, m := range r.Members {
			if m.Key.NodeID() == a.Node() {
				return m.Key, true
			}
		}
		return addressing.PublicKey{}, false
	}
	h, _ := t.Hostname()
	for _, rec := range n.store.List() {
		if rec.Hostname == h && !rec.Key.IsZero() && r.HasMember(rec.Key) && rec.Key != r.Owner {
			return rec.Key, true
		}
	}
	return addressing.PublicKey{}, false
}

// Networks lists the networks the node is in, by ID.
func (n *Node) Networks() []NetworkInfo {
	self := n.id.PublicKey()
	var out []NetworkInfo
	for _, r := range n.store.Networks() {
		out = append(out, NetworkInfo{ID: r.ID, Name: r.Name, Owner: r.Owner, Owned: r.Owner == self, Members: 1 + len(r.Members)})
	}
	return out
}

// Members lists the members of network id, the owner first, then by
// address; nil if the node is not in it.
func (n *Node) Members(id addressing.NetworkID) []Member {
	r, ok := n.store.Network(id)
	if !ok {
		return nil
	}
	self := n.id.PublicKey()
	out := []Member{{Addr: addressing.AddrFrom(id, r.Owner.NodeID()), Key: r.Owner, Owner: true, Self: r.Owner == self}}
	var rest []Member
	for _, m := range r.Members {
		mb := Member{Addr: addressing.AddrFrom(id, m.Key.NodeID()), Key: m.Key, Self: m.Key == self}
		if j, err := network.ParseJoin(m.Doc); err == nil {
			mb.Joined = j.Time
		}
		rest = append(rest, mb)
	}
	slices.SortFunc(rest, func(a, b Member) int { return a.Addr.Node().Compare(b.Addr.Node()) })
	return append(out, rest...)
}

// networkPushed takes the network documents the rendezvous pushes.
func (n *Node) networkPushed(st rendezvous.NetworkState) { n.applyNetwork(st) }

// applyNetwork verifies the documents of st against the network as we know
// it (never as the rendezvous names it) and stores what passes. A network
// we are not in is ignored: only our own creation or an invite we accepted
// tells us an owner key. A verified Leave or Remove of ourselves ends our
// membership. With st.Full, members the list does not name are dropped.
func (n *Node) applyNetwork(st rendezvous.NetworkState) {
	self := n.id.PublicKey()
	var refused int
	var gone bool
	err := n.store.UpdateNetwork(st.ID, func(r *trustdb.Network, exists bool) (bool, error) {
		refused, gone = 0, false
		if !exists {
			return false, nil
		}
		info := infoOf(*r)
		named := map[addressing.PublicKey]bool{}
		for _, raw := range st.Docs {
			k, err := applyDoc(r, info, raw)
			if err != nil {
				if _, member := r.Member(k); errors.Is(err, network.ErrStale) && member {
					named[k] = true // we know a newer Join
				} else if !errors.Is(err, network.ErrStale) {
					refused++
					n.log.Warn("network document refused", "network", st.ID, "err", err)
				}
				continue
			}
			named[k] = true
			if _, member := r.Member(k); k == self && !member {
				gone = true
				return false, nil
			}
		}
		if st.Full {
			for _, m := range slices.Clone(r.Members) {
				if !named[m.Key] && m.Key != self {
					r.DropMember(m.Key)
				}
			}
		}
		return true, nil
	})
	n.netStats.docsRefused.Add(uint64(refused))
	if err != nil {
		n.log.Warn("network update failed", "network", st.ID, "err", err)
		return
	}
	// The gate's knock table follows at once (the store's subscribers run
	// asynchronously): a new member's first handshake is not refused.
	n.rebuildIndex()
	if gone {
		n.log.Info("network membership ended", "network", st.ID)
	}
}

// applyDoc verifies one document against r (info) and applies it, returning
// the member it names. A document byte-identical to the stored one names its
// member without another verification.
func applyDoc(r *trustdb.Network, info network.Info, raw []byte) (addressing.PublicKey, error) {
	doc, err := network.Parse(raw)
	if err != nil {
		return addressing.PublicKey{}, err
	}
	var cur *network.Join
	var last *network.Exit
	member := func(k addressing.PublicKey) {
		if b, ok := r.Member(k); ok {
			cur, _ = network.ParseJoin(b)
		}
		if b, ok := r.Exit(k); ok {
			last, _ = network.ParseExit(b)
		}
	}
	switch d := doc.(type) {
	case *network.Join:
		if b, ok := r.Member(d.Member); ok && string(b) == string(raw) {
			return d.Member, nil
		}
		member(d.Member)
		if err := info.CheckJoin(d, cur, last); err != nil {
			return d.Member, err
		}
		r.SetMember(d.Member, raw)
		return d.Member, nil
	case *network.Exit:
		if b, ok := r.Exit(d.Member); ok && string(b) == string(raw) {
			return d.Member, nil
		}
		member(d.Member)
		err := info.CheckExit(d, cur, last)
		if err != nil && !errors.Is(err, network.ErrNotMember) {
			return d.Member, err
		}
		// A verified Exit of someone we never saw as a member still counts:
		// a Remove voids the invites issued before it.
		r.SetExit(d.Member, raw)
		return d.Member, nil
	}
	return addressing.PublicKey{}, fmt.Errorf("network: a %s is not a membership document", doc.Kind())
}

// onNetworkEvent closes the links of members that left or were removed,
// unless they stay admissible.
func (n *Node) onNetworkEvent(ch *trustdb.NetworkChange) {
	n.closeInadmissible(ch.Removed, "network membership ended")
}

// closeInadmissible closes the links to every key of keys that may no
// longer connect.
func (n *Node) closeInadmissible(keys []addressing.PublicKey, reason string) {
	for _, k := range keys {
		if k != n.id.PublicKey() && !n.admissible(k) {
			n.ports.forget(k)
			n.paths.ClosePeer(k, CodeRevoked, reason)
		}
	}
}

// resolveFresh is resolve that, when the target is not admissible as far
// as we know but could be a fellow member of a network we are in, fetches
// those networks' member lists once (rate-limited) and tries again: a member
// that joined a moment ago is reachable before its Join's push arrives.
func (n *Node) resolveFresh(ctx context.Context, t addressing.Target) (addressing.PublicKey, error) {
	k, err := n.resolve(ctx, t)
	if !errors.Is(err, ErrNotTrusted) || n.rdv == nil {
		return k, err
	}
	ids := n.networksFor(t)
	if len(ids) == 0 || !n.refreshNetworks(ctx, ids, netRefreshEvery) {
		return k, err
	}
	return n.resolve(ctx, t)
}

// networksFor lists the networks of ours whose members t may name: N for
// N:x (if we are in N), every network for 0:x and hostnames.
func (n *Node) networksFor(t addressing.Target) []addressing.NetworkID {
	var ids []addressing.NetworkID
	a, isAddr := t.Addr()
	for _, r := range n.store.Networks() {
		if !isAddr || a.Network() == 0 || a.Network() == r.ID {
			ids = append(ids, r.ID)
		}
	}
	return ids
}

// refreshNetworks fetches the member lists of ids from the rendezvous and
// applies what verifies (additions only: pushes carry the removals). A
// network fetched less than minAge ago is skipped; a fetch already running
// is waited for. It reports whether any list was fetched or waited for.
func (n *Node) refreshNetworks(ctx context.Context, ids []addressing.NetworkID, minAge time.Duration) bool {
	if n.rdv == nil {
		return false
	}
	r := &n.netRefresh
	fetched := false
	for _, id := range ids {
		r.mu.Lock()
		if ch := r.busy[id]; ch != nil {
			r.mu.Unlock()
			select {
			case <-ch:
				fetched = true
			case <-ctx.Done():
				return fetched
			}
			continue
		}
		if last, ok := r.last[id]; ok && time.Since(last) < minAge {
			r.mu.Unlock()
			continue
		}
		if r.busy == nil {
			r.busy, r.last = map[addressing.NetworkID]chan struct{}{}, map[addressing.NetworkID]time.Time{}
		}
		ch := make(chan struct{})
		r.busy[id], r.last[id] = ch, time.Now()
		r.mu.Unlock()
		st, err := n.rdv.Members(ctx, id)
		if err == nil {
			st.Full = false // pushes may have brought newer changes meanwhile
			n.applyNetwork(st)
			fetched = true
		} else {
			n.log.Debug("network members not fetched", "network", id, "err", err)
		}
		r.mu.Lock()
		delete(r.busy, id)
		r.mu.Unlock()
		close(ch)
	}
	return fetched
}

// introduced passes an introduction the rendezvous pushed to the path
// manager. The rendezvous introduces only trusted pairs and fellow members,
// so one from a key we do not admit (yet) may come from a member whose Join
// has not reached us: the member lists are fetched first (once, waiting for
// a fetch in flight), and the introduction goes on if the key is admissible
// then.
func (n *Node) introduced(intro rendezvous.Introduce) {
	if n.admissible(intro.Peer) || n.rdv == nil {
		n.paths.Introduced(intro)
		return
	}
	var ids []addressing.NetworkID
	for _, r := range n.store.Networks() {
		ids = append(ids, r.ID)
	}
	if len(ids) == 0 {
		return
	}
	n.goFunc(func() {
		ctx, cancel := context.WithTimeout(n.ctx, 3*time.Second)
		defer cancel()
		n.refreshNetworks(ctx, ids, 0)
		if n.admissible(intro.Peer) {
			n.paths.Introduced(intro)
		}
	})
}

// kickNetRefresh asks netRefreshLoop to fetch every member list. It never
// blocks (the gate calls it for a refused knock).
func (n *Node) kickNetRefresh() {
	select {
	case n.netRefresh.kick <- struct{}{}:
	default:
	}
}

// netRefreshLoop fetches every network's member list when kicked, at most
// once per netRefreshEvery: a refused knock may come from a member whose
// Join we have not heard of, and its dialer retries for fellowRetry.
func (n *Node) netRefreshLoop() {
	var last time.Time
	for {
		select {
		case <-n.ctx.Done():
			return
		case <-n.netRefresh.kick:
		}
		if wait := netRefreshEvery - time.Since(last); wait > 0 {
			t := time.NewTimer(wait)
			select {
			case <-n.ctx.Done():
				t.Stop()
				return
			case <-t.C:
			}
		}
		var ids []addressing.NetworkID
		for _, r := range n.store.Networks() {
			ids = append(ids, r.ID)
		}
		if len(ids) == 0 {
			continue
		}
		last = time.Now()
		ctx, cancel := context.WithTimeout(n.ctx, 5*time.Second)
		n.refreshNetworks(ctx, ids, 0)
		cancel()
	}
}

// resolveMember maps an address to a fellow member: of network a.Network(),
// or of any network for network 0.
func (n *Node) resolveMember(a addressing.Addr) (addressing.PublicKey, error) {
	k, ok := n.store.MemberByNode(a.Network(), a.Node())
	if !ok || k == n.id.PublicKey() {
		return addressing.PublicKey{}, ErrNotTrusted
	}
	return k, nil
}

// getLinkRetry is getLink that, for a peer admissible only as a fellow
// member, retries a refused handshake for up to fellowRetry: the peer
// learns of a new membership through the rendezvous, a moment after we do.
func (n *Node) getLinkRetry(ctx context.Context, key addressing.PublicKey) (*paths.Link, error) {
	deadline := time.Now().Add(fellowRetry)
	wait := 50 * time.Millisecond
	for {
		l, err := n.getLink(ctx, key)
		if err == nil || !errors.Is(err, ErrNotTrusted) || n.store.IsTrusted(key) || !n.store.IsMember(0, key) || time.Now().Add(wait).After(deadline) {
			return l, err
		}
		t := time.NewTimer(wait)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return nil, err
		}
		wait *= 2
	}
}
