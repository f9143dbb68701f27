package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/agentnet/agentnet/quicnode"
)

const (
	chunkSize   = 64 << 10 // bytes per Write in bulk transfers
	messageSize = 1 << 10
	// datagramTimeout is how long a datagram ping waits for its pong before
	// it counts as lost.
	datagramTimeout = 200 * time.Millisecond
)

// Transfer is the outcome of moving bytes: how many, the wall time and the
// process CPU time (both ends) it took.
type Transfer struct {
	Bytes int64
	Wall  time.Duration
	CPU   time.Duration
}

// MBps returns the throughput in MB/s (10^6 bytes per second).
func (t Transfer) MBps() float64 { return float64(t.Bytes) / t.Wall.Seconds() / 1e6 }

// CPUPerGiB returns process CPU seconds (both ends) per GiB moved.
func (t Transfer) CPUPerGiB() float64 { return t.CPU.Seconds() / (float64(t.Bytes) / (1 << 30)) }

// Rate is a count of operations done in a wall time.
type Rate struct {
	N    int
	Wall time.Duration
	CPU  time.Duration // process CPU, where measured
}

// PerSecond returns N per second.
func (r Rate) PerSecond() float64 { return float64(r.N) / r.Wall.Seconds() }

// sendSink writes the sink op and size bytes on c in chunkSize writes, sends
// EOF and waits for the server's acknowledgement (so every byte has been
// read by the server).
func sendSink(c net.Conn, size int64, buf []byte) error {
	if _, err := c.Write([]byte{opSink}); err != nil {
		return err
	}
	for left := size; left > 0; {
		n := min(left, int64(len(buf)))
		if _, err := c.Write(buf[:n]); err != nil {
			return fmt.Errorf("bench: write: %w", err)
		}
		left -= n
	}
	return finishSink(c)
}

// finishSink sends EOF and waits for the sink's acknowledgement.
func finishSink(c net.Conn) error {
	if err := closeWrite(c); err != nil {
		return err
	}
	var ack [1]byte
	if _, err := io.ReadFull(c, ack[:]); err != nil {
		return fmt.Errorf("bench: read ack: %w", err)
	}
	if ack[0] != ackByte {
		return fmt.Errorf("bench: bad ack %q", ack[0])
	}
	return nil
}

// Bulk sends size bytes on one stream and measures until the server has read
// them all.
func Bulk(ctx context.Context, r *Rig, size int64) (Transfer, error) {
	return bulkOn(ctx, r.Env.Dial, size)
}

// bulkOn is Bulk on streams that dial opens.
func bulkOn(ctx context.Context, dial func(context.Context) (net.Conn, error), size int64) (Transfer, error) {
	c, err := dial(ctx)
	if err != nil {
		return Transfer{}, err
	}
	defer c.Close()
	stop := closeOnDone(ctx, c)
	defer stop()
	buf := make([]byte, chunkSize)
	m := startMeter()
	if err := sendSink(c, size, buf); err != nil {
		return Transfer{}, err
	}
	wall, cpu := m.stop()
	return Transfer{Bytes: size, Wall: wall, CPU: cpu}, nil
}

// closeOnDone closes c when ctx ends, so a scenario never outlives its
// context; the returned function stops that.
func closeOnDone(ctx context.Context, c io.Closer) func() bool {
	return context.AfterFunc(ctx, func() { c.Close() })
}

// echoStream is an open stream to the echo service.
type echoStream struct {
	c   net.Conn
	buf [1]byte
}

func openEcho(ctx context.Context, dial func(context.Context) (net.Conn, error)) (*echoStream, error) {
	c, err := dial(ctx)
	if err != nil {
		return nil, err
	}
	if _, err := c.Write([]byte{opEcho}); err != nil {
		c.Close()
		return nil, err
	}
	return &echoStream{c: c}, nil
}

// roundTrip sends one byte and waits for it to come back.
func (e *echoStream) roundTrip(b byte) error {
	e.buf[0] = b
	if _, err := e.c.Write(e.buf[:]); err != nil {
		return err
	}
	if _, err := io.ReadFull(e.c, e.buf[:]); err != nil {
		return err
	}
	if e.buf[0] != b {
		return fmt.Errorf("bench: echo returned %d, want %d", e.buf[0], b)
	}
	return nil
}

// PingPong measures n one-byte round trips on one open stream, after a
// warm-up of n/10 (at least 10).
func PingPong(ctx context.Context, r *Rig, n int) (Latency, error) {
	return pingPongOn(ctx, r.Env.Dial, n)
}

