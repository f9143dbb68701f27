package bench

import (
	"net"
	"sync"
	"time"
)

// emulatedRTT is the round trip time Options.RTT (flag -rtt) adds to every
// path between the nodes and peers of the run: each of their sockets holds
// back every datagram it sends for half of it. 0 sends at once.
var emulatedRTT time.Duration

// packetConn returns udp as the socket a node or quic.Transport of the run
// uses: udp itself, or, with an emulated RTT, a delayConn around it. A
// delayConn is a plain net.PacketConn, so quic-go sends without GSO and
// ECN for every system alike.
func packetConn(udp *net.UDPConn) net.PacketConn {
	if emulatedRTT <= 0 {
		return udp
	}
	return newDelayConn(udp, emulatedRTT/2)
}

// delayQueue is the most datagrams a delayConn holds; more are dropped, as
// a router's full queue would.
const delayQueue = 8192

// delayConn delays every datagram it sends by a fixed time (order kept).
type delayConn struct {
	udp   *net.UDPConn // not embedded: quic-go must not find WriteMsgUDP
	delay time.Duration
	q     chan delayed
	done  chan struct{}
	once  sync.Once
	wg    sync.WaitGroup
}

type delayed struct {
	due  time.Time
	b    []byte
	addr net.Addr
}

func newDelayConn(udp *net.UDPConn, delay time.Duration) *delayConn {
	c := &delayConn{udp: udp, delay: delay, q: make(chan delayed, delayQueue), done: make(chan struct{})}
	c.wg.Add(1)
	go c.sendLoop()
	return c
}

func (c *delayConn) sendLoop() {
	defer c.wg.Done()
	t := time.NewTimer(time.Hour)
	defer t.Stop()
	for {
		var d delayed
		select {
		case d = <-c.q:
		case <-c.done:
			return
		}
		if wait := time.Until(d.due); wait > 0 {
			t.Reset(wait)
			select {
			case <-t.C:
			case <-c.done:
				return
			}
		}
		c.udp.WriteTo(d.b, d.addr)
	}
}

// WriteTo queues b for sending after the delay.
func (c *delayConn) WriteTo(b []byte, addr net.Addr) (int, error) {
	select {
	case <-c.done:
		return 0, net.ErrClosed
	default:
	}
	d := delayed{due: time.Now().Add(c.delay), b: append([]byte(nil), b...), addr: addr}
	select {
	case c.q <- d:
	default: // queue full: dropped
	}
	return len(b), nil
}

// Close stops the sender (queued datagrams are dropped) and closes the socket.
func (c *delayConn) Close() error {
	c.once.Do(func() { close(c.done) })
	c.wg.Wait()
	return c.udp.Close()
}

func (c *delayConn) ReadFrom(b []byte) (int, net.Addr, error) { return c.udp.ReadFrom(b) }
func (c *delayConn) LocalAddr() net.Addr                      { return c.udp.LocalAddr() }
func (c *delayConn) SetDeadline(t time.Time) error            { return c.udp.SetDeadline(t) }
func (c *delayConn) SetReadDeadline(t time.Time) error        { return c.udp.SetReadDeadline(t) }
func (c *delayConn) SetWriteDeadline(t time.Time) error       { return c.udp.SetWriteDeadline(t) }
