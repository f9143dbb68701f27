package bench

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"os"
	"sync"
	"time"

	"github.com/quic-go/quic-go"

	"github.com/agentnet/agentnet/addressing"
	"github.com/agentnet/agentnet/internal/certs"
)

// benchALPN is the ALPN of the raw quic-go and TLS baselines.
const benchALPN = "agentnet-bench/1"

// QUICConfig returns the quic.Config of the raw quic-go baseline: the same
// settings quicnode uses for peer connections (quicnode/config.go,
// Config.quicConfig; keep the two in step).
func QUICConfig() *quic.Config {
	return &quic.Config{
		EnableDatagrams:       true,
		MaxIncomingStreams:    4096,
		MaxIncomingUniStreams: 16,
		KeepAlivePeriod:       15 * time.Second,
		MaxIdleTimeout:        30 * time.Second,
		HandshakeIdleTimeout:  10 * time.Second,
	}
}

// identity is a key pair and its self-signed certificate, as every agentnet
// handshake carries.
type identity struct {
	key  addressing.PublicKey
	cert tls.Certificate
}

func newIdentity() (identity, error) {
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return identity{}, err
	}
	cert, err := certs.Certificate(priv)
	if err != nil {
		return identity{}, err
	}
	k, _ := addressing.PublicKeyFrom(priv.Public().(ed25519.PublicKey))
	return identity{key: k, cert: cert}, nil
}

// keySet is the trust gate of the baselines: the keys the server admits.
type keySet struct {
	mu   sync.RWMutex
	keys map[addressing.PublicKey]bool
}

func (s *keySet) add(k addressing.PublicKey) {
	s.mu.Lock()
	if s.keys == nil {
		s.keys = make(map[addressing.PublicKey]bool)
	}
	s.keys[k] = true
	s.mu.Unlock()
}

func (s *keySet) remove(k addressing.PublicKey) {
	s.mu.Lock()
	delete(s.keys, k)
	s.mu.Unlock()
}

func (s *keySet) allow(k addressing.PublicKey) error {
	s.mu.RLock()
	ok := s.keys[k]
	s.mu.RUnlock()
	if !ok {
		return errors.New("bench: key not trusted")
	}
	return nil
}

// quicEnv is raw quic-go: one server Transport and Listener on a real
// *net.UDPConn (so GSO stays on), TLS 1.3 with Ed25519 self-signed
// certificates, client certificates required and checked in
// VerifyConnection, X25519 only, and QUICConfig. Streams are net.Conns with
// quicnode's Close semantics; no port header, no welcome.
type quicEnv struct {
	srvID   identity
	trusted keySet
	udp     *net.UDPConn
	tr      *quic.Transport
	ln      *quic.Listener
	client  *quicPeer
	srvConn *quic.Conn // the server side of client's connection

	streams chan net.Conn
	done    chan struct{}
	wg      sync.WaitGroup

	mu        sync.Mutex
	closed    bool
	peers     map[*quicPeer]struct{}
	dgClient  net.PacketConn
	dgServer  net.PacketConn
	closeOnce sync.Once
}

// NewQUICEnv starts the raw quic-go baseline.
func NewQUICEnv(ctx context.Context) (Env, error) {
	id, err := newIdentity()
	if err != nil {
		return nil, err
	}
	udp, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		return nil, err
	}
	e := &quicEnv{
		srvID:   id,
		udp:     udp,
		tr:      &quic.Transport{Conn: packetConn(udp)},
		streams: make(chan net.Conn, 1024),
		done:    make(chan struct{}),
		peers:   make(map[*quicPeer]struct{}),
	}
	e.ln, err = e.tr.Listen(serverTLS(id.cert, benchALPN, e.trusted.allow), QUICConfig())
	if err != nil {
		e.tr.Close()
		udp.Close()
		return nil, err
	}
	p, err := e.newPeer()
	if err != nil {
		e.Close()
		return nil, err
	}
	e.client = p
	// Connect the client before starting the accept loop, so the server
	// side of its connection is known (it carries the datagrams).
	type accepted struct {
		c   *quic.Conn
		err error
	}
	ch := make(chan accepted, 1)
	go func() {
		c, err := e.ln.Accept(ctx)
		ch <- accepted{c, err}
	}()
	if _, err := p.connection(ctx); err != nil {
		e.Close()
		return nil, err
	}
	a := <-ch
	if a.err != nil {
		e.Close()
		return nil, a.err
	}
	e.srvConn = a.c
	e.wg.Add(2)
	go e.streamLoop(a.c)
	go e.acceptLoop()
	return e, nil
}

