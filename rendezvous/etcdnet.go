package rendezvous

import (
	"encoding/binary"
	"errors"
	"fmt"
	"time"

	"github.com/agentnet/agentnet/addressing"
)

// NetworkTx of the EtcdStore (keys in EtcdStore's doc). Network IDs are
// allocated from the replica; two servers creating networks at once both
// compare the ID and the name they chose to be still free, so one of them
// commits and the other runs again and takes the next ID (or finds the
// name taken).

func (t *etcdTx) netKey(id addressing.NetworkID) string { return t.s.key(tagNet, hexNet(id)) }

func (t *etcdTx) Network(id addressing.NetworkID) (NetworkRecord, bool, error) {
	v, ok := t.get(t.netKey(id))
	if !ok {
		return NetworkRecord{}, false, nil
	}
	r, err := decodeNetwork(id, v)
	return r, err == nil, err
}

func (t *etcdTx) NetworkByName(name string) (NetworkRecord, bool, error) {
	if name == "" || len(name) > 255 {
		return NetworkRecord{}, false, nil
	}
	v, ok := t.get(t.s.key(tagNetName, name))
	if !ok {
		return NetworkRecord{}, false, nil
	}
	if len(v) != 2 {
		return NetworkRecord{}, false, errors.New("rendezvous: store: corrupt network name index")
	}
	return t.Network(addressing.NetworkID(binary.BigEndian.Uint16(v)))
}

func (t *etcdTx) CreateNetwork(name string, owner addressing.PublicKey, tm time.Time) (NetworkRecord, error) {
	nameKey := t.s.key(tagNetName, name)
	if _, ok := t.get(nameKey); ok {
		return NetworkRecord{}, ErrNetworkTaken
	}
	// The lowest free ID: walk the IDs in order until one is missing. The
	// walk is not compared (a lower ID freed meanwhile does no harm); the
	// chosen ID is.
	id := addressing.NetworkID(1)
	p := t.s.key(tagNet)
	var full bool
	t.view().AscendRange(kv{key: p}, kv{key: prefixEnd(p)}, func(it kv) bool {
		if it.key != p+hexNet(id) {
			return false
		}
		if id == 0xffff {
			full = true
			return false
		}
		id++
		return true
	})
	if full {
		return NetworkRecord{}, fmt.Errorf("%w: every network ID is taken", ErrLimit)
	}
	if _, ok := t.get(t.netKey(id)); ok { // tracks the chosen ID
		return NetworkRecord{}, errors.New("rendezvous: store: network ID index out of order")
	}
	r := NetworkRecord{ID: id, Name: name, Owner: owner, Created: tm}
	if err := t.put(t.netKey(id), encodeNetwork(r)); err != nil {
		return NetworkRecord{}, err
	}
	if err := t.put(nameKey, binary.BigEndian.AppendUint16(nil, uint16(id))); err != nil {
		return NetworkRecord{}, err
	}
	return r, t.put(t.agentNetKey(owner, id), []byte{1})
}

func (t *etcdTx) memberPrefix(id addressing.NetworkID) string {
	return t.s.key(tagMember, hexNet(id)) + "/"
}

func (t *etcdTx) agentNetPrefix(k addressing.PublicKey) string {
	return t.s.key(tagAgentNet, hexKey(k)) + "/"
}

func (t *etcdTx) agentNetKey(k addressing.PublicKey, id addressing.NetworkID) string {
	return t.agentNetPrefix(k) + hexNet(id)
}

func (t *etcdTx) NetworkMember(id addressing.NetworkID, k addressing.PublicKey) (MemberRecord, bool, error) {
	v, ok := t.get(t.memberPrefix(id) + hexKey(k))
	if !ok {
		return MemberRecord{}, false, nil
	}
	m, err := decodeMember(id, k, v)
	return m, err == nil, err
}

func (t *etcdTx) PutNetworkMember(m MemberRecord) error {
	if err := t.put(t.memberPrefix(m.Network)+hexKey(m.Key), encodeMember(m)); err != nil {
		return err
	}
	status := byte(0)
	if m.Member() {
		status = 1
	}
	return t.put(t.agentNetKey(m.Key, m.Network), []byte{status})
}

func (t *etcdTx) DeleteNetworkMember(id addressing.NetworkID, k addressing.PublicKey) error {
	mk, ak := t.memberPrefix(id)+hexKey(k), t.agentNetKey(k, id)
	for _, key := range []string{mk, ak} {
		if _, ok := t.get(key); ok {
			if err := t.del(key); err != nil {
				return err
			}
		}
	}
	return nil
}

func (t *etcdTx) NetworkMembers(id addressing.NetworkID) ([]MemberRecord, error) {
	p := t.memberPrefix(id)
	var out []MemberRecord
	var err error
	t.scan(p, prefixEnd(p), func(k string, v []byte) bool {
		key, ok := parseHexKey(k[len(p):])
		if !ok {
			err = errors.New("rendezvous: store: corrupt member key")
			return false
		}
		var m MemberRecord
		if m, err = decodeMember(id, key, v); err != nil {
			return false
		}
		out = append(out, m)
		return true
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

func (t *etcdTx) AgentNetworks(k addressing.PublicKey) ([]AgentNetwork, error) {
	p := t.agentNetPrefix(k)
	var out []AgentNetwork
	var bad bool
	t.scan(p, prefixEnd(p), func(key string, v []byte) bool {
		idb, err := hexDecode2(key[len(p):])
		if err != nil || len(v) != 1 {
			bad = true
			return false
		}
		out = append(out, AgentNetwork{ID: addressing.NetworkID(idb), Member: v[0] == 1})
		return true
	})
	if bad {
		return nil, errors.New("rendezvous: store: corrupt agent network index")
	}
	return out, nil
}

func (t *etcdTx) IsNetworkMember(id addressing.NetworkID, k addressing.PublicKey) (bool, error) {
	v, ok := t.get(t.agentNetKey(k, id))
	return ok && len(v) == 1 && v[0] == 1, nil
}

// hexDecode2 decodes a 4-digit hex network ID.
func hexDecode2(s string) (uint16, error) {
	if len(s) != 4 {
		return 0, errors.New("bad network ID")
	}
	var v uint16
	for i := 0; i < 4; i++ {
		c := s[i]
		var d byte
		switch {
		case c >= '0' && c <= '9':
			d = c - '0'
		case c >= 'a' && c <= 'f':
			d = c - 'a' + 10
		default:
			return 0, errors.New("bad network ID")
		}
		v = v<<4 | uint16(d)
	}
	return v, nil
}
