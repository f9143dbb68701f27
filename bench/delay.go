package bench

import (
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// emulatedRTT is the round trip time Options.RTT (flag -rtt) adds to every
// path between the nodes and peers of the run: each of their sockets holds
// back every datagram it sends for half of it. 0 sends at once.
var emulatedRTT time.Duration

// countDatagrams (Options.CountDatagrams, flag -count-datagrams) wraps
// every socket of the run's nodes and peers in a countConn, so that
// datagramsSent counts what they send.
var countDatagrams bool

// datagramsSent counts the datagrams the run's wrapped sockets sent (with
// an emulated RTT or countDatagrams; see packetConn).
var datagramsSent atomic.Int64

// packetConn returns udp as the socket a node or quic.Transport of the run
// uses: udp itself, or, with an emulated RTT, a delayConn around it, or,
// with countDatagrams, a countConn. Both are plain net.PacketConns, so
// quic-go sends without GSO and ECN for every system alike.
func packetConn(udp *net.UDPConn) net.PacketConn {
	switch {
	case emulatedRTT > 0:
		return newDelayConn(udp, emulatedRTT/2)
	case countDatagrams:
		return countConn{udp}
	}
	return udp
}

// countingSockets reports whether packetConn wraps the run's sockets, so
// that datagramsSent counts their datagrams.
func countingSockets() bool { return emulatedRTT > 0 || countDatagrams }

// countConn counts the datagrams it sends.
type countConn struct {
	udp *net.UDPConn // not embedded: quic-go must not find WriteMsgUDP
}

func (c countConn) WriteTo(b []byte, addr net.Addr) (int, error) {
	datagramsSent.Add(1)
	return c.udp.WriteTo(b, addr)
}
func (c countConn) ReadFrom(b []byte) (int, net.Addr, error) { return c.udp.ReadFrom(b) }
func (c countConn) Close() error                             { return c.udp.Close() }
func (c countConn) LocalAddr() net.Addr                      { return c.udp.LocalAddr() }
func (c countConn) SetDeadline(t time.Time) error            { return c.udp.SetDeadline(t) }
func (c countConn) SetReadDeadline(t time.Time) error        { return c.udp.SetReadDeadline(t) }
func (c countConn) SetWriteDeadline(t time.Time) error       { return c.udp.SetWriteDeadline(t) }

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
	datagramsSent.Add(1)
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
