package paths

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/agentnet/agentnet/internal/tunnel"
	"github.com/quic-go/quic-go"
)

// Transport is how the node reaches the rendezvous (and, through its
// relay, peers it has no direct path to).
type Transport string

const (
	TransportUnknown Transport = ""    // not connected yet
	TransportUDP     Transport = "udp" // QUIC over UDP from the main socket
	TransportTCP     Transport = "tcp" // the TLS/WebSocket tunnel (package internal/tunnel)
)

// Reaching the rendezvous.
const (
	// UDPProbeTimeout bounds a UDP attempt at the rendezvous when a TCP
	// fallback is configured: a network that drops UDP costs this much
	// before the node switches to TCP.
	UDPProbeTimeout = 1500 * time.Millisecond
	// udpRetryMin and udpRetryMax pace the UDP probes while on TCP.
	udpRetryMin = 2 * time.Second
	udpRetryMax = 8 * time.Second
	// tunnelLinger is how long an unused tunnel stays open after the node
	// moved back to UDP.
	tunnelLinger = 5 * time.Second
)

// TCPConfig is the fallback to the rendezvous's TCP listener.
type TCPConfig struct {
	// Addr is the rendezvous's TCP address ("host:port"). Required.
	Addr   string
	Tunnel tunnel.ClientConfig // Addr, RelayIn and OnUp are set by the manager
}

// Reach is the node's state towards the rendezvous.
type Reach struct {
	Transport Transport
	Reason    string    // why this transport: what was tried, what failed
	Since     time.Time // of the last change
	// Err is the last failure to reach the rendezvous at all (neither UDP
	// nor TCP), with the addresses tried and what to check; nil once a
	// connection succeeded.
	Err error
	// Tunnel is the TCP tunnel's state while one is open.
	Tunnel *tunnel.State
}

// reach is the manager's rendezvous-transport state.
type reach struct {
	mu      sync.Mutex
	mode    Transport
	reason  string
	since   time.Time
	err     error
	tun     *tunnel.Client
	tunTr   *quic.Transport
	tunConn *quic.Conn // the rendezvous connection over the tunnel
	idleAt  time.Time  // the tunnel became unused (on UDP again)
	udpAddr netip.AddrPort
	nextUDP time.Time     // next UDP probe while on TCP
	backoff time.Duration // between UDP probes
}

// Reach returns how the node reaches the rendezvous.
func (m *Manager) Reach() Reach {
	r := &m.reach
	r.mu.Lock()
	defer r.mu.Unlock()
	out := Reach{Transport: r.mode, Reason: r.reason, Since: r.since, Err: r.err}
	if r.tun != nil {
		st := r.tun.State()
		out.Tunnel = &st
	}
	return out
}

func (m *Manager) onTCP() bool {
	m.reach.mu.Lock()
	defer m.reach.mu.Unlock()
	return m.reach.mode == TransportTCP
}

func (r *reach) setModeLocked(t Transport, reason string) bool {
	changed := r.mode != t
	r.mode, r.reason, r.since = t, reason, time.Now()
	return changed
}

