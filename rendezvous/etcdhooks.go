package rendezvous

import (
	"errors"
	"net"
	"net/netip"

	"github.com/agentnet/agentnet/addressing"
	"github.com/agentnet/agentnet/rendezvous/proto"
)

// The server's side of a cluster (an EtcdStore shared with other servers):
// the hooks server.go calls, and the server's reactions to other servers'
// changes (clusterHooks). With any other store s.cl is nil and none of
// this runs.

// attachCluster connects the server to its store's cluster, if any.
func (s *Server) attachCluster() error {
	es, ok := s.store.(*EtcdStore)
	if !ok {
		return nil
	}
	err := es.cluster.attach(&clusterHooks{
		wake:          s.wake,
		wakeSoon:      s.wakeSoon,
		sessionMoved:  s.sessionMoved,
		push:          s.pushFromCluster,
		pairDeleted:   s.pairDeleted,
		memberChanged: s.memberChanged,
		fenced:        s.fenced,
		resynced:      s.wakeAll,
	})
	if err != nil {
		return err
	}
	s.cl = &es.cluster
	return nil
}

// remoteSession returns k's session on another server (false with no
// cluster, or when k has none).
func (s *Server) remoteSession(k addressing.PublicKey) (RemoteSession, bool) {
	if s.cl == nil {
		return RemoteSession{}, false
	}
	return s.cl.remoteSession(k)
}

// clusterRelayGrant makes a relay grant usable from another server's
// session: a grant naming only a port means "the host you dialled", which
// for the agent on the other server is that server's host, not ours.
func (s *Server) clusterRelayGrant(g *proto.RelayGrant) {
	if g == nil || g.Addr.Addr().IsValid() {
		return
	}
	if ip := s.advertiseIP(); ip.IsValid() {
		g.Addr = netip.AddrPortFrom(ip, g.Addr.Port())
	}
}

// advertiseIP is the IP agents of other servers reach this one at: the
// configured one, else the main socket's if it is bound to one.
func (s *Server) advertiseIP() netip.Addr {
	if es, ok := s.store.(*EtcdStore); ok && es.cfg.Advertise.IsValid() {
		return es.cfg.Advertise
	}
	if s.conn == nil {
		return netip.Addr{}
	}
	ip := s.conn.LocalAddr().(*net.UDPAddr).AddrPort().Addr().Unmap()
	if ip.IsUnspecified() {
		return netip.Addr{}
	}
	return ip
}

// sessionMoved closes k's local session: k registered on another server.
func (s *Server) sessionMoved(k addressing.PublicKey) {
	s.mu.Lock()
	sess := s.sessions[k]
	s.mu.Unlock()
	if sess != nil {
		s.stats.sessionsReplaced.Add(1)
		sess.c.qc.CloseWithError(closeReplaced, "registered on another server")
	}
}

// pushFromCluster queues an introduction another server sent for k.
func (s *Server) pushFromCluster(k addressing.PublicKey, frame []byte) bool {
	s.mu.Lock()
	sess := s.sessions[k]
	s.mu.Unlock()
	if sess == nil {
		return false
	}
	select {
	case sess.push <- frame:
		return true
	default:
		s.stats.introPushDropped.Add(1)
		return false
	}
}

// pairDeleted closes the local relay sessions of a pair revoked anywhere.
func (s *Server) pairDeleted(a, b addressing.PublicKey) {
	if s.relay != nil {
		s.relay.ClosePair(a, b)
	}
}

// memberChanged pushes a network document committed by another server to
// the local sessions of the network's members (and of the member it
// concerns), and for a Leave or Remove closes the local relay sessions of
// pairs that no longer see each other.
func (s *Server) memberChanged(id addressing.NetworkID, k addressing.PublicKey, doc []byte, exit bool) {
	var rec NetworkRecord
	var members []addressing.PublicKey
	err := s.store.View(func(tx Tx) error {
		var ok bool
		var err error
		if rec, ok, err = tx.Network(id); err != nil || !ok {
			return err
		}
		members, err = networkKeys(tx, rec)
		return err
	})
	if err != nil || rec.ID == 0 {
		return
	}
	keys := members
	if exit {
		keys = append(keys, k)
	}
	s.pushNetworkDoc(rec, keys, doc)
	if exit && s.relay != nil {
		for _, m := range members {
			if m == k {
				continue
			}
			if ok, err := s.connectableKey(k, m); err == nil && !ok {
				s.relay.ClosePair(k, m)
			}
		}
	}
}

// fenced closes every client connection: the store lost etcd, and with it
// the lease the sessions were on; the agents reconnect, here or elsewhere.
func (s *Server) fenced() {
	s.mu.Lock()
	conns := make([]*serverConn, 0, len(s.conns))
	for c := range s.conns {
		conns = append(conns, c)
	}
	s.mu.Unlock()
	for _, c := range conns {
		c.qc.CloseWithError(closeInternal, "store unavailable")
	}
}

// wakeAll makes every local session read its mailbox again.
func (s *Server) wakeAll() {
	s.mu.Lock()
	keys := make([]addressing.PublicKey, 0, len(s.sessions))
	for k := range s.sessions {
		keys = append(keys, k)
	}
	s.mu.Unlock()
	for _, k := range keys {
		s.wake(k)
	}
}

// storeUnavailable reports whether err means the store cannot answer now.
func storeUnavailable(err error) bool { return errors.Is(err, ErrStoreUnavailable) }
