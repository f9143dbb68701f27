package trustdb

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"github.com/agentnet/agentnet/internal/wire"
	"maps"
	"slices"
	"time"

	"github.com/agentnet/agentnet/addressing"
	bolt "go.etcd.io/bbolt"
)

// Networks (REQ-2). The Store keeps, per network the agent is in, the
// signed documents that prove its membership list. It does not judge them:
// the node verifies every document (package network) against the owner key
// it learnt out of band and stores the outcome with UpdateNetwork. Like the
// trusted keys, the members of every network are mirrored in memory, so the
// handshake gate asks IsMember without touching the disk.

// bucketNetworks: network ID (2, big endian) -> Network (networkVersion).
var bucketNetworks = []byte("networks")

const (
	networkVersion = 1
	maxNetworkDoc  = 1024    // bytes of one encoded document
	maxNetworkDocs = 1 << 16 // members, and ended members, per network
)

// Network is what the Store knows about one network the agent is in.
// Networks returned by the Store are copies the caller owns.
type Network struct {
	ID    addressing.NetworkID
	Name  string
	Owner addressing.PublicKey
	// Proof is our own encoded Join; nil if we own the network.
	Proof []byte
	// Members are the current members but the owner, each with its encoded
	// Join, sorted by key. We are among them unless we own the network.
	Members []NetworkDoc
	// Ended holds the last Leave or Remove of former members, sorted by key.
	Ended []NetworkDoc
	// Created and Updated are our clock when the record was created and
	// last changed (set by UpdateNetwork).
	Created, Updated time.Time
}

// NetworkDoc is one member's document: its key and the encoded document.
type NetworkDoc struct {
	Key addressing.PublicKey
	Doc []byte
}

// HasMember reports whether k is the owner or a current member of n.
func (n *Network) HasMember(k addressing.PublicKey) bool {
	if k == n.Owner {
		return true
	}
	_, ok := slices.BinarySearchFunc(n.Members, k, cmpDocKey)
	return ok
}

// Member returns k's Join.
func (n *Network) Member(k addressing.PublicKey) ([]byte, bool) { return findDoc(n.Members, k) }

// Exit returns k's last Leave or Remove.
func (n *Network) Exit(k addressing.PublicKey) ([]byte, bool) { return findDoc(n.Ended, k) }

// SetMember records k's Join (replacing an earlier one).
func (n *Network) SetMember(k addressing.PublicKey, join []byte) {
	n.Members = setDoc(n.Members, k, join)
}

// SetExit records k's Leave or Remove and ends its membership.
func (n *Network) SetExit(k addressing.PublicKey, exit []byte) {
	n.Members = deleteDoc(n.Members, k)
	n.Ended = setDoc(n.Ended, k, exit)
}

// DropMember ends k's membership without a document (a full list from the
// rendezvous no longer names it).
func (n *Network) DropMember(k addressing.PublicKey) { n.Members = deleteDoc(n.Members, k) }

// Keys returns the owner and the current members, the owner first.
func (n *Network) Keys() []addressing.PublicKey {
	out := make([]addressing.PublicKey, 0, 1+len(n.Members))
	out = append(out, n.Owner)
	for _, m := range n.Members {
		out = append(out, m.Key)
	}
	return out
}

func cmpDocKey(d NetworkDoc, k addressing.PublicKey) int { return bytes.Compare(d.Key[:], k[:]) }

func findDoc(ds []NetworkDoc, k addressing.PublicKey) ([]byte, bool) {
	if i, ok := slices.BinarySearchFunc(ds, k, cmpDocKey); ok {
		return ds[i].Doc, true
	}
	return nil, false
}

func setDoc(ds []NetworkDoc, k addressing.PublicKey, doc []byte) []NetworkDoc {
	doc = bytes.Clone(doc)
	i, ok := slices.BinarySearchFunc(ds, k, cmpDocKey)
	if ok {
		ds[i].Doc = doc
		return ds
	}
	return slices.Insert(ds, i, NetworkDoc{Key: k, Doc: doc})
}

func deleteDoc(ds []NetworkDoc, k addressing.PublicKey) []NetworkDoc {
	if i, ok := slices.BinarySearchFunc(ds, k, cmpDocKey); ok {
		return slices.Delete(ds, i, i+1)
	}
	return ds
}

func (n *Network) clone() Network {
	c := *n
	c.Proof = bytes.Clone(n.Proof)
	c.Members = cloneDocs(n.Members)
	c.Ended = cloneDocs(n.Ended)
	return c
}

