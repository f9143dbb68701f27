package quicnode

import (
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/agentnet/agentnet/addressing"
	"github.com/agentnet/agentnet/internal/vport"
	"github.com/agentnet/agentnet/quicnode/internal/paths"
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

// tryEnqueue queues c if there is room at once.
func (l *listener) tryEnqueue(c *streamConn) bool {
	select {
	case <-l.closed:
		return false
	default:
	}
	select {
	case l.ch <- c:
		return true
	default:
		return false
	}
}

// enqueue queues c, waiting up to backlogWait for room.
func (l *listener) enqueue(c *streamConn) bool {
	if l.tryEnqueue(c) {
		return true
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
//
// A pipelined stream (see Node.DialTarget) starts with its port header
// pending: the first Write sends it in one piece with the data, so that
// request and header share a packet; a Read, Close or CloseWrite first
// sends it alone, and so does a timer pipelineFlush after the dial, so the
// acceptor sees the stream even if the caller waits for it before writing.
// An accepted stream whose opener waits for the status byte has ready set:
// its writes wait until the byte is out.
type streamConn struct {
	s             *quic.Stream
	local, remote addressing.SockAddr

	link  *paths.Link   // reads that return data mark it heard from (pipelineFresh)
	ready chan struct{} // accepted, version 1: closed once the status byte is written

	// Pipelined streams only.
	pending atomic.Bool // the header is not written yet
	hmu     sync.Mutex  // serialises writing the header
	hdr     [vport.StreamHeaderLen]byte
	flushT  *time.Timer   // sends the header alone if no Write came first (set and stopped under hmu)
	ports   *refusedPorts // remembers the port when the peer refuses the stream
	key     addressing.PublicKey
	// refused is the peer's refusal once a Read or Write has seen it: the
	// other direction reports it too, though its own half of the reset
	// (STOP_SENDING) may not have arrived yet.
	refused atomic.Pointer[error]
}

// answer writes the status byte of an accepted version 1 stream.
func (c *streamConn) answer() {
	if c.ready != nil {
		c.s.Write([]byte{vport.StatusOK})
		close(c.ready)
	}
}

func (c *streamConn) waitReady() {
	if c.ready != nil {
		<-c.ready
	}
}

// maxCoalesce is the largest first write of a pipelined stream that is
// copied behind its header so both leave in one STREAM frame; a larger one
// goes out in two writes (quic-go still packs them together unless a
// packet leaves in between).
const maxCoalesce = 4 << 10

var coalescePool = sync.Pool{New: func() any { b := make([]byte, 0, vport.StreamHeaderLen+maxCoalesce); return &b }}

// sendHeader writes the pending header alone, once.
func (c *streamConn) sendHeader() error {
	c.hmu.Lock()
	defer c.hmu.Unlock()
	if !c.pending.Load() {
		return nil
	}
	c.pending.Store(false)
	c.flushT.Stop()
	if _, err := c.s.Write(c.hdr[:]); err != nil {
		return c.fail(err)
	}
	return nil
}

// writeFirst writes the pending header with b.
func (c *streamConn) writeFirst(b []byte) (int, error) {
	if len(b) > maxCoalesce {
		if err := c.sendHeader(); err != nil {
			return 0, err
		}
		return c.write(b)
	}
	c.hmu.Lock()
	if !c.pending.Load() {
		c.hmu.Unlock()
		return c.write(b)
	}
	c.pending.Store(false)
	c.flushT.Stop()
	bp := coalescePool.Get().(*[]byte)
	buf := append(append((*bp)[:0], c.hdr[:]...), b...)
	n, err := c.s.Write(buf)
	*bp = buf[:0]
	coalescePool.Put(bp)
	c.hmu.Unlock()
	n = max(n-vport.StreamHeaderLen, 0)
	if err != nil {
		return n, c.fail(err)
	}
	return n, nil
}

// fail translates a stream error; a pipelined stream the peer refused for
// its port makes the next dial to that port wait for the answer.
func (c *streamConn) fail(err error) error {
	err = translate(err)
	if errors.Is(err, ErrPortClosed) {
		if c.ports != nil {
			c.ports.add(c.key, c.remote.Port())
		}
		c.refused.CompareAndSwap(nil, &err)
	}
	return err
}

func (c *streamConn) Read(b []byte) (int, error) {
	if c.pending.Load() {
		if err := c.sendHeader(); err != nil {
			return 0, err
		}
	}
	n, err := c.s.Read(b)
	if n > 0 {
		c.link.MarkHeard(time.Now())
	}
	if err != nil {
		err = c.fail(err)
	}
	return n, err
}

func (c *streamConn) Write(b []byte) (int, error) {
	if c.pending.Load() {
		return c.writeFirst(b)
	}
	return c.write(b)
}

func (c *streamConn) write(b []byte) (int, error) {
	c.waitReady()
	if err := c.refused.Load(); err != nil {
		return 0, *err
	}
	n, err := c.s.Write(b)
	if err != nil {
		err = c.fail(err)
	}
	return n, err
}

// Close closes the stream in both directions.
func (c *streamConn) Close() error {
	err := c.CloseWrite()
	c.s.CancelRead(StreamClosed)
	return err
}

// CloseWrite sends EOF to the peer; reading goes on.
func (c *streamConn) CloseWrite() error {
	if c.pending.Load() {
		if err := c.sendHeader(); err != nil {
			return err
		}
	}
	c.waitReady()
	return c.s.Close()
}

// Abort resets the stream both ways (StreamAborted): unlike Close, which
// ends what was written cleanly, the peer's reads and writes fail, so it
// cannot take a cut for the end. Data not yet sent is dropped.
func (c *streamConn) Abort() error {
	if c.pending.Load() {
		c.hmu.Lock()
		c.pending.Store(false)
		c.flushT.Stop()
		c.hmu.Unlock()
	}
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
