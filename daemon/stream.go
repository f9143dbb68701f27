package daemon

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/agentnet/agentnet/addressing"
	"github.com/agentnet/agentnet/ctl"
	"github.com/agentnet/agentnet/quicnode"
	"github.com/agentnet/agentnet/service"
	"github.com/agentnet/agentnet/service/message"
)

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// maxJSONBody bounds a request that carries a message inline (base64 makes
// it 4/3 larger).
func (d *Daemon) maxJSONBody() int64 {
	return d.limits.For(message.KindText)*4/3 + maxSmallBody
}

func (d *Daemon) handlePing(w http.ResponseWriter, r *http.Request) error {
	var req ctl.PingRequest
	if err := decode(w, r, maxSmallBody, &req); err != nil {
		return err
	}
	t, err := d.checkPeer(req.Peer)
	if err != nil {
		return err
	}
	count := req.Count
	switch {
	case count == 0:
		count = 4
	case count < 0 || count > 1000:
		return invalid("count %d out of range: want 1-1000", count)
	}
	if req.IntervalMS < 0 || req.IntervalMS > 60000 {
		return invalid("interval_ms %d out of range: want 0-60000", req.IntervalMS)
	}
	interval := time.Duration(req.IntervalMS) * time.Millisecond
	if req.IntervalMS == 0 {
		interval = 200 * time.Millisecond
	}
	to, err := timeout(req.TimeoutMS, 10*time.Second)
	if err != nil {
		return err
	}
	ctx := r.Context()
	dctx, cancel := context.WithTimeout(ctx, to)
	t0 := time.Now()
	c, err := d.dial(dctx, t, service.PortEcho)
	cancel()
	if err != nil {
		return err
	}
	defer c.Close()
	// The request's deadline (Agentnet-Timeout) bounds the whole ping.
	stop := context.AfterFunc(ctx, func() { c.SetDeadline(time.Now()) })
	defer stop()
	res := ctl.PingResult{Peer: req.Peer, Addr: remoteNode(c), ConnectMS: ms(time.Since(t0)), RTTs: []float64{}}
	var out, in [8]byte
	var sum time.Duration
	for i := range count {
		if i > 0 {
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(interval):
			}
		}
		binary.BigEndian.PutUint64(out[:], uint64(i))
		if ctx.Err() == nil {
			c.SetDeadline(time.Now().Add(to))
		}
		start := time.Now()
		if _, err := c.Write(out[:]); err != nil {
			return ctxErr(ctx, err)
		}
		if _, err := io.ReadFull(c, in[:]); err != nil {
			return ctxErr(ctx, err)
		}
		rtt := time.Since(start)
		if in != out {
			return fmt.Errorf("daemon: ping: echo answered %x, want %x", in, out)
		}
		res.RTTs = append(res.RTTs, ms(rtt))
		sum += rtt
		if i == 0 || ms(rtt) < res.MinMS {
			res.MinMS = ms(rtt)
		}
		if ms(rtt) > res.MaxMS {
			res.MaxMS = ms(rtt)
		}
	}
	res.AvgMS = ms(sum / time.Duration(count))
	return writeOK(w, res)
}

// remoteNode returns the address (without port) of a stream's peer.
func remoteNode(c net.Conn) string {
	if sa, ok := c.RemoteAddr().(addressing.SockAddr); ok {
		return sa.Addr().String()
	}
	return ""
}

func (d *Daemon) handleSend(w http.ResponseWriter, r *http.Request) error {
	var req ctl.SendRequest
	if err := decode(w, r, d.maxJSONBody(), &req); err != nil {
		return err
	}
	t, err := d.checkPeer(req.Peer)
	if err != nil {
		return err
	}
	port, err := checkPort("port", req.Port)
	if err != nil {
		return err
	}
	data, err := payload(req.Data, req.DataBase64)
	if err != nil {
		return err
	}
	to, err := timeout(req.TimeoutMS, defaultTimeout)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(r.Context(), to)
	defer cancel()
	c, err := d.dial(ctx, t, port)
	if err != nil {
		return err
	}
	defer c.Close()
	stop := context.AfterFunc(ctx, func() { c.SetDeadline(time.Now()) })
	defer stop()
	if _, err := c.Write(data); err != nil {
		return ctxErr(ctx, err)
	}
	if err := closeWrite(c); err != nil {
		return ctxErr(ctx, err)
	}
	// Collect the answer until the peer closes: that also confirms the peer
	// read everything.
	limit := d.limits.For(message.KindText)
	reply, err := io.ReadAll(io.LimitReader(c, limit))
	if err != nil {
		return ctxErr(ctx, err)
	}
	res := ctl.SendResult{Peer: req.Peer, Addr: remoteNode(c), Port: int(port), Bytes: len(data), ReplyBytes: len(reply)}
	res.Reply, res.ReplyBase64 = dataFields(reply)
	return writeOK(w, res)
}

