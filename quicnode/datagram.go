package quicnode

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/agentnet/agentnet/addressing"
	"github.com/agentnet/agentnet/internal/vport"
	"github.com/quic-go/quic-go"
)

// ListenPacket returns a net.PacketConn for datagrams on the virtual port;
// port 0 picks a free ephemeral port. Datagrams are unreliable and
// unordered; each carries at most MaxDatagramPayload bytes. Incoming
// datagrams wait in a queue of 256 per port; when it is full they are
// dropped and counted (see Stats).
func (n *Node) ListenPacket(port uint16) (net.PacketConn, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.closed {
		return nil, net.ErrClosed
	}
	if port == 0 {
		for i := 0; i < 1<<14; i++ {
			p := n.nextPort
			n.nextPort++
			if n.nextPort < firstEphemeral {
				n.nextPort = firstEphemeral
			}
			if _, ok := n.packetConns[p]; !ok {
				port = p
				break
			}
		}
		if port == 0 {
			return nil, fmt.Errorf("%w: no free ephemeral port", ErrPortInUse)
		}
	}
	if _, ok := n.packetConns[port]; ok {
		return nil, fmt.Errorf("%w: %d", ErrPortInUse, port)
	}
	pc := &packetConn{
		n:      n,
		port:   port,
		queue:  make(chan datagram, datagramQueueLen),
		closed: make(chan struct{}),
	}
	pc.readDL.init()
	pc.writeDL.init()
	n.packetConns[port] = pc
	return pc, nil
}

var dgramPool = sync.Pool{New: func() any {
	b := make([]byte, 0, vport.DatagramBudget)
	return &b
}}

type datagram struct {
	from    addressing.SockAddr
	payload []byte
}

// packetConn is a virtual-port datagram endpoint.
type packetConn struct {
	n       *Node
	port    uint16
	queue   chan datagram
	once    sync.Once
	closed  chan struct{}
	readDL  deadline
	writeDL deadline
	drops   atomic.Uint64
}

// deliver queues an incoming datagram; false means it was dropped.
func (pc *packetConn) deliver(from addressing.SockAddr, payload []byte) bool {
	select {
	case pc.queue <- datagram{from, payload}:
		return true
	default:
		pc.drops.Add(1)
		return false
	}
}

// ReadFrom reads the next datagram; the address is an addressing.SockAddr.
// A payload longer than b is truncated, as with UDP.
func (pc *packetConn) ReadFrom(b []byte) (int, net.Addr, error) {
	select {
	case <-pc.closed:
		return 0, nil, pc.opErr("read", net.ErrClosed)
	default:
	}
	select {
	case d := <-pc.queue:
		return copy(b, d.payload), d.from, nil
	case <-pc.closed:
		return 0, nil, pc.opErr("read", net.ErrClosed)
	case <-pc.readDL.wait():
		return 0, nil, pc.opErr("read", os.ErrDeadlineExceeded)
	}
}

// WriteTo sends b to addr, an addressing.SockAddr of a trusted peer,
// connecting to the peer first if needed (bounded by the write deadline, or
// the handshake timeout).
func (pc *packetConn) WriteTo(b []byte, addr net.Addr) (int, error) {
	select {
	case <-pc.closed:
		return 0, pc.opErr("write", net.ErrClosed)
	default:
	}
	var to addressing.SockAddr
	switch a := addr.(type) {
	case addressing.SockAddr:
		to = a
	case *addressing.SockAddr:
		to = *a
	default:
		return 0, pc.opErr("write", fmt.Errorf("quicnode: address %v is not an addressing.SockAddr", addr))
	}
	if len(b) > MaxDatagramPayload {
		return 0, pc.opErr("write", fmt.Errorf("%w: %d bytes, at most %d", ErrDatagramTooLarge, len(b), MaxDatagramPayload))
	}
	key, err := pc.n.resolveAddr(to.Addr())
	if err != nil {
		return 0, pc.opErr("write", err)
	}
	l := pc.n.liveLink(key)
	if l == nil {
		dl := time.Now().Add(pc.n.cfg.handshakeTimeout())
		if wd := pc.writeDL.when(); !wd.IsZero() && wd.Before(dl) {
			dl = wd
		}
		ctx, cancel := context.WithDeadline(pc.n.ctx, dl)
		l, err = pc.n.getLink(ctx, key)
		cancel()
		if err != nil {
			if errors.Is(err, context.DeadlineExceeded) {
				err = os.ErrDeadlineExceeded
			}
			return 0, pc.opErr("write", err)
		}
	}
	bp := dgramPool.Get().(*[]byte)
	defer dgramPool.Put(bp)
	buf := vport.AppendDatagram((*bp)[:0], to.Port(), pc.port, b)
	*bp = buf
	if err := pc.n.sendDatagram(l, buf); err != nil {
		var tl *quic.DatagramTooLargeError
		if errors.As(err, &tl) {
			err = fmt.Errorf("%w: path allows %d bytes now: %w", ErrDatagramTooLarge, tl.MaxDatagramPayloadSize-vport.DatagramHeaderLen, err)
		}
		return 0, pc.opErr("write", classify(err))
	}
	return len(b), nil
}

func (pc *packetConn) opErr(op string, err error) error {
	return &net.OpError{Op: op, Net: "agentnet", Addr: pc.LocalAddr(), Err: err}
}

// Close stops the endpoint; queued datagrams are discarded.
func (pc *packetConn) Close() error {
	pc.once.Do(func() {
		pc.n.mu.Lock()
		if pc.n.packetConns[pc.port] == pc {
			delete(pc.n.packetConns, pc.port)
		}
		pc.n.mu.Unlock()
		close(pc.closed)
	})
	return nil
}

func (pc *packetConn) LocalAddr() net.Addr { return addressing.SockAddrFrom(pc.n.addr, pc.port) }

func (pc *packetConn) SetDeadline(t time.Time) error {
	pc.readDL.set(t)
	pc.writeDL.set(t)
	return nil
}
func (pc *packetConn) SetReadDeadline(t time.Time) error  { pc.readDL.set(t); return nil }
func (pc *packetConn) SetWriteDeadline(t time.Time) error { pc.writeDL.set(t); return nil }

// Dropped reports how many datagrams for this port were dropped because its
// queue was full.
func (pc *packetConn) Dropped() uint64 { return pc.drops.Load() }

// deadline is a resettable deadline whose wait channel closes when it passes
// (after net.Pipe's pipeDeadline).
type deadline struct {
	mu     sync.Mutex
	t      time.Time
	timer  *time.Timer
	cancel chan struct{}
}

func (d *deadline) init() { d.cancel = make(chan struct{}) }

func (d *deadline) set(t time.Time) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.timer != nil && !d.timer.Stop() {
		<-d.cancel // wait for the timer callback to finish and close cancel
	}
	d.timer = nil
	d.t = t
	closed := isClosed(d.cancel)
	if t.IsZero() {
		if closed {
			d.cancel = make(chan struct{})
		}
		return
	}
	if dur := time.Until(t); dur > 0 {
		if closed {
			d.cancel = make(chan struct{})
		}
		c := d.cancel
		d.timer = time.AfterFunc(dur, func() { close(c) })
		return
	}
	if !closed {
		close(d.cancel)
	}
}

func (d *deadline) when() time.Time {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.t
}

func (d *deadline) wait() chan struct{} {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.cancel
}

func isClosed(c chan struct{}) bool {
	select {
	case <-c:
		return true
	default:
		return false
	}
}
