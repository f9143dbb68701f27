package paths

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"time"

	"github.com/agentnet/agentnet/addressing"
	"github.com/agentnet/agentnet/rendezvous"
	"github.com/quic-go/quic-go"
)

// Link returns the link new traffic to key should use, dialling the peer
// if it has none. Concurrent callers share one dial. The caller has
// checked that key is admissible.
func (m *Manager) Link(ctx context.Context, key addressing.PublicKey) (*Link, error) {
	stale := 0
	for {
		m.mu.Lock()
		if m.closed {
			m.mu.Unlock()
			return nil, net.ErrClosed
		}
		if p, _ := m.peers.Get(key); p != nil {
			if l := p.best(); l != nil {
				m.mu.Unlock()
				m.pokeIfQuiet(l)
				return l, nil
			}
		}
		changed := m.peersChanged
		if d, _ := m.dialing.Get(key); d != nil {
			m.mu.Unlock()
			select {
			case <-d.done:
			case <-ctx.Done():
				return nil, ctx.Err()
			}
			if d.err == nil {
				return d.l, nil
			}
			if isPathDead(d.err) && stale < 2 && ctx.Err() == nil {
				// Another caller's dial (the re-dial after a dead path)
				// failed on a connection it found closed: dial afresh.
				stale++
				continue
			}
			if !errors.Is(d.err, ErrDuplicate) {
				return nil, d.err
			}
			continue
		}
		d := &dialCall{done: make(chan struct{})}
		m.dialing.Set(key, d)
		m.mu.Unlock()

		d.l, d.err = m.dial(ctx, key)
		m.mu.Lock()
		m.dialing.Delete(key)
		m.mu.Unlock()
		close(d.done)
		if d.err == nil {
			return d.l, nil
		}
		if isPathDead(d.err) && stale < 2 && ctx.Err() == nil {
			stale++ // as above: a connection closed as dead under the dial
			continue
		}
		if !errors.Is(d.err, ErrDuplicate) {
			return nil, d.err
		}
		// The peer's simultaneous dial won the tie-break: its connection
		// is (about to be) registered; wait for it.
		t := time.NewTimer(time.Second)
		select {
		case <-changed:
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return nil, ctx.Err()
		}
		t.Stop()
	}
}

// TraverseDelay is how long a dial tries the peer's known addresses
// plainly before the next phase: asking the rendezvous for the locators
// (after the last address), then for an introduction (after the
// locators). On a LAN or towards an open peer the plain dial wins well
// within it, and the rendezvous is spared the work.
const TraverseDelay = 150 * time.Millisecond

// dialer is one dial of a peer, phase by phase:
//
//  1. last address: the address the peer was last reached at (a repeat
//     contact usually ends here, without the rendezvous);
//  2. lookup: after TraverseDelay or a failure of phase 1, ask the
//     rendezvous where the peer is;
//  3. direct: dial the locators it reports, beside phase 1;
//  4. punch: if nothing answered within TraverseDelay (or there was
//     nothing to dial), ask for an introduction: both sides probe, the
//     dialling side dials where probes came from (birthday punching
//     between a hard and an easy NAT);
//  5. relay: if no direct path is up relayAfter later, dial through the
//     relay session the introduction opened, while punching goes on.
//
// Earlier attempts keep running when a later phase starts; the first link
// up wins and a later one is settled by the tie-break. Every phase is
// logged (debug) with the time since the dial began, and the winning link
// records the phase that found it and the dial's duration.
type dialer struct {
	m     *Manager
	key   addressing.PublicKey
	ctx   context.Context
	start time.Time
	peer  addressing.Addr

	results       chan dialResult
	running       int // attempts whose result is still to come
	pendingDirect int // of which plain dials (phases 1 and 3)
	tried         map[netip.AddrPort]bool
	traversing    bool
	errs          []error
}

type dialResult struct {
	l      *Link
	err    error
	direct bool // a plain dial (phases 1 and 3)
}

func (d *dialer) phase(p Phase, args ...any) {
	d.m.log.Debug("dial phase", append([]any{"peer", d.peer, "phase", p.String(), "elapsed", time.Since(d.start).Round(time.Microsecond)}, args...)...)
}

// spawn runs f as an attempt in the manager's group; a closing manager
// refuses it.
func (d *dialer) spawn(direct bool, f func() (*Link, error)) {
	d.running++
	if direct {
		d.pendingDirect++
	}
	if !d.m.g.Go(func() {
		l, err := f()
		d.results <- dialResult{l, err, direct}
	}) {
		d.results <- dialResult{nil, net.ErrClosed, direct}
	}
}