func cloneDocs(ds []NetworkDoc) []NetworkDoc {
	if ds == nil {
		return nil
	}
	out := make([]NetworkDoc, len(ds))
	for i, d := range ds {
		out[i] = NetworkDoc{Key: d.Key, Doc: bytes.Clone(d.Doc)}
	}
	return out
}

// NetworkChange describes a committed change of a network's membership, as
// seen from this agent: keys other than ours that became or stopped being
// members (the owner counts as a member).
type NetworkChange struct {
	ID      addressing.NetworkID
	Added   []addressing.PublicKey
	Removed []addressing.PublicKey
	// Deleted: the record is gone (we left or were removed); Removed
	// lists every other member it had.
	Deleted bool
}

// Networks returns every network the agent is in, by ID.
func (s *Store) Networks() []Network {
	var out []Network
	s.view(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketNetworks).ForEach(func(k, v []byte) error {
			if n, err := parseNetwork(k, v); err == nil {
				out = append(out, n)
			}
			return nil
		})
	})
	return out
}

// Network returns the record of network id.
func (s *Store) Network(id addressing.NetworkID) (Network, bool) {
	var n Network
	var ok bool
	s.view(func(tx *bolt.Tx) error {
		n, ok = getNetwork(tx, id)
		return nil
	})
	return n, ok
}

// UpdateNetwork changes network id's record in one write transaction: fn
// gets a copy (exists false: a zero Network with ID set) and returns keep =
// true to store it, false to delete the record. fn runs under the Store's
// write lock: it must be quick and must not call the Store. If fn fails,
// nothing changes and its error is returned. A result equal to the stored
// record writes nothing and publishes no Event; otherwise every subscriber
// gets an Event whose Network field says which members came and went.
// IsMember reflects the change when UpdateNetwork returns.
func (s *Store) UpdateNetwork(id addressing.NetworkID, fn func(n *Network, exists bool) (keep bool, err error)) error {
	if id == 0 {
		return fmt.Errorf("trustdb: update network 0: %w: the global space is no network", ErrMalformed)
	}
	err := s.update("update network", func(tx *bolt.Tx, c *change) error {
		old, exists := getNetwork(tx, id)
		if !exists {
			old = Network{ID: id}
		}
		n := old.clone()
		keep, err := fn(&n, exists)
		if err != nil {
			return err
		}
		b := tx.Bucket(bucketNetworks)
		key := binary.BigEndian.AppendUint16(nil, uint16(id))
		var after *Network
		if keep {
			n.ID = id
			now := s.now()
			n.Updated = old.Updated
			n.Created = old.Created
			if n.Created.IsZero() {
				n.Created = now
			}
			enc, err := n.appendBinary(nil)
			if err != nil {
				return err
			}
			if exists {
				if prev, err := old.appendBinary(nil); err == nil && bytes.Equal(prev, enc) {
					return nil // unchanged
				}
			}
			n.Updated = now
			if enc, err = n.appendBinary(nil); err != nil {
				return err
			}
			if err := b.Put(key, enc); err != nil {
				return err
			}
			after = &n
		} else {
			if !exists {
				return nil
			}
			if err := b.Delete(key); err != nil {
				return err
			}
		}
		var before *Network
		if exists {
			before = &old
		}
		ch := diffNetwork(id, before, after, s.id.pub)
		c.nets = append(c.nets, netUpdate{id: id, keys: after})
		c.events = append(c.events, Event{Network: &ch})
		return nil
	})
	if err != nil {
		return fmt.Errorf("trustdb: update network %d: %w", id, err)
	}
	return nil
}

func diffNetwork(id addressing.NetworkID, before, after *Network, self addressing.PublicKey) NetworkChange {
	set := func(n *Network) map[addressing.PublicKey]bool {
		m := map[addressing.PublicKey]bool{}
		if n != nil {
			for _, k := range n.Keys() {
				if k != self {
					m[k] = true
				}
			}
		}
		return m
	}
	b, a := set(before), set(after)
	ch := NetworkChange{ID: id, Deleted: after == nil}
	for k := range a {
		if !b[k] {
			ch.Added = append(ch.Added, k)
		}
	}
	for k := range b {
		if !a[k] {
			ch.Removed = append(ch.Removed, k)
		}
	}
	sortKeys(ch.Added)
	sortKeys(ch.Removed)
	return ch
}

