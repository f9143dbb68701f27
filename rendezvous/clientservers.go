package rendezvous

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/quic-go/quic-go"

	"github.com/agentnet/agentnet/addressing"
)

// A client of several servers (one service on etcd, see the package doc):
// ClientConfig.ServerAddrs lists them, and a name may resolve to several
// addresses. Every connection attempt tries them all, the one that served
// last first and the ones whose session just failed last; the next one
// starts when the previous has not answered within staggerDelay (or has
// failed), and the first that answers wins. A client knows one server key
// for all of them: the configured ServerKey, or the node's pin (one per
// node, whichever name it was first seen under; a server presenting
// another key is refused: there is no silent trust of a new key; servers
// of one service share their key).

// staggerDelay is how long a connection attempt waits for one server
// before it tries the next as well.
const staggerDelay = 250 * time.Millisecond

// maxServerAddrs bounds the configured names and the addresses they
// resolve to.
const maxServerAddrs = 16

// failoverIdle is the idle timeout of a session when the client has
// several servers to go to: a server that died is noticed within it, and
// the client registers with another at once (QUIC keepalives every
// failoverIdle/4 keep a live server's session from timing out). With one
// server there is nowhere else to go, and the session's idle timeout is
// SessionIdle.
const failoverIdle = 1500 * time.Millisecond

// serverList is a client's view of its servers.
type serverList struct {
	multi     atomic.Bool // more than one address to go to
	mu        sync.Mutex
	preferred string               // address that served last
	failed    map[string]time.Time // addresses whose session or dial failed, and when
}

// candidate is one address to dial, with the configured name it came from.
type candidate struct {
	name string // as configured: logs and errors use it
	addr netip.AddrPort
}

// serverNames returns the configured server names: ServerAddr, then
// ServerAddrs, without duplicates.
func (cfg *ClientConfig) serverNames() []string {
	names := make([]string, 0, 1+len(cfg.ServerAddrs))
	for _, n := range append([]string{cfg.ServerAddr}, cfg.ServerAddrs...) {
		if n != "" && !slices.Contains(names, n) {
			names = append(names, n)
		}
	}
	return names
}

// checkServerAddrs validates ClientConfig.ServerAddr and ServerAddrs.
func (cfg *ClientConfig) checkServerAddrs() error {
	names := cfg.serverNames()
	switch {
	case len(names) == 0:
		return errors.New("rendezvous: ClientConfig.ServerAddr is required")
	case len(names) > maxServerAddrs:
		return fmt.Errorf("rendezvous: ClientConfig: %d server addresses, max %d", len(names), maxServerAddrs)
	}
	for _, n := range names {
		if _, port, err := net.SplitHostPort(n); err != nil {
			return fmt.Errorf("rendezvous: ClientConfig: server address %q: %w", n, err)
		} else if p, err := strconv.Atoi(port); err != nil || p <= 0 || p > 0xffff {
			return fmt.Errorf("rendezvous: ClientConfig: server address %q: bad port", n)
		}
	}
	return nil
}

// candidates resolves every configured name (each may have several
// addresses) and orders them: the one that served last, then the others
// in the configured order, the ones that failed in the last minute at the
// end (oldest failure first).
func (c *Client) candidates(ctx context.Context) ([]candidate, error) {
	var out []candidate
	var errs []error
	for _, name := range c.cfg.serverNames() {
		host, port, _ := net.SplitHostPort(name)
		p, _ := strconv.Atoi(port)
		var ips []netip.Addr
		if ip, err := netip.ParseAddr(host); err == nil {
			ips = []netip.Addr{ip}
		} else {
			rctx, cancel := context.WithTimeout(ctx, dialTimeout)
			ips, err = net.DefaultResolver.LookupNetIP(rctx, "ip", host)
			cancel()
			if err != nil {
				if c.cfg.Dial != nil { // the dialer may reach it another way (the TCP tunnel)
					out = append(out, candidate{name: name})
					continue
				}
				errs = append(errs, fmt.Errorf("rendezvous: resolve %s: %w", name, err))
				continue
			}
		}
		for _, ip := range ips {
			ap := netip.AddrPortFrom(ip.Unmap(), uint16(p))
			if len(out) < maxServerAddrs && !slices.ContainsFunc(out, func(x candidate) bool { return x.addr == ap }) {
				out = append(out, candidate{name: name, addr: ap})
			}
		}
	}
	if len(out) == 0 {
		return nil, errors.Join(errs...)
	}
	s := &c.servers
	s.mu.Lock()
	defer s.mu.Unlock()
	now := time.Now()
	rank := func(x candidate) (int, time.Time) {
		if x.addr.String() == s.preferred {
			if _, bad := s.failed[s.preferred]; !bad {
				return 0, time.Time{}
			}
		}
		if at, bad := s.failed[x.addr.String()]; bad && now.Sub(at) < time.Minute {
			return 2, at
		}
		return 1, time.Time{}
	}
	slices.SortStableFunc(out, func(a, b candidate) int {
		ra, ta := rank(a)
		rb, tb := rank(b)
		if ra != rb {
			return ra - rb
		}
		return ta.Compare(tb)
	})
	return out, nil
}

