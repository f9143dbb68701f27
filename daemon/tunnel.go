package daemon

import (
	"context"
	"errors"
	"net"
	"net/http"
	"strconv"
	"syscall"
	"time"

	"github.com/agentnet/agentnet/addressing"
	"github.com/agentnet/agentnet/ctl"
)

// handleExpose serves a local TCP service on a virtual port while the
// request lasts: each stream from a trusted peer is bridged to a new TCP
// connection to req.To.
func (d *Daemon) handleExpose(w http.ResponseWriter, r *http.Request) error {
	var req ctl.ExposeRequest
	if err := decode(w, r, maxSmallBody, &req); err != nil {
		return err
	}
	port, err := checkPort("port", req.Port)
	if err != nil {
		return err
	}
	host, tport, err := net.SplitHostPort(req.To)
	if err != nil || host == "" {
		return ctl.Errorf(ctl.CodeInvalidArgument, "give the local service as host:port, e.g. 127.0.0.1:8080", "to %q: want host:port", req.To)
	}
	if p, err := strconv.Atoi(tport); err != nil || p < 1 || p > 65535 {
		return invalid("to %q: port out of range", req.To)
	}
	l, err := d.node.Listen(port)
	if err != nil {
		return err
	}
	ctx := r.Context()
	stop := context.AfterFunc(ctx, func() { l.Close() })
	defer stop()
	defer l.Close()
	// The connections of this tunnel end with it.
	var conns tracker
	defer conns.shutdown()
	sw := &streamWriter{w: w}
	if !sw.line(ctl.Exposed{Addr: l.Addr().String(), Port: int(port), To: req.To}) {
		return nil
	}
	d.log.Info("exposing", "port", port, "addr", req.To)
	for {
		c, err := l.Accept()
		if err != nil {
			return nil
		}
		if !d.work.goFunc(func() {
			var dl net.Dialer
			dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			tc, err := dl.DialContext(dctx, "tcp", req.To)
			cancel()
			if err != nil {
				d.log.Info("expose: local service refused", "addr", req.To, "remote", c.RemoteAddr(), "err", err)
				c.Close()
				return
			}
			d.bridge(c, tc, &conns)
		}) {
			c.Close()
			return nil
		}
	}
}

// handleForward listens on a local TCP address while the request lasts and
// bridges each connection to a stream to the peer's virtual port.
func (d *Daemon) handleForward(w http.ResponseWriter, r *http.Request) error {
	var req ctl.ForwardRequest
	if err := decode(w, r, maxSmallBody, &req); err != nil {
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
	listen := req.Listen
	if p, err := strconv.Atoi(listen); err == nil {
		if p < 0 || p > 65535 {
			return invalid("listen port %d out of range: want 0-65535", p)
		}
		listen = net.JoinHostPort("127.0.0.1", listen)
	}
	if _, lp, err := net.SplitHostPort(listen); err != nil {
		return ctl.Errorf(ctl.CodeInvalidArgument, "give a local port (8080) or address (127.0.0.1:8080)", "listen %q: %v", req.Listen, err)
	} else if p, err := strconv.Atoi(lp); err != nil || p < 0 || p > 65535 {
		return invalid("listen %q: port out of range", req.Listen)
	}
	if err := d.requireTrusted(t); err != nil {
		return err
	}
	// Name the peer before listening: a hostname no record knows must
	// resolve now (a forward to a name that leads nowhere fails at once).
	addr := d.peerAddrString(t)
	if addr == "" {
		ctx, cancel := context.WithTimeout(r.Context(), trustTimeout)
		k, err := d.node.Resolve(ctx, t)
		cancel()
		if err != nil {
			return err
		}
		addr = addressing.AddrFrom(0, k.NodeID()).String()
	}
	var lc net.ListenConfig
	l, err := lc.Listen(r.Context(), "tcp", listen)
	if err != nil {
		if errors.Is(err, syscall.EADDRINUSE) {
			return ctl.Errorf(ctl.CodePortInUse, "choose another local port", "listen %s: %v", listen, err)
		}
		return ctl.Errorf(ctl.CodeInvalidArgument, "", "listen %s: %v", listen, err)
	}
	ctx := r.Context()
	stop := context.AfterFunc(ctx, func() { l.Close() })
	defer stop()
	defer l.Close()
	var conns tracker
	defer conns.shutdown()
	sw := &streamWriter{w: w}
	if !sw.line(ctl.Forwarded{Listen: l.Addr().String(), Peer: req.Peer, Addr: addr, Port: int(port)}) {
		return nil
	}
	d.log.Info("forwarding", "addr", l.Addr(), "peer", req.Peer, "port", port)
	for {
		tc, err := l.Accept()
		if err != nil {
			return nil
		}
		if !d.work.goFunc(func() {
			dctx, cancel := context.WithTimeout(ctx, dialTimeout)
			c, err := d.dial(dctx, t, port)
			cancel()
			if err != nil {
				d.log.Info("forward: dial failed", "peer", req.Peer, "port", port, "err", err)
				tc.Close()
				return
			}
			d.bridge(tc, c, &conns)
		}) {
			tc.Close()
			return nil
		}
	}
}
