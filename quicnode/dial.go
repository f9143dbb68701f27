package quicnode

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync/atomic"
	"time"

	"github.com/agentnet/agentnet/addressing"
	"github.com/agentnet/agentnet/internal/vport"
	"github.com/agentnet/agentnet/quicnode/internal/paths"
	"github.com/agentnet/agentnet/rendezvous"
)

// Dial opens a stream to port on target, an address ("0:3f2a.91c0.0b17") or
// a hostname; "N:xxxx.xxxx.xxxx" with N != 0 names a fellow member of
// network N. It fails with ErrNotTrusted, before any packet is sent, when
// the target is neither trusted nor a fellow network member, and with
// ErrNotTrusted when the target's gate refuses us. The returned net.Conn is
// a QUIC stream on the connection shared with every other stream and
// datagram to that peer.
//
// A closed port is ErrPortClosed. A dial on a link heard from in the last
// pipelineFresh (20–50 ms), as a connection the dial has just made always
// is, pipelines: it returns without a round trip, the port header travels
// with the first Write, and a closed port is ErrPortClosed on the stream's
// first Read or Write (from a Write only if the refusal has arrived by
// then, so a caller that only writes learns of it from a Read, e.g. of the
// answer or of EOF after CloseWrite). A peer whose gate refuses us after
// our side of the handshake finished is likewise ErrNotTrusted there. Once
// a port has refused, dials to it wait one round trip for the acceptor's
// answer, so a port still closed is an error of Dial, until it answers
// again; so does a dial on a link quiet for longer (the answer also finds
// a dead link out, and the dial moves on to a fresh one). DialStrict
// always waits, as TCP's connect does. If the peer restarted within
// pipelineFresh, a pipelined stream fails with the connection's error
// rather than being moved to a fresh connection.
func (n *Node) Dial(ctx context.Context, target string, port uint16) (net.Conn, error) {
	t, err := addressing.ParseTarget(target)
	if err != nil {
		return nil, fmt.Errorf("quicnode: dial %q: %w", target, err)
	}
	return n.DialTarget(ctx, t, port)
}

// maxStaleLinks bounds how many links that died under a Dial it forgets
// before it gives up (each further attempt takes the next link or dials).
const maxStaleLinks = 3

// DialTarget is Dial with a parsed target.
func (n *Node) DialTarget(ctx context.Context, t addressing.Target, port uint16) (net.Conn, error) {
	return n.dialTarget(ctx, t, port, false)
}

// DialStrict is DialTarget except that it always waits one round trip for
// the acceptor's answer: a closed port (or a busy listener) is an error of
// DialStrict itself, like TCP's connect, never of the first Read.
func (n *Node) DialStrict(ctx context.Context, t addressing.Target, port uint16) (net.Conn, error) {
	return n.dialTarget(ctx, t, port, true)
}

func (n *Node) dialTarget(ctx context.Context, t addressing.Target, port uint16, strict bool) (net.Conn, error) {
	key, err := n.resolveFresh(ctx, t)
	if err != nil {
		return nil, fmt.Errorf("quicnode: dial %s: %w", t, err)
	}
	for attempt := 0; ; attempt++ {
		l, err := n.getLinkRetry(ctx, key)
		if err != nil {
			return nil, fmt.Errorf("quicnode: dial %s: %w", t, err)
		}
		c, err := n.openStream(ctx, l, port, strict)
		if err != nil && attempt < maxStaleLinks && !l.Alive() && ctx.Err() == nil && !errors.Is(err, ErrNotTrusted) {
			// The connection died under us (a dead path, a restarted
			// peer): forget it and take the next, or dial afresh. A
			// peer may have had several links go deaf at once (its NAT
			// rebound), so this may happen more than once.
			n.paths.Forget(l)
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("quicnode: dial %s port %d: %w", t, port, err)
		}
		return c, nil
	}
}

// Resolve returns the key of the trusted peer or fellow network member t
// names, as Dial would find it (a hostname no record knows is asked of the
// rendezvous), without connecting. Anything else fails with ErrNotTrusted.
func (n *Node) Resolve(ctx context.Context, t addressing.Target) (addressing.PublicKey, error) {
	k, err := n.resolve(ctx, t)
	if err != nil {
		return k, fmt.Errorf("quicnode: resolve %s: %w", t, err)
	}
	return k, nil
}

// pipelineFresh is how recently a link must have carried data from the
// peer for a dial on it to pipeline: three smoothed round trips, at least
// 20 ms and at most 50 ms (a round-trip estimate inflated by a loaded
// machine must not stretch it past a quick restart of the peer). A link heard from that recently is alive beyond reasonable doubt;
// on one that has been quiet longer (the peer may have restarted, its NAT
// rebound) the dial waits for the port's answer, which also finds a dead
// link out and dials afresh, as a first dial does.
func pipelineFresh(l *paths.Link) time.Duration {
	return max(time.Duration(pipelineFreshMin.Load()), min(3*l.Conn.ConnectionStats().SmoothedRTT, pipelineFreshMax))
}

// pipelineFreshMax caps pipelineFresh's round-trip part.
const pipelineFreshMax = 50 * time.Millisecond

// pipelineFlush is how long a pipelined stream's header waits for the
// caller's first Write (to travel with it) before it is sent alone.
const pipelineFlush = time.Millisecond

// pipelineFreshMin is pipelineFresh's floor (tests that need every dial
// to an answered port to pipeline raise it).
var pipelineFreshMin atomic.Int64

func init() { pipelineFreshMin.Store(int64(20 * time.Millisecond)) }