func sortKeys(ks []addressing.PublicKey) {
	slices.SortFunc(ks, func(a, b addressing.PublicKey) int { return bytes.Compare(a[:], b[:]) })
}

// IsMember reports whether k is a member (or the owner) of network id; for
// id 0, whether k is a member of some network we are in, other than us. It
// reads only memory, for the handshake gate.
func (s *Store) IsMember(id addressing.NetworkID, k addressing.PublicKey) bool {
	x := s.nets.Load()
	if id == 0 {
		return x.fellows[k] > 0
	}
	_, ok := x.members[id][k]
	return ok
}

// MemberByNode returns the key of the member of network id whose NodeID is
// node; for id 0, of any network we are in, us excluded. It reads only
// memory.
func (s *Store) MemberByNode(id addressing.NetworkID, node addressing.NodeID) (addressing.PublicKey, bool) {
	x := s.nets.Load()
	if id == 0 {
		for k := range x.fellows {
			if k.NodeID() == node {
				return k, true
			}
		}
		return addressing.PublicKey{}, false
	}
	for k := range x.members[id] {
		if k.NodeID() == node {
			return k, true
		}
	}
	return addressing.PublicKey{}, false
}

// Fellows returns the keys, other than ours, that are members (or owners)
// of some network we are in, in no particular order. It reads only memory.
func (s *Store) Fellows() []addressing.PublicKey {
	x := s.nets.Load()
	out := make([]addressing.PublicKey, 0, len(x.fellows))
	for k := range x.fellows {
		out = append(out, k)
	}
	return out
}

// netIndex is the in-memory mirror of every network's member keys; it is
// immutable and replaced on every change (copy on write).
type netIndex struct {
	members map[addressing.NetworkID]map[addressing.PublicKey]struct{}
	fellows map[addressing.PublicKey]int // keys other than ours -> networks shared
}

// netUpdate is a network change to apply to the index after commit: keys
// nil means deleted.
type netUpdate struct {
	id   addressing.NetworkID
	keys *Network
}

func newNetIndex(members map[addressing.NetworkID]map[addressing.PublicKey]struct{}, self addressing.PublicKey) *netIndex {
	x := &netIndex{members: members, fellows: map[addressing.PublicKey]int{}}
	for _, m := range members {
		for k := range m {
			if k != self {
				x.fellows[k]++
			}
		}
	}
	return x
}

func memberSet(n *Network) map[addressing.PublicKey]struct{} {
	m := make(map[addressing.PublicKey]struct{}, 1+len(n.Members))
	for _, k := range n.Keys() {
		m[k] = struct{}{}
	}
	return m
}

// applyNetworksLocked updates the member mirror after a commit.
func (s *Store) applyNetworksLocked(ups []netUpdate) {
	if len(ups) == 0 {
		return
	}
	members := maps.Clone(s.nets.Load().members)
	if members == nil {
		members = map[addressing.NetworkID]map[addressing.PublicKey]struct{}{}
	}
	for _, u := range ups {
		if u.keys == nil {
			delete(members, u.id)
		} else {
			members[u.id] = memberSet(u.keys)
		}
	}
	s.nets.Store(newNetIndex(members, s.id.pub))
}

// withdrawMembersLocked takes the members a change drops out of the mirror
// before the commit is visible (fail closed, like withdrawn trust); update
// restores the mirror if the commit fails.
func (s *Store) withdrawMembersLocked(ups []netUpdate) {
	if len(ups) == 0 {
		return
	}
	cur := s.nets.Load().members
	members := maps.Clone(cur)
	if members == nil {
		members = map[addressing.NetworkID]map[addressing.PublicKey]struct{}{}
	}
	for _, u := range ups {
		old, ok := cur[u.id]
		if !ok {
			continue
		}
		if u.keys == nil {
			delete(members, u.id)
			continue
		}
		keep := make(map[addressing.PublicKey]struct{}, len(old))
		for k := range old {
			if u.keys.HasMember(k) {
				keep[k] = struct{}{}
			}
		}
		members[u.id] = keep
	}
	s.nets.Store(newNetIndex(members, s.id.pub))
}

// loadNetworks fills the member mirror at Open.
func loadNetworks(tx *bolt.Tx, path string) (map[addressing.NetworkID]map[addressing.PublicKey]struct{}, error) {
	members := map[addressing.NetworkID]map[addressing.PublicKey]struct{}{}
	err := tx.Bucket(bucketNetworks).ForEach(func(k, v []byte) error {
		n, err := parseNetwork(k, v)
		if err != nil {
			return fmt.Errorf("trustdb: %s: network %x: %w", path, k, err)
		}
		members[n.ID] = memberSet(&n)
		return nil
	})
	return members, err
}

