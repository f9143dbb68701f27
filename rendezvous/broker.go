package rendezvous

import (
	"crypto/rand"
	"net/netip"
	"slices"

	"github.com/agentnet/agentnet/addressing"
	"github.com/agentnet/agentnet/internal/tunnel"
	"github.com/agentnet/agentnet/rendezvous/proto"
	"github.com/agentnet/agentnet/rendezvous/relay"
)

// connect answers a Connect from c, the punch broker: if the target trusts
// c's agent (canSee) and is online, both get an introduction with the same
// fresh token and each other's candidates: the target on its session stream
// (best effort: dropped and counted if its push queue is full), c in the
// answer. With Relay, a relay session is opened for the pair and each side
// gets its own grant (none if the relay is full). Any other case gets the
// NotFound frame, byte for byte a lookup miss.
func (s *Server) connect(c *serverConn, m *proto.Connect) proto.Message {
	peer, ok, err := s.connectable(c.key, m.Target)
	if err != nil {
		return s.errorAnswer("connect", err)
	}
	if !ok {
		return &proto.NotFound{}
	}
	s.mu.Lock()
	self, target := s.sessions[c.key], s.sessions[peer]
	s.mu.Unlock()
	var remote RemoteSession // the target's session on another server
	if target == nil {
		if remote, ok = s.remoteSession(peer); !ok {
			return &proto.NotFound{}
		}
	}

	var grant *relay.Grant
	if m.Relay && s.relay != nil && !s.relayOverKeyLimit(c.key, peer) {
		if g, err := s.relay.Open(c.key, peer); err == nil { // ErrFull is counted by the relay
			grant = &g
			// A revoke closes the pair's sessions after it commits: checking
			// the pair again after Open leaves no session to a revoked pair.
			ok, err := s.connectableKey(c.key, peer)
			if err != nil || !ok {
				s.relay.ClosePair(c.key, peer)
				if err != nil {
					return s.errorAnswer("connect", err)
				}
				return &proto.NotFound{}
			}
		}
	}

	var token [proto.TokenSize]byte
	rand.Read(token[:])
	own := []netip.AddrPort{c.reflexive()}
	if self != nil {
		own = append(own, self.locators...)
	}
	own = append(own, m.Candidates...)
	push := &proto.Introduce{
		Peer:       c.key,
		PeerAddr:   addressing.AddrFrom(0, c.key.NodeID()),
		Candidates: candidates(own),
		Token:      token,
		PeerNAT:    natOf(self),
	}
	targetLocators, targetNAT := remote.Locators, remote.NAT
	if target != nil {
		// The target's address now first: after a NAT rebinding on its side
		// its session follows it (see reflexive), its locators do not.
		targetLocators = append([]netip.AddrPort{target.c.reflexive()}, target.locators...)
		targetNAT = natOf(target)
	}
	answer := &proto.Introduce{
		Peer:       peer,
		PeerAddr:   addressing.AddrFrom(0, peer.NodeID()),
		Candidates: candidates(targetLocators),
		Token:      token,
		Initiator:  true,
		PeerNAT:    targetNAT,
	}
	if grant != nil {
		answer.Relay = &proto.RelayGrant{Addr: s.relaySvc, Session: grant.Session, Secret: grant.Secrets[0], Side: 0}
		push.Relay = &proto.RelayGrant{Addr: s.relaySvc, Session: grant.Session, Secret: grant.Secrets[1], Side: 1}
		if target == nil {
			s.clusterRelayGrant(push.Relay)
		}
	}
	b, err := proto.AppendMessage(nil, push)
	if err != nil {
		return s.errorAnswer("connect", err)
	}
	if target == nil { // through etcd to the target's server
		if err := s.cl.push(remote.Server, peer, b); err != nil {
			s.stats.introPushDropped.Add(1)
			s.log.Debug("rendezvous: introduction not forwarded", "key", peer.String(), "err", err)
		}
	} else {
		select {
		case target.push <- b:
		default:
			s.stats.introPushDropped.Add(1)
		}
	}
	s.stats.introductions.Add(1)
	return answer
}

// relayOverKeyLimit reports whether a or b is already a side of
// MaxRelayPerKey relay sessions (counted: the introduction has no grant), so
// a few keys cannot fill MaxRelaySessions.
func (s *Server) relayOverKeyLimit(a, b addressing.PublicKey) bool {
	if s.relay.SessionsOf(a) < s.limits.MaxRelayPerKey && s.relay.SessionsOf(b) < s.limits.MaxRelayPerKey {
		return false
	}
	s.stats.relayRefusedPerKey.Add(1)
	return true
}

// natReport records the NAT kind c's agent reported for its session.
func (s *Server) natReport(c *serverConn, m *proto.NATReport) proto.Message {
	s.mu.Lock()
	sess := s.sessions[c.key]
	s.mu.Unlock()
	if sess != nil && sess.c == c {
		sess.nat.Store(uint32(m.Kind))
		if s.cl != nil {
			if err := s.cl.updateNAT(c.key, c, m.Kind); err != nil {
				s.log.Debug("rendezvous: NAT kind not shared with the cluster", "key", c.key.String(), "err", err)
			}
		}
	}
	return &proto.OK{}
}

// natOf is the NAT kind sess last reported (unknown for nil).
func natOf(sess *session) proto.NATKind {
	if sess == nil {
		return proto.NATUnknown
	}
	return proto.NATKind(sess.nat.Load())
}

// connectable resolves a Connect target and reports whether from may be
// introduced to it: another agent that trusts from.
func (s *Server) connectable(from addressing.PublicKey, target addressing.Addr) (addressing.PublicKey, bool, error) {
	var peer addressing.PublicKey
	var ok bool
	err := s.store.View(func(tx Tx) error {
		k, found, err := tx.AgentByNode(target.Node())
		if err != nil || !found || k == from {
			return err
		}
		peer = k
		ok, err = s.canSeeIn(tx, target.Network(), from, k)
		return err
	})
	return peer, ok && err == nil, err
}

// connectableKey reports whether from may still be introduced to peer.
func (s *Server) connectableKey(from, peer addressing.PublicKey) (bool, error) {
	var ok bool
	err := s.store.View(func(tx Tx) (err error) {
		ok, err = s.canSee(tx, from, peer)
		return err
	})
	return ok && err == nil, err
}

// candidates returns the usable addresses of list, in order, IPv4-mapped
// addresses unmapped, without duplicates, at most proto.MaxLocators.
func candidates(list []netip.AddrPort) []netip.AddrPort {
	out := make([]netip.AddrPort, 0, proto.MaxLocators)
	for _, ap := range list {
		ap = netip.AddrPortFrom(ap.Addr().Unmap().WithZone(""), ap.Port())
		a := ap.Addr()
		if !a.IsValid() || a.IsUnspecified() || a.IsMulticast() || ap.Port() == 0 || tunnel.IsTunnelAddr(ap) || slices.Contains(out, ap) {
			continue
		}
		out = append(out, ap)
		if len(out) == proto.MaxLocators {
			break
		}
	}
	return out
}