// pingPongOn is PingPong on a stream that dial opens.
func pingPongOn(ctx context.Context, dial func(context.Context) (net.Conn, error), n int) (Latency, error) {
	e, err := openEcho(ctx, dial)
	if err != nil {
		return nil, err
	}
	defer e.c.Close()
	stop := closeOnDone(ctx, e.c)
	defer stop()
	for i := range max(10, n/10) {
		if err := e.roundTrip(byte(i)); err != nil {
			return nil, err
		}
	}
	lat := make(Latency, 0, n)
	for i := range n {
		t := time.Now()
		if err := e.roundTrip(byte(i)); err != nil {
			return nil, err
		}
		lat = append(lat, time.Since(t))
	}
	return lat, nil
}

// pinger sends one-byte datagrams to the echo service.
type pinger struct {
	pc  net.PacketConn
	to  net.Addr
	buf [64]byte
}

func newPinger(ctx context.Context, r *Rig) (*pinger, error) {
	pc, to, err := r.datagrams(ctx)
	if err != nil {
		return nil, err
	}
	return &pinger{pc: pc, to: to}, nil
}

// ping sends b and waits up to datagramTimeout for it to come back; ok is
// false if it did not.
func (p *pinger) ping(b byte) (rtt time.Duration, ok bool, err error) {
	t := time.Now()
	if _, err := p.pc.WriteTo([]byte{b}, p.to); err != nil {
		return 0, false, err
	}
	p.pc.SetReadDeadline(t.Add(datagramTimeout))
	for {
		m, _, err := p.pc.ReadFrom(p.buf[:])
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				return 0, false, nil
			}
			return 0, false, err
		}
		if m == 1 && p.buf[0] == b {
			return time.Since(t), true, nil
		}
		// A late pong of an earlier ping: keep waiting.
	}
}

// DatagramPingPong measures n one-byte datagram round trips, one at a time,
// after a warm-up. A pong that has not come back within 200 ms counts as
// lost; late pongs are recognized by their byte and skipped.
func DatagramPingPong(ctx context.Context, r *Rig, n int) (lat Latency, lost int, err error) {
	p, err := newPinger(ctx, r)
	if err != nil {
		return nil, 0, err
	}
	for i := range max(10, n/10) {
		if _, _, err := p.ping(byte(i)); err != nil {
			return nil, 0, err
		}
	}
	lat = make(Latency, 0, n)
	for i := range n {
		if ctx.Err() != nil {
			return nil, 0, ctx.Err()
		}
		d, ok, err := p.ping(byte(i))
		if err != nil {
			return nil, 0, err
		}
		if !ok {
			lost++
			continue
		}
		lat = append(lat, d)
	}
	return lat, lost, nil
}

// Messages sends n messages of 1 KiB, one Write each, on one stream, and
// measures until the server has read them all.
func Messages(ctx context.Context, r *Rig, n int) (Rate, error) {
	c, err := r.Env.Dial(ctx)
	if err != nil {
		return Rate{}, err
	}
	defer c.Close()
	stop := closeOnDone(ctx, c)
	defer stop()
	if _, err := c.Write([]byte{opSink}); err != nil {
		return Rate{}, err
	}
	msg := make([]byte, messageSize)
	m := startMeter()
	for range n {
		if _, err := c.Write(msg); err != nil {
			return Rate{}, err
		}
	}
	if err := finishSink(c); err != nil {
		return Rate{}, err
	}
	wall, _ := m.stop()
	return Rate{N: n, Wall: wall}, nil
}

// StreamPerMessage sends 1 KiB messages, each on a new stream (on TCP and
// TLS a new connection), one after another without waiting for the server,
// until n are sent or maxDur has passed, and measures until the server has
// read every one. Dials refused for a full accept backlog are retried and
// counted.
func StreamPerMessage(ctx context.Context, r *Rig, n int, maxDur time.Duration) (rate Rate, busyRetries int64, err error) {
	msg := make([]byte, 1+messageSize)
	msg[0] = opSink
	base := r.sunk.Load()
	var retries atomic.Int64
	m := startMeter()
	sent := 0
	for sent < n && (sent == 0 || time.Since(m.start) < maxDur) {
		c, err := dialRetryBusy(ctx, r.Env.Dial, &retries)
		if err != nil {
			return Rate{}, 0, err
		}
		_, err = c.Write(msg)
		c.Close()
		if err != nil {
			return Rate{}, 0, err
		}
		sent++
	}
	if err := r.waitSunk(ctx, base+int64(sent)); err != nil {
		return Rate{}, 0, err
	}
	wall, _ := m.stop()
	return Rate{N: sent, Wall: wall}, retries.Load(), nil
}