// DialRendezvous connects to the rendezvous's QUIC service at server (its
// UDP address): over UDP from the main socket when that works, else — with
// a TCPConfig — through the TCP tunnel. With a fallback configured, a UDP
// attempt that hears nothing within UDPProbeTimeout moves the node to TCP;
// while on TCP the maintenance loop keeps probing UDP and moves back when
// it answers. It is the rendezvous client's ClientConfig.Dial.
func (m *Manager) DialRendezvous(ctx context.Context, server string, tlsConf *tls.Config, qconf *quic.Config) (*quic.Conn, error) {
	r := &m.reach
	var udpErr error
	ua, rerr := net.ResolveUDPAddr("udp", server)
	if rerr == nil {
		r.mu.Lock()
		r.udpAddr = unmap(ua.AddrPort())
		// On TCP with the tunnel up, UDP is left to the probes; otherwise
		// (first attempt, on UDP, or TCP failing too) UDP is tried first.
		onTunnel := r.mode == TransportTCP && r.tun != nil && r.tun.State().Up
		r.mu.Unlock()
		if !onTunnel {
			dctx, cancel := ctx, context.CancelFunc(func() {})
			if m.cfg.TCP != nil {
				dctx, cancel = context.WithTimeout(ctx, UDPProbeTimeout)
			}
			conn, err := m.tr.Dial(dctx, ua, tlsConf, qconf)
			cancel()
			if err == nil || isTLSRefusal(err) || m.cfg.TCP == nil || ctx.Err() != nil {
				r.mu.Lock()
				if err == nil {
					r.err = nil
					r.setModeLocked(TransportUDP, "QUIC over UDP to "+server+" works")
				} else if m.cfg.TCP == nil {
					r.err = fmt.Errorf("rendezvous unreachable over UDP (%s): %w; check that the firewall lets UDP to it out, or configure the rendezvous's TCP address", server, err)
				}
				r.mu.Unlock()
				return conn, err
			}
			udpErr = fmt.Errorf("UDP %s: no answer within %v", server, UDPProbeTimeout)
		}
	} else {
		udpErr = fmt.Errorf("UDP %s: %w", server, rerr)
		if m.cfg.TCP == nil {
			return nil, fmt.Errorf("rendezvous: resolve %s: %w", server, rerr)
		}
	}
	// TCP.
	tun, tr, err := m.ensureTunnel()
	if err != nil {
		return nil, err
	}
	r.mu.Lock()
	if udpErr != nil {
		if r.setModeLocked(TransportTCP, udpErr.Error()+"; using TCP "+m.cfg.TCP.Addr) {
			m.log.Info("rendezvous over TCP", "reason", r.reason)
		}
		r.backoff = udpRetryMin
		r.nextUDP = time.Now().Add(r.backoff)
	}
	r.mu.Unlock()
	m.enteredTCP()
	wctx, cancel := context.WithTimeout(ctx, tunnel.DefaultConnectTimeout)
	err = tun.WaitUp(wctx)
	cancel()
	if err != nil {
		e := fmt.Errorf("rendezvous unreachable: %v; TCP %s: %w; check the firewall (UDP to %s or TCP to %s must get out) and the proxy settings (--proxy, --proxy-cmd, HTTPS_PROXY)",
			udpErr, m.cfg.TCP.Addr, err, server, m.cfg.TCP.Addr)
		r.mu.Lock()
		r.err = e
		r.mu.Unlock()
		return nil, e
	}
	conn, err := tr.Dial(ctx, tunnel.ServerAddr, tlsConf, qconf)
	r.mu.Lock()
	if err == nil {
		r.err = nil
		r.tunConn = conn
	} else {
		r.err = fmt.Errorf("rendezvous over TCP %s: %w", m.cfg.TCP.Addr, err)
	}
	r.mu.Unlock()
	return conn, err
}

// isTLSRefusal reports whether a dial failed in the TLS handshake: the
// server answered, so UDP works (a key mismatch is not a reason for TCP).
func isTLSRefusal(err error) bool {
	var te *quic.TransportError
	return errors.As(err, &te) && te.ErrorCode.IsCryptoError()
}

// ensureTunnel starts the tunnel client if none runs.
func (m *Manager) ensureTunnel() (*tunnel.Client, *quic.Transport, error) {
	r := &m.reach
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.tun != nil {
		r.idleAt = time.Time{}
		return r.tun, r.tunTr, nil
	}
	if m.ctx.Err() != nil {
		return nil, nil, net.ErrClosed
	}
	cfg := m.cfg.TCP.Tunnel
	cfg.Addr = m.cfg.TCP.Addr
	cfg.Logger = m.log.With("component", "tunnel")
	cfg.RelayIn = func(frame []byte) {
		if m.relay != nil {
			m.relay.tunnelFrame(frame)
		}
	}
	cfg.OnUp = func() {
		if m.relay != nil {
			m.relay.rebindTunnel() // the relay knows the new connection by a new address
		}
	}
	tun, err := tunnel.NewClient(cfg)
	if err != nil {
		return nil, nil, fmt.Errorf("paths: %w", err)
	}
	r.tun = tun
	r.tunTr = m.transport(tun.QUIC())
	if m.relay != nil {
		m.relay.setTunnel(tun)
	}
	tun.Start()
	return tun, r.tunTr, nil
}

// enteredTCP moves the relay sessions into the tunnel and tells peers (via
// the NAT report) that we are reachable only through the relay.
func (m *Manager) enteredTCP() {
	if m.relay != nil {
		if n := m.relay.moveAll(true); n > 0 {
			m.log.Info("relay sessions moved into the TCP tunnel", "count", n)
		}
	}
	m.natMu.Lock()
	m.nat = NATInfo{Kind: NATBlocked, Checked: time.Now()}
	m.natMu.Unlock()
}