// dialDirect starts a plain dial to the candidates not tried yet.
func (d *dialer) dialDirect(p Phase, cands []netip.AddrPort) {
	var fresh []netip.AddrPort
	for _, c := range cands {
		c = unmap(c)
		if c.IsValid() && !d.tried[c] {
			d.tried[c] = true
			fresh = append(fresh, c)
		}
	}
	if len(fresh) == 0 {
		return
	}
	d.phase(p, "candidates", len(fresh))
	d.spawn(true, func() (*Link, error) {
		conn, err := d.m.dialCandidates(d.ctx, d.key, fresh)
		if err != nil {
			return nil, err
		}
		return d.m.addLink(conn, d.key, KindDirect, true, p, time.Since(d.start))
	})
}

// take records a finished attempt.
func (d *dialer) take(r dialResult) {
	d.running--
	if r.direct {
		d.pendingDirect--
	}
	if r.err != nil {
		d.errs = append(d.errs, r.err)
	}
}

// dial connects to key through the phases above.
func (m *Manager) dial(ctx context.Context, key addressing.PublicKey) (*Link, error) {
	m.stats.dials.Add(1)
	ctx, cancel := context.WithTimeout(ctx, m.cfg.HandshakeTimeout)
	defer cancel()
	d := &dialer{
		m: m, key: key, ctx: ctx, start: time.Now(), peer: addressing.AddrFrom(0, key.NodeID()),
		results: make(chan dialResult, 4), tried: make(map[netip.AddrPort]bool),
	}
	l, err := d.run()
	if err != nil {
		m.stats.dialFailures.Add(1)
		m.log.Debug("dial failed", "peer", d.peer, "elapsed", time.Since(d.start).Round(time.Microsecond), "err", err)
		return nil, err
	}
	m.log.Info("path up", "peer", d.peer, "path", l.Kind, "found", l.Found.String(), "setup", l.Setup.Round(time.Microsecond), "remote", l.Conn.RemoteAddr())
	return l, nil
}

func (d *dialer) run() (*Link, error) {
	m := d.m
	// Phase 1: the last address.
	if hint, ok := m.hint(d.key); ok {
		d.dialDirect(PhaseLastAddr, []netip.AddrPort{hint})
		t := time.NewTimer(TraverseDelay)
		select {
		case r := <-d.results:
			d.take(r)
			if r.err == nil {
				t.Stop()
				return r.l, nil
			}
		case <-t.C:
		case <-d.ctx.Done():
		}
		t.Stop()
	}
	// Phases 2 and 3: lookup, then the locators.
	d.phase(PhaseLookup)
	info, lookupErr := m.lookup(d.ctx, d.key)
	if lookupErr == nil {
		d.dialDirect(PhaseDirect, info.Locators)
	}
	rdv := m.rendezvous()
	canTraverse := rdv != nil && lookupErr == nil && info.Online
	var timer <-chan time.Time
	if canTraverse {
		if d.pendingDirect == 0 {
			d.traverse(rdv)
		} else {
			t := time.NewTimer(TraverseDelay)
			defer t.Stop()
			timer = t.C
		}
	}
	if d.running == 0 {
		if lookupErr == nil {
			lookupErr = fmt.Errorf("%w: peer is offline", ErrUnreachable)
		}
		return nil, errors.Join(append([]error{lookupErr}, d.errs...)...)
	}
	for d.running > 0 {
		select {
		case r := <-d.results:
			d.take(r)
			if r.err == nil {
				return r.l, nil
			}
			if r.direct && d.pendingDirect == 0 && canTraverse && !d.traversing {
				d.traverse(rdv)
			}
		case <-timer:
			timer = nil
			if !d.traversing {
				d.traverse(rdv)
			}
		}
	}
	if lookupErr != nil {
		d.errs = append([]error{lookupErr}, d.errs...)
	}
	return nil, mostTelling(d.errs)
}

// traverse starts phases 4 and 5.
func (d *dialer) traverse(rdv Rendezvous) {
	d.traversing = true
	d.spawn(false, func() (*Link, error) { return d.m.traverse(d, rdv) })
}

// mostTelling picks the error to report: a trust refusal beats
// unreachability.
func mostTelling(errs []error) error {
	for _, e := range errs {
		if errors.Is(e, ErrNotTrusted) || errors.Is(e, ErrDuplicate) {
			return e
		}
	}
	if len(errs) == 0 {
		return ErrUnreachable
	}
	return errs[0]
}