// SetupFirst measures first contact n times: a new peer (prepared untimed)
// dials the server, and the time runs until the first byte has come back
// from the echo service. For agentnet that is rendezvous lookup, handshake,
// welcome, stream open and echo.
func SetupFirst(ctx context.Context, r *Rig, n int) (Latency, error) {
	lat := make(Latency, 0, n)
	for i := range n {
		p, err := r.Env.NewPeer(ctx)
		if err != nil {
			return nil, err
		}
		t := time.Now()
		e, err := openEcho(ctx, p.Dial)
		if err == nil {
			err = e.roundTrip(byte(i))
			e.c.Close()
		}
		d := time.Since(t)
		p.Close()
		if err != nil {
			return nil, err
		}
		lat = append(lat, d)
	}
	return lat, nil
}

// SetupRepeat measures repeat contact n times: one peer that has talked to
// the server before drops its connection and dials again (new connection,
// stream, first echoed byte), knowing where the server is.
func SetupRepeat(ctx context.Context, r *Rig, n int) (Latency, error) {
	p, err := r.Env.NewPeer(ctx)
	if err != nil {
		return nil, err
	}
	defer p.Close()
	e, err := openEcho(ctx, p.Dial)
	if err != nil {
		return nil, err
	}
	err = e.roundTrip(0)
	e.c.Close()
	if err != nil {
		return nil, err
	}
	lat := make(Latency, 0, n)
	for i := range n {
		if err := p.Disconnect(); err != nil {
			return nil, err
		}
		t := time.Now()
		e, err := openEcho(ctx, p.Dial)
		if err == nil {
			err = e.roundTrip(byte(i))
			e.c.Close()
		}
		if err != nil {
			return nil, err
		}
		lat = append(lat, time.Since(t))
	}
	return lat, nil
}

// dialRetryBusy dials, and dials again after a millisecond as long as the
// server refuses because its accept backlog is full (quicnode's ErrBusy),
// counting the retries.
func dialRetryBusy(ctx context.Context, dial func(context.Context) (net.Conn, error), retries *atomic.Int64) (net.Conn, error) {
	for {
		c, err := dial(ctx)
		if !errors.Is(err, quicnode.ErrBusy) || ctx.Err() != nil {
			return c, err
		}
		retries.Add(1)
		time.Sleep(time.Millisecond)
	}
}

// ConcurrentStreams opens streams streams at once, each sending perStream
// bytes, and measures from the first open until the server has read every
// byte. Stream opening is inside the measurement. A Dial refused because the
// server's accept backlog is full (quicnode's ErrBusy) is retried after a
// millisecond, and counted.
func ConcurrentStreams(ctx context.Context, r *Rig, streams int, perStream int64) (t Transfer, busyRetries int64, err error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	var firstErr atomic.Pointer[error]
	var retries atomic.Int64
	start := make(chan struct{})
	for range streams {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			err := func() error {
				c, err := dialRetryBusy(ctx, r.Env.Dial, &retries)
				if err != nil {
					return err
				}
				defer c.Close()
				stop := closeOnDone(ctx, c)
				defer stop()
				return sendSink(c, perStream, make([]byte, min(chunkSize, perStream)))
			}()
			if err != nil && firstErr.CompareAndSwap(nil, &err) {
				cancel()
			}
		}()
	}
	m := startMeter()
	close(start)
	wg.Wait()
	wall, cpu := m.stop()
	if p := firstErr.Load(); p != nil {
		return Transfer{}, 0, *p
	}
	return Transfer{Bytes: int64(streams) * perStream, Wall: wall, CPU: cpu}, retries.Load(), nil
}

// IdleCost is the memory and goroutines an idle connected peer costs, both
// ends together (both run in this process).
type IdleCost struct {
	Peers             int
	HeapPerPeer       float64 // live heap bytes after GC
	GoroutinesPerPeer float64
}

// Idle prepares n peers (untimed, unconnected), then connects each one (one
// echoed byte on a stream that is then closed) and leaves the connections
// idle. The cost per peer is the difference between the two quiet
// snapshots, divided by n.
func Idle(ctx context.Context, r *Rig, n int) (IdleCost, error) {
	peers := make([]Peer, n)
	defer func() {
		for _, p := range peers {
			if p != nil {
				p.Close()
			}
		}
	}()
	if err := parallel(ctx, n, 16, func(i int) (err error) {
		peers[i], err = r.Env.NewPeer(ctx)
		return err
	}); err != nil {
		return IdleCost{}, err
	}
	before := quietSnapshot()
	if err := parallel(ctx, n, 16, func(i int) error {
		e, err := openEcho(ctx, peers[i].Dial)
		if err != nil {
			return err
		}
		defer e.c.Close()
		return e.roundTrip(byte(i))
	}); err != nil {
		return IdleCost{}, err
	}
	if err := r.waitHandlers(ctx); err != nil {
		return IdleCost{}, err
	}
	after := quietSnapshot()
	return IdleCost{
		Peers:             n,
		HeapPerPeer:       (float64(after.heap) - float64(before.heap)) / float64(n),
		GoroutinesPerPeer: float64(after.goroutines-before.goroutines) / float64(n),
	}, nil
}

