package rendezvous

import (
	"crypto/sha256"
	"net/netip"
	"time"

	"github.com/agentnet/agentnet/addressing"
)

// Pending trust requests: admission, fairness between sources, and the
// requests held for targets that do not exist yet.
//
// Every request is admitted by the same sequence of store operations,
// whatever its target: the target's key if the name resolves, else a key
// derived from the name (heldKey), under which the request waits, bounded
// like any other target's, until an agent with that NodeID or hostname
// registers and claims it (claimHeld). So the requester's answer is the
// same bytes after the same work whether its target exists or not
// (TestTrustRequestSameWork).
//
// A target has Limits.MaxPendingPerTarget slots. When they are full, a new
// request takes the slot of the oldest request from the source prefix that
// holds the most (max-min fairness), but only if its own prefix holds at
// least two fewer: so a stranger's prefix can never hold more than its
// share, and a request from a prefix that holds one slot is never evicted
// by strangers, however many keys they use. A request from a fellow
// network member is never evicted by a stranger's and takes a stranger's
// slot whenever it needs one. Beyond that, a requester key may have at most
// MaxPendingPerKey unanswered requests, a source prefix MaxPendingPerPrefix,
// and the server MaxPendingTotal. A request that finds no slot is dropped
// and counted (Stats.RequestsDropped; Stats.RequestsEvicted for those it
// displaced); the requester's answer does not change (no oracle).

// heldDomain separates the keys heldKey derives from any other hash.
const heldDomain = "agentnet rendezvous held request v1\x00"

// heldKey is the key that requests to t wait under while no agent holds
// its name: t's NodeID (the network part of an address does not matter) or
// its hostname. No agent can hold such a key (it is a hash, not a key
// anyone has the private half of).
func heldKey(t addressing.Target) addressing.PublicKey {
	h := sha256.New()
	h.Write([]byte(heldDomain))
	if a, ok := t.Addr(); ok {
		n := a.Node()
		h.Write([]byte{1})
		h.Write(n[:])
	} else if name, ok := t.Hostname(); ok {
		h.Write([]byte{2})
		h.Write([]byte(name))
	}
	var k addressing.PublicKey
	h.Sum(k[:0])
	return k
}

// heldKeysOf returns the keys requests to an agent with NodeID n and
// hostname h (may be "") wait under while it is not registered.
func heldKeysOf(n addressing.NodeID, h string) []addressing.PublicKey {
	keys := []addressing.PublicKey{heldKey(addressing.TargetAddr(addressing.AddrFrom(0, n)))}
	if h != "" {
		if t, err := addressing.ParseTarget(h); err == nil {
			keys = append(keys, heldKey(t))
		}
	}
	return keys
}

// sourcePrefix is the unit of the per-source quotas: the /24 of an IPv4
// address, the /48 of an IPv6 one (what one subscriber or site usually
// holds; many addresses cost an attacker far more than many keys).
func sourcePrefix(a netip.Addr) netip.Prefix {
	a = a.Unmap().WithZone("")
	if !a.IsValid() {
		return netip.Prefix{}
	}
	bits := 24
	if a.Is6() {
		bits = 48
	}
	p, _ := a.Prefix(bits)
	return p
}

// admitPending stores p (p.MailID is set here) and queues p.Msg in
// p.Target's mailbox, displacing another request if the fairness rules
// allow, or drops it. It reports whether p was stored. The store operations
// it runs do not depend on whether p.Target is an agent's key or a held
// key; only on the counts and slots they find.
func (s *Server) admitPending(tx Tx, p PendingRequest, now time.Time) (bool, error) {
	max := s.limits.MaxPendingPerTarget
	old, replacing, err := tx.Pending(p.Target, p.Requester)
	if err != nil {
		return false, err
	}
	slots, err := tx.Pendings(p.Target, max)
	if err != nil {
		return false, err
	}
	quota, err := tx.PendingQuota(p.Requester, p.Source)
	if err != nil {
		return false, err
	}
	nmail, err := tx.MailCount(p.Target)
	if err != nil {
		return false, err
	}

	var evict *PendingRequest
	switch {
	case replacing:
		// One pending request per pair: the newer replaces the older (the
		// target's trustdb answers the newest); its queued copy goes too.
		evict = &old
	case quota.ByRequester >= s.limits.MaxPendingPerKey, quota.BySource >= s.limits.MaxPendingPerPrefix,
		quota.Total >= s.limits.MaxPendingTotal:
		s.stats.requestsDropped.Add(1)
		return false, nil
	case len(slots) >= max:
		if evict = pickEvicted(slots, p); evict == nil {
			s.stats.requestsDropped.Add(1)
			return false, nil
		}
		s.stats.requestsEvicted.Add(1)
	}
	if evict == nil && nmail >= s.limits.MaxMailbox {
		s.stats.requestsDropped.Add(1)
		return false, nil
	}
	if evict != nil {
		if err := tx.DeletePending(evict.Target, evict.Requester); err != nil {
			return false, err
		}
		if evict.MailID != 0 {
			if _, err := tx.Ack(evict.Target, evict.MailID); err != nil {
				return false, err
			}
		}
	}
	if p.MailID, err = tx.Enqueue(p.Target, p.Msg, now); err != nil {
		return false, err
	}
	return true, tx.PutPending(p)
}

// pickEvicted returns the request a full target gives up for p, or nil if
// p must be dropped (see the rules above). slots are the target's requests.
func pickEvicted(slots []PendingRequest, p PendingRequest) *PendingRequest {
	// Strangers' requests are the candidates; fellow members' only when no
	// stranger holds a slot and p is a member too.
	member := true
	for i := range slots {
		if !slots[i].Member {
			member = false
			break
		}
	}
	if member && !p.Member {
		return nil
	}
	counts := make(map[netip.Prefix]int)
	for i := range slots {
		if slots[i].Member == member {
			counts[slots[i].Source]++
		}
	}
	var victim *PendingRequest
	for i := range slots {
		v := &slots[i]
		if v.Member != member {
			continue
		}
		switch {
		case victim == nil, counts[v.Source] > counts[victim.Source],
			counts[v.Source] == counts[victim.Source] && v.MailID < victim.MailID:
			victim = v
		}
	}
	if victim == nil {
		return nil
	}
	if p.Member && !member {
		return victim // a member's request beats any stranger's
	}
	if counts[p.Source]+2 > counts[victim.Source] {
		return nil // p's prefix already holds (about) as many as the largest
	}
	return victim
}

// claimHeld moves the requests held for an agent's NodeID and hostname to
// its key, under the usual limits (Register, SetHostname). It reports
// whether any arrived in k's mailbox.
func (s *Server) claimHeld(tx Tx, k addressing.PublicKey, held []addressing.PublicKey, now time.Time) (bool, error) {
	moved := false
	for _, hk := range held {
		list, err := tx.Pendings(hk, s.limits.MaxPendingPerTarget)
		if err != nil {
			return moved, err
		}
		for _, p := range list {
			if err := tx.DeletePending(hk, p.Requester); err != nil {
				return moved, err
			}
			if p.MailID != 0 {
				if _, err := tx.Ack(hk, p.MailID); err != nil {
					return moved, err
				}
			}
			if p.Requester == k {
				continue
			}
			p.Target = k
			if p.Member, err = shareNetwork(tx, p.Requester, k); err != nil {
				return moved, err
			}
			ok, err := s.admitPending(tx, p, now)
			if err != nil {
				return moved, err
			}
			moved = moved || ok
		}
	}
	return moved, nil
}