// lookup asks the rendezvous where key is. Not found means the rendezvous
// does not see us as a trusted pair: the peer has not approved us, or
// revoked us.
func (m *Manager) lookup(ctx context.Context, key addressing.PublicKey) (rendezvous.PeerInfo, error) {
	rdv := m.rendezvous()
	if rdv == nil {
		return rendezvous.PeerInfo{}, fmt.Errorf("%w: no rendezvous configured and no known locator", ErrUnreachable)
	}
	info, err := rdv.Lookup(ctx, addressing.TargetAddr(addressing.AddrFrom(0, key.NodeID())))
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

// dialCandidates races handshakes to every candidate and returns the first
// connection whose handshake completes; the others are closed. It does not
// wait for the welcome: the acceptor serves streams only after its gate
// admitted us, so the first stream's answer proves admission, and a refusal
// closes the connection with a code Classify maps to ErrNotTrusted, which
// the stream's dial or first read returns. That saves the dial the round
// trip the welcome takes.
func (m *Manager) dialCandidates(ctx context.Context, key addressing.PublicKey, cands []netip.AddrPort) (*quic.Conn, error) {
	ctx, cancel := context.WithTimeout(ctx, m.cfg.HandshakeTimeout)
	defer cancel()
	type result struct {
		conn *quic.Conn
		err  error
	}
	results := make(chan result, len(cands))
	for _, c := range cands {
		if !m.g.Go(func() {
			conn, err := m.dialOne(ctx, m.tr, key, c, false)
			results <- result{conn, err}
		}) {
			results <- result{nil, net.ErrClosed}
		}
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
	if e := mostTelling(errs); errors.Is(e, ErrNotTrusted) || errors.Is(e, ErrDuplicate) || errors.Is(e, net.ErrClosed) {
		return nil, e
	}
	return nil, fmt.Errorf("%w: %w", ErrUnreachable, errors.Join(errs...))
}

// dialOne runs one handshake on tr, and waits for the welcome if asked.
func (m *Manager) dialOne(ctx context.Context, tr *quic.Transport, key addressing.PublicKey, to netip.AddrPort, welcome bool) (*quic.Conn, error) {
	conn, err := tr.Dial(ctx, net.UDPAddrFromAddrPort(to), m.host.ClientTLS(key), m.cfg.QUIC)
	if err != nil {
		return nil, Classify(err)
	}
	if !welcome {
		// The first stream's answer proves admission; the welcome is
		// still read (and so freed: an unread stream keeps its state,
		// ~1 KB, for the connection's life), off the dial's path.
		m.g.Go(func() { m.drainWelcome(conn) })
		return conn, nil
	}
	if err := AwaitWelcome(ctx, conn); err != nil {
		conn.CloseWithError(CodeBadWelcome, "no welcome")
		return nil, err
	}
	return conn, nil
}

// AwaitWelcome waits for the accepting side's welcome: a TLS 1.3 client
// finishes its handshake before the server has judged its certificate, so
// only the welcome proves the peer admitted us.
func AwaitWelcome(ctx context.Context, conn *quic.Conn) error {
	s, err := conn.AcceptUniStream(ctx)
	if err != nil {
		if ctx.Err() != nil && conn.Context().Err() == nil {
			return ctx.Err()
		}
		return Classify(err)
	}
	if dl, ok := ctx.Deadline(); ok {
		s.SetReadDeadline(dl)
	}
	var b [2]byte
	if _, err := io.ReadFull(s, b[:]); err != nil {
		return Classify(err)
	}
	if b != [2]byte(Welcome) {
		return fmt.Errorf("paths: bad welcome %x", b)
	}
	return nil
}

// drainWelcome reads and drops the welcome of a connection whose dial did
// not wait for it, within the handshake timeout.
func (m *Manager) drainWelcome(conn *quic.Conn) {
	ctx, cancel := context.WithTimeout(m.ctx, m.cfg.HandshakeTimeout)
	defer cancel()
	s, err := conn.AcceptUniStream(ctx)
	if err != nil {
		return
	}
	if dl, ok := ctx.Deadline(); ok {
		s.SetReadDeadline(dl)
	}
	io.Copy(io.Discard, io.LimitReader(s, int64(len(Welcome))+1))
	s.CancelRead(0)
}

// isPathDead reports whether err is a connection we closed because its
// path went deaf (CodePathDead): a stale link, not a verdict on the peer.
func isPathDead(err error) bool {
	var ae *quic.ApplicationError
	return errors.As(err, &ae) && ae.ErrorCode == CodePathDead
}
