package quicnode

import (
	"sync"

	"github.com/agentnet/agentnet/addressing"
)

// Bounds of the open-port memory: a peer's ports beyond maxPortsPerPeer,
// and peers beyond maxPortPeers, are simply not remembered (their dials
// wait for the answer, as a first dial does).
const (
	maxPortPeers    = 4096
	maxPortsPerPeer = 32
)

// openPorts remembers, per peer, the virtual ports a dial found open (the
// acceptor answered StatusOK). A dial to a remembered port pipelines: it
// returns without waiting for the answer, and a refusal (the port has
// closed since) surfaces as ErrPortClosed on the stream's first Read or
// Write, after which the port is forgotten. It outlives the peer's
// connections, so a reconnect pipelines too.
type openPorts struct {
	mu    sync.Mutex
	peers map[addressing.PublicKey][]uint16
}

func (o *openPorts) has(k addressing.PublicKey, port uint16) bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	for _, p := range o.peers[k] {
		if p == port {
			return true
		}
	}
	return false
}

func (o *openPorts) add(k addressing.PublicKey, port uint16) {
	o.mu.Lock()
	defer o.mu.Unlock()
	ps, ok := o.peers[k]
	if !ok && len(o.peers) >= maxPortPeers {
		return
	}
	for _, p := range ps {
		if p == port {
			return
		}
	}
	if len(ps) >= maxPortsPerPeer {
		return
	}
	if o.peers == nil {
		o.peers = make(map[addressing.PublicKey][]uint16)
	}
	o.peers[k] = append(ps, port)
}

func (o *openPorts) remove(k addressing.PublicKey, port uint16) {
	o.mu.Lock()
	defer o.mu.Unlock()
	ps := o.peers[k]
	for i, p := range ps {
		if p == port {
			ps = append(ps[:i], ps[i+1:]...)
			break
		}
	}
	if len(ps) == 0 {
		delete(o.peers, k)
		return
	}
	o.peers[k] = ps
}

// forget drops everything remembered about k (trust ended).
func (o *openPorts) forget(k addressing.PublicKey) {
	o.mu.Lock()
	defer o.mu.Unlock()
	delete(o.peers, k)
}
