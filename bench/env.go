package bench

import (
	"context"
	"errors"
	"fmt"
	"net"
)

// System names a transport under test.
type System string

// The systems the runner compares, in table order.
const (
	Agentnet System = "agentnet"
	QUIC     System = "quic-go"
	TCP      System = "tcp"
	TLS      System = "tls-tcp"
)

// Systems lists every system in table order.
var Systems = []System{Agentnet, QUIC, TCP, TLS}

// ErrNotSupported is returned (wrapped, with the reason) by an Env or a Peer
// that cannot do what a scenario asks; the table shows "n/a (reason)".
var ErrNotSupported = errors.New("not supported")

// notSupported returns an error wrapping ErrNotSupported whose text is the
// reason alone.
func notSupported(format string, args ...any) error {
	return &naError{reason: fmt.Sprintf(format, args...)}
}

type naError struct{ reason string }

func (e *naError) Error() string { return e.reason }
func (e *naError) Unwrap() error { return ErrNotSupported }

// Env is one transport under test: a server and a long-lived client on
// 127.0.0.1, both in this process. Scenarios never type-switch on an Env: what
// differs between systems lives behind these methods. An Env is safe for
// concurrent use.
type Env interface {
	// System names the transport.
	System() System
	// Dial opens a stream from the client to the server. On QUIC systems it
	// is a new stream on the client's one connection; on TCP and TLS it is a
	// new connection. The server side of it comes out of Accept.
	Dial(ctx context.Context) (net.Conn, error)
	// Accept returns the server side of the next stream, from the client or
	// from any Peer. It fails with net.ErrClosed after Close.
	Accept() (net.Conn, error)
	// Datagrams returns the client's and the server's datagram endpoints and
	// the address the client sends to. Every call returns the same pair; the
	// Env closes it. It fails with ErrNotSupported on stream-only systems.
	Datagrams(ctx context.Context) (client, server net.PacketConn, to net.Addr, err error)
	// NewPeer returns another client, distinct from every live one (its own
	// socket and, for agentnet, its own trusted identity), not yet connected:
	// its first Dial makes a connection. The untimed part of preparing a peer
	// (agentnet: starting a node, registering, establishing trust) is done
	// here.
	NewPeer(ctx context.Context) (Peer, error)
	// Close closes the server, the client and every peer, and waits for
	// their goroutines.
	Close() error
}

// Peer is a client made by Env.NewPeer.
type Peer interface {
	// Dial opens a stream to the server, connecting first if the peer has
	// no live connection.
	Dial(ctx context.Context) (net.Conn, error)
	// Disconnect closes the peer's connection to the server but keeps what
	// the peer knows of it (its address), so the next Dial is a repeat
	// contact. It returns ErrNotSupported if the system cannot do that.
	Disconnect() error
	// Close closes the peer and its connections.
	Close() error
}

// closeWriter is implemented by every stream the Envs return: it sends EOF
// and leaves the read side open.
type closeWriter interface {
	CloseWrite() error
}

func closeWrite(c net.Conn) error {
	if cw, ok := c.(closeWriter); ok {
		return cw.CloseWrite()
	}
	return fmt.Errorf("bench: %T has no CloseWrite", c)
}

// NewEnv creates the Env of sys.
func NewEnv(ctx context.Context, sys System) (Env, error) {
	switch sys {
	case Agentnet:
		return NewAgentnetEnv(ctx)
	case QUIC:
		return NewQUICEnv(ctx)
	case TCP:
		return NewTCPEnv(ctx, false)
	case TLS:
		return NewTCPEnv(ctx, true)
	}
	return nil, fmt.Errorf("bench: unknown system %q", sys)
}