func (s *serverList) idleTimeout() time.Duration {
	if s.multi.Load() {
		return failoverIdle
	}
	return SessionIdle
}

func (s *serverList) keepAlive() time.Duration {
	if s.multi.Load() {
		return failoverIdle / 4
	}
	return KeepAlivePeriod
}

// served records that addr registered us; failed that a session on it or
// a dial to it failed.
func (s *serverList) served(addr netip.AddrPort) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.preferred = addr.String()
	delete(s.failed, s.preferred)
}

func (s *serverList) fail(addr netip.AddrPort) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.failed == nil {
		s.failed = make(map[string]time.Time)
	}
	s.failed[addr.String()] = time.Now()
	if len(s.failed) > 4*maxServerAddrs {
		clear(s.failed)
	}
}

// knownKey returns the server key the client must see: the configured one,
// or the node's pin (one per node, so one per service).
func (c *Client) knownKey() (addressing.PublicKey, bool) {
	if !c.cfg.ServerKey.IsZero() {
		return c.cfg.ServerKey, true
	}
	if c.cfg.Pins == nil {
		return addressing.PublicKey{}, false
	}
	if k, ok := c.cfg.Pins.Pin(); ok && !k.IsZero() {
		return k, true
	}
	return addressing.PublicKey{}, false
}

type dialResult struct {
	cand candidate
	qc   *quic.Conn
	err  error
}

// dialAny connects to one of the servers (see the doc at the top). With no
// key known yet (trust on first use) the attempts run one after the other,
// so that only one key is ever pinned.
func (c *Client) dialAny() (*quic.Conn, error) {
	cands, err := c.candidates(c.ctx)
	if err != nil {
		return nil, err
	}
	c.servers.multi.Store(len(cands) > 1)
	if len(cands) == 1 {
		qc, err := c.dial(c.ctx, cands[0].name, cands[0].addr)
		if err != nil {
			c.servers.fail(cands[0].addr)
		}
		return qc, err
	}
	_, known := c.knownKey()
	ctx, cancel := context.WithCancel(c.ctx)
	defer cancel()
	results := make(chan dialResult, len(cands))
	started, pending := 0, 0
	start := func() {
		cand := cands[started]
		started++
		pending++
		go func() {
			qc, err := c.dial(ctx, cand.name, cand.addr)
			results <- dialResult{cand: cand, qc: qc, err: err}
		}()
	}
	start()
	var won *quic.Conn
	var errs []error
	timer := time.NewTimer(staggerDelay)
	defer timer.Stop()
	for pending > 0 {
		select {
		case r := <-results:
			pending--
			switch {
			case r.err == nil && won == nil:
				won = r.qc
				cancel() // the others give up; those that connected anyway are closed below
			case r.err == nil:
				r.qc.CloseWithError(0, "another server answered first")
			default:
				c.servers.fail(r.cand.addr)
				errs = append(errs, r.err)
				if won == nil && started < len(cands) {
					start()
					timer.Reset(staggerDelay)
				}
			}
		case <-timer.C:
			if won == nil && known && started < len(cands) {
				start()
				timer.Reset(staggerDelay)
			}
		}
		if won != nil && pending == 0 {
			break
		}
	}
	if won != nil {
		return won, nil
	}
	return nil, errors.Join(errs...)
}
