package quicnode

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"time"

	"github.com/agentnet/agentnet/addressing"
	"github.com/agentnet/agentnet/internal/tunnel"
	"github.com/agentnet/agentnet/trustdb"
	"github.com/quic-go/quic-go"
)

// Config configures a Node. The zero value of every optional field is a
// sensible default. A Config must not be modified after it is passed to New.
type Config struct {
	// Store holds the node's identity and trust records. Required. The
	// caller opens it and closes it after the Node.
	Store *trustdb.Store

	// RendezvousAddr is the rendezvous server's UDP address, "host:port".
	// Empty means no rendezvous: only peers already connected are reachable.
	RendezvousAddr string
	// RendezvousAddrs lists more servers of the same rendezvous service
	// (several servers on one etcd): the client registers with whichever
	// answers first and moves to another when its server goes away. They
	// share one key. Optional; needs RendezvousAddr.
	RendezvousAddrs []string
	// RendezvousKey pins the server's key. Zero means trust on first use:
	// the key seen on the first connection is stored in Store and required
	// from then on.
	RendezvousKey addressing.PublicKey

	// RendezvousTCP is the rendezvous's TCP address ("host:port", its
	// TLS/WebSocket listener) for networks that let no UDP out: with it, a
	// node whose UDP attempt at the rendezvous hears nothing within 1.5 s
	// reaches the rendezvous, and through its relay every peer, over TCP,
	// and moves back to UDP when UDP answers again. "" means no TCP
	// fallback.
	RendezvousTCP string
	// Proxy configures how the TCP path crosses an HTTP proxy (explicit
	// URL, a command printing one, or HTTPS_PROXY/NO_PROXY).
	Proxy tunnel.ProxyConfig
	// DialTCP, if set, opens the TCP path's connections (for example
	// inside a network namespace); default a net.Dialer with keepalives.
	DialTCP func(ctx context.Context, network, addr string) (net.Conn, error)

	// ListenAddr is the local UDP address; default "0.0.0.0:0".
	ListenAddr string
	// Conn, if set, is used instead of opening ListenAddr (for example a
	// socket opened inside a network namespace, or an in-memory network in
	// tests). The Node takes ownership. A *net.UDPConn keeps quic-go's
	// fast path (GSO, batched I/O): wrapping a UDP socket in another
	// net.PacketConn costs about half the bulk throughput.
	Conn net.PacketConn

	// RelayConn, if set, is the socket for relayed traffic (it must be
	// separate from Conn); otherwise one is opened on Conn's host address
	// (which then must be a *net.UDPAddr). The Node takes ownership.
	RelayConn net.PacketConn

	// ListenUDP, if set, opens the extra sockets of birthday hole punching,
	// for example inside a network namespace; default net.ListenUDP. laddr
	// is the main socket's IP with port 0.
	ListenUDP func(network, laddr string) (net.PacketConn, error)

	// Hostname is claimed at the rendezvous (first come, first served).
	Hostname string

	// DisableEcho turns off the built-in echo service on port 7.
	DisableEcho bool

	// HandshakeTimeout bounds each dial of a peer (every phase: handshakes,
	// introductions, relay) and each handshake plus welcome where one is
	// awaited; default 10 s.
	HandshakeTimeout time.Duration

	// Logger receives diagnostics; nil discards them.
	Logger *slog.Logger
}

// Well-known virtual ports.
const (
	PortEcho uint16 = 7
)

// MaxDatagramPayload is the largest payload WriteTo accepts.
const MaxDatagramPayload = 1146

const (
	alpn              = "agentnet/1"
	defaultListenAddr = "0.0.0.0:0"
	listenBacklog     = 256
	backlogWait       = 10 * time.Second
	datagramQueueLen  = 256
	headerTimeout     = 10 * time.Second
	// inlineHeaderWait is how long a link's stream loop waits for a new
	// stream's header before it hands the stream to a goroutine.
	inlineHeaderWait  = 2 * time.Millisecond
	firstEphemeral    = 49152
	maxIncomingStream = 4096
)

func (c *Config) validate() error {
	if c.Store == nil {
		return errors.New("quicnode: Config.Store is required")
	}
	if c.Hostname != "" {
		if err := addressing.ValidateHostname(c.Hostname); err != nil {
			return fmt.Errorf("quicnode: Config.Hostname: %w", err)
		}
	}
	if c.RendezvousAddr != "" {
		if _, _, err := net.SplitHostPort(c.RendezvousAddr); err != nil {
			return fmt.Errorf("quicnode: Config.RendezvousAddr: %w", err)
		}
	}
	if c.RendezvousTCP != "" {
		if c.RendezvousAddr == "" {
			return errors.New("quicnode: Config.RendezvousTCP needs RendezvousAddr")
		}
		if _, _, err := net.SplitHostPort(c.RendezvousTCP); err != nil {
			return fmt.Errorf("quicnode: Config.RendezvousTCP: %w", err)
		}
	}
	if len(c.RendezvousAddrs) > 0 && c.RendezvousAddr == "" {
		return errors.New("quicnode: Config.RendezvousAddrs needs RendezvousAddr")
	}
	for _, a := range c.RendezvousAddrs {
		if _, _, err := net.SplitHostPort(a); err != nil {
			return fmt.Errorf("quicnode: Config.RendezvousAddrs: %w", err)
		}
	}
	return nil
}

func (c *Config) listenAddr() string {
	if c.ListenAddr == "" {
		return defaultListenAddr
	}
	return c.ListenAddr
}

func (c *Config) handshakeTimeout() time.Duration {
	if c.HandshakeTimeout <= 0 {
		return 10 * time.Second
	}
	return c.HandshakeTimeout
}

// quicConfig is shared by the listener and peer dials.
func (c *Config) quicConfig() *quic.Config {
	return &quic.Config{
		EnableDatagrams:       true,
		MaxIncomingStreams:    maxIncomingStream,
		MaxIncomingUniStreams: 16,
		KeepAlivePeriod:       15 * time.Second,
		MaxIdleTimeout:        30 * time.Second,
		HandshakeIdleTimeout:  c.handshakeTimeout(),
	}
}
