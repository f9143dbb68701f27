package quicnode

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"time"

	"github.com/agentnet/agentnet/addressing"
	"github.com/agentnet/agentnet/internal/vport"
	"github.com/agentnet/agentnet/rendezvous"
	"github.com/quic-go/quic-go"
)

// Dial opens a stream to port on target, an address ("0:3f2a.91c0.0b17") or
// a hostname; "N:xxxx.xxxx.xxxx" with N != 0 names a fellow member of
// network N. It fails with ErrNotTrusted, before any packet is sent, when
// the target is neither trusted nor a fellow network member, and with
// ErrNotTrusted when the target's gate refuses us; with ErrPortClosed when
// nothing listens on port. The returned net.Conn is a QUIC stream on the
// connection shared with every other stream and datagram to that peer.
func (n *Node) Dial(ctx context.Context, target string, port uint16) (net.Conn, error) {
	t, err := addressing.ParseTarget(target)
	if err != nil {
		return nil, fmt.Errorf("quicnode: dial %q: %w", target, err)
	}
	return n.DialTarget(ctx, t, port)
}

// DialTarget is Dial with a parsed target.
func (n *Node) DialTarget(ctx context.Context, t addressing.Target, port uint16) (net.Conn, error) {
	key, err := n.resolve(ctx, t)
	if err != nil {
		return nil, fmt.Errorf("quicnode: dial %s: %w", t, err)
	}
	for attempt := 0; ; attempt++ {
		l, err := n.getLinkRetry(ctx, key)
		if err != nil {
			return nil, fmt.Errorf("quicnode: dial %s: %w", t, err)
		}
		c, err := n.openStream(ctx, l, port)
		if err != nil && attempt == 0 && !l.alive() && ctx.Err() == nil {
			// The cached connection died under us; dial afresh once.
			n.removeLink(l)
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("quicnode: dial %s port %d: %w", t, port, err)
		}
		return c, nil
	}
}

func (n *Node) openStream(ctx context.Context, l *link, port uint16) (*streamConn, error) {
	s, err := l.conn.OpenStreamSync(ctx)
	if err != nil {
		return nil, classify(err)
	}
	src := n.ephemeralStreamPort()
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
		return nil, classify(err)
	}
	if status[0] != vport.StatusOK {
		s.CancelRead(StreamClosed)
		s.CancelWrite(StreamClosed)
		return nil, fmt.Errorf("quicnode: unknown stream status %d", status[0])
	}
	return &streamConn{
		s:      s,
		local:  addressing.SockAddrFrom(n.addr, src),
		remote: addressing.SockAddrFrom(l.addr, port),
	}, nil
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
func (n *Node) liveLink(key addressing.PublicKey) *link {
	n.mu.Lock()
	defer n.mu.Unlock()
	if p := n.peers[key]; p != nil {
		return p.best()
	}
	return nil
}

