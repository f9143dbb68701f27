package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"sync"
	"syscall"
	"time"

	"github.com/agentnet/agentnet/quicnode"
	"github.com/agentnet/agentnet/rendezvous"
)

// Takeover timing of the zero-config rendezvous (variables for tests).
var (
	watchPeriod   = 2 * time.Second
	takeoverAfter = 3 // checks in a row without registration
)

// localRendezvous is the zero-config rendezvous: the daemon hosts it if the
// address is free, and takes it over when its host goes away.
type localRendezvous struct {
	addr string
	dir  string
	log  *slog.Logger

	mu   sync.Mutex
	srv  *rendezvous.Server
	conn *net.UDPConn
}

// hosting reports whether this daemon serves the rendezvous now.
func (l *localRendezvous) hosting() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.srv != nil
}

// tryHost starts the embedded rendezvous if the address is free. It reports
// false, and no error, when something else holds the port.
func (l *localRendezvous) tryHost() (bool, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.srv != nil {
		return true, nil
	}
	ua, err := net.ResolveUDPAddr("udp", l.addr)
	if err != nil {
		return false, fmt.Errorf("daemon: local rendezvous address: %w", err)
	}
	conn, err := net.ListenUDP("udp", ua)
	if err != nil {
		if errors.Is(err, syscall.EADDRINUSE) {
			return false, nil
		}
		return false, fmt.Errorf("daemon: local rendezvous: %w", err)
	}
	srv, err := rendezvous.NewServer(rendezvous.ServerConfig{Conn: conn, DataDir: l.dir, Logger: l.log})
	if err == nil {
		err = srv.Start()
	}
	if err != nil {
		conn.Close()
		return false, fmt.Errorf("daemon: embedded rendezvous: %w", err)
	}
	l.srv, l.conn = srv, conn
	l.log.Info("embedded rendezvous serving", "addr", conn.LocalAddr(), "key", srv.PublicKey(), "path", l.dir)
	return true, nil
}

// watchLoop takes the rendezvous over when the node has not been
// registered for a few checks in a row (its host daemon exited).
func (l *localRendezvous) watchLoop(ctx context.Context, node *quicnode.Node) {
	misses := 0
	for {
		d := watchPeriod + rand.N(watchPeriod/2)
		select {
		case <-ctx.Done():
			return
		case <-time.After(d):
		}
		if l.hosting() || registered(node) {
			misses = 0
			continue
		}
		if misses++; misses < takeoverAfter {
			continue
		}
		misses = 0
		if ok, err := l.tryHost(); err != nil {
			l.log.Debug("rendezvous takeover failed", "err", err)
		} else if ok {
			l.log.Info("took over the local rendezvous", "addr", l.addr)
		}
	}
}

// close stops the embedded rendezvous, if this daemon hosts it.
func (l *localRendezvous) close() {
	l.mu.Lock()
	srv, conn := l.srv, l.conn
	l.srv, l.conn = nil, nil
	l.mu.Unlock()
	if srv == nil {
		return
	}
	// Close, not Shutdown: registered sessions are long-lived requests that
	// a graceful drain would wait for; the clients reconnect by themselves
	// (to whichever daemon takes the port over).
	srv.Close()
	conn.Close()
}

// registered reports whether the node is registered at its rendezvous
// right now, and if not, why (when known).
func registered(node *quicnode.Node) bool {
	ok, _ := registration(node)
	return ok
}

func registration(node *quicnode.Node) (bool, error) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	err := node.WaitRendezvous(ctx)
	if err == nil {
		return true, nil
	}
	if errors.Is(err, context.Canceled) {
		return false, nil
	}
	return false, err
}
