package daemon

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"

	"github.com/agentnet/agentnet/ctl"
	"github.com/agentnet/agentnet/quicnode"
	"github.com/quic-go/quic-go"
)

// A bridge joins two byte streams: a virtual-port stream and a TCP
// connection (expose, forward) or the API client's socket (connect). Each
// side's end is carried to the other as what it was: a clean end (EOF) as a
// half-close, a failure (a reset, a dead path, a revocation, the far
// program gone) as a cut the other side cannot take for the end: a TCP
// reset (SetLinger(0), Close), a QUIC stream reset (Abort), a RESET frame
// to a framed API client.

var (
	// errShutdown cuts the bridges still open when the daemon stops.
	errShutdown = errors.New("daemon: the daemon is shutting down")
	// errTunnelEnd cuts the connections of a tunnel whose request ended.
	errTunnelEnd = errors.New("daemon: the tunnel (expose or forward) was stopped")
	// errClientAbort: the API client reset its stream, or went away
	// without ending it.
	errClientAbort = errors.New("daemon: the client aborted the stream")
)

// abortConn cuts c because of cause.
func abortConn(c net.Conn, cause error) {
	switch x := c.(type) {
	case *framedConn:
		x.abort(cause)
	case interface{ Abort() error }:
		x.Abort()
	case *net.TCPConn:
		x.SetLinger(0)
		x.Close()
	default:
		c.Close()
	}
}

// aborter is c for a tracker: closing it cuts c (a tunnel or the daemon
// that ends mid-stream never fakes a clean end).
type aborter struct {
	c     net.Conn
	cause error
}

func (a aborter) Close() error { abortConn(a.c, a.cause); return nil }

// bridge copies between a and b in both directions until both ended. A
// clean end of one side's reads (EOF) half-closes the other's writes; any
// failure cuts both (abortConn). Both are closed when it returns; the
// daemon's shutdown, and each owner's (the tunnel a bridge belongs to),
// cut them early.
func (d *Daemon) bridge(a, b net.Conn, owners ...*tracker) {
	ra := d.work.addCloser(aborter{a, errShutdown})
	rb := d.work.addCloser(aborter{b, errShutdown})
	defer func() { ra(); rb(); a.Close(); b.Close() }()
	for _, o := range owners {
		oa, ob := o.addCloser(aborter{a, errTunnelEnd}), o.addCloser(aborter{b, errTunnelEnd})
		defer func() { oa(); ob() }()
	}
	var once sync.Once
	abort := func(cause error) {
		once.Do(func() {
			d.log.Debug("stream cut", "err", cause)
			abortConn(a, cause)
			abortConn(b, cause)
		})
	}
	var wg sync.WaitGroup
	cp := func(dst, src net.Conn) {
		defer wg.Done()
		buf := make([]byte, 64<<10)
		for {
			n, rerr := src.Read(buf)
			if n > 0 {
				if _, werr := dst.Write(buf[:n]); werr != nil {
					abort(werr)
					return
				}
			}
			if rerr == io.EOF {
				if err := closeWrite(dst); err != nil {
					abort(err)
				}
				return
			}
			if rerr != nil {
				abort(rerr)
				return
			}
		}
	}
	wg.Add(2)
	go cp(a, b)
	go cp(b, a)
	wg.Wait()
}