func getNetwork(tx *bolt.Tx, id addressing.NetworkID) (Network, bool) {
	k := binary.BigEndian.AppendUint16(nil, uint16(id))
	v := tx.Bucket(bucketNetworks).Get(k)
	if v == nil {
		return Network{}, false
	}
	n, err := parseNetwork(k, v)
	return n, err == nil
}

// appendBinary appends the versioned encoding of n (the ID is the bucket key):
//
//	version (1) = 1 | name len (1) | name | owner (32) | created (8) | updated (8)
//	proof len (2) | proof | members (2) | members × (key (32) | len (2) | join)
//	ended (2) | ended × (key (32) | len (2) | leave or remove)
//
// Later versions may append fields; parseNetwork ignores trailing bytes.
func (n *Network) appendBinary(b []byte) ([]byte, error) {
	if err := n.validate(); err != nil {
		return b, fmt.Errorf("encode network: %w: %w", ErrMalformed, err)
	}
	b = append(b, networkVersion, byte(len(n.Name)))
	b = append(b, n.Name...)
	b = append(b, n.Owner[:]...)
	b = appendTime(b, n.Created)
	b = appendTime(b, n.Updated)
	b = binary.BigEndian.AppendUint16(b, uint16(len(n.Proof)))
	b = append(b, n.Proof...)
	for _, ds := range [][]NetworkDoc{n.Members, n.Ended} {
		b = binary.BigEndian.AppendUint16(b, uint16(len(ds)))
		for _, d := range ds {
			b = append(b, d.Key[:]...)
			b = binary.BigEndian.AppendUint16(b, uint16(len(d.Doc)))
			b = append(b, d.Doc...)
		}
	}
	return b, nil
}

func (n *Network) validate() error {
	switch {
	case n.ID == 0:
		return errors.New("network 0")
	case n.Owner.IsZero():
		return errors.New("zero owner")
	case len(n.Proof) > maxNetworkDoc:
		return errors.New("proof too large")
	}
	if err := addressing.ValidateHostname(n.Name); err != nil {
		return err
	}
	for _, ds := range [][]NetworkDoc{n.Members, n.Ended} {
		if len(ds) >= maxNetworkDocs {
			return errors.New("too many documents")
		}
		for i, d := range ds {
			switch {
			case d.Key.IsZero() || d.Key == n.Owner:
				return errors.New("document of the owner or a zero key")
			case len(d.Doc) == 0 || len(d.Doc) > maxNetworkDoc:
				return errors.New("document size")
			case i > 0 && bytes.Compare(ds[i-1].Key[:], d.Key[:]) >= 0:
				return errors.New("documents not sorted by key")
			}
		}
	}
	return nil
}

func parseNetwork(k, v []byte) (Network, error) {
	var n Network
	if len(k) != 2 {
		return n, fmt.Errorf("%w: network key %x", ErrMalformed, k)
	}
	n.ID = addressing.NetworkID(binary.BigEndian.Uint16(k))
	r := wire.NewReader(v)
	if ver := r.Byte(); r.Err() == nil && ver != networkVersion {
		return Network{}, fmt.Errorf("%w: network version %d", ErrMalformed, ver)
	}
	n.Name = string(r.Next(int(r.Byte())))
	r.Copy(n.Owner[:])
	n.Created = timeFrom(r.Uint64())
	n.Updated = timeFrom(r.Uint64())
	if p := r.Next(int(r.Uint16())); len(p) > 0 {
		n.Proof = bytes.Clone(p)
	}
	docs := func() []NetworkDoc {
		c := int(r.Uint16())
		var ds []NetworkDoc
		for i := 0; i < c && r.Err() == nil; i++ {
			var d NetworkDoc
			r.Copy(d.Key[:])
			d.Doc = bytes.Clone(r.Next(int(r.Uint16())))
			ds = append(ds, d)
		}
		return ds
	}
	n.Members = docs()
	n.Ended = docs()
	if r.Err() != nil {
		return Network{}, fmt.Errorf("%w: network: %w", ErrMalformed, r.Err())
	}
	if err := n.validate(); err != nil {
		return Network{}, fmt.Errorf("%w: network: %w", ErrMalformed, err)
	}
	return n, nil
}
