package rendezvous

import (
	"errors"
	"net/netip"
	"time"

	"github.com/quic-go/quic-go"

	"github.com/agentnet/agentnet/addressing"
)

// Limits that one source or a few keys must not be able to fill:
// connections (MaxConns, shared max-min fairly between source prefixes,
// MaxConnsPerKey per key), registrations (MaxAgents, MaxAgentsPerPrefix;
// idle ones expire after AgentTTL), relay sessions (MaxRelaySessions,
// MaxRelayPerKey per key), pending trust requests (pending.go) and request
// rates (ratelimit.go: per key, and per address shared fairly by its keys).

// QUIC application error codes of the limits.
const (
	closeLimit   quic.ApplicationErrorCode = 0x105 // over MaxConnsPerKey
	closeEvicted quic.ApplicationErrorCode = 0x106 // the server is full and this prefix holds the most connections
)

// connTable counts the open connections per source prefix and per key, and
// keeps each prefix's connections in accept order. Guarded by Server.mu.
type connTable struct {
	byPrefix map[netip.Prefix][]*serverConn
	byKey    map[addressing.PublicKey]int
	// byCount[n] is the set of prefixes holding n connections; max is the
	// largest n with a prefix (so the fullest prefix is found at once).
	byCount map[int]map[netip.Prefix]struct{}
	max     int
}

func newConnTable() connTable {
	return connTable{
		byPrefix: make(map[netip.Prefix][]*serverConn),
		byKey:    make(map[addressing.PublicKey]int),
		byCount:  make(map[int]map[netip.Prefix]struct{}),
	}
}

func (t *connTable) move(p netip.Prefix, from, to int) {
	if from > 0 {
		delete(t.byCount[from], p)
		if len(t.byCount[from]) == 0 {
			delete(t.byCount, from)
		}
	}
	if to > 0 {
		if t.byCount[to] == nil {
			t.byCount[to] = make(map[netip.Prefix]struct{})
		}
		t.byCount[to][p] = struct{}{}
	}
	switch {
	case to > t.max:
		t.max = to
	case from == t.max && len(t.byCount[from]) == 0:
		t.max = to // the only prefix at max went down by one
	}
}

func (t *connTable) add(c *serverConn) {
	n := len(t.byPrefix[c.prefix])
	t.byPrefix[c.prefix] = append(t.byPrefix[c.prefix], c)
	t.byKey[c.key]++
	t.move(c.prefix, n, n+1)
}

func (t *connTable) remove(c *serverConn) {
	list := t.byPrefix[c.prefix]
	for i, x := range list {
		if x != c {
			continue
		}
		list = append(list[:i], list[i+1:]...)
		if len(list) == 0 {
			delete(t.byPrefix, c.prefix)
		} else {
			t.byPrefix[c.prefix] = list
		}
		if t.byKey[c.key]--; t.byKey[c.key] <= 0 {
			delete(t.byKey, c.key)
		}
		t.move(c.prefix, len(list)+1, len(list))
		return
	}
}

// fullest returns the newest connection of a prefix holding the most.
func (t *connTable) fullest() *serverConn {
	for p := range t.byCount[t.max] {
		list := t.byPrefix[p]
		return list[len(list)-1]
	}
	return nil
}

// mayEvictLocked reports whether a new connection from prefix p may take
// the place of one of the fullest prefix's when the server is full: p must
// hold at least two fewer.
func (s *Server) mayEvictLocked(p netip.Prefix) bool {
	return len(s.connTab.byPrefix[p])+2 <= s.connTab.max
}

// admitConnLocked decides on a new connection c: taken (possibly in the
// place of victim, which the caller closes), or refused (reason != "").
func (s *Server) admitConnLocked(c *serverConn) (victim *serverConn, code quic.ApplicationErrorCode, reason string) {
	if s.connTab.byKey[c.key] >= s.limits.MaxConnsPerKey {
		s.stats.connsRefused.Add(1)
		return nil, closeLimit, "too many connections for this key"
	}
	if len(s.conns) >= s.limits.MaxConns {
		if !s.mayEvictLocked(c.prefix) {
			s.stats.connsRefused.Add(1)
			return nil, closeEvicted, "server full"
		}
		victim = s.connTab.fullest()
		s.stats.connsEvicted.Add(1)
	}
	return victim, 0, ""
}

// errServerFull refuses a connection attempt before its handshake.
var errServerFull = errors.New("rendezvous: too many connections")

// admitFull reports, for a connection attempt from a while the server is
// full, whether it could take a place (so its handshake is worth doing).
func (s *Server) admitFull(a netip.Addr) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.conns) < s.limits.MaxConns || s.mayEvictLocked(sourcePrefix(a))
}

// expireIdle deletes the registrations of agents not seen for AgentTTL
// (maintenance loop): online agents are marked seen instead. It works in
// bounded batches and returns how many it deleted.
func (s *Server) expireIdle(now time.Time) (int, error) {
	const batch = 256
	deleted := 0
	cutoff := now.Add(-s.limits.AgentTTL)
	for {
		var n int
		err := s.store.Update(func(tx Tx) error {
			n = 0
			keys, err := tx.IdleAgents(cutoff, batch)
			if err != nil {
				return err
			}
			n = len(keys)
			for _, k := range keys {
				s.mu.Lock()
				online := s.sessions[k] != nil
				s.mu.Unlock()
				if online {
					rec, ok, err := tx.Agent(k)
					if err != nil || !ok {
						return err
					}
					rec.LastSeen = now
					if err := tx.PutAgent(rec); err != nil {
						return err
					}
					continue
				}
				if err := tx.DeleteAgent(k); err != nil {
					return err
				}
				deleted++
			}
			return nil
		})
		if err != nil || n < batch {
			return deleted, err
		}
	}
}
