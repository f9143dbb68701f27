package rendezvous

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"time"

	"github.com/agentnet/agentnet/addressing"
)

// Network buckets of the BoltStore (bucket: key → value):
//
//	networks:   network ID (2) → version | uint8 len name | owner | created
//	netnames:   name → network ID
//	netmembers: network ID ‖ member key → version | time | bytes16 join | bytes16 exit
//	agentnets:  agent key ‖ network ID → 1 (owner or member) | 0 (former member)
var (
	bucketNetworks   = []byte("networks")
	bucketNetNames   = []byte("netnames")
	bucketNetMembers = []byte("netmembers")
	bucketAgentNets  = []byte("agentnets")
)

// networkBuckets are created by OpenBoltStore.
var networkBuckets = [][]byte{bucketNetworks, bucketNetNames, bucketNetMembers, bucketAgentNets}

func netKey(id addressing.NetworkID) []byte { return binary.BigEndian.AppendUint16(nil, uint16(id)) }

func memberKey(id addressing.NetworkID, k addressing.PublicKey) []byte {
	return append(netKey(id), k[:]...)
}

func agentNetKey(k addressing.PublicKey, id addressing.NetworkID) []byte {
	return binary.BigEndian.AppendUint16(append([]byte(nil), k[:]...), uint16(id))
}

func (t boltTx) Network(id addressing.NetworkID) (NetworkRecord, bool, error) {
	v := t.b(bucketNetworks).Get(netKey(id))
	if v == nil {
		return NetworkRecord{}, false, nil
	}
	r, err := decodeNetwork(id, v)
	return r, err == nil, err
}

func (t boltTx) NetworkByName(name string) (NetworkRecord, bool, error) {
	v := t.b(bucketNetNames).Get([]byte(name))
	if v == nil {
		return NetworkRecord{}, false, nil
	}
	if len(v) != 2 {
		return NetworkRecord{}, false, errors.New("rendezvous: store: corrupt network name index")
	}
	return t.Network(addressing.NetworkID(binary.BigEndian.Uint16(v)))
}

func (t boltTx) CreateNetwork(name string, owner addressing.PublicKey, tm time.Time) (NetworkRecord, error) {
	if t.b(bucketNetNames).Get([]byte(name)) != nil {
		return NetworkRecord{}, ErrNetworkTaken
	}
	// The lowest free ID: walk the IDs in order until one is missing.
	id := addressing.NetworkID(1)
	c := t.b(bucketNetworks).Cursor()
	for k, _ := c.First(); k != nil; k, _ = c.Next() {
		if len(k) != 2 || addressing.NetworkID(binary.BigEndian.Uint16(k)) != id {
			break
		}
		if id == 0xffff {
			return NetworkRecord{}, fmt.Errorf("%w: every network ID is taken", ErrLimit)
		}
		id++
	}
	r := NetworkRecord{ID: id, Name: name, Owner: owner, Created: tm}
	if err := t.b(bucketNetworks).Put(netKey(id), encodeNetwork(r)); err != nil {
		return NetworkRecord{}, err
	}
	if err := t.b(bucketNetNames).Put([]byte(name), netKey(id)); err != nil {
		return NetworkRecord{}, err
	}
	return r, t.b(bucketAgentNets).Put(agentNetKey(owner, id), []byte{1})
}

func (t boltTx) NetworkMember(id addressing.NetworkID, k addressing.PublicKey) (MemberRecord, bool, error) {
	v := t.b(bucketNetMembers).Get(memberKey(id, k))
	if v == nil {
		return MemberRecord{}, false, nil
	}
	m, err := decodeMember(id, k, v)
	return m, err == nil, err
}

func (t boltTx) PutNetworkMember(m MemberRecord) error {
	if err := t.b(bucketNetMembers).Put(memberKey(m.Network, m.Key), encodeMember(m)); err != nil {
		return err
	}
	status := byte(0)
	if m.Member() {
		status = 1
	}
	return t.b(bucketAgentNets).Put(agentNetKey(m.Key, m.Network), []byte{status})
}

func (t boltTx) DeleteNetworkMember(id addressing.NetworkID, k addressing.PublicKey) error {
	if err := t.b(bucketNetMembers).Delete(memberKey(id, k)); err != nil {
		return err
	}
	return t.b(bucketAgentNets).Delete(agentNetKey(k, id))
}

func (t boltTx) NetworkMembers(id addressing.NetworkID) ([]MemberRecord, error) {
	prefix := netKey(id)
	var out []MemberRecord
	c := t.b(bucketNetMembers).Cursor()
	for k, v := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, v = c.Next() {
		key, ok := addressing.PublicKeyFromSlice(k[2:])
		if !ok {
			return nil, errors.New("rendezvous: store: corrupt member key")
		}
		m, err := decodeMember(id, key, v)
		if err != nil {
			return nil, err
		}
		out = append(out, m)
	}
	return out, nil
}

func (t boltTx) AgentNetworks(k addressing.PublicKey) ([]AgentNetwork, error) {
	var out []AgentNetwork
	c := t.b(bucketAgentNets).Cursor()
	for key, v := c.Seek(k[:]); key != nil && bytes.HasPrefix(key, k[:]); key, v = c.Next() {
		if len(key) != addressing.PublicKeySize+2 || len(v) != 1 {
			return nil, errors.New("rendezvous: store: corrupt agent network index")
		}
		out = append(out, AgentNetwork{ID: addressing.NetworkID(binary.BigEndian.Uint16(key[addressing.PublicKeySize:])), Member: v[0] == 1})
	}
	return out, nil
}

func (t boltTx) IsNetworkMember(id addressing.NetworkID, k addressing.PublicKey) (bool, error) {
	v := t.b(bucketAgentNets).Get(agentNetKey(k, id))
	return len(v) == 1 && v[0] == 1, nil
}

// network: version | uint8 len name | owner | created
func encodeNetwork(r NetworkRecord) []byte {
	b := []byte{recordVersion, byte(len(r.Name))}
	b = append(b, r.Name...)
	b = append(b, r.Owner[:]...)
	return appendTime(b, r.Created)
}

func decodeNetwork(id addressing.NetworkID, v []byte) (NetworkRecord, error) {
	d := dec{b: v}
	r := NetworkRecord{ID: id}
	d.version()
	r.Name = string(d.next(int(d.next(1)[0])))
	copy(r.Owner[:], d.next(addressing.PublicKeySize))
	r.Created = d.time()
	return r, d.err("network")
}

// member: version | time | bytes16 join | bytes16 exit (length 0: none)
func encodeMember(m MemberRecord) []byte {
	b := appendTime([]byte{recordVersion}, m.Time)
	b = appendBytes16(b, m.Join)
	return appendBytes16(b, m.Exit)
}

func decodeMember(id addressing.NetworkID, k addressing.PublicKey, v []byte) (MemberRecord, error) {
	d := dec{b: v}
	m := MemberRecord{Network: id, Key: k}
	d.version()
	m.Time = d.time()
	if j := d.bytes16(); len(j) > 0 {
		m.Join = j
	}
	if e := d.bytes16(); len(e) > 0 {
		m.Exit = e
	}
	return m, d.err("member")
}