// openStream opens a stream to port on l. Unless strict, or the port
// refused since it last answered, a stream on a link heard from a moment
// ago is pipelined: the header waits for the first Write and no answer is
// awaited.
func (n *Node) openStream(ctx context.Context, l *paths.Link, port uint16, strict bool) (*streamConn, error) {
	pipelined := !strict && !n.ports.has(l.Key, port) && l.Alive() && l.HeardWithin(time.Now(), pipelineFresh(l))
	s, err := l.Conn.OpenStreamSync(ctx)
	if err != nil {
		return nil, classify(err)
	}
	src := n.ephemeralStreamPort()
	c := &streamConn{
		s:      s,
		local:  addressing.SockAddrFrom(n.addr, src),
		remote: addressing.SockAddrFrom(l.Addr, port),
		link:   l,
	}
	if pipelined {
		vport.AppendStreamHeader(c.hdr[:0], vport.StreamHeader{Dst: port, Src: src, Pipelined: true})
		c.ports, c.key = &n.ports, l.Key
		c.pending.Store(true)
		// A caller that neither writes nor reads at once still reaches
		// the acceptor (its Accept returns) within pipelineFlush.
		c.hmu.Lock()
		c.flushT = time.AfterFunc(pipelineFlush, func() { c.sendHeader() })
		c.hmu.Unlock()
		return c, nil
	}
	var hdr [vport.StreamHeaderLen]byte
	if _, err := s.Write(vport.AppendStreamHeader(hdr[:0], vport.StreamHeader{Dst: port, Src: src})); err != nil {
		s.CancelRead(StreamClosed)
		return nil, classify(err)
	}
	if dl, ok := ctx.Deadline(); ok {
		s.SetReadDeadline(dl)
	}
	stop := context.AfterFunc(ctx, func() { s.SetReadDeadline(time.Now()) })
	var status [1]byte
	_, err = io.ReadFull(s, status[:])
	stop()
	s.SetReadDeadline(time.Time{})
	if err != nil {
		s.CancelRead(StreamClosed)
		s.CancelWrite(StreamClosed)
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		err = classify(err)
		if errors.Is(err, ErrPortClosed) {
			n.ports.add(l.Key, port)
		}
		return nil, err
	}
	if status[0] != vport.StatusOK {
		s.CancelRead(StreamClosed)
		s.CancelWrite(StreamClosed)
		return nil, fmt.Errorf("quicnode: unknown stream status %d", status[0])
	}
	l.MarkHeard(time.Now())
	n.ports.remove(l.Key, port)
	return c, nil
}

func (n *Node) ephemeralStreamPort() uint16 {
	n.mu.Lock()
	defer n.mu.Unlock()
	p := n.nextPort
	n.nextPort++
	if n.nextPort < firstEphemeral {
		n.nextPort = firstEphemeral
	}
	return p
}

// resolve maps a target to the key of a trusted peer or fellow network
// member (admissible). Everything else is ErrNotTrusted, decided locally.
func (n *Node) resolve(ctx context.Context, t addressing.Target) (addressing.PublicKey, error) {
	if a, ok := t.Addr(); ok {
		return n.resolveAddr(a)
	}
	h, _ := t.Hostname()
	if k, ok := n.lookupIndex(func() (addressing.PublicKey, bool) {
		k, ok := n.byHostname[h]
		return k, ok
	}); ok {
		return k, nil
	}
	if n.rdv == nil {
		return addressing.PublicKey{}, ErrNotTrusted
	}
	info, err := n.rdv.Lookup(ctx, t)
	if err != nil {
		if errors.Is(err, rendezvous.ErrNotFound) {
			return addressing.PublicKey{}, ErrNotTrusted
		}
		return addressing.PublicKey{}, err
	}
	if !n.admissible(info.Key) {
		return addressing.PublicKey{}, ErrNotTrusted
	}
	return info.Key, nil
}

// lookupIndex runs find on the trusted-peer indexes. Trust-store
// subscribers run asynchronously, so on a miss the indexes are rebuilt from
// the store once before giving up: a peer trusted a moment ago resolves.
func (n *Node) lookupIndex(find func() (addressing.PublicKey, bool)) (addressing.PublicKey, bool) {
	n.mu.Lock()
	k, ok := find()
	n.mu.Unlock()
	if ok {
		return k, true
	}
	n.rebuildIndex()
	n.mu.Lock()
	defer n.mu.Unlock()
	return find()
}

// resolveAddr maps an address to the key of a trusted peer or, for N:x, of
// a fellow member of network N; 0:x may also name a fellow member of any
// network. Locally.
func (n *Node) resolveAddr(a addressing.Addr) (addressing.PublicKey, error) {
	if a.Node() == n.addr.Node() {
		return addressing.PublicKey{}, errors.New("quicnode: cannot dial ourselves")
	}
	if a.Network() != 0 {
		return n.resolveMember(a) // N:x names a fellow member of N, nothing else
	}
	k, ok := n.lookupIndex(func() (addressing.PublicKey, bool) {
		k, ok := n.byNode[a.Node()]
		return k, ok
	})
	if !ok {
		return n.resolveMember(a)
	}
	return k, nil
}

// liveLink returns the link new traffic to key should use, or nil.
func (n *Node) liveLink(key addressing.PublicKey) *paths.Link { return n.paths.Best(key) }

// getLink returns the link to use for key, dialling the peer if needed
// (paths.Manager.Link: last address, lookup, direct, punch, relay).
// Concurrent callers share one dial.
func (n *Node) getLink(ctx context.Context, key addressing.PublicKey) (*paths.Link, error) {
	n.mu.Lock()
	closed := n.closed
	n.mu.Unlock()
	if closed || n.paths == nil {
		return nil, net.ErrClosed
	}
	if !n.admissible(key) {
		return nil, ErrNotTrusted
	}
	return n.paths.Link(ctx, key)
}
