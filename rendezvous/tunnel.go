package rendezvous

import (
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"time"

	"github.com/quic-go/quic-go"

	"github.com/agentnet/agentnet/internal/tunnel"
)

// TCPConfig turns on the rendezvous's TCP listener: TLS 1.3 and an
// HTTP/1.1 WebSocket upgrade on tunnel.Path (package internal/tunnel),
// which looks like ordinary HTTPS to middleboxes and carries the same QUIC
// control protocol and relay frames as UDP, for agents that cannot send
// UDP. Everything else on the listener answers 404.
type TCPConfig struct {
	// Addr is the TCP address to listen on ("host:port", ":443" in
	// production); "" with no Listener leaves TCP off.
	Addr string
	// Listener, if set, is used instead of listening on Addr; the server
	// closes it.
	Listener net.Listener
	// Certificate, if set, is the TLS certificate to present (say, one a
	// public CA issued for the server's name). By default the server
	// presents its identity's self-signed certificate, the key clients pin;
	// the QUIC connection inside the tunnel pins that key either way.
	Certificate *tls.Certificate
	// MaxTunnels and MaxTunnelsPerIP bound the open tunnels, in total and
	// per source IP (IPv6: per /64) (defaults tunnel.DefaultMaxTunnels,
	// tunnel.DefaultMaxPerIP).
	MaxTunnels, MaxTunnelsPerIP int
}

func (c TCPConfig) enabled() bool { return c.Addr != "" || c.Listener != nil }

// tcpState is the TCP side of a running server.
type tcpState struct {
	ln   net.Listener
	http *http.Server
	tun  *tunnel.Server
	tr   *quic.Transport
	qln  *quic.Listener
}

// newTunnelServer makes the tunnel server (before the relay, which sends
// into it).
func (s *Server) newTunnelServer() *tunnel.Server {
	c := s.cfg.TCP
	return tunnel.NewServer(tunnel.ServerConfig{
		Relay: func(frame []byte, from netip.AddrPort) {
			if s.relay != nil {
				s.relay.Inject(frame, from)
			}
		},
		MaxTunnels: c.MaxTunnels,
		MaxPerIP:   c.MaxTunnelsPerIP,
		Logger:     s.log,
	})
}

// startTCP opens the TCP listener and the QUIC listener behind the tunnels.
func (s *Server) startTCP(resetKey *quic.StatelessResetKey, tlsConf *tls.Config, qconf *quic.Config) error {
	c := s.cfg.TCP
	ln := c.Listener
	if ln == nil {
		var err error
		if ln, err = net.Listen("tcp", c.Addr); err != nil {
			return fmt.Errorf("rendezvous: TCP listen: %w", err)
		}
	}
	st := &tcpState{ln: ln, tun: s.tun}
	st.tr = &quic.Transport{Conn: st.tun.QUIC(), StatelessResetKey: resetKey, ConnContext: s.admit}
	var err error
	if st.qln, err = st.tr.Listen(tlsConf.Clone(), qconf.Clone()); err != nil {
		ln.Close()
		return fmt.Errorf("rendezvous: tunnel QUIC listen: %w", err)
	}
	cert := c.Certificate
	if cert == nil {
		cert = &s.cert
	}
	st.http = &http.Server{
		Handler:           st.tun,
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       60 * time.Second,
		MaxHeaderBytes:    8 << 10,
		ErrorLog:          nil,
		TLSConfig: &tls.Config{
			Certificates: []tls.Certificate{*cert},
			MinVersion:   tls.VersionTLS13,
			NextProtos:   []string{"http/1.1"},
		},
	}
	s.tcp = st
	s.wg.Add(2)
	go func() {
		defer s.wg.Done()
		if err := st.http.ServeTLS(ln, "", ""); err != nil && !errors.Is(err, http.ErrServerClosed) {
			s.log.Warn("rendezvous: TCP listener ended", "err", err)
		}
	}()
	go s.acceptLoopOn(st.qln)
	s.log.Info("rendezvous serving TCP", "addr", ln.Addr().String())
	return nil
}

// closeTCP stops the TCP side (Close calls it before waiting).
func (s *Server) closeTCP() {
	st := s.tcp
	if st == nil {
		return
	}
	st.http.Close()
	st.tun.Close()
	st.qln.Close()
	st.tr.Close()
}

// TCPAddr returns the TCP listener's address (nil before Start or if TCP
// is off).
func (s *Server) TCPAddr() net.Addr {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.tcp == nil {
		return nil
	}
	return s.tcp.ln.Addr()
}

// TunnelStats returns the TCP tunnels' counters (zero if TCP is off).
func (s *Server) TunnelStats() tunnel.ServerStats {
	s.mu.Lock()
	st := s.tcp
	s.mu.Unlock()
	if st == nil {
		return tunnel.ServerStats{}
	}
	return st.tun.Stats()
}

// sourceOf returns the address limits apply to for a connection's remote
// address: a tunnel's TCP source, or the UDP address itself.
func (s *Server) sourceOf(remote netip.AddrPort) netip.AddrPort {
	if s.tun != nil && tunnel.IsTunnelAddr(remote) {
		if src, ok := s.tun.Source(remote); ok {
			return src
		}
	}
	return remote
}