func (e *quicEnv) System() System { return QUIC }

func (e *quicEnv) acceptLoop() {
	defer e.wg.Done()
	for {
		c, err := e.ln.Accept(context.Background())
		if err != nil {
			return
		}
		e.wg.Add(1)
		go e.streamLoop(c)
	}
}

// streamLoop hands the connection's streams to Accept. It is the one
// goroutine per connection a raw quic-go server needs to take streams.
func (e *quicEnv) streamLoop(c *quic.Conn) {
	defer e.wg.Done()
	for {
		s, err := c.AcceptStream(context.Background())
		if err != nil {
			return
		}
		sc := newQUICStreamConn(s, c)
		select {
		case e.streams <- sc:
		case <-e.done:
			sc.Close()
			return
		}
	}
}

func (e *quicEnv) Accept() (net.Conn, error) {
	select {
	case c := <-e.streams:
		return c, nil
	case <-e.done:
		return nil, net.ErrClosed
	}
}

func (e *quicEnv) Dial(ctx context.Context) (net.Conn, error) { return e.client.Dial(ctx) }

func (e *quicEnv) Datagrams(ctx context.Context) (net.PacketConn, net.PacketConn, net.Addr, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.closed {
		return nil, nil, nil, net.ErrClosed
	}
	if e.dgClient == nil {
		cc, err := e.client.connection(ctx)
		if err != nil {
			return nil, nil, nil, err
		}
		e.dgClient = newQUICPacketConn(cc)
		e.dgServer = newQUICPacketConn(e.srvConn)
	}
	return e.dgClient, e.dgServer, e.dgServer.LocalAddr(), nil
}

func (e *quicEnv) NewPeer(ctx context.Context) (Peer, error) { return e.newPeer() }

func (e *quicEnv) newPeer() (*quicPeer, error) {
	id, err := newIdentity()
	if err != nil {
		return nil, err
	}
	udp, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		return nil, err
	}
	p := &quicPeer{
		env:     e,
		id:      id,
		udp:     udp,
		tr:      &quic.Transport{Conn: packetConn(udp)},
		tlsConf: clientTLS(id.cert, benchALPN, e.srvID.key),
	}
	// A peer is an agent: it listens as well as dials (as a quicnode node
	// does from Start). This also starts the Transport's goroutines now
	// rather than at the first Dial, so they are not counted as the cost
	// of a connection.
	var nobody keySet
	if p.ln, err = p.tr.Listen(serverTLS(id.cert, benchALPN, nobody.allow), QUICConfig()); err != nil {
		udp.Close()
		return nil, err
	}
	e.mu.Lock()
	if e.closed {
		e.mu.Unlock()
		udp.Close()
		return nil, net.ErrClosed
	}
	e.peers[p] = struct{}{}
	e.mu.Unlock()
	e.trusted.add(id.key)
	return p, nil
}

func (e *quicEnv) Close() error {
	e.closeOnce.Do(func() {
		e.mu.Lock()
		e.closed = true
		peers := make([]*quicPeer, 0, len(e.peers))
		for p := range e.peers {
			peers = append(peers, p)
		}
		e.mu.Unlock()
		close(e.done)
		for _, p := range peers {
			p.Close()
		}
		e.ln.Close()
		e.tr.Close()
		e.udp.Close()
		e.wg.Wait()
	})
	return nil
}

// quicPeer is a raw quic-go client with its own socket and Transport.
type quicPeer struct {
	env     *quicEnv
	id      identity
	udp     *net.UDPConn
	tr      *quic.Transport
	ln      *quic.Listener
	tlsConf *tls.Config

	to net.Addr // where to dial the server (nil: its socket; see RelayPaths' forwarder)

	mu   sync.Mutex // held while dialling: concurrent Dials share one connection
	conn *quic.Conn
}