// getLink returns the link to use for key, dialling the peer if needed.
// Concurrent callers share one dial.
func (n *Node) getLink(ctx context.Context, key addressing.PublicKey) (*link, error) {
	for {
		n.mu.Lock()
		if n.closed {
			n.mu.Unlock()
			return nil, net.ErrClosed
		}
		if p := n.peers[key]; p != nil {
			if l := p.best(); l != nil {
				n.mu.Unlock()
				return l, nil
			}
		}
		if !n.admissible(key) {
			n.mu.Unlock()
			return nil, ErrNotTrusted
		}
		changed := n.peersChanged
		if d := n.dialing[key]; d != nil {
			n.mu.Unlock()
			select {
			case <-d.done:
			case <-ctx.Done():
				return nil, ctx.Err()
			}
			if d.err == nil {
				return d.l, nil
			}
			if !errors.Is(d.err, errDuplicate) {
				return nil, d.err
			}
			continue
		}
		d := &dialCall{done: make(chan struct{})}
		n.dialing[key] = d
		n.mu.Unlock()

		d.l, d.err = n.dialPeer(ctx, key)
		n.mu.Lock()
		delete(n.dialing, key)
		n.mu.Unlock()
		close(d.done)
		if d.err == nil {
			return d.l, nil
		}
		if !errors.Is(d.err, errDuplicate) {
			return nil, d.err
		}
		// The peer's simultaneous dial won the tie-break: its connection
		// is (about to be) registered; wait for it.
		select {
		case <-changed:
		case <-time.After(time.Second):
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

// traverseDelay is how long a first contact tries the peer's locators
// plainly before it also asks the rendezvous for an introduction (hole
// punching, relay). On a LAN or towards an open peer the plain dial wins
// well within it, and the rendezvous is spared the work.
const traverseDelay = 150 * time.Millisecond

// dialPeer connects to key. It first dials the address the peer last
// reached us from (if any) and asks the rendezvous only if that has not
// answered within traverseDelay; then it dials the locators the lookup
// reports and, if none of those answers within traverseDelay, asks for an
// introduction: hole punching, then the relay. The first link up wins; a
// later one is settled by the tie-break.
func (n *Node) dialPeer(ctx context.Context, key addressing.PublicKey) (*link, error) {
	ctx, cancel := context.WithTimeout(ctx, n.cfg.handshakeTimeout())
	defer cancel()
	type result struct {
		dialResult
		direct bool
	}
	results := make(chan result, 4)
	running, pendingDirect := 0, 0
	tried := map[netip.AddrPort]bool{}
	dialDirect := func(cands []netip.AddrPort) {
		var fresh []netip.AddrPort
		for _, c := range cands {
			if !tried[c] {
				tried[c] = true
				fresh = append(fresh, c)
			}
		}
		if len(fresh) == 0 {
			return
		}
		running++
		pendingDirect++
		go func() {
			conn, err := n.dialCandidates(ctx, key, fresh)
			if err != nil {
				results <- result{dialResult{nil, err}, true}
				return
			}
			l, err := n.addLink(conn, key, pathDirect, true)
			results <- result{dialResult{l, err}, true}
		}()
	}
	n.mu.Lock()
	hint, hasHint := n.hints[key]
	n.mu.Unlock()
	var errs []error
	if hasHint {
		// A repeat contact: the address the peer last came from usually
		// still works, and then the rendezvous need not be asked at all.
		dialDirect([]netip.AddrPort{hint})
		t := time.NewTimer(traverseDelay)
		select {
		case r := <-results:
			running--
			pendingDirect--
			if r.err == nil {
				t.Stop()
				return r.l, nil
			}
			errs = append(errs, r.err)
		case <-t.C:
		case <-ctx.Done():
		}
		t.Stop()
	}
	info, lookupErr := n.lookupPeer(ctx, key)
	if lookupErr == nil {
		dialDirect(info.Locators)
	}
	canTraverse := n.rdv != nil && lookupErr == nil && info.Online
	traversing := false
	startTraverse := func() {
		traversing = true
		running++
		go func() {
			l, err := n.traverse(ctx, key)
			results <- result{dialResult{l, err}, false}
		}()
	}
	var timer <-chan time.Time
	if canTraverse {
		if pendingDirect == 0 {
			startTraverse()
		} else {
			t := time.NewTimer(traverseDelay)
			defer t.Stop()
			timer = t.C
		}
	}
	if running == 0 {
		if lookupErr == nil {
			lookupErr = fmt.Errorf("%w: peer is offline", ErrUnreachable)
		}
		return nil, lookupErr
	}
	for running > 0 {
		select {
		case r := <-results:
			running--
			if r.err == nil {
				return r.l, nil
			}
			errs = append(errs, r.err)
			if r.direct {
				pendingDirect--
				if pendingDirect == 0 && canTraverse && !traversing {
					startTraverse()
				}
			}
		case <-timer:
			timer = nil
			if !traversing {
				startTraverse()
			}
		}
	}
	if lookupErr != nil {
		errs = append([]error{lookupErr}, errs...)
	}
	// Prefer the most telling error: a trust refusal beats unreachability.
	for _, e := range errs {
		if errors.Is(e, ErrNotTrusted) || errors.Is(e, errDuplicate) {
			return nil, e
		}
	}
	return nil, errs[0]
}

// lookupPeer asks the rendezvous where key is. Not found means the
// rendezvous does not see us as a trusted pair: the peer has not approved
// us, or revoked us.
func (n *Node) lookupPeer(ctx context.Context, key addressing.PublicKey) (rendezvous.PeerInfo, error) {
	if n.rdv == nil {
		return rendezvous.PeerInfo{}, fmt.Errorf("%w: no rendezvous configured and no known locator", ErrUnreachable)
	}
	info, err := n.rdv.Lookup(ctx, addressing.TargetAddr(addressing.AddrFrom(0, key.NodeID())))
	switch {
	case err == nil && info.Key != key:
		return info, fmt.Errorf("%w: rendezvous returned another key for %s", ErrUnreachable, key.NodeID())
	case err == nil:
		return info, nil
	case errors.Is(err, rendezvous.ErrNotFound):
		return info, fmt.Errorf("%w: the rendezvous reports no trust from the peer", ErrNotTrusted)
	default:
		return info, fmt.Errorf("%w: rendezvous lookup: %w", ErrUnreachable, err)
	}
}

func containsAddrPort(s []netip.AddrPort, a netip.AddrPort) bool {
	for _, x := range s {
		if x == a {
			return true
		}
	}
	return false
}

// dialCandidates races handshakes to every candidate and returns the first
// connection whose welcome arrives; the others are closed.
func (n *Node) dialCandidates(ctx context.Context, key addressing.PublicKey, cands []netip.AddrPort) (*quic.Conn, error) {
	ctx, cancel := context.WithTimeout(ctx, n.cfg.handshakeTimeout())
	defer cancel()
	type result struct {
		conn *quic.Conn
		err  error
	}
	results := make(chan result, len(cands))
	for _, c := range cands {
		go func() {
			conn, err := n.dialOne(ctx, key, c)
			results <- result{conn, err}
		}()
	}
	var winner *quic.Conn
	var errs []error
	for range cands {
		r := <-results
		switch {
		case r.err != nil:
			errs = append(errs, r.err)
		case winner == nil:
			winner = r.conn
			cancel()
		default:
			r.conn.CloseWithError(CodeDuplicate, "duplicate connection")
		}
	}
	if winner != nil {
		return winner, nil
	}
	// Prefer the most telling error: a trust refusal beats a timeout.
	for _, e := range errs {
		if errors.Is(e, ErrNotTrusted) || errors.Is(e, errDuplicate) {
			return nil, e
		}
	}
	return nil, fmt.Errorf("%w: %w", ErrUnreachable, errors.Join(errs...))
}

// dialOne runs one handshake plus welcome.
func (n *Node) dialOne(ctx context.Context, key addressing.PublicKey, to netip.AddrPort) (*quic.Conn, error) {
	tlsConf := n.clientTLS(key)
	conn, err := n.tr.Dial(ctx, net.UDPAddrFromAddrPort(to), tlsConf, n.qconf)
	if err != nil {
		return nil, classify(err)
	}
	if err := awaitWelcome(ctx, conn); err != nil {
		conn.CloseWithError(CodeBadWelcome, "no welcome")
		return nil, err
	}
	return conn, nil
}

// awaitWelcome waits for the accepting side's welcome: a TLS 1.3 client
// finishes its handshake before the server has judged its certificate, so
// only the welcome proves the peer admitted us.
func awaitWelcome(ctx context.Context, conn *quic.Conn) error {
	s, err := conn.AcceptUniStream(ctx)
	if err != nil {
		if ctx.Err() != nil && conn.Context().Err() == nil {
			return ctx.Err()
		}
		return classify(err)
	}
	if dl, ok := ctx.Deadline(); ok {
		s.SetReadDeadline(dl)
	}
	var b [2]byte
	if _, err := io.ReadFull(s, b[:]); err != nil {
		return classify(err)
	}
	if b != [2]byte(welcome) {
		return fmt.Errorf("quicnode: bad welcome %x", b)
	}
	return nil
}
