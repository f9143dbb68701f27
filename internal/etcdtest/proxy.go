package etcdtest

import (
	"io"
	"net"
	"sync"
	"testing"
)

// Proxy stands between an etcd client and a cluster, one TCP forwarder per
// member, so a test can cut that client off (a network partition) and heal
// it again while the cluster and every other client carry on.
type Proxy struct {
	mu      sync.Mutex
	cut     bool
	lns     []net.Listener
	conns   map[net.Conn]struct{}
	targets []string
	wg      sync.WaitGroup
}

// Proxy returns a proxy to c's members, closed in Cleanup. Its Endpoints
// are what the client to cut off is given.
func (c *Cluster) Proxy(t testing.TB) *Proxy {
	t.Helper()
	p := &Proxy{conns: make(map[net.Conn]struct{})}
	for _, m := range c.Members() {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatalf("etcdtest: proxy: %v", err)
		}
		p.lns = append(p.lns, ln)
		target := m.ClientURL[len("http://"):]
		p.targets = append(p.targets, target)
		p.wg.Add(1)
		go p.acceptLoop(ln, target)
	}
	t.Cleanup(p.Close)
	return p
}

// Endpoints returns the proxy's client URLs, one per member.
func (p *Proxy) Endpoints() []string {
	out := make([]string, len(p.lns))
	for i, ln := range p.lns {
		out[i] = "http://" + ln.Addr().String()
	}
	return out
}

// Cut drops every connection through the proxy and, until Heal, holds new
// ones open without forwarding a byte: to the client, etcd has gone silent.
func (p *Proxy) Cut() {
	p.mu.Lock()
	p.cut = true
	for c := range p.conns {
		c.Close()
	}
	p.mu.Unlock()
}

// Heal forwards again (connections held while cut are dropped, so the
// client reconnects).
func (p *Proxy) Heal() {
	p.mu.Lock()
	p.cut = false
	for c := range p.conns {
		c.Close()
	}
	p.mu.Unlock()
}

// Close stops the proxy and waits for its goroutines.
func (p *Proxy) Close() {
	p.mu.Lock()
	for _, ln := range p.lns {
		ln.Close()
	}
	for c := range p.conns {
		c.Close()
	}
	p.mu.Unlock()
	p.wg.Wait()
}

func (p *Proxy) track(c net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.conns == nil {
		return false
	}
	p.conns[c] = struct{}{}
	return true
}

func (p *Proxy) untrack(c net.Conn) {
	p.mu.Lock()
	delete(p.conns, c)
	p.mu.Unlock()
	c.Close()
}

func (p *Proxy) acceptLoop(ln net.Listener, target string) {
	defer p.wg.Done()
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		p.track(c)
		p.mu.Lock()
		cut := p.cut
		p.mu.Unlock()
		p.wg.Add(1)
		go func() {
			defer p.wg.Done()
			defer p.untrack(c)
			if cut { // hold it, silent, until Heal or Close drops it
				io.Copy(io.Discard, c)
				return
			}
			up, err := net.Dial("tcp", target)
			if err != nil {
				return
			}
			p.track(up)
			defer p.untrack(up)
			done := make(chan struct{}, 2)
			go func() { io.Copy(up, c); done <- struct{}{} }()
			go func() { io.Copy(c, up); done <- struct{}{} }()
			<-done
			c.Close()
			up.Close()
			<-done
		}()
	}
}