// streamError describes why a stream was cut, for the API client.
func (d *Daemon) streamError(err error) *ctl.Error {
	var (
		se *quic.StreamError
		ae *quic.ApplicationError
		it *quic.IdleTimeoutError
		sr *quic.StatelessResetError
	)
	hint := ctl.StreamResetHint
	msg := "the stream was cut"
	switch {
	case errors.Is(err, errShutdown) || d.ctx.Err() != nil:
		return &ctl.Error{Code: ctl.CodeUnavailable, Message: "the stream was cut: the daemon is shutting down", Hint: "what arrived may be incomplete; retry once the daemon runs again"}
	case errors.Is(err, quicnode.ErrNotTrusted):
		return &ctl.Error{Code: ctl.CodeNotTrusted, Message: "the stream was cut: the peer is no longer trusted (revoked)", Hint: "what arrived is incomplete; \"agentnet trust list\" shows the state"}
	case errors.As(err, &se) && se.Remote:
		msg = fmt.Sprintf("the peer reset the stream (code %d)", se.ErrorCode)
	case errors.As(err, &se):
		msg = "the stream was reset"
	case errors.As(err, &ae) && ae.ErrorCode == quicnode.CodePathDead:
		msg = "the path to the peer died: nothing came back while we sent"
	case errors.As(err, &ae) && ae.ErrorCode == quicnode.CodeClosing && ae.Remote:
		msg = "the peer's node shut down"
	case errors.As(err, &ae) && ae.Remote:
		// The reason is the peer's text: peer_text (splitPeerText).
		msg = fmt.Sprintf("the peer closed the connection (code %d)", ae.ErrorCode)
	case errors.As(err, &ae):
		msg = fmt.Sprintf("the connection to the peer closed (%s)", ae.ErrorMessage)
		if ae.ErrorMessage == "" {
			msg = fmt.Sprintf("the connection to the peer closed (code %d)", ae.ErrorCode)
		}
	case errors.As(err, &it):
		msg = "the peer stopped answering (idle timeout)"
	case errors.As(err, &sr):
		msg = "the peer's node restarted (stateless reset)"
	case errors.Is(err, errTunnelEnd):
		msg = "the tunnel was stopped"
	default:
		msg = "the stream was cut: " + err.Error()
	}
	e := &ctl.Error{Code: ctl.CodeStreamReset, Message: msg, Hint: hint}
	e.Message, e.PeerText = splitPeerText(err, e.Message)
	return e
}

// framedConn is the API client's socket of a framed /v1/connect (see
// ctl.FramingHeader) as a net.Conn for bridge: Read yields the client's
// DATA and io.EOF for its EOF frame (a RESET, a malformed frame or the
// socket ending first is an error); Write sends DATA; CloseWrite sends EOF;
// abort sends RESET with the cause; Close after a clean end both ways sends
// DONE.
type framedConn struct {
	net.Conn // the hijacked socket; reads go through r
	r        *bufio.Reader
	d        *Daemon

	rbuf    []byte
	pending []byte
	gotEOF  bool

	mu      sync.Mutex
	sentEOF bool
	ended   bool // RESET or DONE sent, or the socket failed
	wbuf    []byte
}

func (f *framedConn) Read(p []byte) (int, error) {
	for len(f.pending) == 0 {
		if f.gotEOF {
			return 0, io.EOF
		}
		t, b, err := ctl.ReadFrame(f.r, f.rbuf)
		switch {
		case err != nil && (errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF)):
			return 0, fmt.Errorf("%w: the socket closed without an EOF frame", errClientAbort)
		case err != nil:
			return 0, fmt.Errorf("%w: %w", errClientAbort, err)
		case t == ctl.FrameData:
			f.pending = b
		case t == ctl.FrameEOF:
			f.gotEOF = true
		case t == ctl.FrameReset:
			return 0, errClientAbort
		default:
			return 0, fmt.Errorf("%w: a %s frame from the client", errClientAbort, t)
		}
	}
	n := copy(p, f.pending)
	f.pending = f.pending[n:]
	return n, nil
}

func (f *framedConn) Write(p []byte) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.ended || f.sentEOF {
		return 0, net.ErrClosed
	}
	n := 0
	for len(p) > 0 {
		k := min(len(p), ctl.MaxFrameData)
		f.wbuf, _ = ctl.AppendFrame(f.wbuf[:0], ctl.FrameData, p[:k])
		if _, err := f.Conn.Write(f.wbuf); err != nil {
			f.ended = true
			return n, err
		}
		n += k
		p = p[k:]
	}
	return n, nil
}

func (f *framedConn) CloseWrite() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.ended || f.sentEOF {
		return net.ErrClosed
	}
	f.sentEOF = true
	b, _ := ctl.AppendFrame(nil, ctl.FrameEOF, nil)
	_, err := f.Conn.Write(b)
	return err
}

// abort sends RESET with the cause and closes the socket.
func (f *framedConn) abort(cause error) {
	f.mu.Lock()
	if !f.ended {
		f.ended = true
		if !errors.Is(cause, errClientAbort) {
			f.Conn.Write(ctl.AppendReset(nil, f.d.streamError(cause)))
		}
	}
	f.mu.Unlock()
	f.Conn.Close()
}

// Close sends DONE if both directions ended cleanly, then closes.
func (f *framedConn) Close() error {
	f.mu.Lock()
	if !f.ended && f.sentEOF && f.gotEOF {
		f.ended = true
		b, _ := ctl.AppendFrame(nil, ctl.FrameDone, nil)
		f.Conn.Write(b)
	}
	f.mu.Unlock()
	return f.Conn.Close()
}