func (p *quicPeer) connection(ctx context.Context) (*quic.Conn, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.conn != nil && p.conn.Context().Err() == nil {
		return p.conn, nil
	}
	to := p.to
	if to == nil {
		to = p.env.udp.LocalAddr()
	}
	c, err := p.tr.Dial(ctx, to, p.tlsConf, QUICConfig())
	if err != nil {
		return nil, fmt.Errorf("bench: quic dial: %w", err)
	}
	p.conn = c
	return c, nil
}

func (p *quicPeer) Dial(ctx context.Context) (net.Conn, error) {
	c, err := p.connection(ctx)
	if err != nil {
		return nil, err
	}
	s, err := c.OpenStreamSync(ctx)
	if err != nil {
		return nil, err
	}
	return newQUICStreamConn(s, c), nil
}

func (p *quicPeer) Disconnect() error {
	p.mu.Lock()
	c := p.conn
	p.conn = nil
	p.mu.Unlock()
	if c != nil {
		c.CloseWithError(0, "")
	}
	return nil
}

func (p *quicPeer) Close() error {
	p.Disconnect()
	p.env.mu.Lock()
	delete(p.env.peers, p)
	p.env.mu.Unlock()
	p.env.trusted.remove(p.id.key)
	p.ln.Close()
	p.tr.Close()
	p.udp.Close()
	return nil
}

// quicStreamConn is a quic-go stream as a net.Conn, with quicnode's
// semantics: Close closes both directions, CloseWrite sends EOF.
type quicStreamConn struct {
	*quic.Stream
	local, remote net.Addr
}

func newQUICStreamConn(s *quic.Stream, c *quic.Conn) *quicStreamConn {
	return &quicStreamConn{Stream: s, local: c.LocalAddr(), remote: c.RemoteAddr()}
}

func (c *quicStreamConn) Close() error {
	err := c.Stream.Close()
	c.Stream.CancelRead(0)
	return err
}

func (c *quicStreamConn) CloseWrite() error    { return c.Stream.Close() }
func (c *quicStreamConn) LocalAddr() net.Addr  { return c.local }
func (c *quicStreamConn) RemoteAddr() net.Addr { return c.remote }

// quicPacketConn is a QUIC connection's datagrams as a net.PacketConn: WriteTo
// ignores the address (the connection has one peer).
type quicPacketConn struct {
	conn *quic.Conn

	mu     sync.Mutex
	readDL time.Time
}

func newQUICPacketConn(c *quic.Conn) *quicPacketConn { return &quicPacketConn{conn: c} }

func (pc *quicPacketConn) ReadFrom(b []byte) (int, net.Addr, error) {
	pc.mu.Lock()
	dl := pc.readDL
	pc.mu.Unlock()
	ctx := pc.conn.Context()
	if !dl.IsZero() {
		var cancel context.CancelFunc
		ctx, cancel = context.WithDeadline(ctx, dl)
		defer cancel()
	}
	m, err := pc.conn.ReceiveDatagram(ctx)
	if err != nil {
		if errors.Is(err, context.DeadlineExceeded) {
			err = os.ErrDeadlineExceeded
		}
		return 0, nil, &net.OpError{Op: "read", Net: "quic", Err: err}
	}
	return copy(b, m), pc.conn.RemoteAddr(), nil
}

func (pc *quicPacketConn) WriteTo(b []byte, _ net.Addr) (int, error) {
	if err := pc.conn.SendDatagram(b); err != nil {
		return 0, &net.OpError{Op: "write", Net: "quic", Err: err}
	}
	return len(b), nil
}

func (pc *quicPacketConn) Close() error        { return nil } // the Env owns the connection
func (pc *quicPacketConn) LocalAddr() net.Addr { return pc.conn.LocalAddr() }
func (pc *quicPacketConn) SetDeadline(t time.Time) error {
	return pc.SetReadDeadline(t)
}

func (pc *quicPacketConn) SetReadDeadline(t time.Time) error {
	pc.mu.Lock()
	pc.readDL = t
	pc.mu.Unlock()
	return nil
}
func (pc *quicPacketConn) SetWriteDeadline(time.Time) error { return nil }