// probeUDP runs from the maintenance loop while on TCP: when a STUN probe
// of the rendezvous's UDP address is answered, UDP works again and the
// node moves back: relay sessions leave the tunnel, the rendezvous client
// reconnects over UDP, and relayed peers are re-punched.
func (m *Manager) probeUDP() {
	r := &m.reach
	r.mu.Lock()
	due := r.mode == TransportTCP && r.udpAddr.IsValid() && !time.Now().Before(r.nextUDP)
	target := r.udpAddr
	if due {
		r.nextUDP = time.Now().Add(time.Hour) // one probe at a time
	}
	r.mu.Unlock()
	if !due {
		m.closeIdleTunnel()
		return
	}
	m.g.Go(func() {
		ctx, cancel := context.WithTimeout(m.ctx, 2*time.Second)
		defer cancel()
		_, err := m.stunRequest(ctx, target)
		r.mu.Lock()
		if err != nil {
			r.backoff = min(2*r.backoff, udpRetryMax)
			r.nextUDP = time.Now().Add(r.backoff)
			r.mu.Unlock()
			return
		}
		r.setModeLocked(TransportUDP, "UDP to "+target.String()+" answers again")
		conn := r.tunConn
		r.tunConn = nil
		r.idleAt = time.Now()
		r.mu.Unlock()
		m.log.Info("UDP works again: leaving the TCP tunnel", "rendezvous", target)
		if m.relay != nil {
			m.relay.moveAll(false)
		}
		m.natMu.Lock()
		m.nat = NATInfo{Kind: NATUnknown}
		m.natMu.Unlock()
		if conn != nil {
			// The rendezvous client reconnects (over UDP now).
			conn.CloseWithError(0, "moving to UDP")
		}
		m.g.Go(m.afterUDP)
	})
}

// afterUDP re-checks the NAT and re-punches relayed peers once the node
// is back on UDP.
func (m *Manager) afterUDP() {
	for i := 0; i < 50 && m.ctx.Err() == nil; i++ {
		ctx, cancel := context.WithTimeout(m.ctx, 2*time.Second)
		_, err := m.CheckNAT(ctx)
		cancel()
		if err == nil {
			m.upgradeRelayed()
			return
		}
		t := time.NewTimer(200 * time.Millisecond)
		select {
		case <-t.C:
		case <-m.ctx.Done():
			t.Stop()
			return
		}
	}
}

// closeIdleTunnel stops the tunnel once the node has been back on UDP for
// tunnelLinger.
func (m *Manager) closeIdleTunnel() {
	r := &m.reach
	r.mu.Lock()
	if r.tun == nil || r.mode == TransportTCP || r.idleAt.IsZero() || time.Since(r.idleAt) < tunnelLinger {
		r.mu.Unlock()
		return
	}
	tun, tr := r.tun, r.tunTr
	r.tun, r.tunTr, r.idleAt = nil, nil, time.Time{}
	r.mu.Unlock()
	if m.relay != nil {
		m.relay.setTunnel(nil)
	}
	tr.Close()
	tun.Close()
	m.log.Info("TCP tunnel closed (on UDP again)")
}

// closeTunnel stops the tunnel for good (Close).
func (m *Manager) closeTunnel() {
	r := &m.reach
	r.mu.Lock()
	tun, tr := r.tun, r.tunTr
	r.tun, r.tunTr = nil, nil
	r.mu.Unlock()
	if tr != nil {
		tr.Close()
	}
	if tun != nil {
		tun.Close()
	}
}

// transportOf names the transport a link travels over.
func (m *Manager) transportOf(l *Link) Transport {
	if l.Kind == KindRelay && m.relay != nil && m.relay.onTunnel(l.Conn.RemoteAddr()) {
		return TransportTCP
	}
	return TransportUDP
}

// relayServer returns the relay's UDP address for a grant: a grant
// received over the tunnel names the tunnel's address, so the host of the
// rendezvous's UDP address is used instead (the relay's port is the one
// announced).
func (m *Manager) relayServer(g netip.AddrPort) netip.AddrPort {
	if !tunnel.IsTunnelAddr(g) {
		return g
	}
	m.reach.mu.Lock()
	defer m.reach.mu.Unlock()
	return netip.AddrPortFrom(m.reach.udpAddr.Addr(), g.Port())
}