// parallel runs f(0..n-1) on at most width goroutines and returns the first
// error.
func parallel(ctx context.Context, n, width int, f func(i int) error) error {
	var next atomic.Int64
	var wg sync.WaitGroup
	var mu sync.Mutex
	var first error
	for range min(width, n) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1) - 1)
				if i >= n || ctx.Err() != nil {
					return
				}
				if err := f(i); err != nil {
					mu.Lock()
					if first == nil {
						first = err
					}
					mu.Unlock()
					next.Store(int64(n))
					return
				}
			}
		}()
	}
	wg.Wait()
	if first == nil && ctx.Err() != nil {
		return ctx.Err()
	}
	return first
}

// Requests measures the agent RPC pattern: each request opens a new
// stream, writes 1 KiB to the echo service and reads the 1 KiB answer.
// peers == 0 runs one sequence on the rig's own connection; peers > 0 runs
// that many peers (each its own connection, prepared untimed) at once, each
// sequential. It runs n requests in all or for at most maxDur; the result
// has the request rate, the process CPU per request and the p99 latency.
func Requests(ctx context.Context, r *Rig, peers, n int, maxDur time.Duration) (rate Rate, p99 time.Duration, err error) {
	dials := []func(context.Context) (net.Conn, error){r.Env.Dial}
	if peers > 0 {
		dials = dials[:0]
		for range peers {
			p, err := r.Env.NewPeer(ctx)
			if err != nil {
				return Rate{}, 0, err
			}
			defer p.Close()
			c, err := p.Dial(ctx) // connect untimed
			if err != nil {
				return Rate{}, 0, err
			}
			if err := requestOnce(c, make([]byte, 1+messageSize), make([]byte, messageSize)); err != nil {
				return Rate{}, 0, err
			}
			dials = append(dials, p.Dial)
		}
	}
	var mu sync.Mutex
	var lats []time.Duration
	var done atomic.Int64
	m := startMeter()
	err = parallel(ctx, len(dials), len(dials), func(i int) error {
		req := make([]byte, 1+messageSize)
		req[0] = opEcho
		resp := make([]byte, messageSize)
		var mine []time.Duration
		defer func() {
			mu.Lock()
			lats = append(lats, mine...)
			mu.Unlock()
		}()
		for int(done.Load()) < n && (len(mine) == 0 || time.Since(m.start) < maxDur) {
			start := time.Now()
			c, err := dials[i](ctx)
			if err != nil {
				return err
			}
			if err := requestOnce(c, req, resp); err != nil {
				return err
			}
			mine = append(mine, time.Since(start))
			done.Add(1)
		}
		return nil
	})
	wall, cpu := m.stop()
	if err != nil {
		return Rate{}, 0, err
	}
	slices.Sort(lats)
	return Rate{N: len(lats), Wall: wall, CPU: cpu}, lats[len(lats)*99/100], nil
}

// RequestDatagrams runs n sequential requests (1 KiB each way, a new
// stream each, after one untimed request) and returns the UDP datagrams
// both ends sent per request, counted by the run's wrapped sockets (see
// packetConn); it waits 100 ms after the last one for delayed ACKs. Other
// traffic of the run's sockets in that time (keepalives to the rendezvous)
// counts too.
func RequestDatagrams(ctx context.Context, r *Rig, n int) (float64, error) {
	req, resp := make([]byte, 1+messageSize), make([]byte, messageSize)
	var before int64
	for i := range n + 1 {
		c, err := r.Env.Dial(ctx)
		if err != nil {
			return 0, err
		}
		if err := requestOnce(c, req, resp); err != nil {
			return 0, err
		}
		if i == 0 { // the untimed one
			time.Sleep(100 * time.Millisecond)
			before = datagramsSent.Load()
		}
	}
	time.Sleep(100 * time.Millisecond)
	return float64(datagramsSent.Load()-before) / float64(n), nil
}

// requestOnce writes req on c, reads len(resp) bytes back and closes c.
func requestOnce(c net.Conn, req, resp []byte) error {
	req[0] = opEcho
	defer c.Close()
	if _, err := c.Write(req); err != nil {
		return err
	}
	_, err := io.ReadFull(c, resp)
	return err
}