// ctxErr prefers the context's error (a timeout) over the I/O error it caused.
func ctxErr(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return fmt.Errorf("%w (%v)", ctx.Err(), err)
	}
	return err
}

func (d *Daemon) handleRecv(w http.ResponseWriter, r *http.Request) error {
	var req ctl.RecvRequest
	if err := decode(w, r, maxSmallBody, &req); err != nil {
		return err
	}
	port, err := checkPort("port", req.Port)
	if err != nil {
		return err
	}
	if req.Count < 0 {
		return invalid("count %d: want 0 (unlimited) or more", req.Count)
	}
	limit := d.limits.For(message.KindText)
	max := int64(req.MaxBytes)
	switch {
	case max == 0:
		max = limit
	case max < 0 || max > limit:
		return invalid("max_bytes %d out of range: want 1-%d", max, limit)
	}
	to, err := timeout(req.TimeoutMS, defaultTimeout)
	if err != nil {
		return err
	}
	l, err := d.node.Listen(port)
	if err != nil {
		return err
	}
	defer l.Close()
	ctx := r.Context()
	stop := context.AfterFunc(ctx, func() { l.Close() })
	defer stop()
	sw := &streamWriter{w: w}
	sw.start()
	for n := 0; req.Count == 0 || n < req.Count; n++ {
		c, err := l.Accept()
		if err != nil {
			return nil // the client went away, or shutdown
		}
		rec := d.receiveOne(ctx, c, port, max, to)
		if !sw.line(rec) {
			return nil
		}
	}
	return nil
}

// receiveOne reads one stream for /v1/recv.
func (d *Daemon) receiveOne(ctx context.Context, c net.Conn, port uint16, max int64, to time.Duration) ctl.Received {
	defer c.Close()
	stop := context.AfterFunc(ctx, func() { c.SetDeadline(time.Now()) })
	defer stop()
	c.SetReadDeadline(time.Now().Add(to))
	b, err := io.ReadAll(io.LimitReader(c, max+1))
	rec := ctl.Received{From: c.RemoteAddr().String(), Port: int(port), Time: time.Now().UTC()}
	if sa, ok := c.RemoteAddr().(addressing.SockAddr); ok {
		rec.Hostname = d.peerHostname(sa)
	}
	if int64(len(b)) > max {
		b, rec.Truncated = b[:max], true
	}
	if err != nil {
		d.log.Info("recv: stream failed", "port", port, "remote", c.RemoteAddr(), "err", err)
	}
	rec.Bytes = len(b)
	rec.Data, rec.DataBase64 = dataFields(b)
	return rec
}

func (d *Daemon) handleConnect(w http.ResponseWriter, r *http.Request) error {
	var req ctl.ConnectRequest
	if err := decode(w, r, maxSmallBody, &req); err != nil {
		return err
	}
	if !strings.EqualFold(r.Header.Get("Upgrade"), ctl.UpgradeProtocol) {
		return ctl.Errorf(ctl.CodeInvalidArgument, "send Connection: Upgrade and Upgrade: "+ctl.UpgradeProtocol, "connect needs a protocol upgrade")
	}
	t, err := d.checkPeer(req.Peer)
	if err != nil {
		return err
	}
	port, err := checkPort("port", req.Port)
	if err != nil {
		return err
	}
	to, err := timeout(req.TimeoutMS, dialTimeout)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(r.Context(), to)
	c, err := d.dial(ctx, t, port)
	cancel()
	if err != nil {
		return err
	}
	hj, brw, err := http.NewResponseController(w).Hijack()
	if err != nil {
		c.Close()
		return fmt.Errorf("daemon: connect: hijack: %w", err)
	}
	hj.SetDeadline(time.Time{})
	framed := r.Header.Get(ctl.FramingHeader) == ctl.FramingVersion
	answer := "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: " + ctl.UpgradeProtocol + "\r\n"
	if framed {
		answer += ctl.FramingHeader + ": " + ctl.FramingVersion + "\r\n"
	}
	if _, err = io.WriteString(hj, answer+"\r\n"); err != nil {
		hj.Close()
		abortConn(c, errClientAbort)
		return nil
	}
	var client net.Conn = &bufferedConn{Conn: hj, r: brw.Reader}
	if framed {
		client = &framedConn{Conn: hj, r: brw.Reader, d: d, rbuf: make([]byte, ctl.MaxFrameData)}
	}
	if !d.work.goFunc(func() { d.bridge(client, c) }) {
		abortConn(client, errShutdown)
		abortConn(c, errShutdown)
	}
	return nil
}

