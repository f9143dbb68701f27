package service

import (
	"net"
	"sync"
)

// Acceptor runs a service's accept loops: it tracks its listeners and live
// connections so that Close can stop them all and wait for the handlers.
// The zero value is ready to use; it is safe for concurrent use.
type Acceptor struct {
	mu     sync.Mutex
	closed bool
	lns    map[net.Listener]struct{}
	conns  map[net.Conn]struct{}
	wg     sync.WaitGroup
}

// Serve accepts connections on l and runs handle for each in its own
// goroutine, until l fails or the Acceptor is closed. It closes l. handle
// owns its connection (Close also closes it, to unblock the handler).
func (a *Acceptor) Serve(l net.Listener, handle func(net.Conn)) error {
	a.mu.Lock()
	if a.closed {
		a.mu.Unlock()
		l.Close()
		return net.ErrClosed
	}
	if a.lns == nil {
		a.lns = make(map[net.Listener]struct{})
		a.conns = make(map[net.Conn]struct{})
	}
	a.lns[l] = struct{}{}
	a.mu.Unlock()
	defer func() {
		a.mu.Lock()
		delete(a.lns, l)
		a.mu.Unlock()
		l.Close()
	}()
	for {
		c, err := l.Accept()
		if err != nil {
			return err
		}
		a.mu.Lock()
		if a.closed {
			a.mu.Unlock()
			c.Close()
			return net.ErrClosed
		}
		a.conns[c] = struct{}{}
		a.wg.Add(1)
		a.mu.Unlock()
		go func() {
			defer a.wg.Done()
			handle(c)
			a.mu.Lock()
			delete(a.conns, c)
			a.mu.Unlock()
		}()
	}
}

// Close closes the listeners and every live connection, and waits for the
// handlers to return. It is idempotent.
func (a *Acceptor) Close() error {
	a.mu.Lock()
	a.closed = true
	for l := range a.lns {
		l.Close()
	}
	for c := range a.conns {
		c.Close()
	}
	a.mu.Unlock()
	a.wg.Wait()
	return nil
}
