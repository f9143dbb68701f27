package quicnode

import (
	"fmt"
	"net"
	"sync"
	"time"

	"github.com/agentnet/agentnet/addressing"
	"github.com/quic-go/quic-go"
)

// Listen returns a listener for streams to the virtual port. Port 0 is
// invalid for listeners.
func (n *Node) Listen(port uint16) (net.Listener, error) {
	if port == 0 {
		return nil, fmt.Errorf("quicnode: listen: port 0 is reserved")
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.closed {
		return nil, net.ErrClosed
	}
	if _, ok := n.listeners[port]; ok {
		return nil, fmt.Errorf("%w: %d", ErrPortInUse, port)
	}
	l := &listener{
		n:      n,
		port:   port,
		ch:     make(chan *streamConn, listenBacklog),
		closed: make(chan struct{}),
	}
	n.listeners[port] = l
	return l, nil
}

// listener is a net.Listener for one virtual port. Streams wait in a queue
// of listenBacklog; when it is full, the stream's dispatcher waits up to
// backlogWait for room (holding the stream, and so QUIC's stream credit:
// backpressure on the dialer), then gives up with StreamBusy.
type listener struct {
	n      *Node
	port   uint16
	ch     chan *streamConn
	once   sync.Once
	closed chan struct{}
}

func (l *listener) enqueue(c *streamConn) bool {
	select {
	case l.ch <- c:
		return true
	case <-l.closed:
		return false
	default:
	}
	t := time.NewTimer(backlogWait)
	defer t.Stop()
	select {
	case l.ch <- c:
		return true
	case <-l.closed:
	case <-l.n.ctx.Done():
	case <-t.C:
	}
	return false
}

// Accept waits for the next stream to the port.
func (l *listener) Accept() (net.Conn, error) {
	select {
	case c := <-l.ch:
		return c, nil
	case <-l.closed:
		return nil, fmt.Errorf("quicnode: accept on port %d: %w", l.port, net.ErrClosed)
	}
}

// Close stops the listener and resets streams not yet accepted.
func (l *listener) Close() error {
	l.once.Do(func() {
		l.n.mu.Lock()
		if l.n.listeners[l.port] == l {
			delete(l.n.listeners, l.port)
		}
		l.n.mu.Unlock()
		close(l.closed)
		for {
			select {
			case c := <-l.ch:
				c.s.CancelRead(StreamPortClosed)
				c.s.CancelWrite(StreamPortClosed)
			default:
				return
			}
		}
	})
	return nil
}

// Addr returns the listener's socket address.
func (l *listener) Addr() net.Addr { return addressing.SockAddrFrom(l.n.addr, l.port) }

// streamConn is a virtual-port stream as a net.Conn. Close closes both
// directions (unread incoming data is discarded, like a TCP reset);
// CloseWrite half-closes.
type streamConn struct {
	s             *quic.Stream
	local, remote addressing.SockAddr
}

func (c *streamConn) Read(b []byte) (int, error) {
	n, err := c.s.Read(b)
	if err != nil {
		err = translate(err)
	}
	return n, err
}

func (c *streamConn) Write(b []byte) (int, error) {
	n, err := c.s.Write(b)
	if err != nil {
		err = translate(err)
	}
	return n, err
}

// Close closes the stream in both directions.
func (c *streamConn) Close() error {
	err := c.s.Close()
	c.s.CancelRead(StreamClosed)
	return err
}

// CloseWrite sends EOF to the peer; reading goes on.
func (c *streamConn) CloseWrite() error { return c.s.Close() }

// Abort resets the stream both ways (StreamAborted): unlike Close, which
// ends what was written cleanly, the peer's reads and writes fail, so it
// cannot take a cut for the end. Data not yet sent is dropped.
func (c *streamConn) Abort() error {
	c.s.CancelWrite(StreamAborted)
	c.s.CancelRead(StreamAborted)
	return nil
}

func (c *streamConn) LocalAddr() net.Addr                { return c.local }
func (c *streamConn) RemoteAddr() net.Addr               { return c.remote }
func (c *streamConn) SetDeadline(t time.Time) error      { return c.s.SetDeadline(t) }
func (c *streamConn) SetReadDeadline(t time.Time) error  { return c.s.SetReadDeadline(t) }
func (c *streamConn) SetWriteDeadline(t time.Time) error { return c.s.SetWriteDeadline(t) }

// translate keeps timeouts and EOF as they are (net/http and io rely on
// them) and maps trust-related connection errors to ErrNotTrusted.
func translate(err error) error {
	if ne, ok := err.(net.Error); ok && ne.Timeout() {
		return err
	}
	return classify(err)
}
