package quicnode

import (
	"sync"

	"github.com/agentnet/agentnet/addressing"
)

// Bounds of the refused-port memory: a peer's refusals beyond
// maxPortsPerPeer, and peers beyond maxPortPeers, are simply not
// remembered (their next dial pipelines, and the refusal is again the
// stream's ErrPortClosed).
const (
	maxPortPeers    = 4096
	maxPortsPerPeer = 32
)

// refusedPorts remembers, per peer, the virtual ports that refused a
// stream (the acceptor reset it with StreamPortClosed) and have not
// answered since. A dial to such a port waits for the acceptor's answer,
// so that a port still closed is an error of Dial itself, and a port open
// again answers and is forgotten here; a dial to any other port pipelines
// (on a fresh link: see pipelineFresh). It outlives the peer's
// connections, and is dropped when trust ends.
type refusedPorts struct {
	mu    sync.Mutex
	peers map[addressing.PublicKey][]uint16
}

func (o *refusedPorts) has(k addressing.PublicKey, port uint16) bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	for _, p := range o.peers[k] {
		if p == port {
			return true
		}
	}
	return false
}

// add records a refusal.
func (o *refusedPorts) add(k addressing.PublicKey, port uint16) {
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

// remove forgets a refusal: the port answered.
func (o *refusedPorts) remove(k addressing.PublicKey, port uint16) {
	o.mu.Lock()
	defer o.mu.Unlock()
	ps, ok := o.peers[k]
	if !ok {
		return
	}
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
func (o *refusedPorts) forget(k addressing.PublicKey) {
	o.mu.Lock()
	defer o.mu.Unlock()
	delete(o.peers, k)
}