// bufferedConn reads through the bufio.Reader the HTTP server may have
// filled.
type bufferedConn struct {
	net.Conn
	r *bufio.Reader
}

func (b *bufferedConn) Read(p []byte) (int, error) { return b.r.Read(p) }

func (b *bufferedConn) CloseWrite() error {
	if cw, ok := b.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return b.Conn.Close()
}

func (d *Daemon) handleBench(w http.ResponseWriter, r *http.Request) error {
	var req ctl.BenchRequest
	if err := decode(w, r, maxSmallBody, &req); err != nil {
		return err
	}
	t, err := d.checkPeer(req.Peer)
	if err != nil {
		return err
	}
	size := req.Bytes
	switch {
	case size == 0:
		size = 16 << 20
	case size < 1 || size > 4<<30:
		return invalid("bytes %d out of range: want 1-%d", size, int64(4<<30))
	}
	pings := req.Pings
	switch {
	case pings == 0:
		pings = 20
	case pings < 1 || pings > 1000:
		return invalid("pings %d out of range: want 1-1000", pings)
	}
	to, err := timeout(req.TimeoutMS, 2*time.Minute)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(r.Context(), to)
	defer cancel()
	res := ctl.BenchResult{Peer: req.Peer, Bytes: size}

	// Round trips on the echo service.
	t0 := time.Now()
	ec, err := d.dial(ctx, t, service.PortEcho)
	if err != nil && !errors.Is(err, quicnode.ErrPortClosed) {
		return err
	}
	res.ConnectMS = ms(time.Since(t0))
	if ec != nil {
		stop := context.AfterFunc(ctx, func() { ec.SetDeadline(time.Now()) })
		res.Addr = remoteNode(ec)
		var b [1]byte
		var sum time.Duration
		for i := range pings {
			start := time.Now()
			if _, err := ec.Write(b[:]); err != nil {
				break
			}
			if _, err := io.ReadFull(ec, b[:]); err != nil {
				break
			}
			rtt := time.Since(start)
			sum += rtt
			res.RTTCount++
			if i == 0 || ms(rtt) < res.RTTMinMS {
				res.RTTMinMS = ms(rtt)
			}
			res.RTTMaxMS = max(res.RTTMaxMS, ms(rtt))
		}
		if res.RTTCount > 0 {
			res.RTTAvgMS = ms(sum / time.Duration(res.RTTCount))
		}
		stop()
		ec.Close()
	}

	// Bulk: discard (one way) if the peer runs it, else echo.
	res.Service = "discard"
	c, err := d.dial(ctx, t, service.PortDiscard)
	if errors.Is(err, quicnode.ErrPortClosed) {
		res.Service = "echo"
		c, err = d.dial(ctx, t, service.PortEcho)
	}
	if err != nil {
		return err
	}
	defer c.Close()
	res.Addr = remoteNode(c)
	stop := context.AfterFunc(ctx, func() { c.SetDeadline(time.Now()) })
	defer stop()
	start := time.Now()
	if err := bulk(c, size, res.Service == "echo"); err != nil {
		return ctxErr(ctx, err)
	}
	el := time.Since(start)
	res.Seconds = el.Seconds()
	res.MbitPerS = float64(size) * 8 / el.Seconds() / 1e6
	return writeOK(w, res)
}

// bulk writes size bytes to c and waits until the peer has them all: the
// discard service answers the count it read, the echo service the bytes.
func bulk(c net.Conn, size int64, echo bool) error {
	errc := make(chan error, 1)
	go func() {
		buf := make([]byte, 64<<10)
		left := size
		for left > 0 {
			n := int64(len(buf))
			if left < n {
				n = left
			}
			if _, err := c.Write(buf[:n]); err != nil {
				errc <- err
				return
			}
			left -= n
		}
		errc <- closeWrite(c)
	}()
	var rerr error
	if echo {
		var n int64
		n, rerr = io.Copy(io.Discard, c)
		if rerr == nil && n != size {
			rerr = fmt.Errorf("daemon: bench: echo returned %d of %d bytes", n, size)
		}
	} else {
		var b [8]byte
		if _, rerr = io.ReadFull(c, b[:]); rerr == nil && int64(binary.BigEndian.Uint64(b[:])) != size {
			rerr = fmt.Errorf("daemon: bench: discard counted %d of %d bytes", binary.BigEndian.Uint64(b[:]), size)
		}
	}
	if rerr != nil {
		c.Close()
		<-errc
		return rerr
	}
	return <-errc
}
