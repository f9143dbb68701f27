// Package rendezvoustest runs an in-process rendezvous server for tests, on
// 127.0.0.1 with real sockets and a temporary data directory.
package rendezvoustest

import (
	"context"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/quic-go/quic-go"

	"github.com/agentnet/agentnet/rendezvous"
	"github.com/agentnet/agentnet/trustdb"
)

// Server is a running rendezvous server owned by a test. Close runs in the
// test's Cleanup. Not safe for concurrent Restart.
type Server struct {
	*rendezvous.Server
	t     testing.TB
	cfg   rendezvous.ServerConfig
	store rendezvous.Store // from StoreFunc; closed with the server
}

// StoreFunc, if set, gives every server this package starts without a
// Store of its own a store: it is called at each start and restart with
// the server's DataDir, and a store opened for the same DataDir must hold
// the same state (a restarted server keeps its state, as with the bbolt
// file in DataDir). The store is closed after the server. Tests that run
// the suite on another store (the etcd store) set it and reset it.
var StoreFunc func(t testing.TB, dataDir string) rendezvous.Store

// New starts a server on 127.0.0.1:0 with a temporary DataDir.
func New(t testing.TB) *Server {
	t.Helper()
	return NewWithConfig(t, rendezvous.ServerConfig{})
}

// NewWithConfig starts a server with cfg; an empty Addr becomes
// 127.0.0.1:0 and an empty DataDir a temporary directory. The second STUN
// address and the relay take their defaults (main port + 1 and + 2, or free
// ports beside it) unless cfg sets them.
func NewWithConfig(t testing.TB, cfg rendezvous.ServerConfig) *Server {
	t.Helper()
	if cfg.Addr == "" && cfg.Conn == nil {
		cfg.Addr = "127.0.0.1:0"
	}
	if cfg.DataDir == "" && cfg.Store == nil {
		cfg.DataDir = t.TempDir()
	}
	s := &Server{t: t, cfg: cfg}
	s.start()
	t.Cleanup(func() {
		s.Server.Close()
		s.closeStore()
	})
	return s
}

func (s *Server) closeStore() {
	if s.store != nil {
		s.store.Close()
		s.store = nil
	}
}

func (s *Server) start() {
	s.t.Helper()
	cfg := s.cfg
	if cfg.Store == nil && StoreFunc != nil {
		s.store = StoreFunc(s.t, cfg.DataDir)
		cfg.Store = s.store
	}
	srv, err := rendezvous.NewServer(cfg)
	if err != nil {
		s.t.Fatalf("rendezvoustest: %v", err)
	}
	if err := srv.Start(); err != nil {
		s.t.Fatalf("rendezvoustest: %v", err)
	}
	s.Server = srv
	// Restart on the same ports, so clients find the server again.
	if s.cfg.Conn == nil {
		s.cfg.Addr = srv.Addr().String()
	}
	if a := srv.STUNAddr(); a != nil && s.cfg.STUNConn == nil {
		s.cfg.STUNAddr = a.String()
	}
	if a := srv.RelayAddr(); a != nil && s.cfg.RelayConn == nil {
		s.cfg.RelayAddr = a.String()
	}
}

// AddrPort returns the server's UDP address.
func (s *Server) AddrPort() netip.AddrPort { return s.Addr().AddrPort() }

// Restart closes the server and starts a new one with the same ports (or
// Conns) and DataDir, so the same identity and state.
func (s *Server) Restart() {
	s.t.Helper()
	if err := s.Server.Close(); err != nil {
		s.t.Fatalf("rendezvoustest: close: %v", err)
	}
	s.closeStore()
	s.start()
}

// ClientConfig returns a client configuration for id that dials from tr and
// pins this server's key.
func (s *Server) ClientConfig(id *trustdb.Identity, tr *quic.Transport) rendezvous.ClientConfig {
	return rendezvous.ClientConfig{
		Identity:   id,
		Transport:  tr,
		ServerAddr: s.Addr().String(),
		ServerKey:  s.PublicKey(),
	}
}

// NewTransport returns a QUIC transport on a fresh 127.0.0.1 UDP socket,
// closed in Cleanup.
func NewTransport(t testing.TB) *quic.Transport {
	t.Helper()
	conn, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatalf("rendezvoustest: listen: %v", err)
	}
	tr := &quic.Transport{Conn: conn}
	t.Cleanup(func() {
		tr.Close()
		conn.Close()
	})
	return tr
}

// NewClient starts a registered client for id (a fresh identity if nil) with
// its own transport, waits until it is registered, and closes it in Cleanup.
// Adjust the configuration with edit (may be nil) before the client starts.
func (s *Server) NewClient(id *trustdb.Identity, edit func(*rendezvous.ClientConfig)) *rendezvous.Client {
	s.t.Helper()
	if id == nil {
		var err error
		if id, err = trustdb.GenerateIdentity(); err != nil {
			s.t.Fatalf("rendezvoustest: %v", err)
		}
	}
	cfg := s.ClientConfig(id, NewTransport(s.t))
	if edit != nil {
		edit(&cfg)
	}
	c, err := rendezvous.NewClient(cfg)
	if err != nil {
		s.t.Fatalf("rendezvoustest: %v", err)
	}
	s.t.Cleanup(func() { c.Close() })
	c.Start()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := c.WaitReady(ctx); err != nil {
		s.t.Fatalf("rendezvoustest: client not ready: %v", err)
	}
	return c
}
